//! Real OpenAI-compatible clients through the forwarder's Chat
//! Completions, offline in a private network namespace against the fake
//! backend: the OpenAI Python SDK and the `llm` CLI from PyPI, OpenCode
//! after `setup opencode` and the Pi coding agent after `setup pi`.

use std::process::{Command, Output};

use serde_json::Value;

use crate::support::fake_upstream::FakeUpstream;
use crate::support::{TestEnv, opencode_bin, pi_cli, python_bin};

const INFERENCE: &str = "/backend-api/codex/responses";

/// `python` of the clients' environment, with only what it needs.
fn python(env: &TestEnv) -> Command {
    let mut cmd = Command::new(python_bin());
    cmd.env_clear()
        .env("HOME", env.user_home())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(env.dir.path());
    cmd
}

fn succeeded(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_openai_python_sdk_chats_streams_and_calls_tools() {
    isolated!(the_openai_python_sdk_chats_streams_and_calls_tools);
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    upstream.call_tools();
    let daemon = env.start_daemon(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/chat_sdk.py");
    let out = python(&env)
        .arg(script)
        .env("BASE", daemon.forwarder())
        .output()
        .unwrap();
    let got: Value = serde_json::from_str(succeeded(out).trim()).unwrap();
    assert_eq!(got["plain"]["content"], "hello from the fake backend");
    assert_eq!(got["plain"]["finish"], "stop");
    let usage = &got["plain"]["usage"];
    assert_eq!(usage["prompt_tokens"], 1200);
    assert_eq!(usage["completion_tokens"], 300);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 1024);
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 128);
    let stream = &got["stream"];
    assert_eq!(stream["roles"][0], "assistant");
    assert_eq!(stream["calls"]["0"]["id"], "call_fake");
    assert_eq!(stream["calls"]["0"]["name"], "get_weather");
    assert_eq!(stream["calls"]["0"]["arguments"], r#"{"city":"Paris"}"#);
    assert_eq!(stream["finish"], "tool_calls");
    assert_eq!(stream["usage"]["total_tokens"], 1500);
    assert_eq!(got["answered"], "the tool said: sunny, 21 C");
    assert_eq!(got["refused"]["status"], 400);
    assert_eq!(got["refused"]["param"], "n");
    let usage: Value =
        serde_json::from_str(&env.ok(&["usage", "--json", "--by", "client"])).unwrap();
    assert_eq!(usage["rows"][0]["client"], "OpenAI", "{usage}");
    assert_eq!(usage["rows"][0]["requests"], 3);
}

/// `llm` with the forwarder as an OpenAI-compatible model of its
/// `extra-openai-models.yaml`.
fn llm(env: &TestEnv, base: &str, args: &[&str]) -> String {
    let config = env.dir.path().join("llm");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("extra-openai-models.yaml"),
        format!("- model_id: broker\n  model_name: gpt-5.1-codex\n  api_base: \"{base}/v1\"\n"),
    )
    .unwrap();
    let out = python(env)
        .args(["-m", "llm", "-m", "broker"])
        .args(args)
        .env("LLM_USER_PATH", &config)
        .env("OPENAI_API_KEY", "sk-anything")
        .output()
        .unwrap();
    succeeded(out)
}

#[test]
fn the_llm_cli_completes_a_turn_streamed_or_not_and_falls_back_on_429() {
    isolated!(the_llm_cli_completes_a_turn_streamed_or_not_and_falls_back_on_429);
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let base = daemon.forwarder();
    let account =
        || upstream.requests_to(INFERENCE).pop().unwrap().headers["chatgpt-account-id"].clone();
    assert!(llm(&env, &base, &["Say hello"]).contains("hello from the fake backend"));
    assert_eq!(account(), "acc-main");
    let sent = upstream.requests_to(INFERENCE).pop().unwrap().json();
    assert_eq!(sent["input"][0]["content"][0]["text"], "Say hello");

    upstream.set_limited("acc-main");
    let out = llm(&env, &base, &["--no-stream", "Say hello again"]);
    assert!(out.contains("hello from the fake backend"), "{out}");
    assert_eq!(account(), "acc-fallback");
    let usage: Value =
        serde_json::from_str(&env.ok(&["usage", "--json", "--by", "account"])).unwrap();
    let rows = usage["rows"].as_array().unwrap();
    assert!(
        rows.iter().any(|r| r["account_id"] == "acc-fallback"),
        "{usage}"
    );
}

#[test]
fn opencode_completes_a_turn_through_the_broker_after_setup_with_no_other_step() {
    isolated!(opencode_completes_a_turn_through_the_broker_after_setup_with_no_other_step);
    let upstream = FakeUpstream::start();
    let (env, main, _) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let out = env.ok(&["setup", "opencode"]);
    assert!(out.contains("provider.codex-broker"), "{out}");
    let config = env.user_home().join(".config/opencode/opencode.json");
    let written: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert_eq!(
        written["provider"]["codex-broker"]["options"]["baseURL"],
        format!("{}/v1", daemon.forwarder())
    );
    let out = Command::new(opencode_bin())
        .env_clear()
        .env("HOME", env.user_home())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(env.dir.path())
        .args(["run", "say hello"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(succeeded(out).contains("hello from the fake backend"));
    let requests = upstream.requests_to(INFERENCE);
    assert!(!requests.is_empty(), "OpenCode reached the forwarder");
    let bearer = format!("Bearer {}", main.access_token());
    assert!(
        requests
            .iter()
            .all(|r| r.headers["authorization"] == bearer)
    );
    assert!(env.ok(&["setup", "opencode", "--undo"]).contains("Removed"));
    assert!(!config.exists());
}

#[test]
fn pi_completes_a_turn_through_the_broker_after_setup_with_no_other_step() {
    isolated!(pi_completes_a_turn_through_the_broker_after_setup_with_no_other_step);
    let upstream = FakeUpstream::start();
    let (env, main, _) = TestEnv::with_main_and_fallback(&upstream);
    upstream.stream_text();
    let daemon = env.start_daemon(&[]);
    let agent = env.user_home().join(".pi/agent");
    std::fs::create_dir_all(&agent).unwrap();
    let theirs = r#"{"anthropic": {"type": "api_key", "key": "sk-ant-own"}}"#;
    std::fs::write(agent.join("auth.json"), theirs).unwrap();
    let out = env.ok(&["setup", "pi"]);
    assert!(out.contains("baseUrl") && out.contains("stand-in"), "{out}");
    let auth: Value =
        serde_json::from_slice(&std::fs::read(agent.join("auth.json")).unwrap()).unwrap();
    assert_eq!(auth["anthropic"]["key"], "sk-ant-own", "kept");
    let stand_in = auth["openai-codex"]["key"].as_str().unwrap().to_owned();
    let models: Value =
        serde_json::from_slice(&std::fs::read(agent.join("models.json")).unwrap()).unwrap();
    assert_eq!(
        models["providers"]["openai-codex"]["baseUrl"],
        format!("{}/backend-api", daemon.forwarder())
    );
    let out = Command::new("node")
        .arg(pi_cli())
        .env_clear()
        .env("HOME", env.user_home())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(env.dir.path())
        .args([
            "--provider",
            "openai-codex",
            "--model",
            "gpt-5.1-codex",
            "-p",
            "say hello",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(succeeded(out).contains("hello from the fake backend"));
    let requests = upstream.requests_to(INFERENCE);
    assert!(!requests.is_empty(), "Pi reached the forwarder");
    let bearer = format!("Bearer {}", main.access_token());
    for r in &requests {
        assert_eq!(
            r.headers["authorization"], bearer,
            "the forwarder's credentials"
        );
        assert_eq!(r.headers["chatgpt-account-id"], "acc-main");
        assert!(!format!("{:?}", r.headers).contains(&stand_in));
    }
    let undone = env.ok(&["setup", "pi", "--undo"]);
    assert!(
        undone.contains("Restored") && undone.contains("Removed"),
        "{undone}"
    );
    assert_eq!(
        std::fs::read_to_string(agent.join("auth.json")).unwrap(),
        theirs
    );
    assert!(!agent.join("models.json").exists());
    assert!(!agent.join("settings.json").exists());
}
