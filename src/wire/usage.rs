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

/// A finished response, as far as its usage goes; everything else it
/// holds (the whole answer) is skipped unread.
#[derive(Deserialize)]
struct Finished<'a> {
    #[serde(default, borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
    usage: Option<UsageField>,
}

#[derive(Deserialize)]
struct UsageField {
    #[serde(default, deserialize_with = "count")]
    input_tokens: u64,
    #[serde(default)]
    input_tokens_details: Option<Details>,
    #[serde(default, deserialize_with = "count")]
    output_tokens: u64,
    #[serde(default)]
    output_tokens_details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    #[serde(default, deserialize_with = "count")]
    cached_tokens: u64,
    #[serde(default, deserialize_with = "count")]
    reasoning_tokens: u64,
}

/// A token count from outside: a whole number up to [`MAX_TOKENS`], else
/// nothing (0), whatever type it came as.
fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let value = Value::deserialize(d)?;
    Ok(value.as_u64().filter(|n| *n <= MAX_TOKENS).unwrap_or(0))
}

impl Finished<'_> {
    fn read(self) -> Option<(Tokens, Option<String>)> {
        let usage = self.usage?;
        let detail = |d: &Option<Details>, pick: fn(&Details) -> u64| d.as_ref().map_or(0, pick);
        let tokens = Tokens {
            input: usage.input_tokens,
            cached_input: detail(&usage.input_tokens_details, |d| d.cached_tokens),
            output: usage.output_tokens,
            reasoning: detail(&usage.output_tokens_details, |d| d.reasoning_tokens),
        };
        Some((tokens, self.model.as_deref().and_then(name)))
    }
}

/// What the data of a `response.completed` event reports: its tokens and
/// model. `None` for any other event, or one without a readable `usage`.
pub fn completed_event(data: &[u8]) -> Option<(Tokens, Option<String>)> {
    #[derive(Deserialize)]
    struct Event<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        response: Option<Finished<'a>>,
    }
    let event: Event = serde_json::from_slice(data).ok()?;
    (event.kind == "response.completed").then_some(())?;
    event.response?.read()
}

/// What a finished response object (as a `stream:false` answer carries it)
/// reports: its tokens and model.
pub fn completed_response(response: &Value) -> Option<(Tokens, Option<String>)> {
    Finished::deserialize(response).ok()?.read()
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
            "output": [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}],
            "usage": {"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024},
                "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 128},
                "total_tokens": 1500}}});
        let (tokens, model) = completed_event(event.to_string().as_bytes()).unwrap();
        assert_eq!(
            completed_response(&event["response"]),
            Some((tokens, model.clone()))
        );
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
        let (tokens, model) = completed_event(event.to_string().as_bytes()).unwrap();
        assert_eq!(tokens, Tokens::default());
        assert_eq!(model, None);
        let none = |v: Value| completed_event(v.to_string().as_bytes());
        assert!(none(json!({"type": "response.output_text.delta"})).is_none());
        assert!(none(json!({"type": "response.completed", "response": {}})).is_none());
        assert!(none(json!({"type": "response.completed", "response": 7})).is_none());
        assert!(completed_event(b"{\"type\": \"response.completed\", \"resp").is_none());
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
