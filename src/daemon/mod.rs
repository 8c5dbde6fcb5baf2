//! `serve`: wiring of the daemon. One instance per broker home; one
//! cancellation token and a task tracker for an orderly shutdown, after
//! which the refresh engine finishes (and saves) any refresh it had sent.

pub mod service;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fs2::FileExt;
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::base::fsutil;
use crate::base::paths::Paths;
use crate::base::server::Limits;
use crate::codex::auth::AUTH_FILE;
use crate::codex::watch;
use crate::engine::Engine;
use crate::engine::config::Config;
use crate::engine::refresh::Refresher;
use crate::engine::scheduler;
use crate::engine::store::{STORE_FILE, Store};
use crate::follow::leader::Leader;
use crate::forward::{self, Forwarder};
use crate::socket;

/// The file whose lock marks the running daemon of a broker home; it holds
/// that daemon's pid.
pub const PID_FILE: &str = "serve.pid";

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub limits: Limits,
    /// The forwarder's address; `None` runs without it.
    pub listen: Option<String>,
    /// The leader's socket, for a follower.
    pub follow: Option<PathBuf>,
}

/// Holds the instance lock of a broker home while the daemon runs.
struct Instance {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "another codex-broker serve is already running for {home} (pid {pid}); stop it first \
     (kill {pid}, or systemctl --user stop codex-broker)"
)]
pub struct AlreadyRunning {
    pub home: PathBuf,
    pub pid: String,
}

fn lock_instance(home: &Path) -> anyhow::Result<Instance> {
    let path = home.join(PID_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if file.try_lock_exclusive().is_err() {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let pid = pid.trim();
        return Err(AlreadyRunning {
            home: home.to_owned(),
            pid: if pid.is_empty() { "unknown" } else { pid }.to_owned(),
        }
        .into());
    }
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Instance { _file: file })
}

/// Sends `state` to systemd's notification socket when `NOTIFY_SOCKET` is
/// set (`Type=notify` units).
fn sd_notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            use std::os::unix::ffi::OsStrExt;
            if let Some(name) = target.as_bytes().strip_prefix(b"@") {
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)?;
                return Ok(());
            }
        }
        socket.send_to(state.as_bytes(), Path::new(&target))?;
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd ({state}): {e}");
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(paths: Paths, config: Config, options: Options) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("codex-broker")
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(serve(paths, config, options));
    // A thread still waiting for a file lock another process holds has
    // nothing left to do for us: exit without it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    served
}

/// Lets the daemon hold as many connections as the hard limit allows.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!("cannot raise the open-file limit from {soft}: {e}");
    }
}

/// Keeps the daemon's memory, which holds every token, out of core dumps
/// and away from other processes of the user that may not ptrace it (as
/// ssh-agent does).
fn protect_memory() {
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        tracing::warn!("cannot turn core dumps off: {e}");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!("cannot make the daemon undumpable: {e}");
    }
}

async fn serve(paths: Paths, config: Config, options: Options) -> anyhow::Result<()> {
    protect_memory();
    raise_open_file_limit();
    fsutil::ensure_private_dir(&paths.home)?;
    let _instance = lock_instance(&paths.home)?;
    let forward_listener = match &options.listen {
        Some(addr) => Some(forward::bind(addr).await?),
        None => None,
    };
    let forward_addr = forward_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    prepare_store(&paths, &config, &options, forward_addr)?;
    // Copies of credentials a killed writer left behind.
    fsutil::remove_stale_temporaries(&paths.home, STORE_FILE);
    fsutil::remove_stale_temporaries(&paths.codex_home, AUTH_FILE);
    let (listener, socket_file) = socket::bind(&paths.socket)?;
    fsutil::create_dir_if_missing(&paths.codex_home)?;
    let watcher = watch::HomeWatcher::start(&paths.codex_home, &paths.home)
        .context("cannot watch the Codex home and the broker home")?;
    let refresher = Refresher::new(&paths, &config);
    let mut engine = Engine::new(paths, config, refresher, forward_addr);
    if let Some(leader) = &options.follow {
        engine = engine.following(Leader::new(leader));
    }
    let engine = Arc::new(engine);
    {
        let engine = engine.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || watch::sync_codex(&engine)).await? {
            tracing::warn!("cannot take in auth.json: {e}");
        }
    }
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(watcher.run(engine.clone(), shutdown.clone()));
    let servers = Servers {
        socket: listener,
        forwarder: forward_listener,
        limits: options.limits,
    };
    spawn_tasks(&tracker, &engine, servers, &shutdown);
    announce(&engine)?;
    sd_notify("READY=1");
    until_asked_to_stop().await?;
    sd_notify("STOPPING=1");
    shutdown.cancel();
    let grace = options.limits.grace + Duration::from_secs(1);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("tasks still running after {grace:?}; exiting anyway");
    }
    drop(socket_file);
    save_usage_now(&engine).await;
    if engine.refresher.busy() {
        tracing::info!("finishing the refresh in flight before exiting");
    }
    for lost in engine.refresher.drain().await {
        tracing::error!("{lost}");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Takes the shield setting and the forwarder's address into the store,
/// and makes the home a follower's with `--follow`; a follower's home
/// refuses to lead.
fn prepare_store(
    paths: &Paths,
    config: &Config,
    options: &Options,
    forwarder: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    paths.store().update(|store| {
        store.shield |= config.shield;
        if let Some(addr) = forwarder {
            store.forwarder = Some(format!("http://{addr}"));
        }
        match (&options.follow, &store.follows) {
            (Some(leader), _) => become_follower(store, leader, &paths.home),
            (None, Some(leader)) => anyhow::bail!(
                "{} is the home of a follower of {}: run `codex-broker serve --follow {}`, or \
                 give a leader a home of its own (--home DIR)",
                paths.home.display(),
                leader.display(),
                leader.display()
            ),
            (None, None) => Ok(()),
        }
    })
}

/// The daemon's listeners.
struct Servers {
    socket: UnixListener,
    forwarder: Option<TcpListener>,
    limits: Limits,
}

/// Starts the scheduler, the follow loop of a follower, the socket API and
/// the forwarder, each until `shutdown`.
fn spawn_tasks(
    tracker: &TaskTracker,
    engine: &Arc<Engine>,
    servers: Servers,
    shutdown: &CancellationToken,
) {
    tracker.spawn(scheduler::run(engine.clone(), shutdown.clone()));
    if let Some(leader) = engine.leader.clone() {
        tracker.spawn(crate::follow::sync::follow(
            engine.clone(),
            leader,
            shutdown.clone(),
        ));
    }
    tracker.spawn(save_usage(engine.clone(), shutdown.clone()));
    tracker.spawn(crate::notify::watch(engine.clone(), shutdown.clone()));
    tracker.spawn(socket::serve(
        servers.socket,
        engine.clone(),
        servers.limits,
        shutdown.clone(),
    ));
    if let Some(listener) = servers.forwarder {
        let forwarder = Arc::new(Forwarder::new(engine.clone()));
        tracker.spawn(forward::serve(
            listener,
            forwarder,
            servers.limits,
            shutdown.clone(),
        ));
    }
    tracker.close();
}

/// How often the usage table is saved when it changed.
const USAGE_SAVE_EVERY: Duration = Duration::from_secs(5);

/// Saves the usage table every few seconds while it changes; the daemon
/// saves it once more after its servers stopped.
async fn save_usage(engine: Arc<Engine>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(USAGE_SAVE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => save_usage_now(&engine).await,
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn save_usage_now(engine: &Arc<Engine>) {
    let saver = engine.clone();
    let saved = tokio::task::spawn_blocking(move || saver.usage.save(saver.refresher.now()))
        .await
        .expect("the usage save does not panic");
    if let Err(e) = saved {
        tracing::warn!("cannot save token usage: {e}");
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn until_asked_to_stop() -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
    }
    Ok(())
}

/// Marks `store` as a follower's of `leader`: shielded, and holding no
/// refresh token. A home that holds real refresh tokens (a leader's) is
/// refused: the follower would keep them.
fn become_follower(store: &mut Store, leader: &Path, home: &Path) -> anyhow::Result<()> {
    let real = store.accounts.iter().any(|a| {
        a.api_key.is_some()
            || a.tokens
                .as_ref()
                .is_some_and(|t| !crate::engine::shield::is_stand_in(t.refresh_token.expose()))
    });
    if real {
        anyhow::bail!(
            "{} holds real credentials (it is a leader's home); a follower keeps none: give the \
             follower a broker home of its own (--home DIR)",
            home.display()
        );
    }
    store.follows = Some(leader.to_owned());
    store.shield = true;
    Ok(())
}

fn announce(shared: &Engine) -> anyhow::Result<()> {
    let store = shared.refresher.store()?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        socket = %shared.paths.socket.display(),
        codex_home = %shared.paths.codex_home.display(),
        forwarder = %shared.forwarder.map_or_else(|| "off".to_owned(), |a| format!("http://{a}")),
        accounts = store.accounts.len(),
        refresh_ahead = shared.config.refresh_ahead,
        follows = %shared.leader.as_ref().map_or_else(|| "-".to_owned(), |l| l.socket().display().to_string()),
        "codex-broker serving"
    );
    if store.accounts.is_empty() && shared.leader.is_none() {
        tracing::warn!(
            "no accounts yet: log in with `codex-broker login`, or adopt Codex's login with \
             `codex-broker import`; the daemon picks them up at once"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_is_undumpable_and_dumps_no_core() {
        protect_memory();
        let core = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_CORE);
        assert_eq!(core.unwrap(), (0, 0));
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert!(!nix::sys::prctl::get_dumpable().unwrap());
    }
}
