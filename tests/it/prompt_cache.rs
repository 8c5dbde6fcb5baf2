//! The prompt cache: conversation affinity, keep-warm shadows and request
//! dumps, against the fake backend.

use std::time::Duration;

use serde_json::{Value, json};

use crate::forward::{Answer, send};
use crate::support::fake_upstream::FakeUpstream;
use crate::support::{Daemon, TestEnv, wait_for, wait_until};

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

/// The inference requests of conversation `key` (by its `session-id`).
fn requests_of(upstream: &FakeUpstream, key: &str) -> Vec<crate::support::fake_upstream::Recorded> {
    upstream
        .requests_to(INFERENCE)
        .into_iter()
        .filter(|r| r.headers.get("session-id").map(String::as_str) == Some(key))
        .collect()
}

fn cachekeep_status(env: &TestEnv) -> Value {
    serde_json::from_str(&env.ok(&["cachekeep", "status", "--json"])).unwrap()
}

const KEEP_WARM_FAST: &str = "[cachekeep]\nenabled = true\ninterval = 1\nidle_cap = 3\n";
const KEEP_WARM_LONG: &str = "[cachekeep]\nenabled = true\ninterval = 1\nidle_cap = 30\n";

#[test]
fn keep_warm_repeats_a_conversation_on_its_account_at_the_interval_until_the_cap() {
    let upstream = FakeUpstream::start();
    let (env, main, _) = TestEnv::with_main_and_fallback(&upstream);
    env.write_config(KEEP_WARM_FAST);
    let daemon = env.start_daemon(&[]);
    assert_eq!(served_by(&daemon, &upstream, "conv-1"), "acc-main");
    // A subagent's conversation is not warmed (subagents = false).
    let subagent = send(
        "POST",
        &format!("{}/codex/responses", daemon.forwarder()),
        &[
            ("content-type", "application/json"),
            ("session-id", "sub-session"),
            ("thread-id", "sub-thread"),
            ("x-openai-subagent", "review"),
        ],
        json!({"model": "m", "input": "review", "stream": true})
            .to_string()
            .into_bytes(),
    );
    assert_eq!(subagent.status, 200);
    // The shadows stay on the account whatever a switch says.
    env.ok(&["accounts", "switch", "acc-fallback"]);

    let warmed = wait_until(Duration::from_secs(10), || {
        requests_of(&upstream, "conv-1").len() >= 3
    });
    assert!(warmed.is_some(), "two shadows within the cap");
    let requests = requests_of(&upstream, "conv-1");
    let real = requests[0].json();
    for shadow in &requests[1..] {
        assert_eq!(shadow.headers["chatgpt-account-id"], "acc-main");
        assert_eq!(
            shadow.headers["authorization"],
            format!("Bearer {}", main.access_token())
        );
        let body = shadow.json();
        assert_eq!(body["store"], false);
        assert_eq!(body["input"], real["input"]);
        assert_eq!(body["model"], real["model"]);
    }
    let status = cachekeep_status(&env);
    assert_eq!(status["enabled"], true);
    assert_eq!(
        (&status["interval"], &status["idle_cap"]),
        (&json!(1), &json!(3))
    );
    let sessions = status["sessions"].as_array().unwrap();
    assert!(sessions.len() <= 1, "{status}");

    // Three seconds after its last real request the conversation is no
    // longer kept, and no shadow follows.
    let dropped = wait_until(Duration::from_secs(10), || {
        let (_, status) = daemon.api("GET", "/v1/cachekeep", None);
        status["sessions"].as_array().unwrap().is_empty()
    });
    assert!(dropped.is_some(), "the cap ends the warming");
    let shadows = requests_of(&upstream, "conv-1").len() - 1;
    assert!(
        (2..=3).contains(&shadows),
        "{shadows} shadows in 3 s at 1 s"
    );
    let subagent_requests = upstream
        .requests_to(INFERENCE)
        .iter()
        .filter(|r| r.headers.contains_key("x-openai-subagent"))
        .count();
    assert_eq!(subagent_requests, 1, "no shadow of a subagent");

    // Counted apart, as client `cachekeep`, on the account warmed.
    let usage: Value =
        serde_json::from_str(&env.ok(&["usage", "--json", "--by", "client"])).unwrap();
    let row = usage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["client"] == "cachekeep")
        .cloned()
        .unwrap_or_else(|| panic!("no cachekeep usage: {usage}"));
    assert_eq!(row["requests"].as_u64().unwrap() as usize, shadows);
    assert_eq!(row["errors"], 0);
    assert!(
        upstream.requests_to("/oauth/token").is_empty(),
        "no refresh"
    );
}

#[test]
fn a_warm_reports_its_cached_and_uncached_input_and_a_used_up_account_gets_none() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    env.write_config(KEEP_WARM_LONG);
    // An answer whose usage comes before any output: the shadow reads it.
    upstream.answer_without_output();
    let daemon = env.start_daemon(&[]);
    assert_eq!(served_by(&daemon, &upstream, "conv-1"), "acc-main");
    let reported = wait_for(Duration::from_secs(10), || {
        let (_, status) = daemon.api("GET", "/v1/cachekeep", None);
        let session = &status["sessions"][0];
        (session["last_input_tokens"] == 1200).then(|| session.clone())
    });
    let session = reported.expect("a warm with its tokens");
    assert_eq!(session["last_cached_input_tokens"], 1024);
    assert_eq!(session["account_id"], "acc-main");
    assert!(session["warms"].as_u64().unwrap() >= 1);
    assert!(
        session["last_warm_at"].as_i64().unwrap() >= session["last_request_at"].as_i64().unwrap()
    );
    let human = env.ok(&["cachekeep"]);
    assert!(
        human.contains("Keep-warm is on") && human.contains("1,024 / 1,200"),
        "{human}"
    );

    // The account is used up: no shadow goes to it, none to another.
    upstream.set_limited("acc-main");
    upstream.set_quota("acc-main", 100.0);
    let answer = turn(&daemon, "conv-2");
    assert_eq!(answer.status, 200);
    let limited_seen = wait_until(Duration::from_secs(5), || {
        let (_, quota) = daemon.api("GET", "/v1/quota", None);
        quota.to_string().contains("100.0")
    });
    assert!(limited_seen.is_some());
    let before = requests_of(&upstream, "conv-1").len();
    // conv-2 moved to the fallback and is warmed there; conv-1 is not.
    let warmed_elsewhere = wait_until(Duration::from_secs(10), || {
        requests_of(&upstream, "conv-2").len() >= 3
    });
    assert!(warmed_elsewhere.is_some());
    let conv1_after: Vec<String> = requests_of(&upstream, "conv-1")[before..]
        .iter()
        .map(|r| r.headers["chatgpt-account-id"].clone())
        .collect();
    assert!(conv1_after.is_empty(), "{conv1_after:?}");
    assert!(
        requests_of(&upstream, "conv-2")[1..]
            .iter()
            .all(|r| r.headers["chatgpt-account-id"] == "acc-fallback")
    );
}

#[test]
fn cachekeep_on_and_off_persist_and_reach_the_running_daemon() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    env.write_config("# mine\n[cachekeep]\ninterval = 1\n");
    let out = env.ok(&["cachekeep"]);
    assert!(
        out.contains("Keep-warm is off") && out.contains("not running"),
        "{out}"
    );
    let daemon = env.start_daemon(&[]);
    assert_eq!(served_by(&daemon, &upstream, "conv-0"), "acc-main");
    assert!(
        cachekeep_status(&env)["sessions"]
            .as_array()
            .unwrap()
            .is_empty(),
        "off: nothing kept"
    );

    let out = env.ok(&["cachekeep", "on"]);
    assert!(out.contains("Keep-warm is on"), "{out}");
    let config = std::fs::read_to_string(env.broker_home().join("config.toml")).unwrap();
    assert_eq!(
        config,
        "# mine\n[cachekeep]\ninterval = 1\nenabled = true\n"
    );
    assert_eq!(served_by(&daemon, &upstream, "conv-1"), "acc-main");
    let warmed = wait_until(Duration::from_secs(10), || {
        requests_of(&upstream, "conv-1").len() >= 2
    });
    assert!(warmed.is_some());
    let status = cachekeep_status(&env);
    assert_eq!(status["sessions"][0]["key"], "conv-1", "{status}");

    let out = env.ok(&["cachekeep", "off", "--json"]);
    let off: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(off["enabled"], false);
    assert!(off["sessions"].as_array().unwrap().is_empty());
    let config = std::fs::read_to_string(env.broker_home().join("config.toml")).unwrap();
    assert!(config.contains("enabled = false"), "{config}");
    drop(daemon);
    let daemon = env.start_daemon(&[]);
    let (_, status) = daemon.api("GET", "/v1/cachekeep", None);
    assert_eq!(status["enabled"], false, "kept after a restart");
    let (code, refused) = daemon.api("POST", "/v1/cachekeep", Some("{\"enabled\":\"yes\"}"));
    assert_eq!(code, 400, "{refused}");
}

#[test]
fn dumps_are_complete_redacted_private_and_bounded() {
    use std::os::unix::fs::PermissionsExt;
    let upstream = FakeUpstream::start();
    let (env, main, _) = TestEnv::with_main_and_fallback(&upstream);
    env.write_config("dump = true\ndump_max_files = 4\n");
    let dir = env.broker_home().join("dumps");
    let daemon = env.start_daemon(&[]);
    for n in 0..3 {
        assert_eq!(
            served_by(&daemon, &upstream, &format!("conv-{n}")),
            "acc-main"
        );
    }
    let bounded = wait_for(Duration::from_secs(10), || {
        let names = crate::support::file_names(&dir);
        (names.len() == 4 && names.iter().any(|n| n.contains("-000002."))).then_some(names)
    });
    let names = bounded.expect("the newest four files");
    assert!(names[0].contains("-000001.body.json"), "{names:?}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    let sent = requests_of(&upstream, "conv-2").pop().unwrap();
    for name in &names {
        let path = dir.join(name);
        assert_eq!(mode(&path), 0o600, "{name}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&main.access_token()), "{name} holds a token");
        assert!(!text.contains(&main.refresh_token), "{name} holds a token");
    }
    let body = std::fs::read(dir.join(&names[2])).unwrap();
    assert_eq!(body, sent.body, "the body as sent");
    let meta: Value = serde_json::from_slice(&std::fs::read(dir.join(&names[3])).unwrap()).unwrap();
    assert_eq!(meta["method"], "POST");
    assert_eq!(meta["path"], "/backend-api/codex/responses");
    assert_eq!(meta["account_id"], "acc-main");
    assert_eq!(meta["status"], 200);
    assert!(meta["timings"]["head_ms"].is_u64());
    assert!(meta["timings"]["started_at"].is_string());
    assert_eq!(meta["headers"]["authorization"], "[redacted]");
    assert_eq!(meta["headers"]["session-id"], "conv-2");

    // Off: nothing more is written; on again, the next request is.
    let out = env.ok(&["dump", "off"]);
    assert!(out.contains("Request dumps are off"), "{out}");
    assert_eq!(served_by(&daemon, &upstream, "conv-off"), "acc-main");
    let out = env.ok(&["dump", "on"]);
    assert!(out.contains("hold your prompts"), "{out}");
    assert_eq!(served_by(&daemon, &upstream, "conv-on"), "acc-main");
    let next = wait_until(Duration::from_secs(10), || {
        crate::support::file_names(&dir)
            .iter()
            .any(|n| n.contains("-000003.meta.json"))
    });
    assert!(next.is_some());
    let metas: Vec<Value> = crate::support::file_names(&dir)
        .iter()
        .filter(|n| n.ends_with(".meta.json"))
        .map(|n| serde_json::from_slice(&std::fs::read(dir.join(n)).unwrap()).unwrap())
        .collect();
    assert!(
        metas
            .iter()
            .all(|m| m["headers"]["session-id"] != "conv-off")
    );
    assert!(
        metas
            .iter()
            .any(|m| m["headers"]["session-id"] == "conv-on")
    );
}
