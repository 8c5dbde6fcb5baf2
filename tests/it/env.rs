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
