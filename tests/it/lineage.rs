//! The refresh lineage is never lost or forked: a refresh that was sent is
//! saved whatever happens to whoever asked, and a token the store retired
//! is never taken back.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::fake_upstream::{FakeUpstream, Refresh};
use crate::support::{Daemon, TestAccount, TestEnv, now, wait_until};

/// A `--min-ttl` longer than any token lives: the token is refreshed.
const FORCE: &str = "4000000";
/// How long the fake issuer sits on a refresh it has already rotated.
const LATE: Duration = Duration::from_secs(2);

fn stored_refresh_token(env: &TestEnv, id: &str) -> String {
    env.stored_account(id)["tokens"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The store holds the issuer's newest refresh token of `id`, and a forced
/// refresh succeeds without presenting a spent token.
fn assert_lineage_intact(env: &TestEnv, upstream: &FakeUpstream, id: &str) {
    let live = upstream.live_refresh_token(id).unwrap();
    assert_eq!(
        stored_refresh_token(env, id),
        live,
        "the store lost a rotation"
    );
    upstream.set_refresh(Refresh::Rotate);
    env.ok(&["token", "--account", id, "--min-ttl", FORCE]);
    assert!(
        upstream.reused_tokens().is_empty(),
        "reused: {:?}",
        upstream.reused_tokens()
    );
    assert_eq!(
        stored_refresh_token(env, id),
        upstream.live_refresh_token(id).unwrap()
    );
    assert_eq!(env.stored_account(id)["state"], "ok");
}

/// Waits until the store holds `token` as `id`'s refresh token.
fn wait_for_stored(env: &TestEnv, id: &str, token: &str) {
    let saved = wait_until(Duration::from_secs(10), || {
        std::fs::read(env.store_path())
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|s| {
                s["accounts"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|a| a["id"] == id && a["tokens"]["refresh_token"] == token)
                })
            })
    });
    assert!(saved.is_some(), "{token} never reached the store");
}

/// An account whose token is good for an hour, imported, known to the
/// issuer: nothing refreshes it unless asked to.
fn imported(upstream: &FakeUpstream, id: &str) -> (TestEnv, TestAccount) {
    let env = TestEnv::with_backend(upstream);
    let account = TestAccount::new(id);
    upstream.add_account(&account);
    env.import_account(&account);
    (env, account)
}

/// Asks the daemon for a forced refresh and hangs up after half a second,
/// as a proxy with a short timeout does.
fn impatient_socket_client(daemon: &Daemon) {
    let mut stream = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    stream
        .write_all(format!("GET /v1/token?min_ttl={FORCE} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(stream.read(&mut buf).is_err(), "the refresh answered early");
}

fn signal(child: &Child, signal: Signal) {
    kill(Pid::from_raw(child.id() as i32), signal).unwrap();
}

#[test]
fn a_socket_client_that_times_out_does_not_lose_the_rotation() {
    let upstream = FakeUpstream::start();
    let (env, account) = imported(&upstream, "acc-sock");
    let daemon = env.start_daemon(&[]);
    upstream.set_refresh(Refresh::RotateThenDelay(LATE));
    impatient_socket_client(&daemon);
    wait_for_stored(&env, &account.id, "rt-acc-sock-1");
    let published = wait_until(Duration::from_secs(5), || {
        env.read_auth()["tokens"]["refresh_token"] == "rt-acc-sock-1"
    });
    assert!(published.is_some(), "{}", daemon.log());
    assert_lineage_intact(&env, &upstream, &account.id);
    drop(daemon);
}

#[test]
fn a_forwarder_client_that_disconnects_mid_refresh_does_not_lose_the_rotation() {
    let upstream = FakeUpstream::start();
    let (env, account) = imported(&upstream, "acc-fwd");
    let daemon = env.start_daemon(&[]);
    upstream.set_refresh(Refresh::RotateThenDelay(LATE));
    let forwarder = daemon.forwarder();
    let body = serde_json::json!({"client_id": "app_EMoamEEZ73f0CkXaXp7hrann",
        "grant_type": "refresh_token", "refresh_token": account.refresh_token})
    .to_string();
    let mut stream = std::net::TcpStream::connect(forwarder.trim_start_matches("http://")).unwrap();
    write!(
        stream,
        "POST /oauth/token HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         user-agent: codex_cli_rs/0.169.0\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    assert!(upstream.wait_for_requests("/oauth/token", 1, Duration::from_secs(10)));
    drop(stream);
    wait_for_stored(&env, &account.id, "rt-acc-fwd-1");
    let history = env.ok(&["history", "acc-fwd"]);
    assert!(
        history.contains("forwarder client (codex_cli_rs/0.169.0)"),
        "{history}"
    );
    assert_lineage_intact(&env, &upstream, &account.id);
    drop(daemon);
}

/// `token` stopped by `sig` while its refresh is at the issuer finishes
/// and saves that refresh, then exits 128 + the signal's number.
fn token_interrupted_by(sig: Signal, code: i32) {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-sig").expiring_in(120);
    let env = TestEnv::with_account(&upstream, &account);
    upstream.set_refresh(Refresh::RotateThenDelay(LATE));
    let child = env
        .std_cmd()
        .arg("token")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(upstream.wait_for_requests("/oauth/token", 1, Duration::from_secs(10)));
    signal(&child, sig);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{:?}: {stderr}", out.status);
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(stored_refresh_token(&env, "acc-sig"), "rt-acc-sig-1");
    assert_eq!(env.read_auth()["tokens"]["refresh_token"], "rt-acc-sig-1");
    assert_lineage_intact(&env, &upstream, "acc-sig");
}

#[test]
fn sigint_of_token_mid_refresh_saves_the_rotation_then_exits_130() {
    token_interrupted_by(Signal::SIGINT, 130);
}

#[test]
fn sigterm_of_token_mid_refresh_saves_the_rotation_then_exits_143() {
    token_interrupted_by(Signal::SIGTERM, 143);
}

#[test]
fn sigterm_of_the_daemon_mid_refresh_saves_the_rotation() {
    let upstream = FakeUpstream::start();
    let (env, account) = imported(&upstream, "acc-stop");
    let daemon = env.start_daemon(&[]);
    upstream.set_refresh(Refresh::RotateThenDelay(LATE));
    impatient_socket_client(&daemon);
    let log = daemon.log_path();
    let status = daemon.stop();
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("finishing the refresh in flight"), "{log}");
    assert_eq!(stored_refresh_token(&env, &account.id), "rt-acc-stop-1");
    assert_lineage_intact(&env, &upstream, &account.id);
}

#[test]
fn sigkill_mid_refresh_is_reported_as_an_interrupted_refresh() {
    let upstream = FakeUpstream::start();
    let mut env = TestEnv::with_issuer(&upstream);
    // The daemon started below must not refresh on its own.
    env.vars
        .push(("CODEX_BROKER_REFRESH_AHEAD".into(), "60".into()));
    let account = TestAccount::new("acc-kill").expiring_in(600);
    upstream.add_account(&account);
    env.import_account(&account);
    upstream.set_refresh(Refresh::RotateThenDelay(LATE));
    let mut child = env
        .std_cmd()
        .args(["token", "--min-ttl", "900"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(upstream.wait_for_requests("/oauth/token", 1, Duration::from_secs(10)));
    let pid = child.id();
    signal(&child, Signal::SIGKILL);
    assert_eq!(child.wait().unwrap().signal(), Some(9));

    let status = env.ok(&["status"]);
    let expected = format!("a refresh of acc-kill by pid {pid} (command `token`) was interrupted");
    assert!(status.contains(&expected), "{status}");
    let json: serde_json::Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
    assert_eq!(json["daemon"]["problems"][0]["code"], "refresh_interrupted");
    let history = env.ok(&["history"]);
    assert!(
        history.contains("[interrupted: no answer recorded]"),
        "{history}"
    );
    {
        let daemon = env.start_daemon(&["--no-forward"]);
        let health = daemon.get("/v1/health");
        assert_eq!(
            health["problems"][0]["code"], "refresh_interrupted",
            "{health}"
        );
        assert!(
            health["problems"][0]["message"]
                .as_str()
                .unwrap()
                .contains(&expected)
        );
    }
    // The issuer had rotated: the next refresh finds the token spent, and
    // the journal ties that to the interruption.
    upstream.set_refresh(Refresh::Rotate);
    let out = env.run(&["token", "--min-ttl", FORCE]);
    assert_eq!(out.status.code(), Some(3), "{}", env.render(&out));
    let json: serde_json::Value = serde_json::from_str(&env.ok(&["history", "--json"])).unwrap();
    let rejected = json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "rejected")
        .unwrap();
    assert_eq!(rejected["code"], "refresh_token_reused");
    assert_eq!(
        rejected["after_interrupted"].as_array().unwrap().len(),
        1,
        "{json:#}"
    );
    assert!(json["interrupted"].as_array().unwrap().is_empty(), "{json}");
}

#[test]
fn an_auth_json_of_the_same_second_never_brings_back_a_spent_token() {
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_issuer(&upstream);
    let mut account = TestAccount::new("acc-same").expiring_in(120);
    account.refreshed_at = now();
    upstream.add_account(&account);
    env.import_account(&account);
    env.ok(&["token", "--min-ttl", "600"]);
    assert_eq!(stored_refresh_token(&env, "acc-same"), "rt-acc-same-1");
    assert_eq!(env.read_auth()["tokens"]["refresh_token"], "rt-acc-same-1");
    let retired = &env.stored_account("acc-same")["retired_refresh_tokens"];
    assert_eq!(retired.as_array().unwrap().len(), 1);
    assert_lineage_intact(&env, &upstream, "acc-same");
}

#[test]
fn a_file_holding_a_retired_token_is_never_adopted() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-old").expiring_in(120);
    let env = TestEnv::with_account(&upstream, &account);
    env.ok(&["token"]);
    assert_eq!(stored_refresh_token(&env, "acc-old"), "rt-acc-old-1");
    // A backup of the old file comes back, claiming to be the newest
    // there is: refreshed in the future, valid for a day.
    let mut old = account.clone();
    old.refreshed_at = now() + 3600;
    old.expires_at = now() + 86_400;
    env.write_codex_auth(&old);
    let out = env.ok(&["import"]);
    assert!(out.contains("up to date"), "{out}");
    assert_eq!(stored_refresh_token(&env, "acc-old"), "rt-acc-old-1");
    // Any other way in: a command that publishes replaces the file instead.
    env.ok(&["accounts", "switch", "acc-old"]);
    assert_eq!(env.read_auth()["tokens"]["refresh_token"], "rt-acc-old-1");
    // The daemon's watcher, too.
    env.write_codex_auth(&old);
    let daemon = env.start_daemon(&["--no-forward"]);
    let republished = wait_until(Duration::from_secs(5), || {
        env.read_auth()["tokens"]["refresh_token"] == "rt-acc-old-1"
    });
    assert!(republished.is_some(), "{}", daemon.log());
    drop(daemon);
    assert_lineage_intact(&env, &upstream, "acc-old");
}

#[test]
fn a_file_from_the_future_with_older_tokens_is_not_adopted() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-future");
    let env = TestEnv::with_account(&upstream, &account);
    // Tokens of an unrelated, older sign-in, in a file that says it was
    // refreshed tomorrow.
    let mut stale = TestAccount::new("acc-future");
    stale.refresh_token = "rt-acc-future-unrelated".into();
    stale.expires_at = account.expires_at - 600;
    stale.refreshed_at = account.refreshed_at - 600;
    let path = env.dir.path().join("stale.json");
    let mut text: serde_json::Value = serde_json::from_str(&stale.auth_json()).unwrap();
    text["last_refresh"] = "2099-01-01T00:00:00Z".into();
    std::fs::write(&path, text.to_string()).unwrap();
    let out = env.ok(&["import", path.to_str().unwrap()]);
    assert!(out.contains("up to date"), "{out}");
    assert_eq!(
        stored_refresh_token(&env, "acc-future"),
        account.refresh_token
    );
    // A newer sign-in (issued later) does replace the tokens.
    let mut newer = TestAccount::new("acc-future");
    newer.refresh_token = "rt-acc-future-relogin".into();
    newer.refreshed_at = now();
    std::fs::write(&path, newer.auth_json()).unwrap();
    let out = env.ok(&["import", path.to_str().unwrap()]);
    assert!(out.contains("Updated"), "{out}");
    assert_eq!(
        stored_refresh_token(&env, "acc-future"),
        "rt-acc-future-relogin"
    );
    let store_last_refresh = env.stored_account("acc-future")["last_refresh"].clone();
    assert!(
        store_last_refresh.as_str().unwrap() < "2099",
        "{store_last_refresh}"
    );
}

#[test]
fn history_tells_who_spent_each_refresh_token() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-hist").expiring_in(120);
    let env = TestEnv::with_account(&upstream, &account);
    env.ok(&["token"]);
    let history = env.ok(&["history", "acc-hist"]);
    let lines: Vec<&str> = history.lines().collect();
    assert!(lines[0].starts_with("TIME"), "{history}");
    assert!(lines[1].contains("import"), "{history}");
    assert!(lines[2].contains("refresh sent"), "{history}");
    assert!(lines[3].contains("rotated"), "{history}");
    assert!(lines[3].contains("command `token`"), "{history}");
    let json: serde_json::Value = serde_json::from_str(&env.ok(&["history", "--json"])).unwrap();
    let entries = json["entries"].as_array().unwrap();
    let rotated = &entries[2];
    assert_eq!(rotated["event"], "rotated");
    assert_eq!(rotated["flight"], entries[1]["flight"]);
    let print = |t: &str| codex_broker::engine::journal::short_fingerprint(t);
    assert_eq!(rotated["spent"], print("rt-acc-hist-0"));
    assert_eq!(rotated["new"], print("rt-acc-hist-1"));
    let journal = std::fs::read_to_string(env.broker_home().join("journal.jsonl")).unwrap();
    assert!(!journal.contains("rt-acc-hist"), "{journal}");
    let out = env.run(&["history", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
}

/// A small tmpfs mounted over a directory, unmounted when dropped.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    /// `None` where this user may not mount (not root, no CAP_SYS_ADMIN).
    fn mount(dir: &std::path::Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| SmallDisk {
            dir: dir.to_owned(),
        })
    }

    /// Fills the disk to the last byte.
    fn fill(&self) {
        let mut filler = std::fs::File::create(self.dir.join("filler")).unwrap();
        let block = vec![0u8; 4096];
        while filler.write_all(&block).is_ok() {}
        while filler.write_all(&block[..1]).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.dir.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

#[test]
fn a_rotation_the_full_disk_cannot_take_is_served_and_saved_once_there_is_room() {
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_backend(&upstream);
    let Some(disk) = SmallDisk::mount(&env.broker_home(), "1m") else {
        crate::support::skip("this user cannot mount a tmpfs (needs root)");
        return;
    };
    let account = TestAccount::new("acc-full");
    upstream.add_account(&account);
    env.import_account(&account);
    let (hook, notices) = crate::notify::webhook();
    env.write_config(&format!(
        "[notify]\ndesktop = false\nwebhook = \"{hook}\"\n"
    ));
    let told = |event: &str| {
        wait_until(Duration::from_secs(20), || {
            notices.lock().unwrap().iter().any(|n| n["event"] == event)
        })
        .is_some()
    };
    let daemon = env.start_daemon(&[]);
    upstream.set_refresh(Refresh::RotateThenDelay(LATE));
    let asked = std::thread::spawn({
        let socket = daemon.socket.clone();
        move || {
            let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
            write!(
                stream,
                "GET /v1/token?min_ttl={FORCE} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
            )
            .unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        }
    });
    assert!(upstream.wait_for_requests("/oauth/token", 1, Duration::from_secs(10)));
    disk.fill();
    let answer = asked.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Served, and published to auth.json (another disk), but not saved.
    let body: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(env.read_auth()["tokens"]["refresh_token"], "rt-acc-full-1");
    assert_eq!(
        env.read_auth()["tokens"]["access_token"],
        body["access_token"]
    );
    assert_eq!(stored_refresh_token(&env, "acc-full"), "rt-acc-full-0");
    let health = daemon.get("/v1/health");
    let problem = health["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["code"] == "rotation_unsaved")
        .unwrap_or_else(|| panic!("{health}"));
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{problem}"
    );
    let status = env.ok(&["status"]);
    assert!(status.contains("cannot be saved"), "{status}");
    assert!(told("rotation_unsaved"), "{:?}", notices.lock().unwrap());
    // The daemon keeps serving the new token from memory.
    let served = daemon.get("/v1/token");
    assert_eq!(served["access_token"], body["access_token"]);

    disk.free();
    wait_for_stored(&env, "acc-full", "rt-acc-full-1");
    let cleared = wait_until(Duration::from_secs(5), || {
        !daemon.get("/v1/health")["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["code"] == "rotation_unsaved")
    });
    assert!(cleared.is_some(), "{}", daemon.log());
    assert!(told("recovered"), "{:?}", notices.lock().unwrap());
    let history = env.ok(&["history"]);
    assert!(history.contains("rotated"), "{history}");
    assert_lineage_intact(&env, &upstream, "acc-full");
    drop(daemon);
}
