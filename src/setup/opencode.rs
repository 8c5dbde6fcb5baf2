//! What `setup opencode` changes in OpenCode's `opencode.json`: a provider
//! `codex-broker` that speaks Chat Completions to the forwarder's `/v1`
//! (any key does), and the default model on it. Every other key stays, in
//! its order.

use serde_json::{Map, Value, json};

use super::Plan;

/// The provider's name in OpenCode.
pub const PROVIDER: &str = "codex-broker";

/// The config `text` (empty: no file) with the provider for the forwarder
/// at `base` offering `models`; an error names what is wrong with the file.
pub fn plan(text: &str, base: &str, models: &[String]) -> Result<Plan, String> {
    let mut config: Map<String, Value> = if text.trim().is_empty() {
        let mut fresh = Map::new();
        fresh.insert("$schema".into(), json!("https://opencode.ai/config.json"));
        fresh
    } else {
        match serde_json::from_str(text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err("not a JSON object".into()),
            Err(e) => {
                return Err(format!(
                    "not JSON (comments are not kept, so none may be there): {e}"
                ));
            }
        }
    };
    let mut changes = Vec::new();
    let listed: Map<String, Value> = models
        .iter()
        .map(|m| (m.clone(), json!({ "name": m })))
        .collect();
    let provider = json!({
        "npm": "@ai-sdk/openai-compatible",
        "name": "codex-broker",
        "options": {"baseURL": format!("{base}/v1"), "apiKey": "codex-broker"},
        "models": listed,
    });
    let providers = config
        .entry("provider")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(providers) = providers else {
        return Err("`provider` must be an object".into());
    };
    if providers.get(PROVIDER) != Some(&provider) {
        changes.push(format!(
            "provider.{PROVIDER}: Chat Completions at {base}/v1"
        ));
        providers.insert(PROVIDER.into(), provider);
    }
    let wanted = format!(
        "{PROVIDER}/{}",
        models.first().map_or("gpt-5.1-codex", String::as_str)
    );
    let current = config
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let on_broker = current
        .as_deref()
        .is_some_and(|m| m.starts_with(&format!("{PROVIDER}/")));
    if !on_broker {
        changes.push(match current {
            Some(now) => format!("model: \"{now}\" -> \"{wanted}\""),
            None => format!("model = \"{wanted}\""),
        });
        config.insert("model".into(), json!(wanted));
    }
    let mut text = serde_json::to_string_pretty(&Value::Object(config)).expect("JSON");
    text.push('\n');
    Ok(Plan { text, changes })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "http://127.0.0.1:1456";

    #[test]
    fn the_provider_and_model_are_set_and_the_rest_kept_in_order() {
        let mine = r#"{"theme": "dark", "provider": {"ollama": {"npm": "x"}}, "model": "ollama/llama", "share": "manual"}"#;
        let models = vec!["gpt-5.1-codex".to_owned()];
        let plan = plan(mine, BASE, &models).unwrap();
        assert_eq!(plan.changes.len(), 2, "{:?}", plan.changes);
        assert!(plan.changes[1].contains("\"ollama/llama\" -> \"codex-broker/gpt-5.1-codex\""));
        let config: Value = serde_json::from_str(&plan.text).unwrap();
        let keys: Vec<&String> = config.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["theme", "provider", "model", "share"]);
        assert_eq!(config["provider"]["ollama"]["npm"], "x");
        assert_eq!(
            config["provider"]["codex-broker"]["options"]["baseURL"],
            "http://127.0.0.1:1456/v1"
        );
        assert!(config["provider"]["codex-broker"]["models"]["gpt-5.1-codex"].is_object());
        let again = super::plan(&plan.text, BASE, &models).unwrap();
        assert!(again.changes.is_empty(), "idempotent");
        assert_eq!(again.text, plan.text);
    }

    #[test]
    fn a_new_file_is_made_and_a_bad_one_refused() {
        let models = vec!["m".to_owned()];
        let fresh = plan("", BASE, &models).unwrap();
        let config: Value = serde_json::from_str(&fresh.text).unwrap();
        assert_eq!(config["model"], "codex-broker/m");
        assert!(
            plan("{// comment\n}", BASE, &models)
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(plan("[1]", BASE, &models).unwrap_err().contains("object"));
        assert!(
            plan(r#"{"provider": 3}"#, BASE, &models)
                .unwrap_err()
                .contains("`provider`")
        );
    }
}
