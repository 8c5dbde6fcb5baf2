//! What the prompt cache's parts cost: the throughput of Codex-style
//! requests through the forwarder at 32 connections without a
//! conversation header, with one conversation per connection (a pin
//! looked up and renewed on each request) and with a new conversation on
//! each request (a pin made, and past the cap one evicted), in the same
//! run; the daemon's memory per pinned conversation and per shadow body
//! kept for keep-warm.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};

use super::forward::connect;
use super::upstream::Upstream;
use super::{Stats, forwarder_addr, fresh_daemon_with, measure, rss_kib};

const BODY: &str = r#"{"model":"gpt-5.1-codex","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]}],"stream":false}"#;

/// How requests name their conversation.
#[derive(Clone, Copy, PartialEq)]
enum Keys {
    None,
    PerConnection,
    PerRequest,
}

fn request(body: Bytes, session: Option<String>) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri("/codex/responses")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json");
    if let Some(session) = session {
        builder = builder.header("session-id", session);
    }
    builder.body(Full::new(body)).unwrap()
}

async fn send(sender: &mut SendRequest<Full<Bytes>>, body: Bytes, session: Option<String>) {
    sender.ready().await.unwrap();
    let response = sender.send_request(request(body, session)).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.into_body().collect().await.unwrap();
}

/// Requests from 32 connections for `run`, their conversations named as
/// `keys` says.
async fn throughput(addr: SocketAddr, keys: Keys, run: Duration) -> Stats {
    let counter = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for n in 0..32 {
        senders.push((n, connect(addr).await));
    }
    measure(senders, run, move |(n, mut sender)| {
        let counter = counter.clone();
        async move {
            let session = match keys {
                Keys::None => None,
                Keys::PerConnection => Some(format!("01a252ea-19e9-7f70-8c37-{n:012}")),
                Keys::PerRequest => {
                    let k = counter.fetch_add(1, Ordering::Relaxed);
                    Some(format!("01a252ea-19e9-7f70-8c37-{k:012}"))
                }
            };
            send(&mut sender, Bytes::from_static(BODY.as_bytes()), session).await;
            (n, sender)
        }
    })
    .await
}

/// The daemon's RSS growth per conversation after `n` requests of
/// conversations of their own, each with `body`, KiB.
fn growth(
    runtime: &tokio::runtime::Runtime,
    upstream: &Upstream,
    config: &str,
    n: usize,
    body: &Bytes,
) -> f64 {
    let (_home, daemon) = fresh_daemon_with(upstream, config);
    let addr = forwarder_addr(runtime, &daemon.socket);
    let mut sender = runtime.block_on(connect(addr));
    // Warm the daemon's buffers and pools first.
    for k in 0..16 {
        runtime.block_on(send(&mut sender, body.clone(), Some(format!("warm-{k}"))));
    }
    std::thread::sleep(Duration::from_millis(100));
    let before = rss_kib(daemon.child.id());
    for k in 0..n {
        let session = Some(format!("01a252ea-19e9-7f70-8c37-{k:012}"));
        runtime.block_on(send(&mut sender, body.clone(), session));
    }
    std::thread::sleep(Duration::from_millis(100));
    let after = rss_kib(daemon.child.id());
    after.saturating_sub(before) as f64 / n as f64
}

pub fn run(runtime: &tokio::runtime::Runtime, upstream: &Upstream, run: Duration, quick: bool) {
    let (_home, daemon) = fresh_daemon_with(upstream, "");
    let addr = forwarder_addr(runtime, &daemon.socket);
    let cases = [
        (Keys::None, "no conversation header"),
        (Keys::PerConnection, "one conversation per connection"),
        (Keys::PerRequest, "a new conversation per request"),
    ];
    let mut best = [0.0f64; 3];
    let mut p50 = [0.0f64; 3];
    for _ in 0..2 {
        for (i, (keys, _)) in cases.iter().enumerate() {
            let stats = runtime.block_on(throughput(addr, *keys, run));
            if stats.rate > best[i] {
                (best[i], p50[i]) = (stats.rate, stats.p50);
            }
        }
    }
    println!();
    println!("prompt cache: POST /codex/responses through the forwarder, 32 connections");
    println!(
        "{:<34} {:>9} {:>9} {:>12}",
        "", "req/s", "p50 us", "x no header"
    );
    for (i, (_, name)) in cases.iter().enumerate() {
        let ratio = best[i] / best[0].max(1.0);
        println!("{name:<34} {:>9.0} {:>9.0} {ratio:>12.2}", best[i], p50[i]);
    }
    drop(daemon);

    let pins = if quick { 500 } else { 16_000 };
    let small = Bytes::from_static(BODY.as_bytes());
    let per_pin = growth(runtime, upstream, "", pins, &small);
    println!("  memory per pinned conversation ({pins} pinned): {per_pin:.2} KiB");
    let kept = codex_broker::engine::cachekeep::MAX_SESSIONS;
    let warm = "[cachekeep]\nenabled = true\ninterval = 3600\n";
    for kib in [64, 256, 1000] {
        let padded = format!(
            r#"{{"model":"gpt-5.1-codex","instructions":"{}","input":[],"stream":false}}"#,
            "x".repeat(kib * 1024)
        );
        let large = Bytes::from(padded);
        let with_shadows = growth(runtime, upstream, warm, kept, &large);
        let without = growth(runtime, upstream, "", kept, &large);
        println!(
            "  memory per kept shadow body ({kept} bodies of {kib} KiB): {with_shadows:.1} KiB \
             with keep-warm, {without:.1} KiB without: {:.2} x the body",
            (with_shadows - without) / kib as f64
        );
    }
}
