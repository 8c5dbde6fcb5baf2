//! Shield mode: auth.json gets the account's real access and id tokens but
//! a stand-in refresh token the broker mints. Only the broker's forwarder
//! honours a stand-in (it answers a refresh with the account's current
//! tokens and the same stand-in); the issuer rejects it. A tool that reads
//! auth.json can therefore never spend, leak or fork the real refresh
//! token, and the broker never takes a stand-in for one.

use base64::Engine as _;

use crate::base::secret::Secret;

/// How every stand-in begins, so that it is recognised wherever it turns up.
pub const STAND_IN_PREFIX: &str = "codex-broker-stand-in.";

/// A new stand-in: the prefix and 32 random bytes.
pub fn mint() -> Secret<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system has randomness");
    let random = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    Secret::new(format!("{STAND_IN_PREFIX}{random}"))
}

/// Whether `token` is a stand-in (this broker's or another's), never a
/// refresh token.
pub fn is_stand_in(token: &str) -> bool {
    token.trim_start().starts_with(STAND_IN_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_ins_are_random_and_recognised() {
        let (a, b) = (mint(), mint());
        assert_ne!(a.expose(), b.expose());
        assert!(is_stand_in(a.expose()));
        assert_eq!(a.expose().len(), STAND_IN_PREFIX.len() + 43);
        assert!(!is_stand_in("rt-real-refresh-token"));
        assert!(!is_stand_in(""));
        assert!(!format!("{a:?}").contains(STAND_IN_PREFIX));
    }
}
