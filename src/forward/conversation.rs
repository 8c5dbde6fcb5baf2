//! Which conversation a request belongs to, as its client names it: the
//! body's `prompt_cache_key`, Codex's session or conversation header, or
//! the backend's `x-codex-turn-state` echoed back.

use hyper::body::Bytes;
use hyper::header::{self, HeaderMap};
use serde::Deserialize;

use super::headers::header_str;
use crate::engine::affinity::MAX_KEY;

/// The headers that name a conversation, in the order they are believed.
const KEY_HEADERS: [&str; 6] = [
    "session_id",
    "session-id",
    "conversation_id",
    "conversation-id",
    "thread-id",
    "x-codex-turn-state",
];
/// The largest plain body read for its `prompt_cache_key` when no header
/// names the conversation (a request passes through here on its way).
const MAX_SCANNED: usize = 1024 * 1024;
/// Codex marks the requests of its subagents with this header.
const SUBAGENT: &str = "x-openai-subagent";

/// A conversation a request belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Conversation {
    pub key: Box<str>,
    /// A Codex subagent's conversation.
    pub subagent: bool,
}

impl Conversation {
    /// The conversation of a request with `headers`, and `body_key` (the
    /// body's `prompt_cache_key`, when the body was read). A subagent's own
    /// thread names it, not the session it was started from.
    pub(super) fn of(headers: &HeaderMap, body_key: Option<&str>) -> Option<Conversation> {
        let subagent = headers.contains_key(SUBAGENT);
        let thread = subagent.then(|| header_str(headers, "thread-id")).flatten();
        let key = body_key
            .or(thread)
            .or_else(|| KEY_HEADERS.iter().find_map(|h| header_str(headers, *h)))?
            .trim();
        (!key.is_empty() && key.len() <= MAX_KEY).then(|| Conversation {
            key: key.into(),
            subagent,
        })
    }

    /// The conversation of a request whose buffered body is `body`: its
    /// headers first; the body only when no header names it and the body
    /// is plain (not compressed) JSON.
    pub(super) fn of_request(headers: &HeaderMap, body: Option<&Bytes>) -> Option<Conversation> {
        if let Some(found) = Conversation::of(headers, None) {
            return Some(found);
        }
        if headers.contains_key(header::CONTENT_ENCODING) {
            return None;
        }
        // Read through for one field: only bodies of a bounded size.
        let body = body.filter(|b| b.len() <= MAX_SCANNED);
        let key = body.and_then(|b| prompt_cache_key(b))?;
        Conversation::of(headers, Some(&key))
    }
}

/// The `prompt_cache_key` of a JSON request body, if it names one.
pub(super) fn prompt_cache_key(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Keyed {
        prompt_cache_key: Option<String>,
    }
    serde_json::from_slice::<Keyed>(body).ok()?.prompt_cache_key
}

#[cfg(test)]
mod tests {
    use hyper::header::{HeaderName, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn key(pairs: &[(&str, &str)], body: &str) -> Option<String> {
        let body = Bytes::from(body.to_owned());
        Conversation::of_request(&headers(pairs), Some(&body)).map(|c| c.key.into())
    }

    #[test]
    fn codex_headers_name_the_conversation_in_order() {
        // What Codex 0.171 sends.
        let codex = [("session-id", "s1"), ("thread-id", "t1")];
        assert_eq!(key(&codex, "").as_deref(), Some("s1"));
        assert_eq!(key(&[("session_id", "s0")], "").as_deref(), Some("s0"));
        assert_eq!(key(&[("conversation_id", "c0")], "").as_deref(), Some("c0"));
        assert_eq!(
            key(&[("x-codex-turn-state", "ts")], "").as_deref(),
            Some("ts")
        );
        // A subagent is its own conversation.
        let sub = [
            ("session-id", "s1"),
            ("thread-id", "t2"),
            (SUBAGENT, "review"),
        ];
        let found = Conversation::of(&headers(&sub), None).unwrap();
        assert_eq!((&*found.key, found.subagent), ("t2", true));
    }

    #[test]
    fn a_plain_body_names_it_when_no_header_does() {
        let body = r#"{"model":"m","prompt_cache_key":"pck-1","input":[]}"#;
        assert_eq!(key(&[], body).as_deref(), Some("pck-1"));
        assert_eq!(key(&[("session-id", "s1")], body).as_deref(), Some("s1"));
        // A compressed body is not decoded for it.
        assert_eq!(key(&[("content-encoding", "zstd")], body), None);
        assert_eq!(key(&[], r#"{"prompt_cache_key":7}"#), None);
        assert_eq!(key(&[], "not json"), None);
        assert_eq!(key(&[], ""), None);
        let huge = format!(
            r#"{{"prompt_cache_key":"pck-2","input":"{}"}}"#,
            "x".repeat(MAX_SCANNED)
        );
        assert_eq!(key(&[], &huge), None, "too large to read through");
        assert_eq!(key(&[("session-id", "s1")], &huge).as_deref(), Some("s1"));
    }

    #[test]
    fn blank_and_oversized_keys_name_nothing() {
        assert_eq!(key(&[("session-id", "  ")], ""), None);
        let long = "k".repeat(MAX_KEY + 1);
        assert_eq!(key(&[("session-id", &long)], ""), None);
        let at_cap = "k".repeat(MAX_KEY);
        assert_eq!(key(&[("session-id", &at_cap)], ""), Some(at_cap));
    }
}
