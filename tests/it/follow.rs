//! Follow mode: a follower broker that keeps no refresh token takes its
//! accounts and access tokens from a leader's socket API.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::forward::send;
use crate::support::fake_upstream::FakeUpstream;
use crate::support::{Daemon, TestEnv, wait_until};

const STAND_IN: &str = "codex-broker-stand-in.";

/// A leader (main and fallback account behind `upstream`) with its daemon
/// running, and a follower's environment: its own HOME, the same backend,
/// and an issuer that does not exist, so that a refresh it tried itself
/// would fail.
pub(crate) fn leader_and_follower(upstream: &FakeUpstream) -> (TestEnv, Daemon, TestEnv) {
    let (leader, ..) = TestEnv::with_main_and_fallback(upstream);
    let leader_daemon = leader.start_daemon(&[]);
    let mut follower = TestEnv::new();
    follower.vars.extend([
        (
            "CODEX_BROKER_ISSUER".to_owned(),
            "http://127.0.0.1:9".to_owned(),
        ),
        (
            "CODEX_BROKER_CHATGPT_BASE".to_owned(),
            format!("{}/backend-api", upstream.url()),
        ),
    ]);
    std::fs::create_dir_all(follower.broker_home()).unwrap();
    std::fs::write(
        follower.broker_home().join("config.toml"),
        "follow_interval = 1\n",
    )
    .unwrap();
    (leader, leader_daemon, follower)
}

/// Starts the follower of the leader's socket `leader` and waits until it
/// has published the leader's account to its own auth.json.
pub(crate) fn start_follower(follower: &TestEnv, leader: &Path) -> Daemon {
    let daemon = follower.start_daemon(&["--follow", leader.to_str().unwrap()]);
    let published = wait_until(Duration::from_secs(10), || {
        std::fs::read(follower.auth_path()).is_ok_and(|b| {
            serde_json::from_slice::<Value>(&b).is_ok_and(|auth| {
                auth["tokens"]["account_id"] == "acc-main"
                    && auth["tokens"]["refresh_token"]
                        .as_str()
                        .is_some_and(|t| t.starts_with(STAND_IN))
            })
        })
    });
    assert!(published.is_some(), "{}", daemon.log());
    daemon
}

/// Every file below `dir` that holds a refresh token the fake issuer
/// handed out (`rt-…`).
pub(crate) fn files_with_refresh_tokens(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file()
                && std::fs::read(&path)
                    .is_ok_and(|b| String::from_utf8_lossy(&b).contains("\"rt-acc-"))
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

fn token_of(daemon: &Daemon, account: &str) -> String {
    let (status, body) = daemon.api("GET", &format!("/v1/token?account={account}"), None);
    assert_eq!(status, 200, "{body}\n{}", daemon.log());
    body["access_token"].as_str().unwrap().to_owned()
}

#[test]
fn a_follower_serves_the_leaders_tokens_and_keeps_no_refresh_token() {
    let upstream = FakeUpstream::start();
    let (leader, leader_daemon, follower) = leader_and_follower(&upstream);
    let follower_daemon = start_follower(&follower, &leader_daemon.socket);

    // The follower's tokens are the leader's; its health names the leader.
    assert_eq!(
        token_of(&follower_daemon, "acc-main"),
        token_of(&leader_daemon, "acc-main")
    );
    let health = follower_daemon.get("/v1/health");
    assert_eq!(health["follows"], leader_daemon.socket.to_str().unwrap());
    assert_eq!(health["accounts"], 2);
    assert!(
        health["problems"].as_array().unwrap().is_empty(),
        "{health}"
    );
    let status = follower.ok(&["status"]);
    assert!(status.contains("Follows:"), "{status}");

    // Inference through the follower's forwarder goes straight to the
    // backend with the leader's token; the quota it sees reaches the leader.
    upstream.set_quota("acc-main", 42.5);
    let infer = || {
        send(
            "POST",
            &format!("{}/codex/responses", follower_daemon.forwarder()),
            &[("content-type", "application/json")],
            br#"{"model":"gpt-5.1-codex","input":[],"stream":true}"#.to_vec(),
        )
    };
    assert_eq!(infer().status, 200);
    let sent = upstream
        .requests_to("/backend-api/codex/responses")
        .pop()
        .unwrap();
    assert_eq!(
        sent.headers["authorization"],
        format!("Bearer {}", token_of(&leader_daemon, "acc-main"))
    );
    let reported = wait_until(Duration::from_secs(5), || {
        leader_daemon.get("/v1/quota")["accounts"][0]["five_hour"]["used_percent"] == 42.5
    });
    assert!(reported.is_some(), "{}", leader_daemon.get("/v1/quota"));

    // A 401 here is a refresh at the leader; the follower takes the new
    // token from it.
    let rotations = upstream.rotations();
    upstream.set_rejected("acc-main");
    assert_eq!(infer().status, 200, "served by the fallback");
    let refreshed = wait_until(Duration::from_secs(10), || {
        upstream.rotations() > rotations
            && token_of(&follower_daemon, "acc-main") == token_of(&leader_daemon, "acc-main")
    });
    assert!(refreshed.is_some(), "{}", follower_daemon.log());
    assert!(upstream.reused_tokens().is_empty());

    // A tool's refresh with the follower's stand-in is answered by the
    // follower's forwarder with the leader's tokens and the same stand-in.
    let stand_in = follower.read_auth()["tokens"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let answer = crate::forward::refresh_through(&follower_daemon.forwarder(), &stand_in);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["refresh_token"], stand_in.as_str());
    assert_eq!(
        answer.json()["access_token"],
        token_of(&leader_daemon, "acc-main").as_str()
    );

    // Nothing on the follower's side ever held a refresh token.
    assert_eq!(
        files_with_refresh_tokens(&follower.user_home()),
        Vec::<String>::new()
    );
    assert!(!files_with_refresh_tokens(&leader.user_home()).is_empty());

    // Account changes belong on the leader.
    for args in [
        vec!["login", "--device"],
        vec!["import"],
        vec!["accounts", "switch", "acc-fallback"],
        vec!["accounts", "remove", "acc-main"],
        vec!["shield", "off"],
    ] {
        let out = follower.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("belong on the leader"),
            "{args:?}: {stderr}"
        );
    }
    // A leader's home cannot become a follower (it would keep its tokens),
    // nor a follower's serve without --follow.
    drop((leader_daemon, follower_daemon));
    let out = leader.run(&["serve", "--follow", "/nonexistent/leader.sock"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("real credentials"));
    let out = follower.run(&["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--follow"));
}

#[test]
fn a_follower_serves_while_the_leader_is_away_and_recovers() {
    let upstream = FakeUpstream::start();
    let (leader, leader_daemon, follower) = leader_and_follower(&upstream);
    let socket = leader_daemon.socket.clone();
    let follower_daemon = start_follower(&follower, &socket);
    let token = token_of(&follower_daemon, "acc-main");

    assert!(leader_daemon.stop().success());
    let problem = |daemon: &Daemon| {
        daemon.get("/v1/health")["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["code"] == "leader_unreachable")
    };
    let reported = wait_until(Duration::from_secs(10), || problem(&follower_daemon));
    assert!(reported.is_some(), "{}", follower_daemon.log());
    // The tokens it has are still served while valid.
    assert_eq!(token_of(&follower_daemon, "acc-main"), token);
    let (code, _) = follower_daemon.api("GET", "/v1/token?account=acc-main", None);
    assert_eq!(code, 200);
    let status = follower.ok(&["status"]);
    assert!(status.contains("leader"), "{status}");

    // The leader comes back: the follower finds it again.
    let leader_daemon = leader.start_daemon(&[]);
    assert_eq!(leader_daemon.socket, socket);
    let recovered = wait_until(Duration::from_secs(10), || !problem(&follower_daemon));
    assert!(recovered.is_some(), "{}", follower_daemon.log());
    assert!(follower_daemon.log().contains("the leader answers again"));
}

/// A process that is killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_ok(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_follower_reaches_its_leader_through_an_ssh_socket_forward() {
    let sshd = Path::new("/usr/sbin/sshd");
    if !sshd.exists() {
        crate::support::skip(
            "sshd is not installed (apt-get install openssh-server); this test forwards the \
             leader's socket with a real `ssh -R`",
        );
        return;
    }
    let upstream = FakeUpstream::start();
    let (_leader, leader_daemon, follower) = leader_and_follower(&upstream);

    // An sshd of the test's own on a free loopback port, with keys made now.
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name);
    for key in ["host_key", "client_key"] {
        run_ok(
            std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(file(key)),
        );
    }
    std::fs::copy(file("client_key.pub"), file("authorized_keys")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        file("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\n\
             AuthorizedKeysFile {}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\n\
             UsePAM no\nAllowStreamLocalForwarding yes\nStreamLocalBindUnlink yes\n",
            file("host_key").display(),
            file("sshd.pid").display(),
            file("authorized_keys").display(),
        ),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let _sshd = Killed(
        std::process::Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(file("sshd_config"))
            .stderr(std::fs::File::create(file("sshd.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let listening = wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(
        listening.is_some(),
        "{}",
        std::fs::read_to_string(file("sshd.log")).unwrap_or_default()
    );

    // ssh -R REMOTE_SOCKET:LEADER_SOCKET, as on a remote devbox.
    let forwarded = file("leader.sock");
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;
    let _ssh = Killed(
        std::process::Command::new("ssh")
            .args([
                "-N",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
            ])
            .args([
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ExitOnForwardFailure=yes",
            ])
            .arg("-i")
            .arg(file("client_key"))
            .args(["-p", &port.to_string(), "-R"])
            .arg(format!(
                "{}:{}",
                forwarded.display(),
                leader_daemon.socket.display()
            ))
            .arg(format!("{user}@127.0.0.1"))
            .stderr(std::fs::File::create(file("ssh.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let ready = wait_until(Duration::from_secs(10), || forwarded.exists());
    assert!(
        ready.is_some(),
        "ssh: {}\nsshd: {}",
        std::fs::read_to_string(file("ssh.log")).unwrap_or_default(),
        std::fs::read_to_string(file("sshd.log")).unwrap_or_default()
    );

    let follower_daemon = start_follower(&follower, &forwarded);
    assert_eq!(
        token_of(&follower_daemon, "acc-main"),
        token_of(&leader_daemon, "acc-main")
    );
    assert_eq!(
        follower_daemon.get("/v1/health")["follows"],
        forwarded.to_str().unwrap()
    );
    assert_eq!(
        files_with_refresh_tokens(&follower.user_home()),
        Vec::<String>::new()
    );
}

/// Sets the state of the leader's account `id` in its store file, replacing
/// the file at once as the broker does.
fn set_leader_state(leader: &TestEnv, id: &str, state: &str) {
    let mut store = leader.read_store();
    for account in store["accounts"].as_array_mut().unwrap() {
        if account["id"] == id {
            account["state"] = serde_json::json!(state);
        }
    }
    let temporary = leader.broker_home().join("store.test.tmp");
    std::fs::write(&temporary, store.to_string()).unwrap();
    std::fs::rename(&temporary, leader.store_path()).unwrap();
}

#[test]
fn a_follower_keeps_a_leader_account_that_needs_a_login_and_restarts() {
    let upstream = FakeUpstream::start();
    let (leader, leader_daemon, follower) = leader_and_follower(&upstream);
    set_leader_state(&leader, "acc-fallback", "needs_login");
    let follower_daemon = start_follower(&follower, &leader_daemon.socket);
    let shown = wait_until(Duration::from_secs(10), || {
        std::fs::read(follower.store_path()).is_ok_and(|b| {
            serde_json::from_slice::<Value>(&b).is_ok_and(|s| {
                s["accounts"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|a| a["id"] == "acc-fallback"))
            })
        })
    });
    assert!(shown.is_some(), "{}", follower_daemon.log());

    // The store it saved loads: the account shows as the leader reports it,
    // and the one it can serve is served.
    let fallback = follower.stored_account("acc-fallback");
    assert_eq!(fallback["state"], "needs_login", "{fallback}");
    assert!(
        fallback.get("tokens").is_none_or(Value::is_null),
        "{fallback}"
    );
    let status = follower.ok(&["status"]);
    assert!(status.contains("acc-fallback"), "{status}");
    assert!(status.contains("needs_login"), "{status}");
    token_of(&follower_daemon, "acc-main");
    let (code, body) = follower_daemon.api("GET", "/v1/token?account=acc-fallback", None);
    assert_ne!(code, 200, "{body}");

    // A restarted follower starts, and serves again.
    assert!(follower_daemon.stop().success());
    let follower_daemon = start_follower(&follower, &leader_daemon.socket);
    token_of(&follower_daemon, "acc-main");

    // After the new login on the leader, the follower takes its tokens.
    set_leader_state(&leader, "acc-fallback", "ok");
    let taken = wait_until(Duration::from_secs(10), || {
        follower_daemon
            .api("GET", "/v1/token?account=acc-fallback", None)
            .0
            == 200
    });
    assert!(taken.is_some(), "{}", follower_daemon.log());
    assert_eq!(follower.stored_account("acc-fallback")["state"], "ok");
}
