//! The chaos test: a daemon restarted with SIGTERM at random moments,
//! `token` processes in loops stopped by random SIGINT/SIGTERM, socket
//! clients that give up at random, forced refreshes, and a Codex-like
//! writer that refreshes through the forwarder and rewrites auth.json
//! under Codex's locks. At the end the lineage must be whole: no refresh
//! token was ever presented twice, every account is `ok`, the store holds
//! the issuer's newest refresh token, and the journal counts exactly the
//! rotations the issuer made.
//!
//! It runs for a few seconds in the normal suite; set
//! `CODEX_BROKER_CHAOS_SECS` for a longer run.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fs2::FileExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::fake_upstream::FakeUpstream;
use crate::support::{Daemon, TestAccount, TestEnv};

/// A small xorshift generator: the seed is printed, so a failing run can
/// be told apart from another.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

#[derive(Default)]
struct Counts {
    token_runs: AtomicU64,
    token_signalled: AtomicU64,
    socket_requests: AtomicU64,
    socket_gave_up: AtomicU64,
    codex_refreshes: AtomicU64,
    daemon_restarts: AtomicU64,
}

/// What every actor shares.
struct Chaos {
    env: TestEnv,
    stop: AtomicBool,
    counts: Counts,
    /// What went wrong, if anything, for the final report.
    failures: Mutex<Vec<String>>,
}

impl Chaos {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// `token` in a loop: half the runs force a refresh, a third are stopped
/// by SIGINT or SIGTERM after a random delay.
fn token_loop(chaos: &Chaos, rng: &mut Rng) {
    while chaos.running() {
        let min_ttl = if rng.below(2) == 0 { "4000000" } else { "300" };
        let account = if rng.below(3) == 0 {
            "acc-fb"
        } else {
            "acc-main"
        };
        let child = chaos
            .env
            .std_cmd()
            .args(["token", "--account", account, "--min-ttl", min_ttl])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        chaos.counts.token_runs.fetch_add(1, Ordering::Relaxed);
        let signalled = rng.below(3) == 0;
        if signalled {
            std::thread::sleep(rng.millis(0, 40));
            let sig = if rng.below(2) == 0 {
                Signal::SIGINT
            } else {
                Signal::SIGTERM
            };
            let _ = kill(Pid::from_raw(child.id() as i32), sig);
            chaos.counts.token_signalled.fetch_add(1, Ordering::Relaxed);
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        match (out.status.code(), out.status.signal()) {
            (Some(0 | 130 | 143), _) => {}
            // The daemon stopping under a request is not a failure; a lost
            // lineage is.
            (Some(1), _) if !stderr.contains("login") => {}
            // Signalled before it installed its handlers, long before any
            // refresh could start.
            (None, Some(2 | 15)) if signalled => {}
            other => chaos.fail(format!("token exited {other:?}: {stderr}")),
        }
    }
}

/// Socket clients that ask for a token and give up after a random
/// 5-300 ms.
fn socket_loop(chaos: &Chaos, rng: &mut Rng) {
    while chaos.running() {
        std::thread::sleep(rng.millis(5, 50));
        let Ok(mut stream) = std::os::unix::net::UnixStream::connect(chaos.env.socket_path())
        else {
            continue;
        };
        let min_ttl = if rng.below(2) == 0 { "4000000" } else { "300" };
        let request = format!("GET /v1/token?min_ttl={min_ttl} HTTP/1.1\r\nhost: x\r\n\r\n");
        if stream.write_all(request.as_bytes()).is_err() {
            continue;
        }
        chaos.counts.socket_requests.fetch_add(1, Ordering::Relaxed);
        stream.set_read_timeout(Some(rng.millis(5, 300))).unwrap();
        let mut buf = [0u8; 256];
        if stream.read(&mut buf).is_err() {
            chaos.counts.socket_gave_up.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Like Codex: read auth.json, refresh its token through the forwarder's
/// token endpoint, and write the answer back under `auth.lock` and
/// `auth.json.lock`, dropping it when the file changed meanwhile.
fn codex_loop(chaos: &Chaos, rng: &mut Rng) {
    while chaos.running() {
        std::thread::sleep(rng.millis(20, 200));
        let Some(port) = forwarder_port(&chaos.env) else {
            continue;
        };
        let Ok(before) = std::fs::read(chaos.env.auth_path()) else {
            continue;
        };
        let auth: serde_json::Value = serde_json::from_slice(&before).unwrap();
        let body = serde_json::json!({"client_id": "app_EMoamEEZ73f0CkXaXp7hrann",
            "grant_type": "refresh_token", "refresh_token": auth["tokens"]["refresh_token"]});
        let Some((status, tokens)) = post_json(port, "/oauth/token", &body) else {
            continue;
        };
        if status == 401 {
            chaos.fail(format!("the forwarder refused Codex's token: {tokens}"));
            continue;
        }
        if status != 200 {
            continue;
        }
        chaos.counts.codex_refreshes.fetch_add(1, Ordering::Relaxed);
        let mut new = auth.clone();
        for field in ["id_token", "access_token", "refresh_token"] {
            new["tokens"][field] = tokens[field].clone();
        }
        write_like_codex(&chaos.env, &before, &new);
    }
}

fn write_like_codex(env: &TestEnv, expected: &[u8], new: &serde_json::Value) {
    let open = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(env.codex_home().join(name))
            .unwrap()
    };
    let outer = open("auth.lock");
    outer.lock_exclusive().unwrap();
    let inner = open("auth.json.lock");
    let deadline = Instant::now() + Duration::from_secs(5);
    while inner.try_lock_exclusive().is_err() {
        assert!(Instant::now() < deadline, "auth.json.lock held for 5 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    if std::fs::read(env.auth_path()).ok().as_deref() == Some(expected) {
        let tmp = env.codex_home().join(".auth-chaos");
        std::fs::write(&tmp, serde_json::to_vec_pretty(new).unwrap()).unwrap();
        std::fs::rename(&tmp, env.auth_path()).unwrap();
    }
    FileExt::unlock(&inner).unwrap();
    FileExt::unlock(&outer).unwrap();
}

/// `POST path` with a JSON body to the forwarder; the status and JSON body.
fn post_json(port: u16, path: &str, body: &serde_json::Value) -> Option<(u16, serde_json::Value)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .ok()?;
    let body = body.to_string();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nuser-agent: codex-like-writer\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.get(9..12)?.parse().ok()?;
    let body = serde_json::from_str(answer.split("\r\n\r\n").nth(1)?).ok()?;
    Some((status, body))
}

fn forwarder_port(env: &TestEnv) -> Option<u16> {
    let mut stream = std::os::unix::net::UnixStream::connect(env.socket_path()).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let body: serde_json::Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1)?).ok()?;
    u16::try_from(body["forwarder"]["port"].as_u64()?).ok()
}

/// Restarts the daemon with SIGTERM at random moments; each must exit 0.
fn daemon_loop(chaos: &Chaos, rng: &mut Rng) {
    while chaos.running() {
        let daemon: Daemon = chaos.env.start_daemon(&[]);
        chaos.counts.daemon_restarts.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(rng.millis(200, 1500));
        let log = daemon.log_path();
        let status = daemon.stop();
        if !status.success() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            chaos.fail(format!("the daemon exited {status:?}:\n{log}"));
        }
        std::thread::sleep(rng.millis(0, 200));
    }
}

#[test]
fn chaos_never_loses_or_forks_the_refresh_lineage() {
    let seconds: u64 = std::env::var("CODEX_BROKER_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_backend(&upstream);
    let main = TestAccount::new("acc-main");
    let fallback = TestAccount::new("acc-fb");
    upstream.add_account(&main);
    upstream.add_account(&fallback);
    env.import_account(&main);
    env.import_other(&fallback);

    let chaos = Arc::new(Chaos {
        env,
        stop: AtomicBool::new(false),
        counts: Counts::default(),
        failures: Mutex::default(),
    });
    let mut threads = Vec::new();
    let mut spawn = |n: u64, actor: fn(&Chaos, &mut Rng)| {
        let chaos = chaos.clone();
        threads.push(std::thread::spawn(move || {
            actor(&chaos, &mut Rng::new(seed.wrapping_mul(n + 1)));
        }));
    };
    spawn(0, daemon_loop);
    for n in 1..=20 {
        spawn(n, token_loop);
    }
    for n in 21..=24 {
        spawn(n, socket_loop);
    }
    spawn(25, codex_loop);
    std::thread::sleep(Duration::from_secs(seconds));
    chaos.stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }

    let env = &chaos.env;
    let store = env.read_store();
    let entries = codex_broker::engine::journal::Journal::new(env.broker_home())
        .entries()
        .unwrap();
    let journal_rotations = entries
        .iter()
        .filter(|e| e.event == codex_broker::engine::journal::Event::Rotated)
        .count();
    // A long run outgrows the bounded journal; its count is then exact only
    // for what it still holds.
    let whole_journal = entries
        .first()
        .is_some_and(|e| e.event == codex_broker::engine::journal::Event::Import);
    let reused = upstream.reused_tokens();
    let report = format!(
        "chaos ({seconds} s, seed {seed}): {} token runs ({} signalled), {} socket requests \
         ({} given up), {} Codex refreshes through the forwarder, {} daemon restarts; issuer \
         rotations {}, journal rotations {journal_rotations}, reuses {}",
        chaos.counts.token_runs.load(Ordering::Relaxed),
        chaos.counts.token_signalled.load(Ordering::Relaxed),
        chaos.counts.socket_requests.load(Ordering::Relaxed),
        chaos.counts.socket_gave_up.load(Ordering::Relaxed),
        chaos.counts.codex_refreshes.load(Ordering::Relaxed),
        chaos.counts.daemon_restarts.load(Ordering::Relaxed),
        upstream.rotations(),
        reused.len(),
    );
    println!("{report}");
    let failures = chaos.failures.lock().unwrap();
    assert!(failures.is_empty(), "{report}\n{}", failures.join("\n"));
    assert!(reused.is_empty(), "{report}: reused {reused:?}");
    for account in store["accounts"].as_array().unwrap() {
        let id = account["id"].as_str().unwrap();
        assert_eq!(account["state"], "ok", "{report}: {account}");
        assert_eq!(
            account["tokens"]["refresh_token"].as_str(),
            upstream.live_refresh_token(id).as_deref(),
            "{report}: the store lost a rotation of {id}"
        );
    }
    if whole_journal {
        assert_eq!(journal_rotations, upstream.rotations(), "{report}");
    } else {
        println!("the journal rotated away its oldest entries; compared what it holds");
        assert!(journal_rotations <= upstream.rotations(), "{report}");
    }
    assert!(upstream.rotations() > 0, "{report}");
}
