//! The refresh engine through `codex-broker token`, against the fake issuer.

use std::process::Stdio;
use std::time::Duration;

use crate::support::fake_upstream::{FakeUpstream, Refresh};
use crate::support::{TestAccount, TestEnv, wait_until};

#[test]
fn a_fresh_token_is_served_without_asking_the_issuer() {
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_issuer(&upstream);
    let account = TestAccount::new("acc-fresh").expiring_in(3600);
    env.import_account(&account);
    assert_eq!(env.ok(&["token"]).trim(), account.access_token());
    let json: serde_json::Value = serde_json::from_str(&env.ok(&["token", "--json"])).unwrap();
    assert_eq!(json["account_id"], "acc-fresh");
    assert_eq!(json["kind"], "chatgpt");
    assert_eq!(json["headers"]["chatgpt-account-id"], "acc-fresh");
    assert_eq!(
        json["headers"]["authorization"],
        format!("Bearer {}", account.access_token())
    );
    assert!(json.get("refresh_token").is_none());
    assert!(upstream.requests().is_empty());
}

#[test]
fn an_expiring_token_is_refreshed_saved_and_published() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-exp").expiring_in(120);
    let env = TestEnv::with_account(&upstream, &account);
    let token = env.ok(&["token"]);
    let refreshes = upstream.requests_to("/oauth/token");
    assert_eq!(refreshes.len(), 1);
    let body = refreshes[0].json();
    assert_eq!(body["grant_type"], "refresh_token");
    assert_eq!(body["client_id"], "app_EMoamEEZ73f0CkXaXp7hrann");
    assert_eq!(body["refresh_token"], "rt-acc-exp-0");
    let stored = env.stored_account("acc-exp");
    assert_eq!(stored["tokens"]["refresh_token"], "rt-acc-exp-1");
    assert_eq!(stored["tokens"]["access_token"], token.trim());
    assert_eq!(env.read_auth()["tokens"]["refresh_token"], "rt-acc-exp-1");
    assert_eq!(env.read_auth()["tokens"]["access_token"], token.trim());
    // Now fresh: no second refresh.
    assert_eq!(env.ok(&["token"]), token);
    assert_eq!(upstream.requests_to("/oauth/token").len(), 1);
}

#[test]
fn fifty_concurrent_token_processes_right_after_an_import_cause_one_refresh() {
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_issuer(&upstream);
    // Written in the same second as the refresh that follows.
    let mut account = TestAccount::new("acc-busy").expiring_in(60);
    account.refreshed_at = crate::support::now();
    upstream.add_account(&account);
    env.import_account(&account);
    let children: Vec<_> = (0..50)
        .map(|_| {
            env.std_cmd()
                .arg("token")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for out in &outputs {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        upstream.requests_to("/oauth/token").len(),
        1,
        "exactly one refresh"
    );
    assert!(upstream.reused_tokens().is_empty());
    let first = &outputs[0].stdout;
    assert!(
        outputs.iter().all(|o| &o.stdout == first),
        "all got the same token"
    );
    assert_eq!(
        env.stored_account("acc-busy")["tokens"]["refresh_token"],
        "rt-acc-busy-1"
    );
}

#[test]
fn tokens_codex_wrote_meanwhile_are_adopted_not_refreshed_again() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-race").expiring_in(60);
    let env = TestEnv::with_account(&upstream, &account);
    // Codex refreshes on its own (spending rt-acc-race-0) and rewrites auth.json.
    let mut by_codex = account.clone();
    by_codex.refresh_token = "rt-acc-race-1".into();
    by_codex.expires_at = crate::support::now() + 3600;
    by_codex.refreshed_at += 1;
    let spent_by_codex = upstream.spend_as_codex(&account);
    assert_eq!(spent_by_codex, by_codex.refresh_token);
    env.write_codex_auth(&by_codex);

    let token = env.ok(&["token"]);
    assert_eq!(token.trim(), by_codex.access_token());
    assert_eq!(
        upstream.requests_to("/oauth/token").len(),
        1,
        "only Codex's own refresh"
    );
    assert!(
        upstream.reused_tokens().is_empty(),
        "no spent token was sent"
    );
    assert_eq!(
        env.stored_account("acc-race")["tokens"]["refresh_token"],
        "rt-acc-race-1"
    );
}

#[test]
fn permanent_errors_mark_needs_login_and_keep_the_tokens() {
    let cases = [
        Refresh::error(401, "refresh_token_expired"),
        Refresh::error(401, "refresh_token_reused"),
        Refresh::error(401, "refresh_token_invalidated"),
        Refresh::Fail(401, serde_json::json!({"detail": "unauthorized"})),
        Refresh::Fail(400, serde_json::json!({"error": "invalid_grant"})),
    ];
    for case in cases {
        let upstream = FakeUpstream::start();
        let env = TestEnv::with_issuer(&upstream);
        let account = TestAccount::new("acc-dead").expiring_in(60);
        env.import_account(&account);
        upstream.set_refresh(case.clone());
        let out = env.run(&["token"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{case:?}: {stderr}");
        assert!(stderr.contains("needs a new login"), "{stderr}");
        assert!(stderr.contains("run: codex-broker login"), "{stderr}");
        let stored = env.stored_account("acc-dead");
        assert_eq!(stored["state"], "needs_login", "{case:?}");
        assert_eq!(
            stored["tokens"]["refresh_token"], "rt-acc-dead-0",
            "tokens are kept"
        );
        assert!(env.auth_path().exists());
        // No second attempt: the account waits for a login.
        let again = env.run(&["token", "--account", "acc-dead"]);
        assert_eq!(again.status.code(), Some(3));
        assert_eq!(upstream.requests_to("/oauth/token").len(), 1);
        let status = env.ok(&["status"]);
        assert!(status.contains("needs_login"), "{status}");
    }
}

#[test]
fn server_errors_back_off_and_serve_the_old_token_while_valid() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-flaky").expiring_in(120);
    let env = TestEnv::with_account(&upstream, &account);
    for failure in [Refresh::error(500, "server_error"), Refresh::Drop] {
        upstream.set_refresh(failure);
        let token = env.ok(&["token"]);
        assert_eq!(
            token.trim(),
            account.access_token(),
            "the old token is still valid"
        );
        let stored = env.stored_account("acc-flaky");
        assert_eq!(stored["state"], "refresh_backoff");
        assert!(stored["backoff_until"].as_i64().unwrap() > crate::support::now());
        // During the backoff nothing is sent.
        let sent = upstream.requests_to("/oauth/token").len();
        env.ok(&["token"]);
        assert_eq!(upstream.requests_to("/oauth/token").len(), sent);
        // The backoff ends (as if time passed) and the issuer recovers.
        let mut store = env.read_store();
        store["accounts"][0]["backoff_until"] = serde_json::json!(0);
        std::fs::write(env.store_path(), store.to_string()).unwrap();
    }
    upstream.set_refresh(Refresh::Rotate);
    let token = env.ok(&["token"]);
    assert_ne!(token.trim(), account.access_token());
    let stored = env.stored_account("acc-flaky");
    assert_eq!(stored["state"], "ok");
    assert!(stored.get("backoff_until").is_none());
    assert!(stored.get("refresh_failures").is_none());
}

#[test]
fn an_expired_token_with_a_failing_issuer_is_an_error_not_a_login() {
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_issuer(&upstream);
    let account = TestAccount::new("acc-down").expiring_in(-10);
    env.import_account(&account);
    upstream.set_refresh(Refresh::error(503, "unavailable"));
    let out = env.run(&["token"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refreshing it fails"), "{stderr}");
    assert!(stderr.contains("HTTP 503"), "{stderr}");
    assert_eq!(env.stored_account("acc-down")["state"], "refresh_backoff");
}

/// A `token` process killed after the issuer rotated the refresh token but
/// before the answer reached it: the store still holds the spent token. The
/// next run serves the old access token while it is valid; a refresh after
/// that is answered `refresh_token_reused`, and the account needs a login.
#[test]
fn sigkill_after_the_issuer_rotated_is_recoverable_only_by_login() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-killed").expiring_in(900);
    let env = TestEnv::with_account(&upstream, &account);
    upstream.set_refresh(Refresh::RotateThenDelay(Duration::from_secs(30)));
    let mut child = env
        .std_cmd()
        .args(["token", "--min-ttl", "3600"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(upstream.wait_for_requests("/oauth/token", 1, Duration::from_secs(20)));
    child.kill().unwrap();
    child.wait().unwrap();
    upstream.set_refresh(Refresh::Rotate);

    assert_eq!(
        env.stored_account("acc-killed")["tokens"]["refresh_token"],
        "rt-acc-killed-0"
    );
    assert_eq!(
        env.ok(&["token"]).trim(),
        account.access_token(),
        "still valid: served"
    );
    let out = env.run(&["token", "--min-ttl", "3600"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(upstream.reused_tokens(), ["rt-acc-killed-0"]);
    assert_eq!(env.stored_account("acc-killed")["state"], "needs_login");
}

#[test]
fn routing_skips_dead_accounts_and_exit_3_when_none_is_left() {
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_issuer(&upstream);
    let main = TestAccount::new("acc-main").expiring_in(60);
    let fallback = TestAccount::new("acc-fallback").expiring_in(3600);
    env.import_account(&main);
    env.import_other(&fallback);
    upstream.set_refresh(Refresh::error(401, "refresh_token_reused"));
    assert_eq!(env.ok(&["token"]).trim(), fallback.access_token());
    let mut store = env.read_store();
    store["accounts"][1]["state"] = serde_json::json!("needs_login");
    std::fs::write(env.store_path(), store.to_string()).unwrap();
    let out = env.run(&["token"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no usable account"), "{stderr}");
    assert!(stderr.contains("run: codex-broker login"), "{stderr}");
}

/// Timeouts, with the engine's clock under the test's control.
#[test]
fn timeouts_back_off_with_growing_delays_and_recover() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    use codex_broker::base::paths::{Overrides, Paths};
    use codex_broker::engine::refresh::{Asker, RefreshError, Refresher};
    use codex_broker::oauth::OAuthClient;

    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-slow").expiring_in(120);
    let env = TestEnv::with_account(&upstream, &account);
    let paths = Paths::resolve(Overrides {
        home: Some(env.broker_home()),
        codex_home: Some(env.codex_home()),
        socket: None,
    })
    .unwrap();
    let now = Arc::new(AtomicI64::new(crate::support::now()));
    let clock = {
        let now = now.clone();
        Arc::new(move || {
            time::OffsetDateTime::from_unix_timestamp(now.load(Ordering::SeqCst)).unwrap()
        })
    };
    let oauth = OAuthClient::with_timeout(&upstream.url(), Duration::from_millis(300));
    let engine = Refresher::with_parts(&paths, oauth, clock);
    let by = Asker::command("test");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    upstream.set_refresh(Refresh::Hang(Duration::from_secs(5)));

    let mut last_delay = 0;
    for attempt in 1..=3 {
        let served = runtime
            .block_on(engine.fresh("acc-slow", 300, &by))
            .unwrap();
        assert_eq!(
            served.tokens.unwrap().access_token.expose(),
            &account.access_token()
        );
        let stored = env.stored_account("acc-slow");
        assert_eq!(stored["refresh_failures"], attempt);
        assert!(
            stored["state_reason"]
                .as_str()
                .unwrap()
                .contains("timed out")
        );
        let delay = stored["backoff_until"].as_i64().unwrap() - now.load(Ordering::SeqCst);
        assert!(
            delay >= 15 << (attempt - 1) >> 1,
            "attempt {attempt}: {delay}"
        );
        assert!(delay > last_delay / 2 && delay <= 15 << (attempt - 1));
        last_delay = delay;
        // Within the backoff nothing is sent.
        let sent = upstream.requests_to("/oauth/token").len();
        runtime
            .block_on(engine.fresh("acc-slow", 300, &by))
            .unwrap();
        assert_eq!(upstream.requests_to("/oauth/token").len(), sent);
        now.fetch_add(delay, Ordering::SeqCst);
    }
    // Past expiry and still failing: an error, never a login problem.
    now.fetch_add(600, Ordering::SeqCst);
    let err = runtime
        .block_on(engine.fresh("acc-slow", 300, &by))
        .unwrap_err();
    assert!(matches!(err, RefreshError::Backoff { .. }), "{err}");
    now.fetch_add(3600, Ordering::SeqCst);
    upstream.set_refresh(Refresh::Rotate);
    let refreshed = runtime
        .block_on(engine.fresh("acc-slow", 300, &by))
        .unwrap();
    assert_eq!(refreshed.state, codex_broker::engine::store::State::Ok);
    assert_eq!(
        refreshed.tokens.unwrap().refresh_token.expose(),
        "rt-acc-slow-1"
    );
}

/// The issuer rotates the refresh token and the answer is lost on the way.
/// The access token is good for hours: it is served, nothing more is sent
/// while it has time left (not even when asked to force a refresh), and
/// every view says so; only near its expiry is the refresh tried again.
#[test]
fn a_lost_refresh_answer_is_not_retried_while_the_token_is_good() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-lost").expiring_in(6 * 3600);
    let env = TestEnv::with_account(&upstream, &account);
    upstream.set_refresh(Refresh::RotateThenDrop);
    let day = (24 * 3600).to_string();
    let served = env.ok(&["token", "--min-ttl", &day]);
    assert_eq!(served.trim(), account.access_token());
    assert_eq!(upstream.rotations(), 1, "the issuer rotated on receipt");
    let stored = env.stored_account("acc-lost");
    assert_eq!(stored["state"], "refresh_interrupted");
    let reason = stored["state_reason"].as_str().unwrap();
    assert!(reason.contains("answer was lost"), "{reason}");
    assert!(reason.contains("log in again before"), "{reason}");
    let retry_at = stored["backoff_until"].as_i64().unwrap();
    let exp = stored["expires_at"].as_i64().unwrap();
    assert_eq!(retry_at, exp - 300, "tried again only near expiry");

    upstream.set_refresh(Refresh::Rotate);
    for args in [&["token", "--min-ttl", &day][..], &["token"]] {
        assert_eq!(env.ok(args).trim(), account.access_token());
    }
    assert_eq!(
        upstream.requests_to("/oauth/token").len(),
        1,
        "nothing more sent"
    );
    let status = env.ok(&["status"]);
    assert!(status.contains("refresh_interrupted"), "{status}");
    let history = env.ok(&["history"]);
    assert!(history.contains("refresh interrupted"), "{history}");
    let journal = env.ok(&["history", "--json"]);
    assert!(journal.contains("\"refresh_interrupted\""), "{journal}");
    let daemon = env.start_daemon(&[]);
    let health = daemon.get("/v1/health");
    let said: Vec<_> = health["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["code"] == "refresh_interrupted")
        .collect();
    assert_eq!(said.len(), 1, "{health}");
    assert!(said[0]["message"].as_str().unwrap().contains("acc-lost"));
    daemon.stop();
    assert_eq!(
        upstream.requests_to("/oauth/token").len(),
        1,
        "the daemon waits too"
    );

    // Near expiry the one more try finds the token spent: a login is due.
    let mut store = env.read_store();
    store["accounts"][0]["backoff_until"] = serde_json::json!(0);
    std::fs::write(env.store_path(), store.to_string()).unwrap();
    let out = env.run(&["token", "--min-ttl", &day]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(upstream.reused_tokens(), ["rt-acc-lost-0"]);
    assert_eq!(upstream.requests_to("/oauth/token").len(), 2);
}

/// A 408 or 429 from the token endpoint is an answer: the token was not
/// spent, and the refresh backs off as for any passing failure.
#[test]
fn a_408_or_429_from_the_issuer_stays_transient() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-busy").expiring_in(6 * 3600);
    let env = TestEnv::with_account(&upstream, &account);
    for status in [408, 429] {
        upstream.set_refresh(Refresh::error(status, "slow_down"));
        env.ok(&["token", "--min-ttl", "86400"]);
        assert_eq!(env.stored_account("acc-busy")["state"], "refresh_backoff");
        let mut store = env.read_store();
        store["accounts"][0]["backoff_until"] = serde_json::json!(0);
        std::fs::write(env.store_path(), store.to_string()).unwrap();
    }
}

/// A refresh whose files are slow (here: the journal's lock, held by
/// another process) waits for them off the runtime's threads: a
/// one-thread runtime goes on with other work meanwhile.
#[test]
fn a_refresh_waiting_on_its_files_leaves_the_runtime_free() {
    use codex_broker::base::paths::{Overrides, Paths};
    use codex_broker::engine::refresh::{Asker, Refresher, system_clock};
    use codex_broker::oauth::OAuthClient;
    use fs2::FileExt;

    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-files").expiring_in(60);
    let env = TestEnv::with_account(&upstream, &account);
    let paths = Paths::resolve(Overrides {
        home: Some(env.broker_home()),
        codex_home: Some(env.codex_home()),
        socket: None,
    })
    .unwrap();
    let engine = Refresher::with_parts(&paths, OAuthClient::new(&upstream.url()), system_clock());
    let lock = std::fs::File::create(env.broker_home().join("journal.lock")).unwrap();
    lock.lock_exclusive().unwrap();

    let inode = std::os::unix::fs::MetadataExt::ino(&lock.metadata().unwrap());
    let (go, go_seen) = tokio::sync::oneshot::channel::<()>();
    let (other_ran, ran) = std::sync::mpsc::channel();
    let refreshing = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let by = Asker::command("test");
            let refresh = engine.fresh("acc-files", 300, &by);
            let other = async {
                go_seen.await.unwrap();
                other_ran.send(()).unwrap();
            };
            tokio::join!(refresh, other).0
        })
    });
    // The refresh waits for the journal's lock (a waiter in /proc/locks);
    // then other work of the runtime must still get its turn.
    let waiting = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string("/proc/locks").is_ok_and(|locks| {
            locks
                .lines()
                .any(|l| l.contains("->") && l.contains(&format!(":{inode} ")))
        })
    });
    assert!(
        waiting.is_some(),
        "the refresh never waited for the journal's lock"
    );
    go.send(()).unwrap();
    let free = ran.recv_timeout(Duration::from_secs(20));
    lock.unlock().unwrap();
    let refreshed = refreshing.join().unwrap().unwrap();
    assert!(
        free.is_ok(),
        "the runtime's one thread waited on the journal's lock"
    );
    assert_ne!(
        refreshed.tokens.unwrap().access_token.expose(),
        &account.access_token()
    );
    assert_eq!(upstream.requests_to("/oauth/token").len(), 1);
}
