//! What a finished response says it used (`usage` of `response.completed`)
//! and which client sent the request, read from outside input and held to
//! plausible ranges.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The most tokens one response is believed to use of any kind.
const MAX_TOKENS: u64 = 100_000_000;
/// The longest client or model name kept.
const MAX_NAME: usize = 64;

/// Tokens of one response, or summed over many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    #[serde(rename = "input_tokens")]
    pub input: u64,
    #[serde(rename = "cached_input_tokens")]
    pub cached_input: u64,
    #[serde(rename = "output_tokens")]
    pub output: u64,
    #[serde(rename = "reasoning_tokens")]
    pub reasoning: u64,
}

impl Tokens {
    pub fn add(&mut self, other: &Tokens) {
        self.input = self.input.saturating_add(other.input);
        self.cached_input = self.cached_input.saturating_add(other.cached_input);
        self.output = self.output.saturating_add(other.output);
        self.reasoning = self.reasoning.saturating_add(other.reasoning);
    }
}

/// What a `response.completed` event (or a finished response object, as
/// `stream:false` answers it) reports: its tokens and model. `None` for any other event, or one
/// without a readable `usage`.
pub fn completed(event: &Value) -> Option<(Tokens, Option<String>)> {
    let response = match event.get("type").and_then(Value::as_str) {
        Some("response.completed") => event.get("response")?,
        _ if event.get("object").and_then(Value::as_str) == Some("response") => event,
        _ => return None,
    };
    let usage = response.get("usage")?;
    let count = |v: Option<&Value>| {
        v.and_then(Value::as_u64)
            .filter(|n| *n <= MAX_TOKENS)
            .unwrap_or(0)
    };
    let tokens = Tokens {
        input: count(usage.get("input_tokens")),
        cached_input: count(usage.pointer("/input_tokens_details/cached_tokens")),
        output: count(usage.get("output_tokens")),
        reasoning: count(usage.pointer("/output_tokens_details/reasoning_tokens")),
    };
    let model = response.get("model").and_then(Value::as_str).and_then(name);
    Some((tokens, model))
}

/// The client a `User-Agent` names: its first product token
/// (`codex_cli_rs/0.171.0 (...)` is `codex_cli_rs`), `unknown` without one.
pub fn client(user_agent: Option<&str>) -> String {
    user_agent
        .and_then(|ua| ua.split(['/', ' ']).next())
        .and_then(name)
        .unwrap_or_else(|| "unknown".into())
}

/// `text` as a name kept in the usage file and shown: letters, digits and
/// `._-` only, at most [`MAX_NAME`] characters.
pub fn name(text: &str) -> Option<String> {
    let text = text.trim();
    let fits = !text.is_empty()
        && text.len() <= MAX_NAME
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    fits.then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_completed_event_gives_its_tokens_and_model() {
        let event = json!({"type": "response.completed", "response": {"model": "gpt-5.1-codex",
            "usage": {"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024},
                "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 128},
                "total_tokens": 1500}}});
        let (tokens, model) = completed(&event).unwrap();
        assert_eq!(
            tokens,
            Tokens {
                input: 1200,
                cached_input: 1024,
                output: 300,
                reasoning: 128
            }
        );
        assert_eq!(model.as_deref(), Some("gpt-5.1-codex"));
    }

    #[test]
    fn hostile_numbers_and_names_are_not_believed() {
        let event = json!({"type": "response.completed", "response": {"model": "m<script>",
            "usage": {"input_tokens": -5, "output_tokens": 1e300,
                "input_tokens_details": {"cached_tokens": "9"},
                "output_tokens_details": {"reasoning_tokens": u64::MAX}}}});
        let (tokens, model) = completed(&event).unwrap();
        assert_eq!(tokens, Tokens::default());
        assert_eq!(model, None);
        assert!(completed(&json!({"type": "response.output_text.delta"})).is_none());
        assert!(completed(&json!({"type": "response.completed", "response": {}})).is_none());
    }

    #[test]
    fn the_client_is_the_first_product_token() {
        for (ua, want) in [
            (
                Some("codex_cli_rs/0.171.0 (Linux 6.1; x86_64) xterm"),
                "codex_cli_rs",
            ),
            (Some("opencode/1.0.3"), "opencode"),
            (Some("OpenAI/Python 1.99.0"), "OpenAI"),
            (Some("curl"), "curl"),
            (Some(""), "unknown"),
            (Some("<b>/1"), "unknown"),
            (None, "unknown"),
        ] {
            assert_eq!(client(ua), want, "{ua:?}");
        }
        assert_eq!(client(Some(&"a".repeat(65))), "unknown");
    }
}
