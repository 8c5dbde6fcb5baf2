//! Hostile input and hostile neighbours: one regression test per hole.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use crate::support::fake_upstream::FakeUpstream;
use crate::support::{Daemon, TestAccount, TestEnv};

/// One raw request to the forwarder; the whole answer as text.
fn raw_forwarder(daemon: &Daemon, request: &str) -> String {
    let address = daemon.forwarder();
    let mut stream = std::net::TcpStream::connect(address.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

#[test]
fn nan_quota_keeps_the_store_readable() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-nan");
    let env = TestEnv::with_account(&upstream, &account);
    let daemon = env.start_daemon(&["--no-forward"]);
    for bad in ["NaN", "inf", "-inf", "1e400"] {
        let report = serde_json::json!({"account_id": "acc-nan", "status": 200,
            "headers": {"x-codex-primary-used-percent": bad}});
        let (status, _) = daemon.api("POST", "/v1/report", Some(&report.to_string()));
        assert_eq!(status, 200, "{bad}");
    }
    let (status, body) = daemon.api("GET", "/v1/token", None);
    assert_eq!(status, 200, "{body}");
    env.ok(&["status"]);
    let store = env.read_store();
    assert!(store["accounts"][0]["quota"].is_null(), "{store}");
}

#[test]
fn a_fifo_in_place_of_auth_json_is_refused_at_once() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.codex_home()).unwrap();
    nix::unistd::mkfifo(&env.auth_path(), nix::sys::stat::Mode::S_IRWXU).unwrap();
    for args in [&["import"][..], &["status"][..]] {
        let started = Instant::now();
        let out = env.run(args);
        assert!(started.elapsed() < Duration::from_secs(5), "{args:?} hung");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("not a regular file"), "{stderr}");
        assert!(stderr.contains("auth.json"), "{stderr}");
    }
}

#[test]
fn cross_site_requests_are_refused() {
    let upstream = FakeUpstream::start();
    let (env, _, _) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let body = r#"{"model":"gpt-5","input":"hi"}"#;
    for extra in [
        "origin: https://evil.example\r\n",
        "origin: null\r\n",
        "sec-fetch-site: cross-site\r\n",
    ] {
        let answer = raw_forwarder(
            &daemon,
            &format!(
                "POST /v1/responses HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: text/plain\r\n\
                 {extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(answer.starts_with("HTTP/1.1 403"), "{extra}: {answer}");
        assert!(answer.contains("forbidden_origin"), "{answer}");
    }
    assert!(
        upstream
            .requests_to("/backend-api/codex/responses")
            .is_empty()
    );
}

#[test]
fn dot_segments_are_refused_before_routing() {
    let upstream = FakeUpstream::start();
    let (env, _, _) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let before = upstream.requests().len();
    for path in [
        "/codex/../../../oauth/token",
        "/backend-api/.%2e/.%2e/elsewhere",
        "/backend-api/%2e%2e/elsewhere",
        "/codex/%5c../oauth",
    ] {
        let answer = raw_forwarder(
            &daemon,
            &format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n"),
        );
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
    }
    let answer = raw_forwarder(
        &daemon,
        "GET http://evil.example/codex/responses HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(upstream.requests().len(), before, "nothing went upstream");
}

#[test]
fn another_uid_cannot_plant_an_account() {
    if !nix::unistd::geteuid().is_root() {
        crate::support::skip("making a file another uid's takes root");
        return;
    }
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_issuer(&upstream);
    let planted = TestAccount::new("acc-planted");
    env.write_codex_auth(&planted);
    // Written by someone else: owned by another uid.
    std::os::unix::fs::chown(env.auth_path(), Some(65534), Some(65534)).unwrap();
    let out = env.run(&["import"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("belongs to uid 65534"), "{stderr}");
    // Or in a Codex home anyone may write.
    std::os::unix::fs::chown(env.auth_path(), Some(0), Some(0)).unwrap();
    std::fs::set_permissions(env.codex_home(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let daemon = env.start_daemon(&["--no-forward"]);
    let health = daemon.get("/v1/health");
    assert_eq!(health["accounts"], 0, "{health}");
    assert_eq!(
        health["problems"][0]["code"], "auth_json_untrusted",
        "{health}"
    );
    assert!(
        health["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("chmod go-w"),
        "{health}"
    );
    drop(daemon);
    assert!(
        !env.store_path().exists() || env.read_store()["accounts"].as_array().unwrap().is_empty()
    );
}

#[test]
fn another_uid_cannot_use_the_forwarder() {
    if !nix::unistd::geteuid().is_root() {
        crate::support::skip("needs root to act as another user");
        return;
    }
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-uid");
    let env = TestEnv::with_backend_account(&upstream, &account);
    let daemon = env.start_daemon(&[]);
    let address = daemon.forwarder();
    let address = address.trim_start_matches("http://");
    let (host, port) = address.rsplit_once(':').unwrap();
    // A client running as user nobody, over loopback TCP (bash's /dev/tcp).
    let client = format!(
        "exec 3<>/dev/tcp/{host}/{port}; \
         printf 'GET /backend-api/uid-probe HTTP/1.1\\r\\nhost: 127.0.0.1\\r\\n\\r\\n' >&3; \
         cat <&3"
    );
    let out = std::process::Command::new("/bin/bash")
        .args(["-c", &client])
        .env_clear()
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.starts_with("HTTP/1.1 403"),
        "{answer}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        answer.contains("only the user running the daemon"),
        "{answer}"
    );
    let probes = |upstream: &FakeUpstream| {
        upstream
            .requests()
            .into_iter()
            .filter(|r| r.path.contains("uid-probe"))
            .count()
    };
    assert_eq!(probes(&upstream), 0);
    assert!(daemon.log().contains("another user"), "{}", daemon.log());
    // The daemon's own user is served.
    let answer = raw_forwarder(
        &daemon,
        "GET /backend-api/uid-probe HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n",
    );
    assert!(!answer.contains("only the user running"), "{answer}");
    assert_eq!(probes(&upstream), 1, "{answer}");
}

#[test]
fn an_exp_near_i64_min_is_refreshed_not_served() {
    let upstream = FakeUpstream::start();
    let mut account = TestAccount::new("acc-min-exp");
    account.expires_at = i64::MIN + 1;
    let env = TestEnv::with_account(&upstream, &account);
    let token = env.ok(&["token"]);
    assert_ne!(token.trim(), account.access_token());
    assert_eq!(upstream.requests_to("/oauth/token").len(), 1);
}

#[test]
fn forced_refreshes_from_the_socket_are_held_to_one_a_minute() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-forced");
    let env = TestEnv::with_account(&upstream, &account);
    let daemon = env.start_daemon(&["--no-forward"]);
    let first = daemon.get("/v1/token?min_ttl=4294967295");
    for _ in 0..20 {
        let again = daemon.get("/v1/token?min_ttl=4294967295");
        assert_eq!(again["access_token"], first["access_token"]);
    }
    assert_eq!(upstream.requests_to("/oauth/token").len(), 1);
}

#[test]
fn issuer_text_holding_a_token_is_redacted_everywhere_it_is_shown() {
    use crate::support::fake_upstream::Refresh;
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-echo").expiring_in(60);
    let env = TestEnv::with_account(&upstream, &account);
    let jwt_like = account.access_token();
    upstream.set_refresh(Refresh::Fail(
        401,
        serde_json::json!({"error": {"code": "refresh_token_invalidated",
            "message": format!("token {} is no good; we saw {jwt_like}", account.refresh_token)}}),
    ));
    let out = env.run(&["token"]);
    assert_ne!(out.status.code(), Some(0));
    let mut shown = String::from_utf8_lossy(&out.stderr).into_owned();
    shown += &env.ok(&["status"]);
    shown += &env.ok(&["status", "--json"]);
    shown += &env.ok(&["accounts", "--json"]);
    shown += &env.stored_account("acc-echo")["state_reason"].to_string();
    let daemon = env.start_daemon(&["--no-forward"]);
    shown += &daemon.get("/v1/health").to_string();
    assert!(shown.contains("REDACTED"), "{shown}");
    for secret in [account.refresh_token.as_str(), jwt_like.as_str()] {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
}

#[test]
fn a_zstd_bomb_is_refused_in_bounded_memory() {
    use std::io::Write as _;
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-bomb");
    let env = TestEnv::with_backend_account(&upstream, &account);
    let daemon = env.start_daemon(&[]);
    // 1 GiB of JSON whitespace, compressed to a few tens of KiB.
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    encoder.write_all(b"{\"model\":\"m\",\"input\":\"").unwrap();
    let block = vec![b' '; 1 << 20];
    for _ in 0..1024 {
        encoder.write_all(&block).unwrap();
    }
    encoder.write_all(b"\"}").unwrap();
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let address = daemon.forwarder();
    let mut stream = std::net::TcpStream::connect(address.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "POST /v1/responses HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-encoding: zstd\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        bomb.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&bomb).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let rss = daemon.rss_kib();
    assert!(rss < 150 * 1024, "daemon RSS {rss} KiB");
    assert!(
        upstream
            .requests_to("/backend-api/codex/responses")
            .is_empty()
    );
}

#[test]
fn a_follower_never_talks_to_a_socket_another_uid_serves() {
    let python = std::path::Path::new("/usr/bin/python3");
    if !nix::unistd::geteuid().is_root() || !python.exists() {
        crate::support::skip("needs root and /usr/bin/python3 to serve a socket as another user");
        return;
    }
    // A "leader" planted by user nobody in a directory anyone can write.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = dir.path().join("leader.sock");
    let server = "import socket, os, sys\n\
        s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o777)\n\
        s.listen(8)\n\
        body = b'{\"accounts\": []}'\n\
        while True:\n\
        \x20   c, _ = s.accept(); c.recv(65536)\n\
        \x20   c.sendall(b'HTTP/1.1 200 OK\\r\\ncontent-type: application/json\\r\\ncontent-length: %d\\r\\n\\r\\n' % len(body) + body)\n\
        \x20   c.close()\n";
    let mut planted = std::process::Command::new(python)
        .args(["-c", server])
        .arg(&socket)
        .env_clear()
        .uid(65534)
        .gid(65534)
        .spawn()
        .unwrap();
    let ready = crate::support::wait_until(Duration::from_secs(10), || socket.exists());
    let env = TestEnv::new();
    let daemon = ready.map(|_| env.start_daemon(&["--follow", socket.to_str().unwrap()]));
    let refused = daemon.as_ref().and_then(|daemon| {
        crate::support::wait_until(Duration::from_secs(10), || {
            daemon.get("/v1/health")["problems"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| {
                    p["code"] == "leader_unreachable"
                        && p["message"].as_str().unwrap().contains("uid 65534")
                })
        })
    });
    let _ = planted.kill();
    let _ = planted.wait();
    assert!(ready.is_some(), "the planted socket did not appear");
    let daemon = daemon.unwrap();
    assert!(refused.is_some(), "{}", daemon.get("/v1/health"));
    assert_eq!(daemon.get("/v1/health")["accounts"], 0);
}

/// A FIFO planted at journal.jsonl: appending to it would block a refresh
/// for good (no reader) under the account's lock. The refresh goes on and
/// is saved; the journal is only skipped.
#[test]
fn a_fifo_at_the_journal_never_hangs_a_refresh() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-fifo").expiring_in(120);
    let env = TestEnv::with_account(&upstream, &account);
    let journal = env.broker_home().join("journal.jsonl");
    let _ = std::fs::remove_file(&journal);
    nix::unistd::mkfifo(&journal, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let out = env
        .cmd()
        .args(["token", "--min-ttl", "3600"])
        .timeout(Duration::from_secs(20))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(
        String::from_utf8_lossy(&out.stdout).trim(),
        account.access_token()
    );
    assert_eq!(upstream.rotations(), 1);
    assert_eq!(
        env.stored_account("acc-fifo")["tokens"]["refresh_token"],
        "rt-acc-fifo-1"
    );
}

/// A FIFO or a folder put at auth.json under a running daemon: refreshes
/// go on with the store, and `/v1/health` names the problem.
#[test]
fn refreshes_go_on_when_auth_json_becomes_a_fifo_or_a_folder() {
    for kind in ["fifo", "folder"] {
        let upstream = FakeUpstream::start();
        let account = TestAccount::new("acc-odd").expiring_in(3 * 3600);
        let env = TestEnv::with_account(&upstream, &account);
        let daemon = env.start_daemon(&["--no-forward"]);
        std::fs::remove_file(env.auth_path()).unwrap();
        match kind {
            "fifo" => nix::unistd::mkfifo(&env.auth_path(), nix::sys::stat::Mode::S_IRWXU).unwrap(),
            _ => std::fs::create_dir(env.auth_path()).unwrap(),
        }
        let named = || {
            daemon.get("/v1/health")["problems"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["code"] == "auth_json_invalid")
        };
        crate::support::wait_until(Duration::from_secs(10), named)
            .unwrap_or_else(|| panic!("{kind}: {}", daemon.get("/v1/health")));
        let (status, body) = daemon.api("GET", "/v1/token?min_ttl=86400", None);
        assert_eq!(status, 200, "{kind}: {body}");
        assert_ne!(
            body["access_token"],
            account.access_token(),
            "{kind}: refreshed"
        );
        assert_eq!(upstream.rotations(), 1, "{kind}");
        assert_eq!(
            env.stored_account("acc-odd")["tokens"]["refresh_token"],
            "rt-acc-odd-1"
        );
    }
}
