//! Interop with the real Codex CLI, run offline in a private network
//! namespace against the fake upstream.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::fake_upstream::FakeUpstream;
use crate::support::{TestAccount, TestEnv, codex_bin};

fn codex(env: &TestEnv) -> Command {
    codex_release(env, &codex_bin())
}

/// `codex exec "say hello"` of the release at `bin` with nothing set but
/// `env`'s homes; asserts that it succeeded, and gives its stdout.
fn exec_release(env: &TestEnv, bin: &std::path::Path) -> String {
    let out = codex_release(env, bin)
        .args(["exec", "--skip-git-repo-check", "say hello"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Codex release at `bin`, in `env`'s homes with nothing else set.
fn codex_release(env: &TestEnv, bin: &std::path::Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("HOME", env.user_home())
        .env("CODEX_HOME", env.codex_home())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(env.dir.path());
    cmd
}

/// `codex login status`: exit status and first line.
fn codex_login_status(env: &TestEnv) -> (bool, String) {
    let out = codex(env).args(["login", "status"]).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find(|l| !l.starts_with("WARNING"))
        .unwrap_or_default()
        .to_owned();
    (out.status.success(), line)
}

fn codex_config(env: &TestEnv, upstream: &FakeUpstream) {
    codex_config_at(env, &upstream.url());
}

/// Points Codex's backend URLs at `base` (the fake, or the forwarder), as
/// the README tells users to.
fn codex_config_at(env: &TestEnv, base: &str) {
    std::fs::create_dir_all(env.codex_home()).unwrap();
    std::fs::write(
        env.codex_home().join("config.toml"),
        format!("openai_base_url = \"{base}/codex\"\nchatgpt_base_url = \"{base}/backend-api/\"\n"),
    )
    .unwrap();
}

/// `codex exec` of one prompt against the fake upstream, refreshing (if it
/// must) at the fake issuer; asserts that it succeeded.
fn codex_exec(env: &TestEnv, upstream: &FakeUpstream) -> std::process::Output {
    codex_exec_at(env, &upstream.url())
}

/// `codex exec` refreshing (if it must) at `{base}/oauth/token`.
fn codex_exec_at(env: &TestEnv, base: &str) -> std::process::Output {
    codex_exec_in(env, &env.codex_home(), base)
}

/// `codex exec` of one prompt with `codex_home` as its home, refreshing (if
/// it must) at `{base}/oauth/token`.
fn codex_exec_unchecked(
    env: &TestEnv,
    codex_home: &std::path::Path,
    base: &str,
) -> std::process::Output {
    codex_exec_args(env, codex_home, base, &["say hello"])
}

/// `codex exec --skip-git-repo-check ARGS` with `codex_home` as its home,
/// refreshing (if it must) at `{base}/oauth/token`.
fn codex_exec_args(
    env: &TestEnv,
    codex_home: &std::path::Path,
    base: &str,
    args: &[&str],
) -> std::process::Output {
    codex(env)
        .env("CODEX_HOME", codex_home)
        .env(
            "CODEX_REFRESH_TOKEN_URL_OVERRIDE",
            format!("{base}/oauth/token"),
        )
        .args(["exec", "--skip-git-repo-check"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `codex exec` with `codex_home` as its home, refreshing (if it must) at
/// `{base}/oauth/token`; asserts that it succeeded.
fn codex_exec_in(env: &TestEnv, codex_home: &std::path::Path, base: &str) -> std::process::Output {
    let out = codex_exec_unchecked(env, codex_home, base);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Imports the fixture ChatGPT account, publishes it with `accounts switch`
/// and checks that Codex accepts the file the broker wrote.
fn switch_codex_to_the_fixture_account(env: &TestEnv) {
    env.ok(&[
        "import",
        crate::support::fixture("auth/chatgpt.json")
            .to_str()
            .unwrap(),
    ]);
    env.ok(&["accounts", "switch", "acc-fixture-1"]);
    assert_eq!(env.read_auth()["tokens"]["account_id"], "acc-fixture-1");
    assert_codex_logged_in(env, "Logged in using ChatGPT");
}

fn assert_codex_logged_in(env: &TestEnv, expected: &str) {
    let (ok, line) = codex_login_status(env);
    assert!(ok, "codex login status failed: {line}");
    assert!(
        line.starts_with(expected),
        "codex login status said: {line}"
    );
}

#[test]
fn codex_refreshed_auth_is_imported_switched_and_still_accepted() {
    isolated!(codex_refreshed_auth_is_imported_switched_and_still_accepted);
    let env = TestEnv::new();
    let upstream = FakeUpstream::start();
    // An access token inside Codex's 5-minute window: Codex refreshes it
    // itself and rewrites auth.json.
    let account = TestAccount::new("acc-codex").expiring_in(60);
    upstream.add_account(&account);
    env.write_codex_auth(&account);
    codex_config(&env, &upstream);
    codex_exec(&env, &upstream);
    assert_eq!(upstream.requests_to("/oauth/token").len(), 1);
    let written_by_codex = env.read_auth();
    assert_eq!(
        written_by_codex["tokens"]["refresh_token"],
        "rt-acc-codex-1"
    );

    env.ok(&["import"]);
    let store = env.read_store();
    assert_eq!(store["published"], "acc-codex");
    assert_eq!(
        store["accounts"][0]["tokens"]["refresh_token"],
        "rt-acc-codex-1"
    );
    assert_eq!(
        env.read_auth(),
        written_by_codex,
        "import leaves Codex's file as it was"
    );

    switch_codex_to_the_fixture_account(&env);

    env.ok(&["accounts", "switch", "acc-codex"]);
    let republished = env.read_auth();
    assert_eq!(republished["tokens"], written_by_codex["tokens"]);
    assert_codex_logged_in(&env, "Logged in using ChatGPT");
    assert!(upstream.reused_tokens().is_empty());
}

#[test]
fn codex_api_key_login_is_imported_and_switched_back_and_forth() {
    isolated!(codex_api_key_login_is_imported_and_switched_back_and_forth);
    let env = TestEnv::new();
    std::fs::create_dir_all(env.codex_home()).unwrap();
    let mut login = codex(&env)
        .args(["login", "--with-api-key"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    login
        .stdin
        .take()
        .unwrap()
        .write_all(b"sk-interop-key\n")
        .unwrap();
    assert!(login.wait().unwrap().success());
    assert_eq!(env.read_auth()["auth_mode"], "apikey");

    let imported = env.ok(&["import"]);
    assert!(imported.contains("Imported account apikey-"), "{imported}");
    switch_codex_to_the_fixture_account(&env);
    env.ok(&["accounts", "switch", "apikey"]);
    assert_eq!(env.read_auth()["OPENAI_API_KEY"], "sk-interop-key");
    assert_codex_logged_in(&env, "API key configured");
}

#[test]
fn codex_uses_the_token_the_broker_refreshed_ahead_of_time() {
    isolated!(codex_uses_the_token_the_broker_refreshed_ahead_of_time);
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_issuer(&upstream);
    // Inside Codex's own 5-minute window: Codex would refresh it itself.
    let account = TestAccount::new("acc-ahead").expiring_in(60);
    upstream.add_account(&account);
    env.import_account(&account);
    codex_config(&env, &upstream);

    let token = env.ok(&["token", "--min-ttl", "1800"]);
    let token = token.trim();
    assert_ne!(token, account.access_token());
    assert_eq!(env.read_auth()["tokens"]["access_token"], token);
    assert_eq!(upstream.requests_to("/oauth/token").len(), 1);

    let out = codex_exec(&env, &upstream);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from the fake backend"));
    // Inference: the WebSocket handshake (or HTTP posts).
    let inference = upstream.requests_to("/codex/responses");
    assert!(!inference.is_empty());
    for r in &inference {
        assert_eq!(r.headers["authorization"], format!("Bearer {token}"));
        assert_eq!(r.headers["chatgpt-account-id"], "acc-ahead");
    }
    assert_eq!(
        upstream.requests_to("/oauth/token").len(),
        1,
        "Codex did not refresh"
    );
    assert!(upstream.reused_tokens().is_empty());
}

#[test]
fn codex_never_refreshes_while_the_daemon_runs() {
    isolated!(codex_never_refreshes_while_the_daemon_runs);
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_issuer(&upstream);
    // Four minutes left: inside Codex's own 5-minute window, and well
    // inside the daemon's 30-minute lead.
    let account = TestAccount::new("acc-daemon").expiring_in(240);
    codex_config(&env, &upstream);
    let daemon = env.start_daemon_refreshing(&upstream, &account);
    let token = env.read_auth()["tokens"]["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    for _ in 0..3 {
        codex_exec(&env, &upstream);
    }
    let inference = upstream.requests_to("/codex/responses");
    assert!(inference.len() >= 3);
    for r in &inference {
        assert_eq!(r.headers["authorization"], format!("Bearer {token}"));
    }
    assert_eq!(
        upstream.requests_to("/oauth/token").len(),
        1,
        "only the daemon refreshed"
    );
    assert!(upstream.reused_tokens().is_empty());
    assert_eq!(daemon.stop().code(), Some(0));
}

#[test]
fn a_codex_device_login_is_adopted_by_the_running_daemon() {
    isolated!(a_codex_device_login_is_adopted_by_the_running_daemon);
    let upstream = FakeUpstream::start();
    let old = TestAccount::new("acc-before");
    let env = TestEnv::with_account(&upstream, &old);
    let daemon = env.start_daemon(&[]);

    let new = TestAccount::new("acc-device");
    upstream.set_login_account(&new, 1);
    let out = codex(&env)
        .env(
            "CODEX_REVOKE_TOKEN_URL_OVERRIDE",
            format!("{}/oauth/revoke", upstream.url()),
        )
        .args([
            "login",
            "--device-auth",
            "--experimental_issuer",
            &upstream.url(),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.read_auth()["tokens"]["account_id"], "acc-device");
    let adopted = crate::support::wait_until(Duration::from_secs(5), || {
        env.read_store()["published"] == "acc-device"
    });
    assert!(
        adopted.is_some_and(|t| t < Duration::from_secs(1)),
        "{adopted:?}\n{}",
        daemon.log()
    );
    let store = env.read_store();
    let account = store["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "acc-device")
        .unwrap()
        .clone();
    assert_eq!(
        account["tokens"]["refresh_token"],
        env.read_auth()["tokens"]["refresh_token"]
    );
    assert_eq!(
        daemon.get("/v1/token?account=acc-device")["account_id"],
        "acc-device"
    );
    assert!(
        daemon.log().contains("adopted a new account"),
        "{}",
        daemon.log()
    );
    assert_codex_logged_in(&env, "Logged in using ChatGPT");
}

#[test]
fn codex_exec_through_the_forwarder_falls_back_on_429() {
    isolated!(codex_exec_through_the_forwarder_falls_back_on_429);
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let forwarder = daemon.forwarder();
    codex_config_at(&env, &forwarder);

    // Through the forwarder, on the main account.
    let out = codex_exec_at(&env, &forwarder);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from the fake backend"));
    let tries = |account: &str| {
        upstream
            .requests_to("/backend-api/codex/responses")
            .iter()
            .filter(|r| r.headers["chatgpt-account-id"] == account)
            .count()
    };
    assert!(tries("acc-main") >= 1);

    // The main account is used up: the same command succeeds on the fallback.
    upstream.set_limited("acc-main");
    let before = tries("acc-main");
    let out = codex_exec_at(&env, &forwarder);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from the fake backend"));
    assert_eq!(tries("acc-main"), before + 1, "one try on the main account");
    assert!(tries("acc-fallback") >= 1);

    // The quota seen on the way shows in `status`.
    let quota = || {
        let status: serde_json::Value =
            serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
        status["accounts"][0]["quota"].clone()
    };
    let seen = crate::support::wait_until(Duration::from_secs(5), || {
        quota()["five_hour"]["used_percent"] == 100.0
    });
    assert!(seen.is_some(), "{}", quota());
    assert!(env.ok(&["status"]).contains("100%"));
    assert!(
        upstream.requests_to("/oauth/token").is_empty(),
        "nobody refreshed"
    );
    assert!(upstream.reused_tokens().is_empty());

    // Both answers are counted, each on the account that gave it, as
    // Codex's.
    let usage: serde_json::Value =
        serde_json::from_str(&env.ok(&["usage", "--json", "--by", "account"])).unwrap();
    let rows = usage["rows"].as_array().unwrap();
    for account in ["acc-main", "acc-fallback"] {
        let row = rows.iter().find(|r| r["account_id"] == account);
        let row = row.unwrap_or_else(|| panic!("no usage of {account}: {usage}"));
        assert!(row["input_tokens"].as_u64().unwrap() >= 1200, "{row}");
    }
    let clients: serde_json::Value =
        serde_json::from_str(&env.ok(&["usage", "--json", "--by", "client"])).unwrap();
    let names: Vec<&str> = clients["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["client"].as_str().unwrap())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("codex")), "{names:?}");
}

#[test]
fn a_stale_codex_refresh_through_the_forwarder_never_spends_a_token() {
    isolated!(a_stale_codex_refresh_through_the_forwarder_never_spends_a_token);
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_backend(&upstream);
    let account = TestAccount::new("acc-stale").expiring_in(60);
    let daemon = env.start_daemon_refreshing(&upstream, &account);
    let forwarder = daemon.forwarder();

    // A second Codex home (another tool's copy) still holds the tokens the
    // daemon has just rotated, and they expire within Codex's window.
    let other = env.dir.path().join("other-codex");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("auth.json"), account.auth_json()).unwrap();
    std::fs::write(
        other.join("config.toml"),
        format!(
            "openai_base_url = \"{forwarder}/codex\"\nchatgpt_base_url = \"{forwarder}/backend-api/\"\n"
        ),
    )
    .unwrap();
    let out = codex_exec_in(&env, &other, &forwarder);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from the fake backend"));

    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(other.join("auth.json")).unwrap()).unwrap();
    assert_eq!(written["tokens"]["refresh_token"], "rt-acc-stale-1");
    assert_eq!(
        upstream.requests_to("/oauth/token").len(),
        1,
        "only the daemon's refresh"
    );
    assert!(upstream.reused_tokens().is_empty());
    assert!(
        daemon.log().contains("answered a token refresh"),
        "{}",
        daemon.log()
    );
}

/// What Codex logs when its WebSocket handshake fails and it falls back to
/// HTTPS.
const WEBSOCKET_FALLBACK: &str = "failed to connect to Responses WebSocket";

#[test]
fn codex_exec_through_the_forwarder_speaks_websocket() {
    isolated!(codex_exec_through_the_forwarder_speaks_websocket);
    let upstream = FakeUpstream::start();
    let (env, main, _) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let forwarder = daemon.forwarder();
    codex_config_at(&env, &forwarder);

    let out = codex_exec_at(&env, &forwarder);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from the fake backend"));
    assert!(!stderr.contains(WEBSOCKET_FALLBACK), "{stderr}");
    let requests = upstream.requests_to("/backend-api/codex/responses");
    let handshake = requests.iter().find(|r| r.method == "GET").unwrap();
    assert!(
        handshake.headers["openai-beta"].contains("responses_websockets"),
        "{:?}",
        handshake.headers
    );
    assert_eq!(
        handshake.headers["authorization"],
        format!("Bearer {}", main.access_token())
    );
    assert!(
        requests.iter().all(|r| r.method == "GET"),
        "Codex never fell back to HTTP"
    );
    let seen = upstream.websocket_seen();
    assert!(
        seen.iter()
            .any(|s| s.account == "acc-main"
                && s.message.starts_with("{\"type\":\"response.create\"")),
        "the backend saw Codex's turn on the WebSocket"
    );

    // With WebSockets off, Codex falls back to HTTPS as before.
    drop(daemon);
    let daemon = env.start_daemon(&["--no-websocket"]);
    let forwarder = daemon.forwarder();
    codex_config_at(&env, &forwarder);
    let handshakes = upstream.requests_to("/backend-api/codex/responses").len();
    let out = codex_exec_at(&env, &forwarder);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from the fake backend"));
    assert!(String::from_utf8_lossy(&out.stderr).contains(WEBSOCKET_FALLBACK));
    let after = upstream.requests_to("/backend-api/codex/responses");
    assert!(
        after[handshakes..].iter().all(|r| r.method == "POST"),
        "{after:?}"
    );
}

/// Codex asks for compressed answers and the backend compresses its 429s:
/// Codex shows the earliest reset the bodies name (not the hour its
/// headers say), the first time and, from the broker alone, the second.
#[test]
fn codex_shows_the_first_reset_when_every_account_is_used_up() {
    isolated!(codex_shows_the_first_reset_when_every_account_is_used_up);
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    // Over HTTP, where Codex asks for compressed answers; the broker asks
    // for identity (it reads the stream), and the backend compresses its
    // errors all the same.
    upstream.compress_errors_unasked("zstd");
    upstream.refuse_websockets();
    let first = crate::support::now() + 1800;
    upstream.set_limited_until("acc-main", first + 3000);
    upstream.set_limited_until("acc-fallback", first);
    let at = time::OffsetDateTime::from_unix_timestamp(first).unwrap();
    let shown = at
        .format(time::macros::format_description!(
            "[hour repr:12 padding:none]:[minute] [period]"
        ))
        .unwrap();
    let daemon = env.start_daemon(&[]);
    let forwarder = daemon.forwarder();
    codex_config_at(&env, &forwarder);
    for run in 0..2 {
        let before = upstream.requests_to("/backend-api/codex/responses").len();
        let out = codex_exec_unchecked(&env, &env.codex_home(), &forwarder);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        let said = stderr.to_lowercase();
        assert!(said.contains("hit your usage limit"), "{stderr}");
        // Codex names the day too when the reset is not today.
        let named = said.split_once("try again at ").is_some_and(|(_, when)| {
            let shown = shown.to_lowercase();
            when.starts_with(&shown) || when.contains(&format!(" {shown}"))
        });
        assert!(named, "run {run}: expected {shown}: {stderr}");
        let sent = upstream.requests_to("/backend-api/codex/responses").len() - before;
        if run == 1 {
            assert_eq!(sent, 0, "the broker answered alone");
        }
    }
    let posted = upstream
        .requests_to("/backend-api/codex/responses")
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect::<Vec<_>>();
    assert!(!posted.is_empty());
    for post in posted {
        let accepts = post.headers.get("accept-encoding").cloned();
        assert_eq!(
            accepts.as_deref(),
            Some("identity"),
            "the broker reads the answer"
        );
    }
}

#[test]
fn codex_runs_on_a_shielded_auth_json_and_refreshes_through_the_forwarder() {
    isolated!(codex_runs_on_a_shielded_auth_json_and_refreshes_through_the_forwarder);
    let upstream = FakeUpstream::start();
    // Four minutes left: inside Codex's own 5-minute window, and outside
    // the daemon's 1-minute lead here, so that Codex refreshes first.
    let mut env = TestEnv::with_backend(&upstream);
    env.vars
        .push(("CODEX_BROKER_REFRESH_AHEAD".into(), "60".into()));
    let account = TestAccount::new("acc-shielded").expiring_in(240);
    upstream.add_account(&account);
    env.import_account(&account);
    let daemon = env.start_daemon(&[]);
    let forwarder = daemon.forwarder();
    codex_config_at(&env, &forwarder);

    env.ok(&["shield", "on"]);
    let stand_in = env.read_auth()["tokens"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(stand_in.starts_with("codex-broker-stand-in."));
    assert_codex_logged_in(&env, "Logged in using ChatGPT");
    let out = codex_exec_at(&env, &forwarder);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from the fake backend"));
    assert!(
        daemon.log().contains("answered a token refresh"),
        "Codex refreshed through the forwarder:\n{}",
        daemon.log()
    );
    // Codex wrote back what the forwarder answered: the stand-in again;
    // the one real refresh was the broker's.
    assert_eq!(
        env.read_auth()["tokens"]["refresh_token"],
        stand_in.as_str()
    );
    assert_eq!(upstream.rotations(), 1);
    let issuer_saw_the_stand_in = upstream
        .requests_to("/oauth/token")
        .iter()
        .any(|r| String::from_utf8_lossy(&r.body).contains("codex-broker-stand-in."));
    assert!(!issuer_saw_the_stand_in);
    assert!(upstream.reused_tokens().is_empty());

    // Off: Codex runs on the real token again.
    env.ok(&["shield", "off"]);
    let real = env.read_auth()["tokens"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        Some(real),
        upstream.live_refresh_token("acc-shielded"),
        "auth.json holds the live refresh token"
    );
    assert_codex_logged_in(&env, "Logged in using ChatGPT");
    let out = codex_exec_at(&env, &forwarder);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from the fake backend"));
    assert!(upstream.reused_tokens().is_empty());
}

#[test]
fn codex_refreshes_at_the_issuer_a_shielded_auth_json_names_without_an_override() {
    isolated!(codex_refreshes_at_the_issuer_a_shielded_auth_json_names_without_an_override);
    let upstream = FakeUpstream::start();
    let mut env = TestEnv::with_backend(&upstream);
    env.vars
        .push(("CODEX_BROKER_REFRESH_AHEAD".into(), "60".into()));
    let account = TestAccount::new("acc-provenance").expiring_in(240);
    upstream.add_account(&account);
    env.import_account(&account);
    let daemon = env.start_daemon(&[]);
    let forwarder = daemon.forwarder();
    codex_config_at(&env, &forwarder);
    env.ok(&["shield", "on"]);
    assert_eq!(
        env.read_auth()["tokens"]["oauth_provenance"]["issuer"],
        forwarder.as_str()
    );

    // No CODEX_REFRESH_TOKEN_URL_OVERRIDE: the token is inside Codex's own
    // refresh window, and the only issuer it can reach is the one auth.json
    // names.
    let out = codex(&env)
        .args(["exec", "--skip-git-repo-check", "say hello"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from the fake backend"));
    assert!(
        daemon.log().contains("answered a token refresh"),
        "Codex refreshed at the forwarder:\n{stderr}\n{}",
        daemon.log()
    );
    assert!(upstream.reused_tokens().is_empty());
}

#[test]
fn codex_on_a_follower_runs_on_the_leaders_tokens_and_never_refreshes_there() {
    isolated!(codex_on_a_follower_runs_on_the_leaders_tokens_and_never_refreshes_there);
    let upstream = FakeUpstream::start();
    let (leader, leader_daemon, follower) = crate::follow::leader_and_follower(&upstream);
    let follower_daemon = crate::follow::start_follower(&follower, &leader_daemon.socket);
    let forwarder = follower_daemon.forwarder();
    codex_config_at(&follower, &forwarder);

    assert_codex_logged_in(&follower, "Logged in using ChatGPT");
    let out = codex_exec_at(&follower, &forwarder);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from the fake backend"));
    let leader_token = leader_daemon.get("/v1/token?account=acc-main")["access_token"].clone();
    let inference = upstream.requests_to("/backend-api/codex/responses");
    assert!(!inference.is_empty());
    for r in &inference {
        assert_eq!(
            Some(r.headers["authorization"].as_str()),
            leader_token
                .as_str()
                .map(|t| format!("Bearer {t}"))
                .as_deref()
        );
    }

    // A token the follower wants fresher than it is: the leader refreshes.
    let out = follower.ok(&["token", "--account", "acc-main", "--min-ttl", "7200"]);
    let new_token = out.trim();
    assert_eq!(
        leader_daemon.get("/v1/token?account=acc-main")["access_token"],
        new_token
    );
    // Every refresh the issuer saw spent a real token of the leader's
    // lineage, once; none came from the follower, which never held one.
    let refreshes = upstream.requests_to("/oauth/token");
    assert_eq!(refreshes.len(), 1);
    for r in &refreshes {
        let body = r.json();
        assert!(
            body["refresh_token"]
                .as_str()
                .unwrap()
                .starts_with("rt-acc-main-")
        );
    }
    assert!(upstream.reused_tokens().is_empty());
    assert_eq!(
        crate::follow::files_with_refresh_tokens(&follower.user_home()),
        Vec::<String>::new()
    );
    let follower_auth = follower.read_auth();
    assert!(
        follower_auth["tokens"]["refresh_token"]
            .as_str()
            .unwrap()
            .starts_with("codex-broker-stand-in.")
    );
    // The request log: who refreshed, and what each side holds.
    eprintln!("issuer saw {} refresh(es):", refreshes.len());
    for r in &refreshes {
        eprintln!(
            "  POST /oauth/token spending {} ({})",
            r.json()["refresh_token"],
            r.headers.get("user-agent").map_or("-", String::as_str)
        );
    }
    eprintln!("leader history:\n{}", leader.ok(&["history"]));
    eprintln!("follower history:\n{}", follower.ok(&["history"]));
    eprintln!(
        "leader store holds {}; follower store holds {}; follower auth.json holds {}",
        leader.stored_account("acc-main")["tokens"]["refresh_token"],
        follower.stored_account("acc-main")["tokens"]["refresh_token"]
            .as_str()
            .map(|t| format!("{}…", &t[..30]))
            .unwrap_or_default(),
        follower_auth["tokens"]["refresh_token"]
            .as_str()
            .map(|t| format!("{}…", &t[..30]))
            .unwrap_or_default(),
    );
}

/// The accounts that served the inference requests (WebSocket handshakes
/// and POSTs) from the `from`th on.
fn inference_accounts(upstream: &FakeUpstream, from: usize) -> Vec<String> {
    let requests = upstream.requests_to("/backend-api/codex/responses");
    requests[from.min(requests.len())..]
        .iter()
        .map(|r| r.headers["chatgpt-account-id"].clone())
        .collect()
}

/// A Codex session resumed after `accounts switch` stays on the account
/// that served it (its prompt cache lives there); a new session goes to
/// the account switched to.
#[test]
fn a_resumed_codex_session_stays_on_its_account_after_a_switch() {
    isolated!(a_resumed_codex_session_stays_on_its_account_after_a_switch);
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let forwarder = daemon.forwarder();
    codex_config_at(&env, &forwarder);
    let home = env.codex_home();

    let out = codex_exec_at(&env, &forwarder);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello from the fake backend"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let session = stderr
        .lines()
        .find_map(|l| l.strip_prefix("session id: "))
        .expect("Codex names its session")
        .trim()
        .to_owned();
    let first = inference_accounts(&upstream, 0);
    assert!(
        !first.is_empty() && first.iter().all(|a| a == "acc-main"),
        "{first:?}"
    );

    env.ok(&["accounts", "switch", "acc-fallback"]);
    let before = upstream.requests_to("/backend-api/codex/responses").len();
    let out = codex_exec_args(&env, &home, &forwarder, &["resume", &session, "again"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let resumed = inference_accounts(&upstream, before);
    assert!(
        !resumed.is_empty(),
        "the resumed session reached the backend"
    );
    assert!(resumed.iter().all(|a| a == "acc-main"), "{resumed:?}");

    let before = upstream.requests_to("/backend-api/codex/responses").len();
    codex_exec_at(&env, &forwarder);
    let fresh = inference_accounts(&upstream, before);
    assert!(
        !fresh.is_empty() && fresh.iter().all(|a| a == "acc-fallback"),
        "{fresh:?}"
    );
    let status: serde_json::Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["daemon"]["pinned_conversations"], 2, "{status}");
}

/// Keep-warm on a Codex conversation carried over a WebSocket: its whole
/// turn (not Codex's own warm-up) is repeated over HTTP on its account.
#[test]
fn a_codex_websocket_conversation_is_kept_warm_over_http() {
    isolated!(a_codex_websocket_conversation_is_kept_warm_over_http);
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    env.write_config("[cachekeep]\nenabled = true\ninterval = 1\nidle_cap = 30\n");
    let daemon = env.start_daemon(&[]);
    let forwarder = daemon.forwarder();
    codex_config_at(&env, &forwarder);
    codex_exec_at(&env, &forwarder);
    let turn = upstream
        .websocket_seen()
        .into_iter()
        .map(|s| serde_json::from_str::<serde_json::Value>(&s.message).unwrap_or_default())
        .find(|m| m["type"] == "response.create" && m.get("generate").is_none())
        .expect("Codex's turn on the WebSocket");
    let shadows = || {
        upstream
            .requests_to("/backend-api/codex/responses")
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect::<Vec<_>>()
    };
    let warmed = crate::support::wait_until(Duration::from_secs(10), || !shadows().is_empty());
    assert!(warmed.is_some(), "a shadow of Codex's turn");
    let shadow = &shadows()[0];
    assert_eq!(shadow.headers["chatgpt-account-id"], "acc-main");
    let body = shadow.json();
    assert_eq!(body["input"], turn["input"]);
    assert_eq!(body["prompt_cache_key"], turn["prompt_cache_key"]);
    assert_eq!(body["store"], false);
    assert_eq!(
        shadow.headers["session-id"],
        turn["prompt_cache_key"].as_str().unwrap()
    );
}

/// After `setup codex`, every Codex release covered reaches the backend
/// through the forwarder with no environment variable and no hand edit.
#[test]
fn each_codex_release_works_through_the_broker_after_setup_with_no_other_step() {
    isolated!(each_codex_release_works_through_the_broker_after_setup_with_no_other_step);
    let upstream = FakeUpstream::start();
    let (env, main, _) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let out = env.ok(&["setup", "codex"]);
    assert!(out.contains(&daemon.forwarder()), "{out}");
    let auth = env.read_auth();
    assert_eq!(
        auth["tokens"]["oauth_provenance"]["issuer"],
        daemon.forwarder()
    );
    let releases = crate::support::codex_releases();
    for bin in &releases {
        let before = upstream.requests_to("/backend-api/codex/responses").len();
        let stdout = exec_release(&env, bin);
        let release = bin.display();
        assert!(
            stdout.contains("hello from the fake backend"),
            "{release}: {stdout}"
        );
        let requests = upstream.requests_to("/backend-api/codex/responses");
        assert!(requests.len() > before, "{release} reached the forwarder");
        let bearer = format!("Bearer {}", main.access_token());
        assert!(
            requests[before..]
                .iter()
                .all(|r| r.headers["authorization"] == bearer)
        );
    }
}

/// After `setup codex` alone (no shield mode, no environment variable),
/// each Codex release covered refreshes at the forwarder: auth.json names
/// it as the issuer.
#[test]
fn each_codex_release_refreshes_at_the_forwarder_after_setup_without_an_override() {
    isolated!(each_codex_release_refreshes_at_the_forwarder_after_setup_without_an_override);
    for bin in crate::support::codex_releases() {
        // A home of its own per release: each starts inside Codex's refresh
        // window.
        let upstream = FakeUpstream::start();
        let mut env = TestEnv::with_backend(&upstream);
        env.set_var("CODEX_BROKER_REFRESH_AHEAD", "60");
        let account = TestAccount::new("acc-setup").expiring_in(240);
        upstream.add_account(&account);
        env.import_account(&account);
        let daemon = env.start_daemon(&[]);
        env.ok(&["setup", "codex"]);
        exec_release(&env, &bin);
        let release = bin.display();
        assert!(
            daemon.log().contains("answered a token refresh"),
            "{release} refreshed at the forwarder:\n{}",
            daemon.log()
        );
        assert!(upstream.reused_tokens().is_empty());
    }
}
