//! The offline commands as users run them, snapshotted with insta.

use std::os::unix::fs::{PermissionsExt, symlink};

use crate::support::{TestAccount, TestEnv, fixture, now};

const FIXTURES: &[&str] = &[
    "chatgpt",
    "no-auth-mode",
    "apikey",
    "extra-fields",
    "missing-last-refresh",
    "padded-id-token",
    "non-jwt-id-token",
    "truncated",
    "empty",
    "wrong-types",
    "wrong-type-refresh-token",
    "no-account-id",
    "bad-last-refresh",
    "unknown-auth-mode",
];

fn fixture_arg(name: &str) -> String {
    fixture(&format!("auth/{name}.json"))
        .to_string_lossy()
        .into_owned()
}

/// Every token-like string in the fixtures and generated accounts, none of
/// which may appear in any output.
fn assert_no_secrets(text: &str) {
    for needle in ["rt-", "sk-", "eyJ"] {
        assert!(!text.contains(needle), "output leaks `{needle}`:\n{text}");
    }
}

#[test]
fn import_each_fixture() {
    for name in FIXTURES {
        let env = TestEnv::new();
        let text = env
            .snapshot(&["import", &fixture_arg(name)])
            .replace(&fixture_arg(name), "[FIXTURE]");
        assert_no_secrets(&text);
        insta::assert_snapshot!(format!("import_{name}"), text);
        if !text.starts_with("exit: 0") {
            assert!(
                !env.store_path().exists(),
                "{name}: a failed import wrote the store"
            );
        }
    }
}

#[test]
fn import_from_codex_home_and_list() {
    let env = TestEnv::new();
    insta::assert_snapshot!(env.snapshot(&["import"]), @r"
    exit: 1
    --- stdout
    --- stderr
    error: no auth.json at [TMP]/user/.codex/auth.json: log in with `codex login` first, or pass the path of an auth.json
    ");
    std::fs::create_dir_all(env.codex_home()).unwrap();
    std::fs::copy(fixture("auth/chatgpt.json"), env.auth_path()).unwrap();
    let before = std::fs::read(env.auth_path()).unwrap();
    insta::assert_snapshot!(env.snapshot(&["import"]), @r"
    exit: 0
    --- stdout
    Imported account acc-fixture-1 (fixture@example.com, plus) as main.
    [TMP]/user/.codex/auth.json holds this account.
    --- stderr
    ");
    assert_eq!(
        std::fs::read(env.auth_path()).unwrap(),
        before,
        "an unchanged file is not rewritten"
    );
    env.ok(&["import", &fixture_arg("apikey")]);
    let json = env.snapshot(&["accounts", "--json"]);
    assert_no_secrets(&json);
    insta::assert_snapshot!("accounts_json", json);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&env.store_path()), 0o600);
    assert_eq!(mode(&env.broker_home()), 0o700);
}

#[test]
fn accounts_and_status_show_expiry_and_quota() {
    let env = TestEnv::new();
    insta::assert_snapshot!(env.snapshot(&["accounts"]), @r"
    exit: 0
    --- stdout
    No accounts yet. Log in with: codex-broker login (or adopt Codex's login with: codex-broker import)
    --- stderr
    ");
    let main = TestAccount::new("acc-main").expiring_in(9_030);
    env.write_codex_auth(&main);
    env.ok(&["import"]);
    env.ok(&["import", &fixture_arg("apikey")]);
    let other = TestAccount::new("acc-other").expiring_in(-330);
    let other_file = env.dir.path().join("other.json");
    std::fs::write(&other_file, other.auth_json()).unwrap();
    env.ok(&["import", other_file.to_str().unwrap()]);
    env.ok(&["accounts", "label", "acc-other", "work"]);

    // Quota as the forwarder records it.
    let mut store = env.read_store();
    let t = now();
    store["accounts"][0]["quota"] = serde_json::json!({
        "five_hour": {"used_percent": 42.0, "window_minutes": 300, "resets_at": t + 7_830},
        "weekly": {"used_percent": 7.5, "window_minutes": 10080, "resets_at": t + 3 * 86_400 + 4 * 3_600 + 30},
        "source": "headers",
        "observed_at": t - 150,
    });
    std::fs::write(env.store_path(), store.to_string()).unwrap();

    let accounts = env.snapshot(&["accounts"]);
    assert_no_secrets(&accounts);
    insta::assert_snapshot!("accounts_table", accounts);
    let status = env.snapshot(&["status"]);
    assert_no_secrets(&status);
    insta::with_settings!({filters => vec![(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "[TIME]")]}, {
        insta::assert_snapshot!("status_table", status);
    });
    let status_json: serde_json::Value =
        serde_json::from_slice(&env.run(&["status", "--json"]).stdout).unwrap();
    assert_no_secrets(&status_json.to_string());
    assert_eq!(status_json["daemon"]["running"], false);
    assert_eq!(status_json["codex_auth"]["state"], "ok");
    assert_eq!(status_json["codex_auth"]["account_id"], "acc-main");
    assert_eq!(
        status_json["accounts"][0]["quota"]["five_hour"]["used_percent"],
        42.0
    );
    assert_eq!(status_json["accounts"][2]["label"], "work");
    assert_eq!(status_json["accounts"][2]["expires_at"], other.expires_at);
}

#[test]
fn status_reports_a_broken_or_missing_auth_json() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.codex_home()).unwrap();
    std::fs::copy(fixture("auth/padded-id-token.json"), env.auth_path()).unwrap();
    let status = env.snapshot(&["status"]);
    insta::assert_snapshot!(status, @r"
    exit: 0
    --- stdout
    Daemon:      not running (no daemon at [TMP]/user/.config/codex-broker/run/broker.sock)
    auth.json:   [TMP]/user/.codex/auth.json is invalid: field `tokens.id_token`: JWT payload is not unpadded base64url
    Routing:     main-first
    Shield:      off
    Killswitch:  off

    No accounts yet. Log in with: codex-broker login (or adopt Codex's login with: codex-broker import)
    --- stderr
    ");
    std::fs::remove_file(env.auth_path()).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&env.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(json["codex_auth"]["state"], "missing");
}

#[test]
fn switch_publishes_and_keeps_unknown_fields() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.codex_home()).unwrap();
    std::fs::copy(fixture("auth/extra-fields.json"), env.auth_path()).unwrap();
    env.ok(&["import"]);
    env.ok(&["import", &fixture_arg("apikey")]);
    insta::assert_snapshot!(env.snapshot(&["accounts", "switch", "apikey"]), @r"
    exit: 0
    --- stdout
    Switched to apikey-c463b17941b4: it is the main account and [TMP]/user/.codex/auth.json now holds it.
    --- stderr
    ");
    let auth = env.read_auth();
    assert_eq!(auth["auth_mode"], "apikey");
    assert!(
        auth.get("future_top_level").is_none(),
        "another account's fields stay with it"
    );
    assert_eq!(
        std::fs::metadata(env.auth_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    insta::assert_snapshot!(env.snapshot(&["accounts", "switch", "acc-fixture"]), @r"
    exit: 0
    --- stdout
    Switched to acc-fixture-1: it is the main account and [TMP]/user/.codex/auth.json now holds it.
    --- stderr
    ");
    let auth = env.read_auth();
    assert_eq!(auth["future_top_level"]["kept"], true);
    assert_eq!(auth["tokens"]["future_token_field"], "kept too");
    let store = env.read_store();
    assert_eq!(store["accounts"][0]["role"], "main");
    assert_eq!(store["accounts"][1]["role"], "fallback");
}

#[test]
fn switch_adopts_what_codex_wrote_meanwhile() {
    let env = TestEnv::new();
    let a = TestAccount::new("acc-a");
    env.write_codex_auth(&a);
    env.ok(&["import"]);
    env.ok(&["import", &fixture_arg("chatgpt")]);
    // Codex refreshes acc-a behind the broker's back, then logs in as acc-c.
    let mut refreshed = a.clone();
    refreshed.refresh_token = "rt-acc-a-1".into();
    refreshed.refreshed_at += 60;
    env.write_codex_auth(&refreshed);
    env.ok(&["accounts", "switch", "acc-fixture-1"]);
    env.ok(&["accounts", "switch", "acc-a"]);
    assert_eq!(env.read_auth()["tokens"]["refresh_token"], "rt-acc-a-1");
    let c = TestAccount::new("acc-c");
    env.write_codex_auth(&c);
    insta::assert_snapshot!(env.snapshot(&["accounts", "switch", "acc-a"]), @r"
    exit: 0
    --- stdout
    Saved the tokens auth.json held for acc-c into the store first.
    Switched to acc-a: it is the main account and [TMP]/user/.codex/auth.json now holds it.
    --- stderr
    ");
    let store = env.read_store();
    let ids: Vec<&str> = store["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acc-a", "acc-fixture-1", "acc-c"]);
}

#[test]
fn switch_writes_through_a_symlinked_auth_json() {
    let env = TestEnv::new();
    let real_dir = env.dir.path().join("dotfiles");
    std::fs::create_dir_all(&real_dir).unwrap();
    std::fs::create_dir_all(env.codex_home()).unwrap();
    std::fs::copy(fixture("auth/chatgpt.json"), real_dir.join("auth.json")).unwrap();
    symlink(real_dir.join("auth.json"), env.auth_path()).unwrap();
    env.ok(&["import"]);
    env.ok(&["import", &fixture_arg("apikey")]);
    env.ok(&["accounts", "switch", "apikey"]);
    assert!(
        std::fs::symlink_metadata(env.auth_path())
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let real: serde_json::Value =
        serde_json::from_slice(&std::fs::read(real_dir.join("auth.json")).unwrap()).unwrap();
    assert_eq!(real["auth_mode"], "apikey");
}

#[test]
fn switch_refuses_to_replace_an_unparseable_auth_json() {
    let env = TestEnv::new();
    env.ok(&["import", &fixture_arg("chatgpt")]);
    std::fs::create_dir_all(env.codex_home()).unwrap();
    std::fs::write(env.auth_path(), b"{\"tokens\": ").unwrap();
    insta::assert_snapshot!(env.snapshot(&["accounts", "switch", "acc-fixture-1"]), @r"
    exit: 1
    --- stdout
    --- stderr
    error: cannot publish the account to auth.json: [TMP]/user/.codex/auth.json: field `tokens`: the JSON ends early (truncated?) at line 1 column 11; it was left untouched: fix it or move it away, then try again
    ");
    assert_eq!(std::fs::read(env.auth_path()).unwrap(), b"{\"tokens\": ");
}

#[test]
fn first_import_publishes_when_codex_is_logged_out() {
    let env = TestEnv::new();
    insta::assert_snapshot!(env.snapshot(&["import", &fixture_arg("chatgpt")]).replace(&fixture_arg("chatgpt"), "[FIXTURE]"), @r"
    exit: 0
    --- stdout
    Imported account acc-fixture-1 (fixture@example.com, plus) as main.
    Published it to [TMP]/user/.codex/auth.json.
    --- stderr
    ");
    assert_eq!(env.read_auth()["tokens"]["account_id"], "acc-fixture-1");
    assert_eq!(
        std::fs::metadata(env.codex_home())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
}

#[test]
fn remove_and_label() {
    let env = TestEnv::new();
    env.ok(&["import", &fixture_arg("chatgpt")]);
    env.ok(&["import", &fixture_arg("apikey")]);
    insta::assert_snapshot!(env.snapshot(&["accounts", "label", "acc-fixture-1", "personal"]), @r"
    exit: 0
    --- stdout
    Labelled acc-fixture-1 as personal.
    --- stderr
    ");
    insta::assert_snapshot!(env.snapshot(&["accounts", "label", "apikey", "personal"]), @r"
    exit: 2
    --- stdout
    --- stderr
    error: the label `personal` would be ambiguous: account acc-fixture-1 already answers to it
    ");
    insta::assert_snapshot!(env.snapshot(&["accounts", "switch", "nobody"]), @r"
    exit: 1
    --- stdout
    --- stderr
    error: no account matches `nobody`; known: acc-fixture-1, apikey-c463b17941b4
    ");
    env.ok(&["import", &fixture_arg("extra-fields")]);
    insta::assert_snapshot!(env.snapshot(&["accounts", "remove", "personal"]), @r"
    exit: 0
    --- stdout
    Removed personal and its credentials from the store.
    apikey-c463b17941b4 is now the main account.
    --- stderr
    ");
    insta::assert_snapshot!(env.snapshot(&["accounts", "remove", "a"]), @r"
    exit: 0
    --- stdout
    Removed apikey-c463b17941b4 and its credentials from the store.
    --- stderr
    ");
    assert_eq!(env.read_store()["accounts"].as_array().unwrap().len(), 0);
    assert!(env.auth_path().exists(), "remove leaves auth.json alone");
}

#[test]
fn remove_with_revoke_ends_the_login_at_the_issuer_first() {
    use crate::support::fake_upstream::FakeUpstream;
    let upstream = FakeUpstream::start();
    let kept = TestAccount::new("acc-kept");
    let env = TestEnv::with_account(&upstream, &kept);
    let gone = TestAccount::new("acc-gone");
    upstream.add_account(&gone);
    env.import_other(&gone);
    // A refresh first: what is revoked is the token the store holds now.
    env.ok(&["token", "--account", "acc-gone", "--min-ttl", "99999999"]);
    let current = upstream.live_refresh_token("acc-gone").unwrap();
    assert_eq!(
        env.stored_account("acc-gone")["tokens"]["refresh_token"],
        current.as_str()
    );

    let out = env.ok(&["accounts", "remove", "acc-gone", "--revoke"]);
    assert!(out.contains("Removed acc-gone"), "{out}");
    assert!(out.contains("revoked at the issuer"), "{out}");
    let revokes = upstream.requests_to("/oauth/revoke");
    assert_eq!(revokes.len(), 1);
    let body = revokes[0].json();
    assert_eq!(body["token"], current.as_str());
    assert_eq!(body["token_type_hint"], "refresh_token");
    assert!(upstream.live_refresh_token("acc-gone").is_none());
    assert!(upstream.live_refresh_token("acc-kept").is_some());
    assert_eq!(env.read_store()["accounts"].as_array().unwrap().len(), 1);
    let history = env.ok(&["history"]);
    assert!(history.contains("accounts remove --revoke"), "{history}");
    assert!(!history.contains(&current), "{history}");
}

#[test]
fn remove_with_revoke_keeps_the_account_when_the_issuer_cannot_be_told() {
    let mut env = TestEnv::new();
    env.vars
        .push(("CODEX_BROKER_ISSUER".into(), "http://127.0.0.1:9".into()));
    env.ok(&["import", &fixture_arg("chatgpt")]);
    env.ok(&["import", &fixture_arg("apikey")]);
    let out = env.run(&["accounts", "remove", "acc-fixture-1", "--revoke"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot revoke the login of acc-fixture-1"),
        "{stderr}"
    );
    assert!(stderr.contains("the account is kept"), "{stderr}");
    assert_eq!(env.read_store()["accounts"].as_array().unwrap().len(), 2);

    let out = env.run(&["accounts", "remove", "apikey", "--revoke"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("holds no refresh token to revoke"),
        "{stderr}"
    );
    assert_eq!(env.read_store()["accounts"].as_array().unwrap().len(), 2);
}

#[test]
fn ambiguous_prefixes_are_refused() {
    let env = TestEnv::new();
    for id in ["acc-one", "acc-two"] {
        let path = env.dir.path().join(format!("{id}.json"));
        std::fs::write(&path, TestAccount::new(id).auth_json()).unwrap();
        env.ok(&["import", path.to_str().unwrap()]);
    }
    insta::assert_snapshot!(env.snapshot(&["accounts", "switch", "acc-"]), @r"
    exit: 1
    --- stdout
    --- stderr
    error: `acc-` matches several accounts: acc-one, acc-two; give more of the id
    ");
}

#[test]
fn routing_and_killswitch() {
    let env = TestEnv::new();
    env.ok(&["import", &fixture_arg("chatgpt")]);
    insta::assert_snapshot!(env.snapshot(&["routing"]), @r"
    exit: 0
    --- stdout
    main-first
    --- stderr
    ");
    insta::assert_snapshot!(env.snapshot(&["routing", "fallback-first"]), @r"
    exit: 0
    --- stdout
    Routing set to fallback-first.
    --- stderr
    ");
    assert_eq!(env.read_store()["routing"], "fallback-first");
    let bad = env.snapshot(&["routing", "sideways"]);
    assert!(bad.starts_with("exit: 2"), "{bad}");
    assert!(bad.contains("invalid value 'sideways'"), "{bad}");

    insta::assert_snapshot!(env.snapshot(&["killswitch"]), @r"
    exit: 0
    --- stdout
    Killswitch: off
    No thresholds set. Set some with: codex-broker killswitch set ID:5H,1W
    --- stderr
    ");
    insta::assert_snapshot!(env.snapshot(&["killswitch", "set", "acc-fixture:80,95.5"]), @r"
    exit: 0
    --- stdout
    Killswitch: on
      ACCOUNT        5H     WEEKLY
      acc-fixture-1  > 80%  > 95.5%
    --- stderr
    ");
    insta::assert_snapshot!(env.snapshot(&["killswitch", "off"]), @r"
    exit: 0
    --- stdout
    Killswitch: off
      ACCOUNT        5H     WEEKLY
      acc-fixture-1  > 80%  > 95.5%
    --- stderr
    ");
    insta::assert_snapshot!(env.snapshot(&["killswitch", "set", "acc-fixture:120,10"]), @r"
    exit: 2
    --- stdout
    --- stderr
    error: invalid value 'acc-fixture:120,10' for '<ID:5H,1W>...': in `acc-fixture:120,10`: the 5-hour threshold must be between 0 and 100

    For more information, try '--help'.
    ");
    insta::assert_snapshot!(env.snapshot(&["killswitch", "set", "nobody:50,50"]), @r"
    exit: 1
    --- stdout
    --- stderr
    error: no account matches `nobody`; known: acc-fixture-1
    ");
    let store = env.read_store();
    assert_eq!(store["killswitch"]["enabled"], false);
    assert_eq!(
        store["killswitch"]["limits"]["acc-fixture-1"]["weekly"],
        95.5
    );
}

#[test]
fn an_unreadable_store_is_reported_and_left_alone() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.broker_home()).unwrap();
    let garbage = b"{\"version\": 1, \"accounts\": [{\"id\": 5}]}";
    std::fs::write(env.store_path(), garbage).unwrap();
    insta::assert_snapshot!(env.snapshot(&["import", &fixture_arg("chatgpt")]), @r"
    exit: 1
    --- stdout
    --- stderr
    error: [TMP]/user/.config/codex-broker/accounts.json: field `accounts[0].id`: invalid type: integer `5`, expected a string (the file was left untouched; fix or move it away)
    ");
    insta::assert_snapshot!(env.snapshot(&["accounts"]), @r"
    exit: 1
    --- stdout
    --- stderr
    error: [TMP]/user/.config/codex-broker/accounts.json: field `accounts[0].id`: invalid type: integer `5`, expected a string (the file was left untouched; fix or move it away)
    ");
    assert_eq!(std::fs::read(env.store_path()).unwrap(), garbage);
}

#[test]
fn flags_and_environment_choose_the_places() {
    let env = TestEnv::new();
    let home = env.dir.path().join("custom-home");
    let codex = env.dir.path().join("custom-codex");
    env.cmd()
        .args([
            "--home",
            home.to_str().unwrap(),
            "import",
            &fixture_arg("chatgpt"),
        ])
        .env("CODEX_HOME", &codex)
        .assert()
        .success();
    assert!(home.join("accounts.json").exists());
    assert!(codex.join("auth.json").exists());
    let from_env = env.dir.path().join("env-home");
    env.cmd()
        .args(["accounts", "--json"])
        .env("CODEX_BROKER_HOME", &from_env)
        .env("XDG_CONFIG_HOME", env.dir.path().join("xdg"))
        .assert()
        .success();
    env.cmd()
        .args(["routing", "fallback-first"])
        .env("XDG_CONFIG_HOME", env.dir.path().join("xdg"))
        .assert()
        .success();
    assert!(
        env.dir
            .path()
            .join("xdg/codex-broker/accounts.json")
            .exists()
    );
    assert!(!from_env.exists(), "reading creates nothing");
}

#[test]
fn completions_and_usage_errors() {
    let env = TestEnv::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = env.ok(&["completions", shell]);
        assert!(
            out.contains("killswitch"),
            "{shell} completions name the subcommands"
        );
    }
    let out = env.run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = env.run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("codex-broker "));
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    let env = TestEnv::new();
    // The reading end is closed before the child starts, so its first write
    // to stdout fails with EPIPE.
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let out = env
        .std_cmd()
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::from(writer))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "exit {:?}", out.status);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_codex_keyring_store_is_reported_with_the_fix() {
    let account = TestAccount::new("acc-keyring");
    let env = TestEnv::new();
    std::fs::create_dir_all(env.codex_home()).unwrap();
    let config = env.codex_home().join("config.toml");

    // No auth.json, as Codex leaves it when it logs in to the keyring.
    std::fs::write(
        &config,
        "model = \"o4\"\ncli_auth_credentials_store = \"keyring\"\n",
    )
    .unwrap();
    let out = env.run(&["import"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cli_auth_credentials_store = \"keyring\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("set cli_auth_credentials_store = \"file\""),
        "{stderr}"
    );

    // With an auth.json it is imported, with a warning.
    env.write_codex_auth(&account);
    let out = env.run(&["import"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("warning: "));

    let text = env.ok(&["status"]);
    assert!(text.contains("! "), "{text}");
    assert!(text.contains("system keyring"), "{text}");
    let status: serde_json::Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["codex_auth"]["credentials_store"], "keyring");
    assert_eq!(status["daemon"]["problems"][0]["code"], "codex_keyring");

    let daemon = env.start_daemon(&["--no-forward"]);
    let codes = |daemon: &crate::support::Daemon| -> Vec<String> {
        daemon.get("/v1/health")["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| format!("{}: {}", p["code"], p["message"]))
            .collect()
    };
    let problems = codes(&daemon);
    assert!(
        problems.iter().any(|p| p.contains("codex_keyring")),
        "{problems:?}"
    );
    std::fs::write(&config, "cli_auth_credentials_store = \"auto\"\n").unwrap();
    let problems = codes(&daemon);
    assert!(
        problems.iter().any(|p| p.contains("\\\"auto\\\"")),
        "{problems:?}"
    );
    std::fs::write(&config, "cli_auth_credentials_store = \"file\"\n").unwrap();
    assert!(codes(&daemon).is_empty());
    let status: serde_json::Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["codex_auth"]["credentials_store"], "file");
}
