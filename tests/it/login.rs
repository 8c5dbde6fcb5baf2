//! Browser, device-code and API-key logins, end to end against the fake issuer.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::support::fake_upstream::FakeUpstream;
use crate::support::{TestAccount, TestEnv};

/// Reads the child's stderr until the sign-in URL appears.
fn sign_in_url(child: &mut Child) -> String {
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let url = lines
        .by_ref()
        .map(Result::unwrap)
        .find_map(|l| l.trim().starts_with("http").then(|| l.trim().to_owned()))
        .expect("the login prints a URL");
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    url
}

fn get(url: &str) -> (u16, String) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let response = codex_broker::oauth::http_client(Duration::from_secs(10))
            .get(url)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    })
}

#[test]
fn browser_login_end_to_end() {
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_issuer(&upstream);
    let account = TestAccount::new("acc-browser");
    upstream.set_login_account(&account, 0);
    let mut child = env
        .std_cmd()
        .args([
            "login",
            "--no-browser",
            "--port",
            "0",
            "--label",
            "personal",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = sign_in_url(&mut child);
    let parsed = url::Url::parse(&url).unwrap();
    let query: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
    assert_eq!(parsed.path(), "/oauth/authorize");
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["scope"], "openid profile email offline_access");
    assert!(query["redirect_uri"].starts_with("http://localhost:"));
    assert!(query["redirect_uri"].ends_with("/auth/callback"));
    assert_eq!(query["state"].len(), 43);

    let (status, page) = get(&url);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Signed in"), "{page}");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "Logged in: personal (acc-browser@example.com, plus) is a main account.\n\
             Published it to {}.\n",
            env.auth_path().display()
        )
    );
    let exchange = upstream.requests_to("/oauth/token");
    assert_eq!(exchange.len(), 1);
    assert!(String::from_utf8_lossy(&exchange[0].body).contains("grant_type=authorization_code"));
    let store = env.read_store();
    assert_eq!(store["accounts"][0]["id"], "acc-browser");
    assert_eq!(store["accounts"][0]["label"], "personal");
    assert_eq!(store["accounts"][0]["plan"], "plus");
    assert_eq!(store["published"], "acc-browser");
    assert_eq!(
        env.read_auth()["tokens"]["refresh_token"],
        account.refresh_token
    );
}

#[test]
fn browser_login_rejects_a_forged_state() {
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_issuer(&upstream);
    let mut child = env
        .std_cmd()
        .args(["login", "--no-browser", "--port", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = url::Url::parse(&sign_in_url(&mut child)).unwrap();
    let redirect = url
        .query_pairs()
        .find(|(k, _)| k == "redirect_uri")
        .unwrap()
        .1
        .into_owned();
    let (status, page) = get(&format!("{redirect}?code=stolen&state=forged"));
    assert_eq!(status, 400);
    assert!(page.contains("does not match"), "{page}");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(
        upstream.requests_to("/oauth/token").is_empty(),
        "a forged code is never exchanged"
    );
    assert!(!env.store_path().exists());
}

#[test]
fn browser_login_port_in_use_and_timeout() {
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_issuer(&upstream);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = env.run(&["login", "--no-browser", "--port", &port]);
    assert_eq!(out.status.code(), Some(13));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("port {port} on 127.0.0.1 is in use")),
        "{stderr}"
    );

    let out = env.run(&["login", "--no-browser", "--port", "0", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no answer from the browser within 1 seconds"),
        "{stderr}"
    );
}

#[test]
fn device_login_end_to_end() {
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_issuer(&upstream);
    let first = TestAccount::new("acc-first");
    env.import_account(&first);
    let account = TestAccount::new("acc-device");
    upstream.set_login_account(&account, 2);
    let out = env.run(&["login", "--device"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("open {}/codex/device", upstream.url())),
        "{stderr}"
    );
    assert!(stderr.contains("ABCD-1234"), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Logged in: acc-device (acc-device@example.com, plus) is a fallback account.\n"
    );
    assert_eq!(
        upstream.requests_to("/api/accounts/deviceauth/token").len(),
        3
    );
    let exchange = &upstream.requests_to("/oauth/token")[0];
    let body = String::from_utf8_lossy(&exchange.body);
    assert!(body.contains("code_verifier=device-verifier-3"), "{body}");
    assert!(body.contains("deviceauth%2Fcallback"), "{body}");
    let store = env.read_store();
    assert_eq!(store["accounts"][1]["id"], "acc-device");
    assert_eq!(
        store["published"], "acc-first",
        "a later account is not published"
    );
}

#[test]
fn a_new_login_revives_an_account_that_needed_one() {
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_issuer(&upstream);
    let old = TestAccount::new("acc-revive");
    env.import_account(&old);
    let mut store = env.read_store();
    store["accounts"][0]["state"] = serde_json::json!("needs_login");
    store["accounts"][0]["state_reason"] = serde_json::json!("refresh_token_reused");
    std::fs::write(env.store_path(), store.to_string()).unwrap();
    let mut new = TestAccount::new("acc-revive");
    new.refresh_token = "rt-acc-revive-new".into();
    new.refreshed_at += 10;
    upstream.set_login_account(&new, 0);
    let out = env.run(&["login", "--device"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = env.read_store();
    assert_eq!(
        store["accounts"].as_array().unwrap().len(),
        1,
        "one login per account"
    );
    assert_eq!(store["accounts"][0]["state"], "ok");
    assert_eq!(
        store["accounts"][0]["tokens"]["refresh_token"],
        "rt-acc-revive-new"
    );
    assert_eq!(
        env.read_auth()["tokens"]["refresh_token"],
        "rt-acc-revive-new",
        "republished"
    );
}

#[test]
fn api_key_login_reads_stdin() {
    let env = TestEnv::new();
    let mut child = env
        .std_cmd()
        .args(["login", "--api-key", "--label", "platform"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"sk-from-stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("Logged in: platform (api_key) is a main account."),
        "{stdout}"
    );
    assert!(!stdout.contains("sk-from-stdin"));
    assert_eq!(env.read_auth()["OPENAI_API_KEY"], "sk-from-stdin");
    assert_eq!(env.read_store()["accounts"][0]["kind"], "api_key");

    let out = env
        .cmd()
        .args(["login", "--api-key"])
        .write_stdin("\n")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no API key on stdin"));
}
