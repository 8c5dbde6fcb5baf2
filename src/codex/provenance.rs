//! `tokens.oauth_provenance` of auth.json: the issuer Codex 0.166 and later
//! refreshes at (`{issuer}/oauth/token`) and the client it logged in as.
//! In shield mode auth.json names the broker's forwarder as that issuer, so
//! Codex's refreshes reach the broker without an environment variable; the
//! store keeps the provenance the login came with, and a publish without
//! shield mode writes that one again.

use serde_json::{Map, Value};

use crate::oauth::CLIENT_ID;

/// The field of auth.json's `tokens`.
pub const FIELD: &str = "oauth_provenance";

/// The forwarder a daemon serves when none was recorded: its default
/// address.
pub const DEFAULT_FORWARDER: &str = "http://127.0.0.1:1456";

/// The issuer `tokens_extra` (the unknown fields of auth.json's `tokens`)
/// names, if it names one.
pub fn issuer(tokens_extra: &Map<String, Value>) -> Option<&str> {
    tokens_extra.get(FIELD)?.get("issuer")?.as_str()
}

/// Names `forwarder` as the issuer, keeping every other field of the
/// provenance (its `client_id`; Codex's own client when there was none).
pub fn through_forwarder(tokens_extra: &mut Map<String, Value>, forwarder: &str) {
    let provenance = tokens_extra
        .entry(FIELD)
        .or_insert_with(|| Value::Object(Map::new()));
    if !provenance.is_object() {
        *provenance = Value::Object(Map::new());
    }
    let fields = provenance.as_object_mut().expect("made an object above");
    fields.insert("issuer".into(), Value::String(forwarder.to_owned()));
    fields
        .entry("client_id")
        .or_insert_with(|| Value::String(CLIENT_ID.to_owned()));
}

/// Whether `issuer` is a loopback URL: a forwarder's (this broker's, or
/// another's on the machine), never where a login came from.
pub fn is_forwarder(issuer: &str) -> bool {
    let Ok(url) = url::Url::parse(issuer) else {
        return false;
    };
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Puts back the provenance `original` held where `incoming` (tokens Codex
/// wrote to auth.json) names a forwarder: the broker never takes its own
/// forwarder for the issuer a login came from.
pub fn keep_original(incoming: &mut Map<String, Value>, original: Option<&Map<String, Value>>) {
    if !issuer(incoming).is_some_and(is_forwarder) {
        return;
    }
    match original.and_then(|o| o.get(FIELD)) {
        Some(kept) => incoming.insert(FIELD.into(), kept.clone()),
        None => incoming.remove(FIELD),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn the_forwarder_is_named_and_the_client_kept() {
        let mut extra = map(json!({"oauth_provenance": {
            "issuer": "https://auth.openai.com", "client_id": "app_other"}, "x": 1}));
        through_forwarder(&mut extra, "http://127.0.0.1:1456");
        assert_eq!(
            Value::Object(extra),
            json!({"oauth_provenance": {"issuer": "http://127.0.0.1:1456",
                "client_id": "app_other"}, "x": 1})
        );
        // None before, or not an object: Codex's client.
        for before in [json!({}), json!({"oauth_provenance": "junk"})] {
            let mut extra = map(before);
            through_forwarder(&mut extra, "http://127.0.0.1:9");
            assert_eq!(issuer(&extra), Some("http://127.0.0.1:9"));
            assert_eq!(extra[FIELD]["client_id"], CLIENT_ID);
        }
    }

    #[test]
    fn loopback_issuers_are_forwarders() {
        for url in [
            "http://127.0.0.1:1456",
            "http://localhost:1456/",
            "http://[::1]:1456",
            "http://127.8.0.1",
        ] {
            assert!(is_forwarder(url), "{url}");
        }
        for url in [
            "https://auth.openai.com",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example",
            "not a url",
            "",
        ] {
            assert!(!is_forwarder(url), "{url}");
        }
    }

    #[test]
    fn an_original_is_never_replaced_by_a_forwarder() {
        let original = map(json!({"oauth_provenance": {"issuer": "https://auth.openai.com"}}));
        let mut incoming = map(json!({"oauth_provenance": {"issuer": "http://127.0.0.1:1456"}}));
        keep_original(&mut incoming, Some(&original));
        assert_eq!(issuer(&incoming), Some("https://auth.openai.com"));
        let mut incoming = map(json!({"oauth_provenance": {"issuer": "http://localhost:7"}}));
        keep_original(&mut incoming, None);
        assert_eq!(issuer(&incoming), None);
        // A real issuer comes in as it is.
        let mut incoming = map(json!({"oauth_provenance": {"issuer": "https://auth.example"}}));
        keep_original(&mut incoming, Some(&original));
        assert_eq!(issuer(&incoming), Some("https://auth.example"));
    }
}
