//! Follow mode: a broker (`serve --follow SOCKET`) that keeps no refresh
//! token at all. It takes its accounts and access tokens from a leader
//! broker's socket API (forwarded over SSH, or mounted into a container),
//! publishes them to its own Codex home with stand-in refresh tokens, and
//! reports the quota it sees back to the leader. Every refresh is the
//! leader's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::oauth::{OAuthError, TokenResponse};
use crate::proto::{ErrorBody, ErrorCode, MIN_TTL, TokenAnswer};
use crate::publish::publish;
use crate::quota::Quota;
use crate::secret::Secret;
use crate::socket::client::{ClientError, Connection};
use crate::store::{Account, Kind, Role, State, Store};

/// How a follower names itself to the leader (its journal shows it).
const FOLLOWER_AGENT: &str = concat!("codex-broker-follower/", env!("CARGO_PKG_VERSION"));
/// The longest wait between two tries to reach a leader that is gone.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long one request to the leader may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What a follower says to the user who tries to change accounts on it.
pub fn belongs_on_the_leader(socket: &Path) -> String {
    format!(
        "this broker home follows the leader at {}: it keeps no refresh token, so logins, \
         imports and account changes belong on the leader's machine (run the same \
         codex-broker command there)",
        socket.display()
    )
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the leader at {path} answered {status}: {message}")]
    Refused {
        path: String,
        status: u16,
        code: ErrorCode,
        message: String,
    },
    #[error("the leader at {path} answered something this version cannot read: {why}")]
    Unreadable { path: String, why: String },
    #[error("the leader at {0} did not answer in time")]
    Timeout(String),
    /// This follower's own store or auth.json could not take what the
    /// leader said.
    #[error("cannot keep what the leader said: {0}")]
    Local(String),
}

/// The leader's socket API, as a follower uses it.
#[derive(Debug, Clone)]
pub struct Leader {
    socket: PathBuf,
}

impl Leader {
    pub fn new(socket: impl Into<PathBuf>) -> Leader {
        Leader {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn path(&self) -> String {
        self.socket.display().to_string()
    }

    /// One request; a JSON answer with a 2xx status, or the leader's error.
    async fn call(
        &self,
        method: Method,
        target: &str,
        body: Option<Value>,
    ) -> Result<Value, LeaderError> {
        let exchange = async {
            let mut connection = Connection::open(&self.socket).await?;
            let body = body.map(|b| b.to_string().into_bytes());
            let agent = [("user-agent", FOLLOWER_AGENT)];
            let (status, bytes) = connection.send(method, target, &agent, body).await?;
            Ok::<_, LeaderError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| LeaderError::Timeout(self.path()))??;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|e| LeaderError::Unreadable {
                path: self.path(),
                why: e.to_string(),
            });
        }
        let error = serde_json::from_slice::<ErrorBody>(&bytes).ok();
        Err(LeaderError::Refused {
            path: self.path(),
            status,
            code: error.as_ref().map_or(ErrorCode::Unknown, |e| e.error.code),
            message: error.map_or_else(|| "no error body".to_owned(), |e| e.error.message),
        })
    }

    /// `GET /v1/token?account=ID&min_ttl=SECS`.
    pub async fn token(&self, id: &str, min_ttl: i64) -> Result<TokenAnswer, LeaderError> {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("account", id)
            .append_pair(
                "min_ttl",
                &min_ttl.clamp(0, i64::from(u32::MAX)).to_string(),
            )
            .finish();
        let value = self
            .call(Method::GET, &format!("/v1/token?{query}"), None)
            .await?;
        serde_json::from_value(value).map_err(|e| LeaderError::Unreadable {
            path: self.path(),
            why: e.to_string(),
        })
    }

    /// The leader's accounts as `GET /v1/accounts` lists them.
    pub async fn accounts(&self) -> Result<Vec<Value>, LeaderError> {
        let value = self.call(Method::GET, "/v1/accounts", None).await?;
        match value.get("accounts").and_then(Value::as_array) {
            Some(accounts) => Ok(accounts.iter().take(1000).cloned().collect()),
            None => Err(LeaderError::Unreadable {
                path: self.path(),
                why: "no `accounts` list".into(),
            }),
        }
    }

    /// Tells the leader the quota an upstream reported for `id` here
    /// (`POST /v1/report` with the `x-codex-*` headers).
    pub async fn report_quota(
        &self,
        id: &str,
        headers: Vec<(String, String)>,
    ) -> Result<(), LeaderError> {
        let headers: serde_json::Map<String, Value> = headers
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        let report = json!({"account_id": id, "status": 200, "headers": headers});
        self.call(Method::POST, "/v1/report", Some(report))
            .await
            .map(|_| ())
    }

    /// The follower's "refresh": the leader's current tokens of `id`, fresh
    /// for at least `min_ttl` (the leader refreshes them if they are not).
    /// An account the leader cannot serve until a login is a permanent
    /// failure here too; a leader out of reach is a passing one.
    pub async fn refresh(&self, id: &str, min_ttl: i64) -> Result<TokenResponse, OAuthError> {
        match self.token(id, min_ttl).await {
            Ok(answer) => Ok(TokenResponse {
                id_token: answer.id_token.map(Secret::new),
                access_token: Some(Secret::new(answer.access_token)),
                refresh_token: None,
            }),
            Err(LeaderError::Refused {
                status,
                code: code @ (ErrorCode::NeedsLogin | ErrorCode::UnknownAccount),
                message,
                ..
            }) => Err(OAuthError::Permanent {
                status,
                code: code.to_string(),
                message: format!("{message} (on the leader)"),
            }),
            Err(e) => Err(OAuthError::Transient(e.to_string())),
        }
    }
}

/// Keeps the follower's store in line with the leader until `shutdown`:
/// its account list (every ChatGPT account, with the leader's current
/// tokens and a stand-in of the follower's own in place of the refresh
/// token) and the account the leader publishes. A leader out of reach is
/// reported (`leader_unreachable`) and tried again with backoff, while the
/// follower serves what it has.
pub async fn follow(engine: Arc<Engine>, leader: Leader, shutdown: CancellationToken) {
    let mut backoff = Duration::from_secs(1);
    let mut mirrored: Option<String> = None;
    loop {
        let wait = match sync(&engine, &leader, &mut mirrored).await {
            Ok(()) => {
                if engine.set_leader_problem(None) {
                    tracing::info!(leader = %leader.path(), "the leader answers again");
                }
                backoff = Duration::from_secs(1);
                Duration::from_secs(engine.config.follow_interval.unsigned_abs())
            }
            Err(e) => {
                let message = format!(
                    "{e}; serving the tokens this follower has while they are valid, and trying \
                     again"
                );
                if engine.set_leader_problem(Some(message.clone())) {
                    tracing::warn!("{message}");
                }
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait.min(Duration::from_secs(
                    engine.config.follow_interval.unsigned_abs(),
                ))
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// What the leader says of one account, as the follower keeps it.
struct Mirror {
    id: String,
    label: Option<String>,
    email: Option<String>,
    plan: Option<String>,
    role: Role,
    needs_login: bool,
    published: bool,
    /// When the leader last refreshed the account.
    last_refresh: Option<time::OffsetDateTime>,
    quota: Option<Quota>,
}

impl Mirror {
    fn read(view: &Value) -> Option<Mirror> {
        let text = |key: &str| view.get(key).and_then(Value::as_str).map(str::to_owned);
        if text("kind").as_deref() != Some("chatgpt") {
            return None;
        }
        Some(Mirror {
            id: text("id").filter(|id| !id.is_empty() && id.len() <= 256)?,
            label: text("label"),
            email: text("email"),
            plan: text("plan"),
            role: serde_json::from_value(view.get("role")?.clone()).ok()?,
            needs_login: text("state").as_deref() == Some("needs_login"),
            published: view.get("published").and_then(Value::as_bool) == Some(true),
            last_refresh: text("last_refresh").and_then(|t| {
                time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
            }),
            quota: view
                .get("quota")
                .and_then(|q| serde_json::from_value::<Quota>(q.clone()).ok())
                .and_then(checked_quota),
        })
    }
}

/// A quota from the leader, held to the ranges this broker believes
/// ([`crate::quota::Window::checked`]).
fn checked_quota(mut quota: Quota) -> Option<Quota> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let check = |w: Option<crate::quota::Window>| {
        w.and_then(|w| {
            crate::quota::Window::checked(w.used_percent, w.window_minutes, w.resets_at, now)
        })
    };
    quota.five_hour = check(quota.five_hour.take());
    quota.weekly = check(quota.weekly.take());
    quota.observed_at = quota.observed_at.min(now);
    (quota.five_hour.is_some() || quota.weekly.is_some()).then_some(quota)
}

/// One round: the leader's list into the store, tokens for accounts new
/// here, and the leader's published account into auth.json when it changed.
async fn sync(
    engine: &Arc<Engine>,
    leader: &Leader,
    mirrored: &mut Option<String>,
) -> Result<(), LeaderError> {
    let mirrors: Vec<Mirror> = leader
        .accounts()
        .await?
        .iter()
        .filter_map(Mirror::read)
        .collect();
    let store = engine
        .refresher
        .store()
        .map_err(|e| LeaderError::Local(e.to_string()))?;
    let mut fresh = Vec::new();
    for m in &mirrors {
        let known = store.get(&m.id).is_some_and(|a| a.tokens.is_some());
        if !known && !m.needs_login {
            fresh.push((m.id.clone(), leader.token(&m.id, MIN_TTL.into()).await?));
        }
    }
    let published = mirrors.iter().find(|m| m.published).map(|m| m.id.clone());
    let publish_now = published.clone().filter(|id| mirrored.as_ref() != Some(id));
    let engine2 = engine.clone();
    let wrote = tokio::task::spawn_blocking(move || {
        let journal = engine2.paths.journal();
        // The accounts are saved before auth.json names one of them: a
        // client reading auth.json finds its account here.
        engine2.paths.store().update(|store| {
            take_in(store, &mirrors, fresh);
            Ok::<_, anyhow::Error>(())
        })?;
        engine2.paths.store().update(|store| match &publish_now {
            Some(id) if store.get(id).is_some_and(|a| a.tokens.is_some()) => {
                let published = publish(&engine2.paths.codex(), store, id, &journal)?;
                Ok::<_, anyhow::Error>(Some(published.written))
            }
            _ => Ok(None),
        })
    })
    .await
    .expect("the store task does not panic")
    .map_err(|e| LeaderError::Local(format!("{e:#}")))?;
    if let Some(written) = wrote {
        *mirrored = published;
        if written {
            tracing::info!(account = ?mirrored, "published the leader's account to auth.json");
        }
    }
    Ok(())
}

/// Brings the follower's store in line with the leader's list.
fn take_in(store: &mut Store, mirrors: &[Mirror], fresh: Vec<(String, TokenAnswer)>) {
    store
        .accounts
        .retain(|a| mirrors.iter().any(|m| m.id == a.id));
    if store
        .published
        .as_ref()
        .is_some_and(|p| store.get(p).is_none())
    {
        store.published = None;
    }
    for m in mirrors {
        if store.get(&m.id).is_none() {
            store.accounts.push(empty_account(&m.id));
        }
        let account = store.get_mut(&m.id).expect("just added");
        account.label.clone_from(&m.label);
        account.email.clone_from(&m.email);
        account.plan.clone_from(&m.plan);
        account.role = m.role;
        if m.quota.as_ref().map(|q| q.observed_at) > account.quota.as_ref().map(|q| q.observed_at) {
            account.quota.clone_from(&m.quota);
        }
        if m.needs_login {
            account.state = State::NeedsLogin;
            account.state_reason = Some("the account needs a new login on the leader".into());
        } else if account.state == State::NeedsLogin {
            account.mark_ok();
        }
    }
    for (id, answer) in fresh {
        let Some(account) = store.get_mut(&id) else {
            continue;
        };
        let last_refresh = mirrors
            .iter()
            .find(|m| m.id == id)
            .and_then(|m| m.last_refresh);
        let stand_in = account
            .stand_in
            .get_or_insert_with(crate::shield::mint)
            .clone();
        // Codex rejects an auth.json whose id token is no JWT: such an
        // answer is not taken.
        let Some(id_token) = answer.id_token.filter(|t| crate::jwt::decode(t).is_ok()) else {
            tracing::warn!(account = %id, "the leader's id token is not a JWT; not taken");
            continue;
        };
        let expires_at = crate::jwt::decode(&answer.access_token)
            .ok()
            .and_then(|c| c.exp)
            .or(answer.expires_at);
        account.tokens = Some(crate::store::Tokens {
            id_token: Secret::new(id_token),
            access_token: Secret::new(answer.access_token),
            refresh_token: stand_in,
            codex_extra: Secret::default(),
        });
        account.expires_at = expires_at;
        account.last_refresh = Some(
            last_refresh.map_or_else(time::OffsetDateTime::now_utc, |t| {
                t.min(time::OffsetDateTime::now_utc())
            }),
        );
        account.mark_ok();
    }
}

/// A ChatGPT account with no tokens yet.
fn empty_account(id: &str) -> Account {
    serde_json::from_value(json!({"id": id, "kind": Kind::Chatgpt, "role": Role::Fallback}))
        .expect("a minimal account deserializes")
}
