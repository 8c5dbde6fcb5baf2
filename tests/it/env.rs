//! `env` and `run`: the environment a client needs, printed for a shell
//! and given to one command; addresses only, never a token.

use serde_json::Value;

use crate::support::TestEnv;
use crate::support::fake_upstream::FakeUpstream;

#[test]
fn env_prints_the_daemons_addresses_for_each_shell_and_no_token() {
    let upstream = FakeUpstream::start();
    let (env, main, _) = TestEnv::with_main_and_fallback(&upstream);
    let out = env.run(&["env"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon"));

    let daemon = env.start_daemon(&[]);
    let base = daemon.forwarder();
    let json: Value = serde_json::from_str(&env.ok(&["env", "--shell", "json"])).unwrap();
    assert_eq!(json["OPENAI_BASE_URL"], format!("{base}/v1"));
    assert_eq!(
        json["CODEX_REFRESH_TOKEN_URL_OVERRIDE"],
        format!("{base}/oauth/token")
    );
    assert_eq!(json["CODEX_BROKER_FORWARDER"], base);
    assert_eq!(
        json["CODEX_BROKER_SOCKET"],
        daemon.socket.display().to_string()
    );
    assert_eq!(json.as_object().unwrap().len(), 4);
    let fish = env.ok(&["env", "--shell", "fish"]);
    assert!(
        fish.contains(&format!("set -gx OPENAI_BASE_URL '{base}/v1'")),
        "{fish}"
    );

    // What a shell makes of `eval "$(codex-broker env)"`.
    let bin = assert_cmd::cargo::cargo_bin("codex-broker");
    let script = format!(
        "eval \"$('{}' env)\"; printf %s \"$OPENAI_BASE_URL\"",
        bin.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .env_clear()
        .env("HOME", env.user_home())
        .envs(env.vars.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{base}/v1"));
    let sh = env.ok(&["env"]);
    assert!(!sh.contains(&main.access_token()) && !sh.contains(&main.refresh_token));
}

#[test]
fn run_gives_the_command_the_environment_and_its_own_exit_status() {
    let upstream = FakeUpstream::start();
    let (env, main, _) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let out = env.run(&[
        "run",
        "--",
        "sh",
        "-c",
        "printf %s \"$CODEX_BROKER_FORWARDER\"; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), daemon.forwarder());
    let out = env.run(&["run", "--", "env"]);
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        seen.contains("OPENAI_BASE_URL=") && seen.contains("CODEX_BROKER_SOCKET="),
        "{seen}"
    );
    assert!(
        seen.contains(&format!("HOME={}", env.user_home().display())),
        "the rest is kept"
    );
    assert!(!seen.contains(&main.access_token()) && !seen.contains(&main.refresh_token));
    let out = env.run(&["run", "--", "/nonexistent/tool"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run /nonexistent/tool"));
}

#[test]
fn run_with_an_account_sends_the_commands_requests_to_that_account_alone() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let inference = "/backend-api/codex/responses";
    // A client of OPENAI_BASE_URL: one chat completion, its status printed.
    let client = "import json, os, urllib.request, urllib.error\n\
        body = json.dumps({'model': 'm', 'messages': [{'role': 'user', 'content': 'hi'}]}).encode()\n\
        req = urllib.request.Request(os.environ['OPENAI_BASE_URL'] + '/chat/completions', data=body,\n\
            headers={'content-type': 'application/json'})\n\
        try:\n    print(urllib.request.urlopen(req).status)\n\
        except urllib.error.HTTPError as e:\n    print(e.code)\n";
    let run = |account: &str| {
        let out = env.run(&["run", "--account", account, "--", "python3", "-c", client]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(run("acc-fallback"), "200");
    let last = upstream.requests_to(inference).pop().unwrap();
    assert_eq!(
        last.headers["chatgpt-account-id"], "acc-fallback",
        "not the main account"
    );

    // Its 429 is the answer: no other account takes over.
    upstream.set_limited("acc-fallback");
    let before = upstream.requests_to(inference).len();
    assert_eq!(run("acc-fallback"), "429");
    let after = upstream.requests_to(inference);
    assert_eq!(after.len(), before + 1, "one try, on the named account");
    assert_eq!(after[before].headers["chatgpt-account-id"], "acc-fallback");

    let out = env.run(&["run", "--account", "nobody", "--", "true"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody"));
    let unknown = crate::forward::send(
        "GET",
        &format!("{}/accounts/nobody/v1/models", daemon.forwarder()),
        &[],
        Vec::new(),
    );
    assert_eq!(unknown.status, 404, "{}", unknown.text());
}
