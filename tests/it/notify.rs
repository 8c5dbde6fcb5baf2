//! Notifications: a refused refresh told once on every channel (a real
//! D-Bus session bus with a notification server of the test's own, a
//! command, a webhook), with the contract's JSON and no token; recovery
//! told once; `notify test`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::fake_upstream::{FakeUpstream, Refresh};
use crate::support::{TestEnv, wait_until, which};

/// A webhook receiver on loopback: the bodies it was POSTed.
pub(crate) fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    let addr = crate::support::serve_on_loopback(move |listener| async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // The head, then as much body as it declares.
            let body = loop {
                let n = stream.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        break Some(body[..length].to_owned());
                    }
                }
            };
            if let Some(body) = body {
                seen.lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap_or(Value::Null));
            }
            let _ = stream
                .write_all(
                    b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
        }
    });
    (format!("http://{addr}/hook"), bodies)
}

/// A private D-Bus session bus, stopped when dropped.
struct SessionBus {
    child: std::process::Child,
    address: String,
}

impl Drop for SessionBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn session_bus() -> Option<SessionBus> {
    let Some(daemon) = which("dbus-daemon") else {
        crate::support::skip("dbus-daemon is not installed (Debian package dbus)");
        return None;
    };
    let mut child = std::process::Command::new(daemon)
        .args(["--session", "--nofork", "--print-address=1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    Some(SessionBus {
        child,
        address: line.trim().to_owned(),
    })
}

/// What the test's notification server was asked to show.
#[derive(Debug, Clone)]
struct Shown {
    app: String,
    summary: String,
    body: String,
    urgency: Option<u8>,
}

struct Server {
    shown: Arc<Mutex<Vec<Shown>>>,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Server {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: String,
        _replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        _actions: Vec<String>,
        hints: std::collections::HashMap<String, zbus::zvariant::OwnedValue>,
        _expire_timeout: i32,
    ) -> u32 {
        let urgency = hints.get("urgency").and_then(|v| u8::try_from(v).ok());
        let mut shown = self.shown.lock().unwrap();
        shown.push(Shown {
            app: app_name,
            summary,
            body,
            urgency,
        });
        shown.len() as u32
    }
}

/// Serves `org.freedesktop.Notifications` on the bus at `address`, on a
/// thread of its own.
fn notification_server(address: &str) -> Arc<Mutex<Vec<Shown>>> {
    let shown = Arc::new(Mutex::new(Vec::new()));
    let server = Server {
        shown: shown.clone(),
    };
    let address = address.to_owned();
    let (ready, serving) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let connection = zbus::connection::Builder::address(address.as_str())
                .unwrap()
                .name("org.freedesktop.Notifications")
                .unwrap()
                .serve_at("/org/freedesktop/Notifications", server)
                .unwrap()
                .build()
                .await
                .unwrap();
            ready.send(()).unwrap();
            std::future::pending::<()>().await;
            drop(connection);
        });
    });
    serving.recv_timeout(Duration::from_secs(10)).unwrap();
    shown
}

#[test]
fn a_refused_refresh_is_told_once_on_every_channel_without_a_token() {
    let Some(bus) = session_bus() else { return };
    let shown = notification_server(&bus.address);
    let upstream = FakeUpstream::start();
    let (mut env, main, fallback) = TestEnv::with_main_and_fallback(&upstream);
    env.set_var("DBUS_SESSION_BUS_ADDRESS", &bus.address);
    let (hook, posted) = webhook();
    let out = env.dir.path().join("notices");
    std::fs::create_dir(&out).unwrap();
    let command = format!(
        "[\"sh\", \"-c\", \"cat > {}/$CODEX_BROKER_EVENT-$$.json\"]",
        out.display()
    );
    env.write_config(&format!(
        "[notify]\ncommand = {command}\nwebhook = \"{hook}\"\n"
    ));
    let daemon = env.start_daemon(&[]);

    upstream.set_refresh(Refresh::error(401, "refresh_token_invalidated"));
    daemon.api("GET", "/v1/token?account=acc-fallback&min_ttl=86400", None);
    let told = wait_until(Duration::from_secs(20), || {
        !shown.lock().unwrap().is_empty()
            && !posted.lock().unwrap().is_empty()
            && std::fs::read_dir(&out).unwrap().count() > 0
    });
    assert!(
        told.is_some(),
        "{:?} {:?}",
        shown.lock().unwrap(),
        posted.lock().unwrap()
    );

    let desktop = shown.lock().unwrap()[0].clone();
    assert_eq!(desktop.app, "codex-broker");
    assert!(desktop.summary.contains("needs a new login"), "{desktop:?}");
    assert!(desktop.body.contains("acc-fallback"), "{desktop:?}");
    assert_eq!(desktop.urgency, Some(2), "critical");
    let webhook = posted.lock().unwrap()[0].clone();
    assert_eq!(webhook["event"], "needs_login");
    assert_eq!(webhook["account_id"], "acc-fallback");
    assert!(webhook["at"].as_i64().unwrap() > 0);
    assert!(webhook["message"].as_str().unwrap().contains("login"));
    let file = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap();
    assert!(
        file.file_name()
            .to_string_lossy()
            .starts_with("needs_login-")
    );
    let command: Value = serde_json::from_slice(&std::fs::read(file.path()).unwrap()).unwrap();
    assert_eq!(command, webhook, "the same JSON on every channel");

    // Nothing more while the state lasts (the daemon looks every 5 s).
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(shown.lock().unwrap().len(), 1, "once");
    assert_eq!(posted.lock().unwrap().len(), 1, "once");
    let everything = format!("{:?}{:?}", shown.lock().unwrap(), posted.lock().unwrap());
    for secret in [
        main.access_token(),
        fallback.access_token(),
        fallback.refresh_token.clone(),
    ] {
        assert!(!everything.contains(&secret), "a token in a notice");
    }
    let history = env.ok(&["history", "acc-fallback"]);
    assert!(history.contains("notified (needs_login)"), "{history}");

    // A new login ends it: told once more, as recovered.
    env.import_other(&crate::support::TestAccount::new("acc-fallback"));
    let recovered = wait_until(Duration::from_secs(20), || {
        posted
            .lock()
            .unwrap()
            .iter()
            .any(|p| p["event"] == "recovered")
            && shown.lock().unwrap().len() == 2
    });
    assert!(recovered.is_some(), "{:?}", posted.lock().unwrap());
    assert_eq!(shown.lock().unwrap().len(), 2);
    assert!(shown.lock().unwrap()[1].summary.contains("recovered"));
}

#[test]
fn notify_test_reaches_each_channel_and_names_the_one_that_fails() {
    let (hook, posted) = webhook();
    let env = TestEnv::new();
    let out = env.dir.path().join("test-notice.json");
    env.write_config(&format!(
        "[notify]\ndesktop = false\ncommand = [\"sh\", \"-c\", \"cat > {}\"]\nwebhook = \"{hook}\"\n",
        out.display()
    ));
    let text = env.ok(&["notify", "test"]);
    assert!(
        text.contains("command: sent") && text.contains("webhook: sent"),
        "{text}"
    );
    assert_eq!(posted.lock().unwrap()[0]["event"], "test");
    let sent: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(sent["event"], "test");

    env.write_config(
        "[notify]\ndesktop = false\ncommand = [\"sh\", \"-c\", \"echo broken >&2; exit 3\"]\n",
    );
    let failed = env.run(&["notify", "test"]);
    assert!(!failed.status.success());
    let said = String::from_utf8_lossy(&failed.stdout);
    assert!(
        said.contains("command: failed") && said.contains("broken"),
        "{said}"
    );

    env.write_config("[notify]\ndesktop = false\n");
    let none = env.run(&["notify", "test"]);
    assert!(String::from_utf8_lossy(&none.stderr).contains("no channel"));
}

#[test]
fn quota_running_low_and_every_account_used_up_are_told_with_their_resets() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let (hook, posted) = webhook();
    env.write_config(&format!(
        "[notify]\ndesktop = false\nwebhook = \"{hook}\"\nquota_percent = 80\n"
    ));
    let daemon = env.start_daemon(&[]);
    let turn = || {
        crate::forward::send(
            "POST",
            &format!("{}/codex/responses", daemon.forwarder()),
            &[("content-type", "application/json")],
            br#"{"model":"m","input":"hi","stream":true}"#.to_vec(),
        )
    };
    let events = || -> Vec<Value> { posted.lock().unwrap().clone() };
    let told = |event: &str| {
        let found = wait_until(Duration::from_secs(20), || {
            events().iter().any(|e| e["event"] == event)
        });
        assert!(found.is_some(), "no {event}: {:?}", events());
        events().into_iter().find(|e| e["event"] == event).unwrap()
    };

    upstream.set_quota("acc-main", 85.0);
    assert_eq!(turn().status, 200);
    let low = told("quota_low");
    assert_eq!(low["account_id"], "acc-main");
    assert!(low["message"].as_str().unwrap().contains("85%"), "{low}");
    assert!(low["resets_at"].as_i64().unwrap() > crate::support::now());

    upstream.set_limited("acc-main");
    upstream.set_limited("acc-fallback");
    assert_eq!(turn().status, 429);
    let exhausted = told("quota_exhausted");
    assert!(
        exhausted["resets_at"].as_i64().unwrap() > crate::support::now(),
        "{exhausted}"
    );
    assert_eq!(exhausted["account_id"], Value::Null);
}

#[test]
fn a_lost_refresh_answer_is_told_with_the_expiry_to_log_in_before() {
    let upstream = FakeUpstream::start();
    let account = crate::support::TestAccount::new("acc-lost").expiring_in(6 * 3600);
    let env = TestEnv::with_account(&upstream, &account);
    let (hook, posted) = webhook();
    env.write_config(&format!(
        "[notify]\ndesktop = false\nwebhook = \"{hook}\"\n"
    ));
    let daemon = env.start_daemon(&[]);
    upstream.set_refresh(Refresh::RotateThenDrop);
    daemon.api("GET", "/v1/token?min_ttl=86400", None);
    let told = wait_until(Duration::from_secs(20), || {
        posted
            .lock()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "refresh_interrupted")
    });
    assert!(told.is_some(), "{:?}", posted.lock().unwrap());
    let notice = posted.lock().unwrap()[0].clone();
    assert_eq!(notice["account_id"], "acc-lost");
    let expires = notice["expires_at"].as_i64().unwrap();
    assert!(expires > crate::support::now() + 5 * 3600, "{notice}");
    assert!(
        notice["message"].as_str().unwrap().contains("log in again"),
        "{notice}"
    );
    assert!(!notice.to_string().contains(&account.access_token()));
}

#[test]
fn a_follower_tells_when_its_leader_is_away_and_when_it_is_back() {
    let upstream = FakeUpstream::start();
    let (leader, leader_daemon, follower) = crate::follow::leader_and_follower(&upstream);
    let (hook, posted) = webhook();
    follower.write_config(&format!(
        "follow_interval = 1\n[notify]\ndesktop = false\nwebhook = \"{hook}\"\n"
    ));
    let socket = leader_daemon.socket.clone();
    let _follower_daemon = crate::follow::start_follower(&follower, &socket);
    let told = |event: &str| {
        wait_until(Duration::from_secs(20), || {
            posted.lock().unwrap().iter().any(|e| e["event"] == event)
        })
        .is_some()
    };
    assert!(leader_daemon.stop().success());
    assert!(told("leader_unreachable"), "{:?}", posted.lock().unwrap());
    let _leader_daemon = leader.start_daemon(&[]);
    assert!(told("recovered"), "{:?}", posted.lock().unwrap());
    let events: Vec<String> = posted
        .lock()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["leader_unreachable", "recovered"]);
}
