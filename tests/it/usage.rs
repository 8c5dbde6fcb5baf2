//! Token usage: what the forwarder's answers used, per account, client
//! and model, from the socket API, the `usage` command and the usage file.

use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};

use crate::forward::send;
use crate::support::fake_upstream::{FAKE_MODEL, FakeUpstream};
use crate::support::{Daemon, TestEnv};

/// The rows of `/v1/usage`.
fn usage_rows(daemon: &Daemon) -> Vec<Value> {
    let (status, body) = daemon.api("GET", "/v1/usage?since=3600", None);
    assert_eq!(status, 200, "{body}");
    assert!(body["until"].as_i64().unwrap() - body["since"].as_i64().unwrap() == 3600);
    body["rows"].as_array().unwrap().clone()
}

pub(crate) fn post(
    daemon: &Daemon,
    path: &str,
    user_agent: &str,
    body: &Value,
) -> crate::forward::Answer {
    send(
        "POST",
        &format!("{}{path}", daemon.forwarder()),
        &[
            ("content-type", "application/json"),
            ("user-agent", user_agent),
        ],
        body.to_string().into_bytes(),
    )
}

/// One streamed Codex request through the forwarder: its status.
pub(crate) fn infer(daemon: &Daemon) -> u16 {
    let body = json!({"model": "m", "input": "hi", "stream": true});
    post(daemon, "/codex/responses", "codex_cli_rs/0.171.0", &body).status
}

#[test]
fn every_route_counts_its_answers_per_account_client_and_model() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let secret_prompt = "the prompt text that must never be written anywhere";
    let body = json!({"model": "m", "input": secret_prompt, "stream": true});

    // Codex's own route (SSE), twice; the public API streamed and not.
    for _ in 0..2 {
        let answer = post(
            &daemon,
            "/codex/responses",
            "codex_cli_rs/0.171.0 (Linux; x86_64)",
            &body,
        );
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert!(answer.text().contains("response.completed"));
    }
    let streamed = post(&daemon, "/v1/responses", "OpenAI/Python 1.99.0", &body);
    assert_eq!(streamed.status, 200, "{}", streamed.text());
    let whole = json!({"model": "m", "input": "hi", "stream": false});
    let answer = post(&daemon, "/v1/responses", "opencode/1.0.3", &whole);
    assert_eq!(answer.status, 200, "{}", answer.text());

    let mut rows = usage_rows(&daemon);
    rows.sort_by_key(|r| r["client"].as_str().unwrap().to_owned());
    let clients: Vec<&str> = rows.iter().map(|r| r["client"].as_str().unwrap()).collect();
    assert_eq!(clients, ["OpenAI", "codex_cli_rs", "opencode"], "{rows:?}");
    for row in &rows {
        let requests = if row["client"] == "codex_cli_rs" {
            2
        } else {
            1
        };
        assert_eq!(row["account_id"], "acc-main", "{row}");
        assert_eq!(row["model"], FAKE_MODEL, "{row}");
        assert_eq!(row["requests"], requests, "{row}");
        assert_eq!(row["errors"], 0, "{row}");
        assert_eq!(row["input_tokens"], 1200 * requests, "{row}");
        assert_eq!(row["cached_input_tokens"], 1024 * requests, "{row}");
        assert_eq!(row["output_tokens"], 300 * requests, "{row}");
        assert_eq!(row["reasoning_tokens"], 128 * requests, "{row}");
    }

    // An answer that does not complete is a request with an error.
    upstream.fail_inference(Some(500));
    let failed = post(&daemon, "/codex/responses", "codex_cli_rs/0.171.0", &body);
    assert_eq!(failed.status, 500, "{}", failed.text());

    // The command says the same; --by sums.
    let out: Value = serde_json::from_str(&env.ok(&["usage", "--json", "--since", "1h"])).unwrap();
    let codex: Vec<&Value> = out["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["client"] == "codex_cli_rs")
        .collect();
    assert_eq!(
        codex
            .iter()
            .map(|r| r["requests"].as_u64().unwrap())
            .sum::<u64>(),
        2 + 1
    );
    assert_eq!(
        codex
            .iter()
            .map(|r| r["errors"].as_u64().unwrap())
            .sum::<u64>(),
        1
    );
    let table = env.ok(&["usage", "--by", "client"]);
    assert!(table.contains("codex_cli_rs"), "{table}");
    assert!(table.contains("2,400"), "{table}");
    let by_model: Value =
        serde_json::from_str(&env.ok(&["usage", "--by", "model", "--json"])).unwrap();
    let models: Vec<&str> = by_model["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["model"].as_str().unwrap())
        .collect();
    assert!(models.contains(&FAKE_MODEL), "{models:?}");

    // SIGTERM: the daemon saves what it counted, 0600, with no prompt and
    // no token in it; a later `usage` reads the file.
    assert!(daemon.stop().success());
    let path = env.broker_home().join("usage.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!text.contains(secret_prompt), "{text}");
    for secret in ["access_token", "refresh_token", "Bearer", "ey"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let offline: Value = serde_json::from_str(&env.ok(&["usage", "--json"])).unwrap();
    let requests: u64 = offline["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(requests, 5);
}

#[test]
fn a_usage_file_that_cannot_be_read_is_kept_aside_and_bad_input_is_refused() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let path = env.broker_home().join("usage.json");
    std::fs::write(&path, b"{\"version\": 1, \"rows\": [tr").unwrap();
    let daemon = env.start_daemon(&[]);
    assert!(usage_rows(&daemon).is_empty());
    let aside = env.broker_home().join("usage.json.unreadable");
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        b"{\"version\": 1, \"rows\": [tr"
    );
    let (status, body) = daemon.api("GET", "/v1/usage?since=yesterday", None);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("since"));
    let out = env.run(&["usage", "--since", "a while"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--since `a while`"), "{stderr}");
    let empty = env.ok(&["usage"]);
    assert!(empty.contains("No usage in the last 1d"), "{empty}");
}
