//! Shield mode: auth.json with a stand-in refresh token that only the
//! forwarder honours; the real lineage is never exposed or taken back.

use std::time::Duration;

use serde_json::Value;

use crate::forward::refresh_through;
use crate::support::fake_upstream::FakeUpstream;
use crate::support::{TestAccount, TestEnv, wait_until};

const PREFIX: &str = "codex-broker-stand-in.";

fn auth_refresh_token(env: &TestEnv) -> String {
    env.read_auth()["tokens"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn status(env: &TestEnv) -> Value {
    serde_json::from_str(&env.ok(&["status", "--json"])).unwrap()
}

#[test]
fn shield_on_publishes_a_stand_in_only_the_forwarder_honours() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-shield");
    let env = TestEnv::with_backend_account(&upstream, &account);
    assert_eq!(auth_refresh_token(&env), account.refresh_token);
    let daemon = env.start_daemon(&[]);

    let out = env.ok(&["shield", "on"]);
    assert!(out.contains("Shield mode is on"), "{out}");
    let stand_in = auth_refresh_token(&env);
    assert!(stand_in.starts_with(PREFIX), "{stand_in}");
    // The access and id tokens are the real ones; the store keeps the real
    // refresh token.
    let auth = env.read_auth();
    assert_eq!(auth["tokens"]["access_token"], account.access_token());
    assert_eq!(auth["tokens"]["account_id"], "acc-shield");
    let stored = env.stored_account("acc-shield");
    assert_eq!(stored["tokens"]["refresh_token"], account.refresh_token);
    let s = status(&env);
    assert_eq!(s["shield"], true);
    assert_eq!(s["codex_auth"]["shielded"], true);
    assert_eq!(s["accounts"][0]["shielded"], true);
    let text = env.ok(&["status"]);
    assert!(text.contains("with a stand-in refresh token"), "{text}");
    assert!(!text.contains(&stand_in), "{text}");
    assert!(env.ok(&["shield"]).starts_with("shield: on"));

    // A refresh with the stand-in is answered by the forwarder with the
    // current tokens and the same stand-in.
    let answer = refresh_through(&daemon.forwarder(), &stand_in);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let tokens = answer.json();
    assert_eq!(tokens["refresh_token"], stand_in.as_str());
    let stored = env.stored_account("acc-shield");
    assert_eq!(tokens["access_token"], stored["tokens"]["access_token"]);
    // Sent to the issuer, the stand-in is worth nothing, and the real
    // lineage is untouched.
    let issuer = refresh_through(&upstream.url(), &stand_in);
    assert_eq!(issuer.status, 401, "{}", issuer.text());
    assert!(upstream.reused_tokens().is_empty());
    let live = upstream.live_refresh_token("acc-shield").unwrap();
    assert_eq!(
        env.stored_account("acc-shield")["tokens"]["refresh_token"],
        live.as_str()
    );
    // The stand-in stays the same across the daemon's refreshes.
    let rotations = upstream.rotations();
    let forced = refresh_through(&daemon.forwarder(), &stand_in);
    assert_eq!(forced.status, 200);
    assert!(upstream.rotations() >= rotations);
    assert_eq!(auth_refresh_token(&env), stand_in);

    // Off: the real refresh token is published again.
    let out = env.ok(&["shield", "off"]);
    assert!(out.contains("the real refresh token"), "{out}");
    let real = auth_refresh_token(&env);
    assert!(!real.starts_with(PREFIX));
    assert_eq!(
        real,
        env.stored_account("acc-shield")["tokens"]["refresh_token"]
            .as_str()
            .unwrap()
    );
    assert_eq!(status(&env)["shield"], false);
    // A tool still holding the stand-in is answered, with the stand-in.
    let late = refresh_through(&daemon.forwarder(), &stand_in);
    assert_eq!(late.status, 200);
    assert_eq!(late.json()["refresh_token"], stand_in.as_str());
    assert!(upstream.reused_tokens().is_empty());
}

#[test]
fn a_stand_in_is_never_taken_for_a_refresh_token() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-guard");
    let env = TestEnv::with_backend_account(&upstream, &account);
    env.ok(&["shield", "on"]);
    let shielded = std::fs::read_to_string(env.auth_path()).unwrap();
    let stand_in = auth_refresh_token(&env);

    // Importing a shielded file (say, copied from another machine) fails
    // and says why.
    let copy = env.dir.path().join("copied-auth.json");
    std::fs::write(&copy, &shielded).unwrap();
    let out = env.run(&["import", copy.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stand-in"), "{stderr}");
    assert!(!stderr.contains(&stand_in), "{stderr}");

    // A newer-looking shielded file in the Codex home is not adopted: the
    // store keeps its real token, and auth.json gets the broker's version.
    env.ok(&["shield", "off"]);
    let daemon = env.start_daemon(&[]);
    let mut forged: Value = serde_json::from_str(&shielded).unwrap();
    forged["last_refresh"] = "2099-01-01T00:00:00Z".into();
    std::fs::write(env.auth_path(), forged.to_string()).unwrap();
    let restored = wait_until(Duration::from_secs(5), || {
        !auth_refresh_token(&env).starts_with(PREFIX)
    });
    assert!(restored.is_some(), "{}", daemon.log());
    assert_eq!(
        env.stored_account("acc-guard")["tokens"]["refresh_token"],
        account.refresh_token
    );
    assert!(!daemon.log().contains(&stand_in));
    let history = env.ok(&["history", "--json"]);
    assert!(!history.contains("\"adopted\""), "{history}");
}

#[test]
fn a_codex_login_in_a_shielded_home_is_adopted_and_shielded() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-first");
    let env = TestEnv::with_backend_account(&upstream, &account);
    std::fs::write(env.broker_home().join("config.toml"), "shield = true\n").unwrap();
    let daemon = env.start_daemon(&[]);
    // `shield = true` in config.toml shields at start, and keeps it on.
    let shielded = wait_until(Duration::from_secs(5), || {
        auth_refresh_token(&env).starts_with(PREFIX)
    });
    assert!(shielded.is_some(), "{}", daemon.log());
    let out = env.run(&["shield", "off"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shield = true"));

    // `codex login` writes another account's real tokens.
    let other = TestAccount::new("acc-new-login");
    upstream.add_account(&other);
    env.write_codex_auth(&other);
    let taken = wait_until(Duration::from_secs(5), || {
        env.read_store()["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "acc-new-login")
            && auth_refresh_token(&env).starts_with(PREFIX)
    });
    assert!(taken.is_some(), "{}", daemon.log());
    assert_eq!(env.read_auth()["tokens"]["account_id"], "acc-new-login");
    assert_eq!(
        env.stored_account("acc-new-login")["tokens"]["refresh_token"],
        other.refresh_token
    );
}

#[test]
fn shield_mode_names_the_forwarder_as_the_issuer_codex_refreshes_at() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-prov");
    upstream.add_account(&account);
    let env = TestEnv::with_backend(&upstream);
    let original = serde_json::json!({"issuer": "https://auth.openai.com", "client_id": "app_x"});
    let mut auth: Value = serde_json::from_str(&account.auth_json()).unwrap();
    auth["tokens"]["oauth_provenance"] = original.clone();
    let file = env.dir.path().join("auth-with-provenance.json");
    std::fs::write(&file, auth.to_string()).unwrap();
    env.ok(&["import", file.to_str().unwrap()]);
    let daemon = env.start_daemon(&[]);
    let forwarder = daemon.forwarder();

    env.ok(&["shield", "on"]);
    let published = env.read_auth()["tokens"]["oauth_provenance"].clone();
    assert_eq!(published["issuer"], forwarder.as_str(), "{published}");
    assert_eq!(published["client_id"], "app_x");
    // Codex refreshes at that issuer: the broker answers, with the stand-in.
    let stand_in = auth_refresh_token(&env);
    let answer = refresh_through(published["issuer"].as_str().unwrap(), &stand_in);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["refresh_token"], stand_in.as_str());
    // The store keeps where the login came from; status shows both.
    let stored = env.stored_account("acc-prov");
    assert_eq!(
        stored["tokens"]["codex_extra"]["oauth_provenance"],
        original
    );
    assert_eq!(
        status(&env)["accounts"][0]["provenance_issuer"],
        "https://auth.openai.com"
    );
    let text = env.ok(&["status"]);
    assert!(
        text.contains(&format!(
            "https://auth.openai.com (auth.json names {forwarder})"
        )),
        "{text}"
    );

    // A daemon restarted on another port publishes its new address.
    assert!(daemon.stop().success());
    let daemon = env.start_daemon(&[]);
    let moved = daemon.forwarder();
    let renamed = wait_until(Duration::from_secs(10), || {
        env.read_auth()["tokens"]["oauth_provenance"]["issuer"] == moved.as_str()
    });
    assert!(renamed.is_some() || moved == forwarder, "{}", daemon.log());

    // Off: the original issuer is published again.
    env.ok(&["shield", "off"]);
    assert_eq!(env.read_auth()["tokens"]["oauth_provenance"], original);
    assert_eq!(env.ok(&["status"]).matches("auth.json names").count(), 0);
}
