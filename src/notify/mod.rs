//! Telling a person: the engine's notices ([`crate::engine::notify`]) sent
//! to each configured channel: the desktop, a command, a webhook. A
//! channel that fails is logged and never stops or slows the engine: each
//! send runs on its own task, bounded in time.

mod command;
mod desktop;
mod webhook;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::engine::config::Notify;
use crate::engine::journal::{Entry, Event};
use crate::engine::notify::{Notice, Tracker, conditions};

/// How often the engine's states are looked at besides store changes.
const LOOK_EVERY: Duration = Duration::from_secs(5);
/// The longest one channel may take with one notice.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// What one channel made of one notice.
#[derive(Debug)]
pub struct Sent {
    pub channel: &'static str,
    pub result: Result<(), String>,
}

/// A send under way.
type Sending<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Sends `notice` to every channel `settings` names, at once; what each
/// made of it.
pub async fn send(settings: &Notify, notice: &Notice) -> Vec<Sent> {
    let json = serde_json::to_vec(notice).expect("a notice serializes");
    let mut sends: Vec<(&'static str, Sending<'_>)> = Vec::new();
    if desktop::enabled(settings.desktop) {
        sends.push(("desktop", Box::pin(desktop::send(notice))));
    }
    if !settings.command.is_empty() {
        let sending = command::send(&settings.command, &notice.event, &json);
        sends.push(("command", Box::pin(sending)));
    }
    if let Some(url) = settings.webhook.as_deref() {
        sends.push(("webhook", Box::pin(webhook::send(url, &json))));
    }
    let timed = sends.into_iter().map(|(channel, sending)| async move {
        let result = match tokio::time::timeout(SEND_TIMEOUT, sending).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} s", SEND_TIMEOUT.as_secs())),
        };
        Sent { channel, result }
    });
    futures_util::future::join_all(timed).await
}

/// Looks at the engine's states every few seconds and whenever the store
/// changes, until `stop`; each notice is journaled and sent.
pub async fn watch(engine: Arc<Engine>, stop: CancellationToken) {
    let settings = Arc::new(engine.config.notify.clone());
    let mut tracker = Tracker::default();
    let mut changed = engine.store_changed.subscribe();
    let mut every = tokio::time::interval(LOOK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sending = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = every.tick() => {}
            _ = changed.changed() => {}
            Some(_) = sending.join_next() => continue,
        }
        let now = engine.refresher.now();
        let states = conditions(&engine, settings.quota_percent, now);
        for notice in tracker.observe(&states, settings.repeat, now) {
            journal(&engine, &notice);
            let settings = settings.clone();
            sending.spawn(async move { log(&send(&settings, &notice).await, &notice) });
        }
    }
    sending.shutdown().await;
}

fn journal(engine: &Engine, notice: &Notice) {
    let mut entry = Entry::new(
        notice.account_id.as_deref().unwrap_or_default(),
        Event::Notified,
        "notify",
    );
    entry.code = Some(notice.event.clone());
    entry.reason = Some(notice.message.clone());
    engine.refresher.journal().record(&entry);
}

/// Logs what the channels made of `notice`: failures as warnings.
pub fn log(sent: &[Sent], notice: &Notice) {
    for Sent { channel, result } in sent {
        match result {
            Ok(()) => tracing::info!(event = %notice.event, channel, "notified"),
            Err(why) => tracing::warn!(event = %notice.event, channel, "could not notify: {why}"),
        }
    }
}
