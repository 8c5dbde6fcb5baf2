//! Device-code login: the user types a code at the issuer's page while the
//! broker polls for the result.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::{CLIENT_ID, OAuthClient, describe_transport_error};
use crate::base::secret::Secret;

/// How long a device code is valid.
pub const CODE_LIFETIME: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("the issuer refused to start a device login: {0}")]
    Start(String),
    #[error("polling the issuer failed: {0}")]
    Poll(String),
    #[error("the code was not approved within 15 minutes; run the login again")]
    Expired,
}

#[derive(Debug, Deserialize)]
struct UserCodeResponse {
    device_auth_id: String,
    #[serde(alias = "usercode")]
    user_code: String,
    /// Seconds, sent as a string.
    #[serde(default)]
    interval: Option<serde_json::Value>,
}

/// A device login waiting for approval.
#[derive(Debug)]
pub struct DeviceCode {
    pub verification_url: String,
    pub user_code: String,
    pub interval: Duration,
    device_auth_id: String,
}

/// What the poll returns once the user approved: the code and the verifier
/// the issuer made for it.
#[derive(Debug, Deserialize)]
pub struct Approved {
    pub authorization_code: Secret<String>,
    pub code_verifier: Secret<String>,
}

impl OAuthClient {
    /// Asks the issuer for a user code.
    pub async fn device_code(&self) -> Result<DeviceCode, DeviceError> {
        let url = format!("{}/api/accounts/deviceauth/usercode", self.issuer);
        let response = self
            .http
            .post(&url)
            .json(&json!({ "client_id": CLIENT_ID }))
            .send()
            .await
            .map_err(|e| DeviceError::Start(describe_transport_error(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(DeviceError::Start(format!("HTTP {}", status.as_u16())));
        }
        let body: UserCodeResponse = response
            .json()
            .await
            .map_err(|_| DeviceError::Start("the answer is not a device-code response".into()))?;
        let seconds = match &body.interval {
            Some(serde_json::Value::String(s)) => s.trim().parse().unwrap_or(5),
            Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(5),
            _ => 5,
        };
        Ok(DeviceCode {
            verification_url: format!("{}/codex/device", self.issuer),
            user_code: body.user_code,
            interval: Duration::from_secs(seconds.clamp(1, 60)),
            device_auth_id: body.device_auth_id,
        })
    }

    /// Polls once: `None` while the user has not approved yet (403/404).
    pub async fn poll_device(&self, code: &DeviceCode) -> Result<Option<Approved>, DeviceError> {
        let url = format!("{}/api/accounts/deviceauth/token", self.issuer);
        let response = self
            .http
            .post(&url)
            .json(&json!({ "device_auth_id": code.device_auth_id, "user_code": code.user_code }))
            .send()
            .await
            .map_err(|e| DeviceError::Poll(describe_transport_error(&e)))?;
        match response.status().as_u16() {
            403 | 404 => Ok(None),
            200..=299 => {
                response.json().await.map(Some).map_err(|_| {
                    DeviceError::Poll("the answer carries no authorization code".into())
                })
            }
            status => Err(DeviceError::Poll(format!("HTTP {status}"))),
        }
    }

    /// The redirect URI a device login's code is exchanged with.
    pub fn device_redirect_uri(&self) -> String {
        format!("{}/deviceauth/callback", self.issuer)
    }
}
