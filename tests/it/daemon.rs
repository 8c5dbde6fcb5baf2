//! The daemon: lifecycle, the Codex-home watcher, scheduled refresh and the
//! socket API, run as users run it.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use crate::support::fake_upstream::FakeUpstream;
use crate::support::{TestAccount, TestEnv, wait_until};

/// A raw exchange on the socket: writes `request` (in parts, pausing
/// `pause` between them) and reads until the daemon closes or answers.
fn raw(socket: &std::path::Path, parts: &[&[u8]], pause: Duration) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(pause);
        }
        if s.write_all(part).is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn lifecycle_ready_single_instance_and_sigterm() {
    let env = TestEnv::new();
    let daemon = env.start_daemon(&[]);
    let health = daemon.get("/v1/health");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["accounts"], 0);
    assert_eq!(health["published"], serde_json::Value::Null);
    assert_eq!(health["pid"], daemon.pid());
    assert!(daemon.log().contains("no accounts yet"), "{}", daemon.log());

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&daemon.socket), 0o600);
    assert_eq!(mode(daemon.socket.parent().unwrap()), 0o700);

    let second = env.run(&["serve"]);
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("already running") && stderr.contains(&daemon.pid().to_string()),
        "{stderr}"
    );

    let status = env.ok(&["status"]);
    assert!(
        status.contains(&format!("running (pid {}", daemon.pid())),
        "{status}"
    );
    assert!(
        status.contains(&format!("forwarder {}", daemon.forwarder())),
        "{status}"
    );
    // A command for another broker home does not use this daemon.
    let other = env.dir.path().join("other-home");
    let out = env.run(&[
        "--home",
        other.to_str().unwrap(),
        "--socket",
        daemon.socket.to_str().unwrap(),
        "status",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not running"),
        "{}",
        env.render(&out)
    );

    let socket = daemon.socket.clone();
    let exit = daemon.stop();
    assert_eq!(exit.code(), Some(0));
    assert!(!socket.exists(), "the socket is removed at exit");
    assert!(env.ok(&["status"]).contains("not running"));
}

#[test]
fn refuses_a_socket_directory_writable_by_others() {
    let env = TestEnv::new();
    let dir = env.dir.path().join("shared");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = dir.join("broker.sock");
    let out = env.run(&["serve", "--socket", socket.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", env.render(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("writable by others"), "{stderr}");
    assert!(!socket.exists());
}

#[test]
fn a_codex_login_is_adopted_within_a_second() {
    let env = TestEnv::new();
    let first = TestAccount::new("acc-first");
    env.import_account(&first);
    let daemon = env.start_daemon(&[]);

    // `codex login` as a new account: Codex writes a temp file and renames
    // it over auth.json.
    let second = TestAccount::new("acc-second");
    let tmp = env.codex_home().join(".auth-login");
    std::fs::write(&tmp, second.auth_json()).unwrap();
    std::fs::rename(&tmp, env.auth_path()).unwrap();
    let took = wait_until(Duration::from_secs(5), || {
        env.read_store()["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "acc-second")
    })
    .unwrap_or_else(|| panic!("not adopted:\n{}", daemon.log()));
    assert!(took < Duration::from_secs(1), "adopted after {took:?}");
    assert_eq!(env.read_store()["published"], "acc-second");
    assert_eq!(daemon.get("/v1/health")["accounts"], 2);

    // The same account again with newer tokens.
    let mut newer = second.clone();
    newer.refresh_token = "rt-acc-second-7".into();
    newer.refreshed_at += 60;
    std::fs::write(&tmp, newer.auth_json()).unwrap();
    std::fs::rename(&tmp, env.auth_path()).unwrap();
    let took = wait_until(Duration::from_secs(5), || {
        env.read_store()["accounts"][1]["tokens"]["refresh_token"] == "rt-acc-second-7"
    })
    .unwrap_or_else(|| panic!("not adopted:\n{}", daemon.log()));
    assert!(took < Duration::from_secs(1), "adopted after {took:?}");
    assert_eq!(
        env.read_auth(),
        serde_json::from_str::<serde_json::Value>(&newer.auth_json()).unwrap()
    );
}

#[test]
fn own_refresh_is_not_taken_for_a_codex_login_and_deletion_is_respected() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-own");
    let env = TestEnv::with_account(&upstream, &account);
    let daemon = env.start_daemon(&[]);

    // A refresh by the daemon rewrites auth.json; the watcher sees its own
    // write and leaves it alone.
    let token = daemon.get("/v1/token?min_ttl=86400");
    assert_eq!(upstream.requests_to("/oauth/token").len(), 1);
    assert_eq!(
        env.read_auth()["tokens"]["access_token"],
        token["access_token"]
    );
    let store_before = std::fs::read(env.store_path()).unwrap();
    // A later event (from an unrelated file) flushes the watcher's queue.
    std::fs::write(env.codex_home().join("config.toml"), "").unwrap();
    assert!(
        daemon.get("/v1/health")["problems"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(!daemon.log().contains("adopted"), "{}", daemon.log());
    assert_eq!(std::fs::read(env.store_path()).unwrap(), store_before);

    // `codex logout` deletes auth.json: it stays deleted, also after the
    // next refresh.
    std::fs::remove_file(env.auth_path()).unwrap();
    wait_until(Duration::from_secs(5), || {
        env.read_store()["published"].is_null()
    })
    .unwrap_or_else(|| panic!("deletion not seen:\n{}", daemon.log()));
    // (The socket forces one refresh a minute per account; this one is
    // made by a command of its own.)
    let none = env.dir.path().join("no-daemon.sock");
    let token = env.ok(&[
        "--socket",
        none.to_str().unwrap(),
        "token",
        "--min-ttl",
        "86400",
    ]);
    assert_eq!(upstream.requests_to("/oauth/token").len(), 2);
    assert!(!env.auth_path().exists(), "auth.json was recreated");
    assert_eq!(
        env.read_store()["accounts"][0]["tokens"]["access_token"],
        token.trim()
    );
    assert_eq!(
        daemon.get("/v1/token?min_ttl=86400")["access_token"],
        token.trim(),
        "a second forced refresh within the minute serves the current token"
    );
    assert_eq!(upstream.requests_to("/oauth/token").len(), 2);

    // Switching to the account publishes it again.
    env.ok(&["accounts", "switch", "acc-own"]);
    assert_eq!(env.read_auth()["tokens"]["access_token"], token.trim());
    // Nothing secret reached the log.
    let log = daemon.log();
    assert!(log.contains("refreshing the access token"), "{log}");
    for secret in [token.trim(), &account.access_token(), "rt-acc-own"] {
        assert!(!log.contains(secret), "{log}");
    }
}

#[test]
fn an_invalid_auth_json_is_reported_and_left_alone() {
    let env = TestEnv::new();
    env.import_account(&TestAccount::new("acc-1"));
    let daemon = env.start_daemon(&[]);
    let garbage = b"{\"tokens\": {\"id_token\": 12}}\n";
    std::fs::write(env.auth_path(), garbage).unwrap();
    let problems = || daemon.get("/v1/health")["problems"].clone();
    wait_until(Duration::from_secs(5), || {
        problems().to_string().contains("auth_json_invalid")
    })
    .unwrap_or_else(|| panic!("not reported:\n{}", daemon.log()));
    assert!(
        problems().to_string().contains("id_token"),
        "{}",
        problems()
    );
    assert_eq!(std::fs::read(env.auth_path()).unwrap(), garbage);
    let status = env.ok(&["status"]);
    assert!(
        status.contains("auth.json") && status.contains("is invalid"),
        "{status}"
    );
    assert!(daemon.log().contains("left untouched"), "{}", daemon.log());
}

#[test]
fn the_scheduler_refreshes_every_account_ahead_of_expiry() {
    let upstream = FakeUpstream::start();
    let mut env = TestEnv::with_issuer(&upstream);
    env.vars
        .push(("CODEX_BROKER_REFRESH_AHEAD".into(), "30m".into()));
    // The main account expires in 20 minutes, a used-up fallback in 10:
    // both are inside the 30-minute lead and get refreshed at start.
    let main = TestAccount::new("acc-main").expiring_in(1200);
    let fallback = TestAccount::new("acc-fallback").expiring_in(600);
    let idle = TestAccount::new("acc-idle").expiring_in(7200);
    for a in [&main, &fallback, &idle] {
        upstream.add_account(a);
        env.import_account(a);
    }
    env.ok(&["accounts", "switch", "acc-main"]);
    let daemon = env.start_daemon(&[]);
    assert!(
        upstream.wait_for_requests("/oauth/token", 2, Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    let refreshed: Vec<String> = upstream
        .requests_to("/oauth/token")
        .iter()
        .map(|r| r.json()["refresh_token"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        refreshed.contains(&"rt-acc-main-0".to_owned()),
        "{refreshed:?}"
    );
    assert!(
        refreshed.contains(&"rt-acc-fallback-0".to_owned()),
        "{refreshed:?}"
    );
    // auth.json (holding the main account) gets the new tokens.
    wait_until(Duration::from_secs(5), || {
        env.read_auth()["tokens"]["refresh_token"] == "rt-acc-main-1"
    })
    .unwrap_or_else(|| panic!("auth.json not republished:\n{}", daemon.log()));
    // The account with two hours left is not touched.
    assert_eq!(upstream.requests_to("/oauth/token").len(), 2);

    // An account added while the daemon sleeps wakes it up.
    let late = TestAccount::new("acc-late").expiring_in(900);
    upstream.add_account(&late);
    env.import_other(&late);
    assert!(
        upstream.wait_for_requests("/oauth/token", 3, Duration::from_secs(10)),
        "{}",
        daemon.log()
    );
    assert_eq!(
        upstream.requests_to("/oauth/token")[2].json()["refresh_token"],
        "rt-acc-late-0"
    );
    assert!(upstream.reused_tokens().is_empty());
}

#[test]
fn a_thousand_concurrent_token_requests_cause_one_refresh() {
    let upstream = FakeUpstream::start();
    let mut env = TestEnv::with_issuer(&upstream);
    // Keep the scheduler out of it: it would refresh only 10 s before expiry.
    env.vars
        .push(("CODEX_BROKER_REFRESH_AHEAD".into(), "10".into()));
    let account = TestAccount::new("acc-hot").expiring_in(120);
    upstream.add_account(&account);
    env.import_account(&account);
    let daemon = env.start_daemon(&[]);
    // A thousand client connections need more than a default 1024 fds.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let socket = daemon.socket.clone();
    let tokens: Vec<String> = runtime.block_on(async move {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(1000));
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let socket = socket.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let mut c = codex_broker::socket::client::Connection::open(&socket)
                        .await
                        .unwrap();
                    barrier.wait().await;
                    let (status, body) = c
                        .send(hyper::Method::GET, "/v1/token", &[], None)
                        .await
                        .unwrap();
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    v["access_token"].as_str().unwrap().to_owned()
                })
            })
            .collect();
        let mut tokens = Vec::new();
        for t in tasks {
            tokens.push(t.await.unwrap());
        }
        tokens
    });
    assert_eq!(
        upstream.requests_to("/oauth/token").len(),
        1,
        "{}",
        daemon.log()
    );
    assert!(tokens.iter().all(|t| *t == tokens[0]));
    assert_ne!(tokens[0], account.access_token());
    assert_eq!(
        env.read_store()["accounts"][0]["tokens"]["access_token"],
        tokens[0]
    );
}

#[test]
fn token_and_report_over_the_socket() {
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_issuer(&upstream);
    let main = TestAccount::new("acc-main");
    let fallback = TestAccount::new("acc-fallback");
    env.import_account(&main);
    env.import_account(&fallback);
    env.ok(&["accounts", "switch", "acc-main"]);
    let daemon = env.start_daemon(&[]);

    let token = daemon.get("/v1/token");
    assert_eq!(token["account_id"], "acc-main");
    assert_eq!(token["kind"], "chatgpt");
    assert_eq!(token["access_token"], main.access_token());
    assert_eq!(token["expires_at"], main.expires_at);
    assert_eq!(token["email"], "acc-main@example.com");
    assert_eq!(
        token["headers"]["authorization"],
        format!("Bearer {}", main.access_token())
    );
    assert_eq!(token["headers"]["chatgpt-account-id"], "acc-main");
    assert!(
        !token.to_string().contains("rt-acc-main"),
        "never a refresh token"
    );
    assert_eq!(
        daemon.get("/v1/token?account=acc-fall")["account_id"],
        "acc-fallback"
    );

    // A proxy saw quota headers, then a 429 on the main account.
    let resets_at = crate::support::now() + 3600;
    let (status, next) = daemon.api(
        "POST",
        "/v1/report",
        Some(
            &serde_json::json!({
                "account_id": "acc-main", "status": 429,
                "headers": {"X-Codex-Primary-Used-Percent": "97.5",
                            "x-codex-primary-window-minutes": "300",
                            "x-codex-secondary-used-percent": "40"},
                "body": {"error": {"type": "usage_limit_reached", "message": "limit",
                                   "plan_type": "plus", "resets_at": resets_at}}
            })
            .to_string(),
        ),
    );
    assert_eq!(status, 200, "{next}");
    assert_eq!(next["account_id"], "acc-fallback");
    let quota = daemon.get("/v1/quota");
    let main_quota = &quota["accounts"][0];
    assert_eq!(main_quota["account_id"], "acc-main");
    assert_eq!(main_quota["five_hour"]["used_percent"], 100.0);
    assert_eq!(main_quota["five_hour"]["resets_at"], resets_at);
    assert_eq!(main_quota["weekly"]["used_percent"], 40.0);
    assert_eq!(main_quota["source"], "usage_limit");
    // Routing now skips the used-up main account, here and in the CLI.
    assert_eq!(daemon.get("/v1/token")["account_id"], "acc-fallback");
    assert_eq!(env.ok(&["token"]).trim(), fallback.access_token());
    let status: serde_json::Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["daemon"]["running"], true);
    assert_eq!(
        status["accounts"][0]["quota"]["five_hour"]["used_percent"],
        100.0
    );
    let accounts = daemon.get("/v1/accounts");
    assert_eq!(
        accounts,
        serde_json::from_str::<serde_json::Value>(&env.ok(&["accounts", "--json"])).unwrap()
    );

    // Every quota is used up: 503 quota_exhausted, and exit 4 from `token`.
    let (status, body) = daemon.api(
        "POST",
        "/v1/report",
        Some(r#"{"account_id": "acc-fallback", "status": 429, "body": {"error": {"type": "usage_limit_reached", "resets_in_seconds": 600}}}"#),
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "quota_exhausted");
    let out = env.run(&["token"]);
    assert_eq!(out.status.code(), Some(4), "{}", env.render(&out));
}

#[test]
fn bad_requests_get_error_codes_and_the_daemon_keeps_serving() {
    let env = TestEnv::new();
    env.import_account(&TestAccount::new("acc-1"));
    let daemon = env.start_daemon(&["--request-timeout", "1"]);
    let socket = &daemon.socket;
    let pause = Duration::from_millis(0);

    let answer = raw(socket, &[b"\x16\x03\x01 not http at all\r\n\r\n"], pause);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    let big = format!(
        "POST /v1/report HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        70 * 1024
    );
    let answer = raw(socket, &[big.as_bytes()], pause);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"payload_too_large\""), "{answer}");

    let chunked = format!(
        "POST /v1/report HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{}\r\n",
        70 * 1024,
        "a".repeat(70 * 1024)
    );
    let answer = raw(socket, &[chunked.as_bytes()], pause);
    assert!(answer.contains("\"payload_too_large\""), "{answer}");

    let slow_body: &[&[u8]] = &[
        b"POST /v1/report HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"acc",
        b"ount_id\"",
    ];
    let answer = raw(socket, slow_body, Duration::from_millis(1500));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");

    // A head that never ends: the connection is closed.
    let started = std::time::Instant::now();
    let answer = raw(socket, &[b"GET /v1/health HTTP/1.1\r\nhost: x\r\n"], pause);
    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let cases = [
        ("GET", "/v2/nothing", None, 404, "not_found"),
        ("DELETE", "/v1/token", None, 405, "method_not_allowed"),
        (
            "GET",
            "/v1/token?min_ttl=soon",
            None,
            400,
            "invalid_request",
        ),
        (
            "GET",
            "/v1/token?account=nobody",
            None,
            404,
            "unknown_account",
        ),
        (
            "POST",
            "/v1/report",
            Some("{not json"),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/report",
            Some(r#"{"account_id": 7, "status": 429}"#),
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/report",
            Some(r#"{"account_id": "x", "status": 429}"#),
            404,
            "unknown_account",
        ),
    ];
    for (method, target, body, status, code) in cases {
        let (got, answer) = daemon.api(method, target, body);
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {target}: {answer}"
        );
        assert!(!answer["error"]["message"].as_str().unwrap().is_empty());
    }
    let (_, answer) = daemon.api(
        "POST",
        "/v1/report",
        Some(r#"{"account_id": 7, "status": 429}"#),
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("account_id"),
        "{answer}"
    );

    assert_eq!(daemon.get("/v1/health")["status"], "ok");
    assert_eq!(daemon.get("/v1/token")["account_id"], "acc-1");
}

#[test]
fn another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        crate::support::skip("needs root to act as another user");
        return;
    }
    let env = TestEnv::new();
    // A socket another user can reach through the file system, as after a
    // careless chmod: the peer-credential check is what stops them.
    let sock_dir = env.dir.path().join("sock");
    std::fs::create_dir(&sock_dir).unwrap();
    for dir in [env.dir.path(), sock_dir.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let socket = sock_dir.join("broker.sock");
    let daemon = env.start_daemon(&["--socket", socket.to_str().unwrap()]);
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    // `token` as user nobody: the daemon answers 403 and hands out nothing.
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("codex-broker"))
        .env_clear()
        .env("HOME", "/nonexistent")
        .args(["--socket", socket.to_str().unwrap(), "token"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("only the user running the daemon"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    assert!(daemon.log().contains("another user"), "{}", daemon.log());
    // The owner is still served.
    assert_eq!(daemon.get("/v1/health")["status"], "ok");
}

#[test]
fn the_log_file_rotates_by_size_and_the_level_changes_live() {
    use std::os::unix::fs::PermissionsExt;
    let upstream = crate::support::fake_upstream::FakeUpstream::start();
    let (env, main, _) = TestEnv::with_main_and_fallback(&upstream);
    env.write_config(
        "log_file = \"logs/broker.log\"\nlog_rotate_bytes = 4096\nlog_rotate_max_files = 2\n",
    );
    let daemon = env.start_daemon(&[]);
    let dir = env.broker_home().join("logs");
    let file = dir.join("broker.log");
    let read = || std::fs::read_to_string(&file).unwrap_or_default();
    let started = crate::support::wait_until(Duration::from_secs(5), || read().contains("serving"));
    assert!(
        started.is_some(),
        "the daemon's start is in the file: {}",
        read()
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(env.ok(&["log", "level"]).trim(), "info");
    let models = |n: usize| {
        for _ in 0..n {
            crate::forward::send(
                "GET",
                &format!("{}/v1/models", daemon.forwarder()),
                &[],
                Vec::new(),
            );
        }
    };
    models(1);
    assert!(!read().contains("forwarded"), "no debug line at info");

    assert!(
        env.ok(&["log", "level", "debug"])
            .contains("Log level set to debug")
    );
    models(1);
    let debug = crate::support::wait_until(Duration::from_secs(5), || read().contains("forwarded"));
    assert!(debug.is_some(), "debug lines at once, without a restart");

    // Enough lines to rotate more than twice: two older files are kept.
    models(200);
    let rotated = crate::support::wait_until(Duration::from_secs(10), || {
        crate::support::file_names(&dir) == ["broker.log", "broker.log.1", "broker.log.2"]
    });
    assert!(rotated.is_some(), "{:?}", crate::support::file_names(&dir));
    for name in crate::support::file_names(&dir) {
        let text = std::fs::read_to_string(dir.join(&name)).unwrap();
        assert!(text.len() <= 4096, "{name}: {}", text.len());
        assert!(!text.contains(&main.access_token()) && !text.contains(&main.refresh_token));
    }
    let (status, refused) = daemon.api("POST", "/v1/log-level", Some(r#"{"level":"loud!"}"#));
    assert_eq!(status, 400, "{refused}");
    assert_eq!(
        env.ok(&["log", "level", "warn"]).trim(),
        "Log level set to warn."
    );
}
