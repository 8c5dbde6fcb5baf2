//! `setup codex`: Codex's config.toml pointed at the forwarder with
//! everything else kept, auth.json naming the forwarder as its issuer,
//! idempotent, `--dry-run`, and `--undo` byte for byte.

use serde_json::Value;

use crate::support::TestEnv;
use crate::support::fake_upstream::FakeUpstream;

fn issuer(env: &TestEnv) -> Value {
    env.read_auth()["tokens"]["oauth_provenance"]["issuer"].clone()
}

#[test]
fn setup_codex_points_codex_at_the_forwarder_keeps_the_rest_and_undoes_exactly() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let config = env.codex_home().join("config.toml");
    let mine = "# my settings\nmodel = \"gpt-5.1-codex\"\ncli_auth_credentials_store = \"keyring\"\n\n[profiles.fast]\nmodel = \"o4-mini\"  # quick\n";
    std::fs::write(&config, mine).unwrap();
    let before_issuer = issuer(&env);
    let daemon = env.start_daemon(&[]);
    let base = daemon.forwarder();

    let dry = env.ok(&["setup", "codex", "--dry-run"]);
    assert!(
        dry.contains("Would change") && dry.contains("Would publish"),
        "{dry}"
    );
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        mine,
        "a dry run writes nothing"
    );

    let out = env.ok(&["setup", "codex"]);
    assert!(
        out.contains(&format!("openai_base_url = \"{base}/codex\"")),
        "{out}"
    );
    assert!(out.contains("\"keyring\" -> \"file\""), "{out}");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.starts_with("# my settings\nmodel = \"gpt-5.1-codex\"\n"),
        "{text}"
    );
    assert!(
        text.contains("[profiles.fast]\nmodel = \"o4-mini\"  # quick\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("chatgpt_base_url = \"{base}/backend-api/\"")),
        "{text}"
    );
    assert!(
        text.contains("cli_auth_credentials_store = \"file\""),
        "{text}"
    );
    assert_eq!(
        issuer(&env),
        Value::String(base.clone()),
        "{:?}",
        env.read_auth()
    );

    let again = env.ok(&["setup", "codex"]);
    assert!(again.contains("nothing changed"), "{again}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text);

    let undone = env.ok(&["setup", "codex", "--undo"]);
    assert!(undone.contains("Restored"), "{undone}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        mine,
        "byte for byte"
    );
    assert_eq!(issuer(&env), before_issuer);
    assert!(
        env.ok(&["setup", "codex", "--undo"])
            .contains("nothing to undo")
    );
}

#[test]
fn a_config_setup_created_is_removed_by_undo_and_a_broken_one_is_left_alone() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let config = env.codex_home().join("config.toml");
    env.ok(&["setup", "codex"]);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("openai_base_url = \"http://127.0.0.1:1456/codex\""),
        "{text}"
    );
    assert!(env.ok(&["setup", "codex", "--undo"]).contains("Removed"));
    assert!(!config.exists());

    std::fs::write(&config, "model = [broken\n").unwrap();
    let out = env.run(&["setup", "codex"]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("config.toml") && said.contains("not TOML"),
        "{said}"
    );
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "model = [broken\n"
    );
}

/// `doctor --json`: the checks by name.
fn doctor(env: &TestEnv) -> (bool, Value) {
    let out = env.run(&["doctor", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.success(), report["ok"] == true, "{report}");
    (out.status.success(), report)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check: {report}"))
}

#[test]
fn doctor_says_all_is_well_after_setup_or_exactly_what_to_fix() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let (ok, report) = doctor(&env);
    assert!(!ok);
    assert_eq!(check(&report, "daemon")["ok"], false);
    assert!(
        check(&report, "daemon")["fix"]
            .as_str()
            .unwrap()
            .contains("serve")
    );
    assert_eq!(
        check(&report, "codex config")["fix"],
        "codex-broker setup codex"
    );

    let daemon = env.start_daemon(&[]);
    env.ok(&["setup", "codex"]);
    let (ok, report) = doctor(&env);
    assert!(ok, "{report}");
    for name in [
        "daemon",
        "account acc-main",
        "account acc-fallback",
        "auth.json",
        "clock",
        "codex config",
        "forwarder",
        "issuer",
        "backend",
    ] {
        assert_eq!(check(&report, name)["ok"], true, "{name}: {report}");
    }
    let human = env.ok(&["doctor"]);
    assert!(human.lines().all(|l| l.starts_with("ok ")), "{human}");

    // A refused refresh: that account's check fails, with its fix.
    upstream.set_refresh(crate::support::fake_upstream::Refresh::error(
        401,
        "refresh_token_invalidated",
    ));
    daemon.api("GET", "/v1/token?account=acc-fallback&min_ttl=86400", None);
    let (ok, report) = doctor(&env);
    assert!(!ok);
    let account = check(&report, "account acc-fallback");
    assert_eq!(account["fix"], "codex-broker login", "{account}");
    let out = env.run(&["doctor"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL account acc-fallback") && text.contains("fix: codex-broker login"),
        "{text}"
    );
}

#[test]
fn setup_opencode_adds_its_provider_keeps_the_rest_and_undoes_byte_for_byte() {
    let env = TestEnv::new();
    let dir = env.user_home().join(".config/opencode");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("opencode.json");
    let mine = "{\n  \"theme\": \"dark\",\n  \"model\": \"anthropic/claude\",\n  \"provider\": {\"ollama\": {\"npm\": \"x\"}}\n}\n";
    std::fs::write(&config, mine).unwrap();
    let dry = env.ok(&["setup", "opencode", "--dry-run"]);
    assert!(dry.contains("Would change"), "{dry}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), mine);
    let out = env.ok(&["setup", "opencode"]);
    assert!(
        out.contains("\"anthropic/claude\" -> \"codex-broker/gpt-5.1-codex\""),
        "{out}"
    );
    let written: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    let keys: Vec<&String> = written.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["theme", "model", "provider"]);
    assert_eq!(written["provider"]["ollama"]["npm"], "x");
    assert_eq!(
        written["provider"]["codex-broker"]["options"]["baseURL"],
        "http://127.0.0.1:1456/v1"
    );
    assert!(env.ok(&["setup", "opencode"]).contains("nothing changed"));
    assert!(
        env.ok(&["setup", "opencode", "--undo"])
            .contains("Restored")
    );
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        mine,
        "byte for byte"
    );
    std::fs::write(&config, "{\"provider\": 3}").unwrap();
    let out = env.run(&["setup", "opencode"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("`provider` must be an object"));
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "{\"provider\": 3}"
    );
}

#[test]
fn setup_codex_says_an_older_codex_needs_the_variable() {
    let mut env = TestEnv::new();
    let bin = env.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let codex = bin.join("codex");
    std::fs::write(&codex, "#!/bin/sh\necho 'codex-cli 0.165.0'\n").unwrap();
    std::fs::set_permissions(&codex, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    env.set_var("PATH", &path);
    let out = env.ok(&["setup", "codex"]);
    assert!(
        out.contains(
            "codex-cli 0.165.0 refreshes only where CODEX_REFRESH_TOKEN_URL_OVERRIDE says"
        ),
        "{out}"
    );
    std::fs::write(&codex, "#!/bin/sh\necho 'codex-cli 0.171.0'\n").unwrap();
    env.ok(&["setup", "codex", "--undo"]);
    let out = env.ok(&["setup", "codex"]);
    assert!(!out.contains("CODEX_REFRESH_TOKEN_URL_OVERRIDE"), "{out}");
}
