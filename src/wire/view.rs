//! The public JSON shape of accounts, shared by `accounts --json`,
//! `status --json` and the socket API. It never holds a secret.

use serde::Serialize;

use crate::codex::auth::format_timestamp;
use crate::engine::quota::Quota;
use crate::engine::store::{Account, Kind, Limits, Role, State, Store};

#[derive(Debug, Serialize)]
pub struct AccountView<'a> {
    pub id: &'a str,
    pub label: Option<&'a str>,
    pub email: Option<&'a str>,
    pub plan: Option<&'a str>,
    pub kind: Kind,
    pub role: Role,
    pub state: State,
    pub state_reason: Option<&'a str>,
    /// Whether auth.json was last published with this account.
    pub published: bool,
    /// Access-token expiry, unix seconds.
    pub expires_at: Option<i64>,
    /// RFC 3339, UTC.
    pub last_refresh: Option<String>,
    pub quota: Option<&'a Quota>,
    pub killswitch: Option<Limits>,
    /// Whether a stand-in of this account's refresh token was published
    /// (shield mode): tools may hold it, and the forwarder honours it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shielded: bool,
    /// The issuer the login came from, as auth.json's
    /// `tokens.oauth_provenance` named it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance_issuer: Option<&'a str>,
}

impl<'a> AccountView<'a> {
    pub fn new(store: &'a Store, account: &'a Account) -> Self {
        AccountView {
            id: &account.id,
            label: account.label.as_deref(),
            email: account.email.as_deref(),
            plan: account.plan.as_deref(),
            kind: account.kind,
            role: account.role,
            state: account.state,
            state_reason: account.state_reason.as_deref(),
            published: store.published.as_deref() == Some(account.id.as_str()),
            expires_at: account.expires_at,
            last_refresh: account.last_refresh.map(format_timestamp),
            quota: account.quota.as_ref(),
            killswitch: store.killswitch.limits.get(&account.id).copied(),
            shielded: account.stand_in.is_some(),
            provenance_issuer: account
                .tokens
                .as_ref()
                .and_then(|t| crate::codex::provenance::issuer(t.codex_extra.expose())),
        }
    }
}

/// `{"accounts":[…]}`, in store order.
#[derive(Debug, Serialize)]
pub struct AccountList<'a> {
    pub accounts: Vec<AccountView<'a>>,
}

impl<'a> AccountList<'a> {
    pub fn new(store: &'a Store) -> Self {
        AccountList {
            accounts: store
                .accounts
                .iter()
                .map(|a| AccountView::new(store, a))
                .collect(),
        }
    }
}
