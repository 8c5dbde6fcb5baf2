//! What `setup pi` changes in the Pi coding agent's files: its built-in
//! `openai-codex` provider pointed at the forwarder's `/backend-api`
//! (`~/.pi/agent/models.json`), a stand-in credential for it
//! (`~/.pi/agent/auth.json`), and that provider as the default
//! (`~/.pi/agent/settings.json`). Pi insists on a credential and reads the
//! account id out of it as a JWT; the stand-in names no real account and
//! is an `api_key` entry (an `oauth` one would make Pi refresh at the
//! issuer on its own). The forwarder replaces both headers. Every other
//! key of both files stays, in its order.

use serde_json::{Map, Value, json};

use super::Plan;
use crate::wire::jwt::{AUTH_CLAIM, encode_unsigned};

/// Pi's name of its ChatGPT provider.
pub const PROVIDER: &str = "openai-codex";
/// The account the stand-in names: none of the user's.
const STAND_IN_ACCOUNT: &str = "codex-broker";

/// The stand-in credential: an unsigned JWT naming no real account.
pub fn stand_in() -> String {
    encode_unsigned(&json!({ AUTH_CLAIM: {"chatgpt_account_id": STAND_IN_ACCOUNT} }))
}

fn object(text: &str) -> Result<Map<String, Value>, String> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

fn written(map: Map<String, Value>) -> String {
    let mut text = serde_json::to_string_pretty(&Value::Object(map)).expect("JSON");
    text.push('\n');
    text
}

/// `models.json` with the provider's `baseUrl` at the forwarder at `base`.
pub fn models(text: &str, base: &str) -> Result<Plan, String> {
    let mut config = object(text)?;
    let url = format!("{base}/backend-api");
    let providers = config
        .entry("providers")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(providers) = providers else {
        return Err("`providers` must be an object".into());
    };
    let provider = providers
        .entry(PROVIDER)
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(provider) = provider else {
        return Err(format!("`providers.{PROVIDER}` must be an object"));
    };
    let mut changes = Vec::new();
    if provider.get("baseUrl").and_then(Value::as_str) != Some(url.as_str()) {
        changes.push(format!("providers.{PROVIDER}.baseUrl = \"{url}\""));
        provider.insert("baseUrl".into(), json!(url));
    }
    Ok(Plan {
        text: written(config),
        changes,
    })
}

/// `auth.json` with the stand-in as the provider's credential.
pub fn auth(text: &str) -> Result<Plan, String> {
    let mut config = object(text)?;
    let wanted = json!({"type": "api_key", "key": stand_in()});
    let mut changes = Vec::new();
    match config.get(PROVIDER) {
        Some(current) if *current == wanted => {}
        Some(_) => changes.push(format!(
            "{PROVIDER}: Pi's own credential replaced by a stand-in (the forwarder sets the \
             real one; --undo restores Pi's)"
        )),
        None => changes.push(format!(
            "{PROVIDER}: a stand-in credential (the forwarder sets the real one)"
        )),
    }
    config.insert(PROVIDER.into(), wanted);
    Ok(Plan {
        text: written(config),
        changes,
    })
}

/// The model Pi uses on the provider unless told otherwise.
pub const DEFAULT_MODEL: &str = "gpt-5.1-codex";

/// `settings.json` with the provider as Pi's default (and its model,
/// unless one of the provider's is set already).
pub fn settings(text: &str) -> Result<Plan, String> {
    let mut config = object(text)?;
    let mut changes = Vec::new();
    let provider = config.get("defaultProvider").and_then(Value::as_str);
    if provider != Some(PROVIDER) {
        changes.push(match provider {
            Some(now) => format!("defaultProvider: \"{now}\" -> \"{PROVIDER}\""),
            None => format!("defaultProvider = \"{PROVIDER}\""),
        });
        config.insert("defaultProvider".into(), json!(PROVIDER));
        config.insert("defaultModel".into(), json!(DEFAULT_MODEL));
    }
    Ok(Plan {
        text: written(config),
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "http://127.0.0.1:1456";

    #[test]
    fn the_provider_and_its_stand_in_are_set_and_the_rest_kept() {
        let mine = r#"{"providers": {"ollama": {"baseUrl": "http://localhost:11434/v1"}}, "x": 1}"#;
        let plan = models(mine, BASE).unwrap();
        let config: Value = serde_json::from_str(&plan.text).unwrap();
        assert_eq!(
            config["providers"]["openai-codex"]["baseUrl"],
            "http://127.0.0.1:1456/backend-api"
        );
        assert_eq!(
            config["providers"]["ollama"]["baseUrl"],
            "http://localhost:11434/v1"
        );
        assert_eq!(config["x"], 1);
        assert!(
            models(&plan.text, BASE).unwrap().changes.is_empty(),
            "idempotent"
        );

        let login = r#"{"anthropic": {"type": "api_key", "key": "sk-ant"}, "openai-codex": {"type": "oauth", "refresh": "r"}}"#;
        let plan = auth(login).unwrap();
        assert!(plan.changes[0].contains("replaced"), "{:?}", plan.changes);
        let config: Value = serde_json::from_str(&plan.text).unwrap();
        assert_eq!(config["anthropic"]["key"], "sk-ant");
        assert_eq!(config["openai-codex"]["type"], "api_key");
        let claims =
            crate::wire::jwt::decode(config["openai-codex"]["key"].as_str().unwrap()).unwrap();
        assert_eq!(claims.account_id.as_deref(), Some("codex-broker"));
        assert!(auth(&plan.text).unwrap().changes.is_empty(), "idempotent");
        assert!(auth("[1]").is_err());
        let plan = settings(
            r#"{"theme": "dark", "defaultProvider": "anthropic", "defaultModel": "claude"}"#,
        )
        .unwrap();
        assert!(plan.changes[0].contains("\"anthropic\" -> \"openai-codex\""));
        let config: Value = serde_json::from_str(&plan.text).unwrap();
        assert_eq!(
            (&config["defaultModel"], &config["theme"]),
            (&json!(DEFAULT_MODEL), &json!("dark"))
        );
        let chosen = r#"{"defaultProvider": "openai-codex", "defaultModel": "gpt-5.1"}"#;
        assert!(
            settings(chosen).unwrap().changes.is_empty(),
            "a model of the provider is kept"
        );
        assert!(
            models(r#"{"providers": []}"#, BASE)
                .unwrap_err()
                .contains("`providers`")
        );
    }
}
