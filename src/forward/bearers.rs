//! `Bearer` header values of the accounts, built once per account and token.

use std::collections::HashMap;

use hyper::header::{self, HeaderMap, HeaderValue};

use super::headers::CHATGPT_ACCOUNT_ID;
use crate::engine::store::Account;

/// `Bearer <access token>` header values, built once per account and
/// token rather than once per request.
#[derive(Default)]
pub(super) struct Bearers(std::sync::Mutex<HashMap<String, HeaderValue>>);

/// Accounts whose header values are kept; past that the cache starts over.
const BEARERS_MAX: usize = 64;

impl Bearers {
    /// `authorization` and `chatgpt-account-id` of `account`.
    pub(super) fn set_credentials(&self, headers: &mut HeaderMap, account: &Account) {
        let token = account
            .tokens
            .as_ref()
            .map(|t| t.access_token.expose().as_str())
            .unwrap_or_default();
        if let Some(value) = self.bearer(&account.id, token) {
            headers.insert(header::AUTHORIZATION, value);
        }
        if let Ok(value) = HeaderValue::from_str(&account.id) {
            headers.insert(CHATGPT_ACCOUNT_ID, value);
        }
    }

    fn bearer(&self, id: &str, token: &str) -> Option<HeaderValue> {
        let mut cache = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(value) = cache.get(id)
            && value.as_bytes().strip_prefix(b"Bearer ") == Some(token.as_bytes())
        {
            return Some(value.clone());
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
        value.set_sensitive(true);
        if cache.len() >= BEARERS_MAX {
            cache.clear();
        }
        cache.insert(id.to_owned(), value.clone());
        Some(value)
    }
}

/// The upstream answer, streamed to the client frame by frame. An interim
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values_follow_the_token_and_stay_sensitive() {
        let bearers = Bearers::default();
        let first = bearers.bearer("acc-1", "token-1").unwrap();
        assert_eq!(first.as_bytes(), b"Bearer token-1");
        assert!(first.is_sensitive());
        assert_eq!(bearers.bearer("acc-1", "token-1").unwrap(), first);
        // A rotated token replaces the kept value at once.
        assert_eq!(
            bearers.bearer("acc-1", "token-2").unwrap().as_bytes(),
            b"Bearer token-2"
        );
        assert_eq!(
            bearers.bearer("acc-2", "token-1").unwrap().as_bytes(),
            b"Bearer token-1"
        );
        // A token that cannot be a header value gives none.
        assert!(bearers.bearer("acc-3", "bad\ntoken").is_none());
        // Past the bound the cache starts over, and answers stay right.
        for i in 0..(BEARERS_MAX * 2) {
            let value = bearers
                .bearer(&format!("acc-{i}"), &format!("t-{i}"))
                .unwrap();
            assert_eq!(value.as_bytes(), format!("Bearer t-{i}").as_bytes());
        }
        assert!(bearers.0.lock().unwrap().len() <= BEARERS_MAX);
    }
}
