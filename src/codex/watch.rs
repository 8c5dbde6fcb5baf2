//! The Codex-home watcher: adopts what `codex login` writes, respects a
//! deleted auth.json, reports one it cannot parse, and tells the scheduler
//! when the account store changes.
//!
//! Both homes are watched as directories, so atomic writers (a temp file
//! renamed over auth.json, as Codex and the broker both do) are seen. The
//! broker's own writes are recognised by content: the store already holds
//! what the file says, so nothing is adopted or rewritten.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::codex::auth::{AUTH_FILE, AuthState};
use crate::codex::publish::{PublishError, adopt_from_snapshot, republish};
use crate::engine::Engine;
use crate::engine::store::{STORE_FILE, StoreError};
use crate::wire::proto::ProblemCode;

/// Events arriving this close together are handled once.
const SETTLE: Duration = Duration::from_millis(25);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Changed {
    CodexAuth,
    Store,
}

/// Watches the Codex home and the broker home until `shutdown`.
pub struct HomeWatcher {
    _watcher: RecommendedWatcher,
    events: mpsc::UnboundedReceiver<Changed>,
}

impl HomeWatcher {
    pub fn start(codex_home: &Path, broker_home: &Path) -> notify::Result<HomeWatcher> {
        let (tx, events) = mpsc::unbounded_channel();
        let codex_dir = codex_home.to_owned();
        let broker_dir = broker_home.to_owned();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::warn!("file watcher: {e}");
                        return;
                    }
                };
                if matches!(event.kind, EventKind::Access(_)) {
                    return;
                }
                for path in &event.paths {
                    if let Some(changed) = classify(path, &codex_dir, &broker_dir) {
                        let _ = tx.send(changed);
                    }
                }
            })?;
        watcher.watch(codex_home, RecursiveMode::NonRecursive)?;
        watcher.watch(broker_home, RecursiveMode::NonRecursive)?;
        Ok(HomeWatcher {
            _watcher: watcher,
            events,
        })
    }

    /// Handles events until `shutdown` is cancelled.
    pub async fn run(mut self, shared: Arc<Engine>, shutdown: CancellationToken) {
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = self.events.recv() => match event {
                    Some(event) => event,
                    None => return,
                },
            };
            let mut codex = first == Changed::CodexAuth;
            let mut store = first == Changed::Store;
            // Let a burst (delete, create, rename) settle, then act once.
            let settle = tokio::time::sleep(SETTLE);
            tokio::pin!(settle);
            loop {
                tokio::select! {
                    _ = &mut settle => break,
                    Some(event) = self.events.recv() => {
                        codex |= event == Changed::CodexAuth;
                        store |= event == Changed::Store;
                    }
                }
            }
            if codex {
                let shared = shared.clone();
                let synced = tokio::task::spawn_blocking(move || sync_codex(&shared)).await;
                if let Ok(Err(e)) = synced {
                    tracing::warn!("cannot take in the change to auth.json: {e}");
                }
            }
            if store {
                shared.store_changed.send_replace(());
            }
        }
    }
}

fn classify(path: &Path, codex_dir: &Path, broker_dir: &Path) -> Option<Changed> {
    let name = path.file_name()?;
    let dir = path.parent()?;
    if name == AUTH_FILE && same_dir(dir, codex_dir) {
        Some(Changed::CodexAuth)
    } else if name == STORE_FILE && same_dir(dir, broker_dir) {
        Some(Changed::Store)
    } else {
        None
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || canonical(a) == canonical(b)
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_owned())
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl From<crate::base::fsutil::FsError> for SyncError {
    fn from(e: crate::base::fsutil::FsError) -> Self {
        SyncError::Publish(e.into())
    }
}

/// Brings the store and auth.json in line after auth.json changed (or at
/// start): new tokens in the file are adopted (a new account is added); a
/// file holding older tokens than the store gets the store's (with the
/// stand-in while the store shields auth.json); a deleted file stays
/// deleted; an invalid file is reported and left alone. A stand-in in the
/// file is never taken for a refresh token.
pub fn sync_codex(shared: &Engine) -> Result<(), SyncError> {
    let codex = shared.paths.codex();
    let snapshot = match codex.read() {
        Ok(snapshot) => snapshot,
        Err(e) => {
            let message = format!("{e}; refreshes go on with the store: fix it or move it away");
            if shared.set_auth_problem(Some((ProblemCode::AuthJsonInvalid, message.clone()))) {
                tracing::warn!("{message}");
            }
            return Ok(());
        }
    };
    match &snapshot.state {
        AuthState::Missing => {
            shared.set_auth_problem(None);
            shared.paths.store().update(|store| {
                if store.published.take().is_some() {
                    tracing::info!(
                        "{} was removed (codex logout, or a login in progress); it stays absent \
                         until a login, an import or an account switch",
                        codex.auth_path().display()
                    );
                }
                Ok::<_, SyncError>(())
            })
        }
        AuthState::Invalid(problem) => {
            let message = format!(
                "{}: {problem}; it is left untouched: fix it or move it away",
                codex.auth_path().display()
            );
            if shared.set_auth_problem(Some((ProblemCode::AuthJsonInvalid, message.clone()))) {
                tracing::warn!("{message}");
            }
            Ok(())
        }
        AuthState::Untrusted(problem) => {
            if shared.set_auth_problem(Some((ProblemCode::AuthJsonUntrusted, problem.clone()))) {
                tracing::warn!("{problem}");
            }
            Ok(())
        }
        AuthState::Valid(_) => {
            shared.set_auth_problem(None);
            let Some(id) = snapshot.account_id() else {
                return Ok(());
            };
            let journal = shared.paths.journal();
            shared.paths.store().update(|store| {
                let known = store.get(&id).is_some();
                if adopt_from_snapshot(store, &snapshot, &journal).is_some() {
                    store.published = Some(id.clone());
                    if known {
                        tracing::info!(account = %id, "adopted the new tokens Codex wrote to auth.json");
                    } else {
                        tracing::info!(account = %id, "adopted a new account from Codex's auth.json");
                    }
                    // A login in a shielded home is shielded in turn.
                    if !store.shield {
                        return Ok(());
                    }
                }
                if republish(&codex, store, &id, &journal)? {
                    tracing::info!(account = %id, "auth.json held older tokens; wrote the current ones");
                }
                Ok::<_, SyncError>(())
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_only_the_two_files() {
        let codex = Path::new("/h/.codex");
        let broker = Path::new("/h/.config/codex-broker");
        let c = |p: &str| classify(Path::new(p), codex, broker);
        assert_eq!(c("/h/.codex/auth.json"), Some(Changed::CodexAuth));
        assert_eq!(c("/h/.codex/.auth-Xy12ab"), None);
        assert_eq!(c("/h/.codex/auth.json.lock"), None);
        assert_eq!(
            c("/h/.config/codex-broker/accounts.json"),
            Some(Changed::Store)
        );
        assert_eq!(c("/h/.config/codex-broker/auth.json"), None);
    }
}
