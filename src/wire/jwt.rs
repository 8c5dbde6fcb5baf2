//! Reading the claims of ChatGPT JWTs. Signatures are not checked: the
//! broker only needs the account, plan, email and expiry the issuer put there.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

pub const AUTH_CLAIM: &str = "https://api.openai.com/auth";
const PROFILE_CLAIM: &str = "https://api.openai.com/profile";

/// Why a token is not a usable JWT. Messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("not a JWT: expected three dot-separated parts, found {0}")]
    Parts(usize),
    #[error("JWT payload is not unpadded base64url")]
    Base64,
    #[error("JWT payload is not usable: {0}")]
    Json(String),
}

/// The claims the broker uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims {
    pub account_id: Option<String>,
    pub plan: Option<String>,
    pub user_id: Option<String>,
    pub email: Option<String>,
    /// Expiry, unix seconds.
    pub exp: Option<i64>,
    /// When the issuer issued the token, unix seconds.
    pub iat: Option<i64>,
}

#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    exp: Option<serde_json::Number>,
    #[serde(default)]
    iat: Option<serde_json::Number>,
    #[serde(default)]
    email: Option<String>,
    #[serde(rename = "https://api.openai.com/auth", default)]
    auth: Option<AuthClaims>,
    #[serde(rename = "https://api.openai.com/profile", default)]
    profile: Option<ProfileClaims>,
}

#[derive(Deserialize)]
struct AuthClaims {
    #[serde(default)]
    chatgpt_account_id: Option<String>,
    #[serde(default)]
    chatgpt_plan_type: Option<String>,
    #[serde(default)]
    chatgpt_user_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
}

#[derive(Deserialize)]
struct ProfileClaims {
    #[serde(default)]
    email: Option<String>,
}

/// Decodes the payload of `token`, which must have exactly three parts with
/// an unpadded base64url payload, as Codex requires of an `id_token`.
pub fn decode(token: &str) -> Result<Claims, JwtError> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(JwtError::Parts(parts.len()));
    }
    let payload = URL_SAFE_NO_PAD
        .decode(parts[1])
        .map_err(|_| JwtError::Base64)?;
    // Messages name the place, never a value: claims can be personal.
    let value: serde_json::Value = serde_json::from_slice(&payload)
        .map_err(|e| JwtError::Json(format!("invalid JSON at column {}", e.column())))?;
    if !value.is_object() {
        return Err(JwtError::Json("expected an object".into()));
    }
    let raw: RawClaims = serde_path_to_error::deserialize(value)
        .map_err(|e| JwtError::Json(format!("claim `{}` has the wrong type", e.path())))?;
    let (account_id, plan, user_id) = match raw.auth {
        Some(a) => (
            a.chatgpt_account_id,
            a.chatgpt_plan_type,
            a.chatgpt_user_id.or(a.user_id),
        ),
        None => (None, None, None),
    };
    Ok(Claims {
        account_id,
        plan,
        user_id,
        email: raw.email.or(raw.profile.and_then(|p| p.email)),
        exp: raw.exp.as_ref().and_then(numeric_date),
        iat: raw.iat.as_ref().and_then(numeric_date),
    })
}

/// The latest (and, negated, earliest) unix time the broker takes from
/// outside: the end of year 9999. Within it, no arithmetic on two times
/// can wrap.
pub const TIME_LIMIT: i64 = 253_402_300_799;

/// Whether `t` (unix seconds) is within [`TIME_LIMIT`] of the epoch.
pub fn plausible_time(t: i64) -> bool {
    (-TIME_LIMIT..=TIME_LIMIT).contains(&t)
}

/// A JWT NumericDate as whole unix seconds, held to years -9999..9999 so
/// that no arithmetic on it can wrap: an `exp` near `i64::MIN` is long
/// past, one near `i64::MAX` far away. A value that is no number at all
/// (NaN, infinite) is no date.
fn numeric_date(n: &serde_json::Number) -> Option<i64> {
    const LIMIT: i64 = TIME_LIMIT;
    let seconds = match n.as_i64() {
        Some(i) => i,
        None if n.as_u64().is_some() => LIMIT,
        None => {
            let f = n.as_f64()?;
            if !f.is_finite() {
                return None;
            }
            f.clamp(-(LIMIT as f64), LIMIT as f64) as i64
        }
    };
    Some(seconds.clamp(-LIMIT, LIMIT))
}

/// Builds an unsigned JWT around `claims`; used for fixtures and fake issuers.
pub fn encode_unsigned(claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.c2ln")
}

/// The claims object of a ChatGPT token for `account_id`, in the issuer's shape.
pub fn chatgpt_claims(account_id: &str, plan: &str, email: &str, exp: i64) -> serde_json::Value {
    serde_json::json!({
        "exp": exp,
        "email": email,
        AUTH_CLAIM: {
            "chatgpt_account_id": account_id,
            "chatgpt_plan_type": plan,
            "chatgpt_user_id": format!("user-{account_id}"),
        },
        PROFILE_CLAIM: { "email": email },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_chatgpt_claims() {
        let t = encode_unsigned(&chatgpt_claims(
            "acc-1",
            "plus",
            "a@example.com",
            1_900_000_000,
        ));
        let c = decode(&t).unwrap();
        assert_eq!(c.account_id.as_deref(), Some("acc-1"));
        assert_eq!(c.plan.as_deref(), Some("plus"));
        assert_eq!(c.user_id.as_deref(), Some("user-acc-1"));
        assert_eq!(c.email.as_deref(), Some("a@example.com"));
        assert_eq!(c.exp, Some(1_900_000_000));
        assert_eq!(c.iat, None);
    }

    #[test]
    fn dates_out_of_range_are_held_to_ten_thousand_years() {
        let claims = |v: serde_json::Value| decode(&encode_unsigned(&v)).unwrap();
        let c = claims(serde_json::json!({"exp": 1_900_000_000.5, "iat": 1_899_996_400}));
        assert_eq!((c.exp, c.iat), (Some(1_900_000_000), Some(1_899_996_400)));
        let limit = 253_402_300_799;
        let c = claims(serde_json::json!({"exp": i64::MIN, "iat": i64::MAX}));
        assert_eq!((c.exp, c.iat), (Some(-limit), Some(limit)));
        let c = claims(serde_json::json!({"exp": -1e300, "iat": 1e300}));
        assert_eq!((c.exp, c.iat), (Some(-limit), Some(limit)));
        assert_eq!(
            claims(serde_json::json!({"exp": u64::MAX})).exp,
            Some(limit)
        );
    }

    #[test]
    fn email_falls_back_to_profile_and_user_id_to_user_id() {
        let t = encode_unsigned(&serde_json::json!({
            PROFILE_CLAIM: {"email": "p@example.com"},
            AUTH_CLAIM: {"user_id": "u-2"},
        }));
        let c = decode(&t).unwrap();
        assert_eq!(c.email.as_deref(), Some("p@example.com"));
        assert_eq!(c.user_id.as_deref(), Some("u-2"));
        assert_eq!(c.exp, None);
    }

    #[test]
    fn malformed_tokens_are_errors_not_panics() {
        assert_eq!(decode(""), Err(JwtError::Parts(1)));
        assert_eq!(decode("a.b"), Err(JwtError::Parts(2)));
        assert_eq!(decode("a.b.c.d"), Err(JwtError::Parts(4)));
        assert_eq!(decode("a.!!!.c"), Err(JwtError::Base64));
        // Padding is rejected, as Codex rejects it.
        let padded = format!("h.{}=.s", URL_SAFE_NO_PAD.encode(b"{\"a\":1}1"));
        assert_eq!(decode(&padded), Err(JwtError::Base64));
        let not_json = format!("h.{}.s", URL_SAFE_NO_PAD.encode(b"hello"));
        assert!(matches!(decode(&not_json), Err(JwtError::Json(_))));
        let wrong_type = format!("h.{}.s", URL_SAFE_NO_PAD.encode(b"{\"exp\":\"soon\"}"));
        assert!(matches!(decode(&wrong_type), Err(JwtError::Json(_))));
        let personal = format!(
            "h.{}.s",
            URL_SAFE_NO_PAD.encode(br#"{"email":["private@example.com"]}"#)
        );
        let err = decode(&personal).unwrap_err().to_string();
        assert_eq!(
            err,
            "JWT payload is not usable: claim `email` has the wrong type"
        );
        let array = format!("h.{}.s", URL_SAFE_NO_PAD.encode(b"[1]"));
        assert!(matches!(decode(&array), Err(JwtError::Json(_))));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..400 {
            let s: String = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    char::from(b"ab.=-_{}\":1"[(seed % 11) as usize])
                })
                .collect();
            let _ = decode(&s);
        }
    }
}
