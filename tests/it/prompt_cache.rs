//! The prompt cache: conversation affinity, keep-warm shadows and request
//! dumps, against the fake backend.

use std::time::Duration;

use serde_json::{Value, json};

use crate::forward::{Answer, send};
use crate::support::fake_upstream::FakeUpstream;
use crate::support::{Daemon, TestEnv, wait_until};

const INFERENCE: &str = "/backend-api/codex/responses";

/// One turn of conversation `key` on Codex's route, as Codex sends it
/// (`session-id` header).
fn turn(daemon: &Daemon, key: &str) -> Answer {
    let body = json!({"model": "m", "input": "hi", "stream": true, "store": false});
    send(
        "POST",
        &format!("{}/codex/responses", daemon.forwarder()),
        &[
            ("content-type", "application/json"),
            ("user-agent", "codex_cli_rs/0.171.0"),
            ("session-id", key),
        ],
        body.to_string().into_bytes(),
    )
}

/// The account that answered the last inference request.
fn last_account(upstream: &FakeUpstream) -> String {
    let requests = upstream.requests_to(INFERENCE);
    requests
        .last()
        .expect("a request reached the backend")
        .headers["chatgpt-account-id"]
        .clone()
}

/// One turn of `key`, answered: the account that served it.
fn served_by(daemon: &Daemon, upstream: &FakeUpstream, key: &str) -> String {
    let answer = turn(daemon, key);
    assert_eq!(answer.status, 200, "{}", answer.text());
    last_account(upstream)
}

fn pinned(daemon: &Daemon) -> u64 {
    let (status, health) = daemon.api("GET", "/v1/health", None);
    assert_eq!(status, 200);
    health["pinned_conversations"].as_u64().unwrap()
}

#[test]
fn a_conversation_stays_on_its_account_through_a_switch_and_moves_once_when_it_cannot_serve() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    assert_eq!(pinned(&daemon), 0);
    assert_eq!(served_by(&daemon, &upstream, "conv-1"), "acc-main");

    // The fallback becomes the main account: new conversations go there,
    // the one under way stays.
    env.ok(&["accounts", "switch", "acc-fallback"]);
    let switched = wait_until(Duration::from_secs(5), || {
        served_by(&daemon, &upstream, "probe") == "acc-fallback"
    });
    assert!(switched.is_some(), "new conversations follow the switch");
    for _ in 0..3 {
        assert_eq!(served_by(&daemon, &upstream, "conv-1"), "acc-main");
    }
    assert_eq!(pinned(&daemon), 2);
    let status: Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["daemon"]["pinned_conversations"], 2, "{status}");
    assert!(env.ok(&["status"]).contains("2 conversations pinned"));

    // Its account is used up: the conversation moves, once, to the
    // account that can serve, and stays there.
    upstream.set_limited("acc-main");
    let main_tries = || {
        upstream
            .requests_to(INFERENCE)
            .iter()
            .filter(|r| r.headers["chatgpt-account-id"] == "acc-main")
            .count()
    };
    let before = main_tries();
    assert_eq!(served_by(&daemon, &upstream, "conv-1"), "acc-fallback");
    assert_eq!(main_tries(), before + 1, "one try on the used-up account");
    for _ in 0..3 {
        assert_eq!(served_by(&daemon, &upstream, "conv-1"), "acc-fallback");
    }
    assert_eq!(
        main_tries(),
        before + 1,
        "never back to the used-up account"
    );
    assert!(
        daemon
            .log()
            .contains("a conversation moved to another account")
    );
}

#[test]
fn a_moved_conversation_stays_on_its_new_account_when_the_old_one_can_serve_again() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    upstream.set_quota("acc-main", 50.0);
    let daemon = env.start_daemon(&[]);
    assert_eq!(served_by(&daemon, &upstream, "conv-1"), "acc-main");

    // The killswitch blocks the main account: the conversation moves.
    env.ok(&["killswitch", "set", "acc-main:10,100"]);
    env.ok(&["killswitch", "on"]);
    let moved = wait_until(Duration::from_secs(5), || {
        served_by(&daemon, &upstream, "conv-1") == "acc-fallback"
    });
    assert!(moved.is_some(), "the blocked account is left");

    // The block is lifted: new conversations go to the main account
    // again, the moved one stays where it went.
    env.ok(&["killswitch", "off"]);
    let lifted = wait_until(Duration::from_secs(5), || {
        served_by(&daemon, &upstream, "conv-2") == "acc-main"
    });
    assert!(lifted.is_some(), "the main account serves again");
    for _ in 0..3 {
        assert_eq!(served_by(&daemon, &upstream, "conv-1"), "acc-fallback");
    }
}

#[test]
fn a_public_api_conversation_is_pinned_by_its_prompt_cache_key() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    // `/v1/responses`: the body's prompt_cache_key names the conversation.
    let body = json!({"model": "m", "input": "hi", "prompt_cache_key": "pck-1"});
    let public = |body: &Value| {
        send(
            "POST",
            &format!("{}/v1/responses", daemon.forwarder()),
            &[("content-type", "application/json")],
            body.to_string().into_bytes(),
        )
    };
    assert_eq!(public(&body).status, 200);
    assert_eq!(last_account(&upstream), "acc-main");
    env.ok(&["accounts", "switch", "acc-fallback"]);
    let switched = wait_until(Duration::from_secs(5), || {
        served_by(&daemon, &upstream, "probe") == "acc-fallback"
    });
    assert!(switched.is_some());
    assert_eq!(public(&body).status, 200);
    assert_eq!(last_account(&upstream), "acc-main", "pck-1 stays");
    let other = json!({"model": "m", "input": "hi", "prompt_cache_key": "pck-2"});
    assert_eq!(public(&other).status, 200);
    assert_eq!(last_account(&upstream), "acc-fallback");
    // Without a key, nothing is pinned.
    let before = pinned(&daemon);
    assert_eq!(public(&json!({"model": "m", "input": "hi"})).status, 200);
    assert_eq!(pinned(&daemon), before);
}
