//! A box for credentials that refuses to print itself.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that must never reach a log, an error message or `Debug` output.
///
/// `Debug` prints `REDACTED` and there is no `Display`. Every place a secret
/// leaves its box calls [`Secret::expose`], so such places are easy to audit.
/// Serialization is transparent: files that must hold the value (auth.json,
/// the account store) write it as is.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The secret value itself.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl From<String> for Secret<String> {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret<String> {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("REDACTED")
    }
}

impl<T: Serialize> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret)
    }
}

/// What stands in for a secret taken out of a text.
pub const REDACTED: &str = "[REDACTED]";

/// `text` (from outside: an issuer's error message, an upstream body)
/// with every `known` secret and every token-shaped word replaced by
/// [`REDACTED`], so that it can be stored, logged or shown.
///
/// Token-shaped: a JWT (three base64url parts, the first starting `eyJ`),
/// a word starting with a known key or token prefix (`sk-`, `rt_`, `rt-`,
/// `sess-`), or any word of 32 or more characters of the base64/hex
/// alphabets mixing letters and digits.
pub fn redact(text: &str, known: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in known.iter().filter(|s| s.len() >= 8) {
        out = out.replace(secret, REDACTED);
    }
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "-_.+/=".contains(c);
    let mut result = String::with_capacity(out.len());
    let mut word = String::new();
    let flush = |word: &mut String, result: &mut String| {
        if token_shaped(word) {
            result.push_str(REDACTED);
        } else {
            result.push_str(word);
        }
        word.clear();
    };
    for c in out.chars() {
        if is_token_char(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut result);
            result.push(c);
        }
    }
    flush(&mut word, &mut result);
    result
}

fn token_shaped(word: &str) -> bool {
    let word = word.trim_end_matches(['.', '=']);
    if word.starts_with("eyJ") && word.split('.').count() >= 2 {
        return true;
    }
    if ["sk-", "rt_", "rt-", "sess-"]
        .iter()
        .any(|p| word.starts_with(p) && word.len() > p.len() + 3)
    {
        return true;
    }
    word.len() >= 32
        && word.chars().any(|c| c.is_ascii_digit())
        && word.chars().any(|c| c.is_ascii_alphabetic())
}

/// Every form a secret can take in a text: as is, JSON-escaped, base64,
/// base64url, hex, and its bytes as `Debug` prints a `Vec<u8>`; for tests
/// that check `Debug` output and logs.
#[cfg(test)]
pub(crate) fn encodings(secret: &str) -> Vec<String> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let bytes = secret.as_bytes();
    let prefix = &bytes[..bytes.len().min(12)];
    vec![
        secret.to_owned(),
        serde_json::to_string(secret)
            .unwrap()
            .trim_matches('"')
            .to_owned(),
        STANDARD.encode(bytes).trim_end_matches('=').to_owned(),
        URL_SAFE_NO_PAD.encode(bytes),
        bytes.iter().map(|b| format!("{b:02x}")).collect(),
        format!("{prefix:?}").trim_end_matches(']').to_owned(),
    ]
}

/// Fails when `text` holds `secret` in any of its [`encodings`].
#[cfg(test)]
pub(crate) fn assert_no_secret(text: &str, secret: &str) {
    for form in encodings(secret) {
        assert!(!text.contains(&form), "{text:?} holds a secret as {form:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::from("sk-very-secret");
        assert_eq!(format!("{s:?}"), "REDACTED");
        assert_eq!(s.expose(), "sk-very-secret");
    }

    #[test]
    fn redaction_removes_known_and_token_shaped_secrets() {
        let text = "Your refresh token rt-acc-1-7 (and eyJhbGciOi.eyJzdWIi.c2ln, \
                    sk-proj-abcdef, 0123456789abcdef0123456789abcdef01) was used; \
                    the custom-secret-value too. Try again at 12:00.";
        let clean = redact(text, &["custom-secret-value"]);
        for secret in [
            "rt-acc-1-7",
            "eyJhbGciOi",
            "sk-proj",
            "0123456789abcdef",
            "custom-secret-value",
        ] {
            assert!(!clean.contains(secret), "{clean}");
        }
        assert!(clean.starts_with("Your refresh token [REDACTED] (and [REDACTED],"));
        assert!(clean.ends_with("was used; the [REDACTED] too. Try again at 12:00."));
        assert_eq!(redact("plain words stay", &[]), "plain words stay");
    }

    #[test]
    fn serde_is_transparent() {
        let s: Secret<String> = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(s.expose(), "abc");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"abc\"");
    }
}
