//! The dashboard: its page and state over HTTP, the `dashboard` command,
//! and what a person sees in a real headless Chromium.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use crate::forward::send;
use crate::support::browser::{self, Browser};
use crate::support::fake_upstream::{FakeUpstream, Refresh};
use crate::support::{Daemon, TestEnv, skip, wait_until};
use crate::usage::infer;

/// Every token string of the store.
fn tokens(env: &TestEnv) -> Vec<String> {
    let store = env.read_store();
    let mut found = Vec::new();
    for account in store["accounts"].as_array().unwrap() {
        for field in ["access_token", "refresh_token", "id_token"] {
            if let Some(token) = account["tokens"][field].as_str() {
                found.push(token.to_owned());
            }
        }
    }
    assert!(found.len() >= 6, "{store}");
    found
}

fn dashboard_env() -> (FakeUpstream, TestEnv, Daemon) {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    upstream.set_quota("acc-main", 42.0);
    assert_eq!(infer(&daemon), 200);
    (upstream, env, daemon)
}

#[test]
fn the_page_and_its_state_come_with_a_policy_of_their_own_origin() {
    let (_upstream, env, daemon) = dashboard_env();
    let base = daemon.forwarder();
    let moved = send("GET", &format!("{base}/ui"), &[], vec![]);
    assert_eq!(moved.status, 200, "redirected to /ui/");
    for (path, content_type) in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
        ("/ui/state", "application/json"),
    ] {
        let answer = send("GET", &format!("{base}{path}"), &[], vec![]);
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
        let header = |name: &str| answer.headers[name].to_str().unwrap().to_owned();
        assert!(header("content-type").starts_with(content_type), "{path}");
        let policy = header("content-security-policy");
        assert!(
            policy.starts_with("default-src 'none'; script-src 'self';"),
            "{policy}"
        );
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        assert_eq!(header("x-content-type-options"), "nosniff");
    }
    let state = send("GET", &format!("{base}/ui/state"), &[], vec![]);
    for token in tokens(&env) {
        assert!(!state.text().contains(&token), "a token in the state");
    }
    let state = state.json();
    let main = &state["accounts"][0];
    assert_eq!(main["id"], "acc-main", "{state}");
    assert_eq!(main["windows"][0]["name"], "5-hour");
    assert_eq!(main["windows"][0]["used_percent"], 42.0);
    assert!(
        main["windows"][0]["pace"]["elapsed_percent"].is_number(),
        "{main}"
    );
    assert_eq!(main["windows"][1]["used_percent"], 12.0);
    let series = &state["usage"]["series"][0];
    assert_eq!(series["account_id"], "acc-main");
    assert_eq!(series["requests"][23], 1, "{series}");
    assert_eq!(series["tokens"][23], 1500, "{series}");
    assert!(!state["journal"].as_array().unwrap().is_empty(), "{state}");

    // Another origin, another port of this machine included, gets nothing.
    let own = base.clone();
    for (name, value) in [
        ("origin", "http://127.0.0.1:3000"),
        ("sec-fetch-site", "same-site"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let answer = send("GET", &format!("{own}/ui/state"), &[(name, value)], vec![]);
        assert_eq!(answer.status, 403, "{name}: {value}: {}", answer.text());
    }
    let same = send(
        "GET",
        &format!("{own}/ui/state"),
        &[("origin", &own)],
        vec![],
    );
    assert_eq!(same.status, 200, "{}", same.text());
    // Nothing else lives there, and nothing there takes a POST.
    assert_eq!(
        send("GET", &format!("{own}/ui/x.js"), &[], vec![]).status,
        404
    );
    assert_eq!(
        send("POST", &format!("{own}/ui/state"), &[], vec![]).status,
        404
    );
}

#[test]
fn the_dashboard_command_prints_the_url_and_opens_a_browser() {
    let (_upstream, env, daemon) = dashboard_env();
    let url = format!("{}/ui/", daemon.forwarder());
    let printed = env
        .cmd()
        .args(["dashboard", "--no-browser"])
        .output()
        .unwrap();
    assert!(printed.status.success());
    assert_eq!(String::from_utf8_lossy(&printed.stdout).trim(), url);

    let opened = env.user_home().join("opened");
    let opener = env.user_home().join("browser.sh");
    std::fs::write(
        &opener,
        format!("#!/bin/sh\necho \"$1\" > {}\n", opened.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&opener, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = env
        .cmd()
        .arg("dashboard")
        .env("BROWSER", &opener)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let seen = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&opened).is_ok_and(|s| s.trim() == url)
    });
    assert!(seen.is_some(), "the browser was not opened on {url}");

    daemon.stop();
    let none = env
        .cmd()
        .args(["dashboard", "--no-browser"])
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(1));
    let said = String::from_utf8_lossy(&none.stderr);
    assert!(said.contains("codex-broker serve"), "{said}");
}

/// A one-page server on another loopback port, standing for a dev server's
/// page on this machine: same site as the forwarder, another origin.
fn other_origin_page() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let page = "<!doctype html><title>elsewhere</title><p>another origin</p>";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    format!("http://127.0.0.1:{port}/")
}

/// The text of the account card of `id`.
fn card(browser: &Browser, id: &str) -> String {
    let script = format!(
        "const c = document.querySelector('#accounts [data-account=\"{id}\"]'); \
         return c ? c.innerText : '';"
    );
    browser
        .eval(&script)
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn distinct_colours(png_bytes: &[u8]) -> usize {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let channels = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> =
        pixels[..info.buffer_size()].chunks(channels).collect();
    colours.len()
}

#[test]
fn a_real_chromium_shows_the_accounts_quota_usage_and_live_updates() {
    if !browser::installed() {
        return skip("chromium and chromium-driver (Debian) are not installed");
    }
    let (upstream, env, daemon) = dashboard_env();
    let base = daemon.forwarder();
    let browser = Browser::start();
    browser.open(&format!("{base}/ui/"));
    let shown = wait_until(Duration::from_secs(20), || {
        card(&browser, "acc-main").contains("42% used")
            && !card(&browser, "acc-fallback").is_empty()
    });
    assert!(shown.is_some(), "the page never showed both accounts");

    let main = card(&browser, "acc-main");
    for seen in [
        "acc-main",
        "acc-main@example.com",
        "plus",
        "5-hour: 42% used",
        "weekly: 12% used",
        "resets in",
        "at the latest",
        "on pace",
        "expires in",
    ] {
        assert!(main.contains(seen), "{seen:?} not in:\n{main}");
    }
    let bars = browser.eval("return document.querySelectorAll('#chart svg rect').length;");
    assert!(bars.as_u64().unwrap() >= 1, "no bar in the chart");
    let journal = browser.eval("return document.querySelectorAll('#journal tbody tr').length;");
    assert!(journal.as_u64().unwrap() >= 1, "no journal line");

    // A change shows within 5 seconds, without a reload.
    browser.eval("window.unreloaded = true; return null;");
    upstream.set_quota("acc-main", 77.0);
    assert_eq!(infer(&daemon), 200);
    let updated = wait_until(Duration::from_secs(5), || {
        card(&browser, "acc-main").contains("5-hour: 77% used")
    });
    assert!(
        updated.is_some(),
        "no live update: {}",
        card(&browser, "acc-main")
    );
    assert_eq!(
        browser.eval("return window.unreloaded === true;"),
        Value::Bool(true)
    );

    // A problem shows with its fix.
    upstream.set_refresh(Refresh::error(401, "refresh_token_invalidated"));
    daemon.api("GET", "/v1/token?account=acc-fallback&min_ttl=86400", None);
    let problem = wait_until(Duration::from_secs(5), || {
        let text = browser.eval("return document.getElementById('problems').innerText;");
        text.as_str()
            .is_some_and(|t| t.contains("Fix: log in again"))
    });
    assert!(problem.is_some(), "the needs-login problem was not shown");

    // No token in the DOM; nothing fetched from another origin.
    let html = browser.eval("return document.documentElement.outerHTML;");
    for token in tokens(&env) {
        assert!(
            !html.as_str().unwrap().contains(&token),
            "a token in the DOM"
        );
    }
    let fetched = browser.eval(
        "return performance.getEntriesByType('resource').map(e => e.name)\
         .concat([location.href]);",
    );
    let fetched = fetched.as_array().unwrap();
    assert!(fetched.len() >= 3, "{fetched:?}");
    for url in fetched {
        assert!(
            url.as_str().unwrap().starts_with(&base),
            "{url} is elsewhere"
        );
    }
    assert!(
        distinct_colours(&browser.screenshot()) > 16,
        "a blank screenshot"
    );

    // A page of another origin on this machine cannot read the state.
    browser.open(&other_origin_page());
    let read = browser.eval_async(&format!(
        "const done = arguments[0]; fetch('{base}/ui/state').then(r => r.text())\
         .then(t => done('read: ' + t.length), e => done('refused: ' + e.message));"
    ));
    assert!(read.as_str().unwrap().starts_with("refused"), "{read}");
    let metrics = send("GET", &format!("{base}/metrics"), &[], vec![]).text();
    assert!(
        metrics.contains("route=\"dashboard\",code=\"403\"}"),
        "the forwarder did not refuse it:\n{metrics}"
    );
}
