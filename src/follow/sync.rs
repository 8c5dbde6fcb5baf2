//! The follow loop: takes the leader's accounts and access tokens into
//! this home's store, publishes them to its Codex home with stand-in
//! refresh tokens, and keeps doing so while the daemon runs.

use super::leader::{Leader, LeaderError};
use crate::base::secret::Secret;
use crate::codex::publish::publish;
use crate::engine::Engine;
use crate::engine::quota::Quota;
use crate::engine::store::{Account, Kind, Role, State, Store};
use crate::wire::proto::{MIN_TTL, TokenAnswer};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The longest wait between two tries to reach a leader that is gone.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

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
/// ([`crate::engine::quota::Window::checked`]).
fn checked_quota(mut quota: Quota) -> Option<Quota> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let check = |w: Option<crate::engine::quota::Window>| {
        w.and_then(|w| {
            crate::engine::quota::Window::checked(
                w.used_percent,
                w.window_minutes,
                w.resets_at,
                now,
            )
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
            // The leader refusing one account's token is that account's
            // state here, not a failed round.
            let answer = match leader.token(&m.id, MIN_TTL.into()).await {
                Ok(answer) => Ok(answer),
                Err(LeaderError::Refused { message, .. }) => Err(message),
                Err(e) => return Err(e),
            };
            fresh.push((m.id.clone(), answer));
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

/// The leader's answer to a token request: its tokens, or why it refused.
type Fetched = Result<TokenAnswer, String>;

/// Brings the follower's store in line with the leader's list. An account
/// this follower has no tokens for is kept as needing a login (with the
/// reason), so that the store stays loadable and the account shows.
fn take_in(store: &mut Store, mirrors: &[Mirror], fresh: Vec<(String, Fetched)>) {
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
    for (id, fetched) in fresh {
        let Some(account) = store.get_mut(&id) else {
            continue;
        };
        let last_refresh = mirrors
            .iter()
            .find(|m| m.id == id)
            .and_then(|m| m.last_refresh);
        match fetched {
            Ok(answer) => take_tokens(account, answer, last_refresh),
            Err(message) => {
                without_tokens(account, format!("the leader refused its token: {message}"))
            }
        }
    }
    for account in &mut store.accounts {
        if account.kind == Kind::Chatgpt
            && account.tokens.is_none()
            && account.state != State::NeedsLogin
        {
            without_tokens(account, "the leader has given no tokens for it yet".into());
        }
    }
}

/// Marks an account this follower cannot serve: no tokens, asked for again
/// at the next round.
fn without_tokens(account: &mut Account, reason: String) {
    account.state = State::NeedsLogin;
    account.state_reason = Some(reason);
}

/// Takes the leader's tokens for `account`, with a stand-in of this
/// follower's own in place of the refresh token.
fn take_tokens(
    account: &mut Account,
    answer: TokenAnswer,
    last_refresh: Option<time::OffsetDateTime>,
) {
    let stand_in = account
        .stand_in
        .get_or_insert_with(crate::engine::shield::mint)
        .clone();
    // Codex rejects an auth.json whose id token is no JWT: such an
    // answer is not taken.
    let Some(id_token) = answer
        .id_token
        .filter(|t| crate::wire::jwt::decode(t).is_ok())
    else {
        tracing::warn!(account = %account.id, "the leader's id token is not a JWT; not taken");
        if account.tokens.is_none() {
            without_tokens(account, "the leader's id token for it is not a JWT".into());
        }
        return;
    };
    let expires_at = crate::wire::jwt::decode(&answer.access_token)
        .ok()
        .and_then(|c| c.exp)
        .or(answer.expires_at)
        .filter(|t| crate::wire::jwt::plausible_time(*t));
    account.tokens = Some(crate::engine::store::Tokens {
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

/// A ChatGPT account with no tokens yet.
fn empty_account(id: &str) -> Account {
    serde_json::from_value(json!({"id": id, "kind": Kind::Chatgpt, "role": Role::Fallback}))
        .expect("a minimal account deserializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::parse_store;

    fn mirror(id: &str, needs_login: bool) -> Mirror {
        Mirror {
            id: id.into(),
            label: None,
            email: None,
            plan: None,
            role: Role::Fallback,
            needs_login,
            published: false,
            last_refresh: None,
            quota: None,
        }
    }

    fn answer(id_token: &str) -> TokenAnswer {
        serde_json::from_value(json!({
            "account_id": "acc", "kind": "chatgpt", "access_token": "at",
            "expires_at": null, "plan": null, "email": null, "headers": {},
            "id_token": id_token,
        }))
        .unwrap()
    }

    /// The saved store, loaded again as the daemon loads it.
    fn reloaded(store: &Store) -> Store {
        let bytes = serde_json::to_vec(store).unwrap();
        parse_store(std::path::Path::new("accounts.json"), &bytes).expect("the store loads")
    }

    #[test]
    fn accounts_without_usable_tokens_are_kept_as_needing_a_login() {
        let mut store = Store::default();
        let mirrors = [
            mirror("acc-jwt", false),
            mirror("acc-refused", false),
            mirror("acc-login", true),
        ];
        let fresh = vec![
            ("acc-jwt".to_owned(), Ok(answer("not-a-jwt"))),
            ("acc-refused".to_owned(), Err("refresh failed".to_owned())),
        ];
        take_in(&mut store, &mirrors, fresh);
        let store = reloaded(&store);
        for (id, reason) in [
            ("acc-jwt", "not a JWT"),
            ("acc-refused", "refused its token: refresh failed"),
            ("acc-login", "needs a new login on the leader"),
        ] {
            let account = store.get(id).unwrap();
            assert_eq!(account.state, State::NeedsLogin, "{id}");
            assert!(account.tokens.is_none(), "{id}");
            let why = account.state_reason.as_deref().unwrap_or_default();
            assert!(why.contains(reason), "{id}: {why}");
        }
    }

    #[test]
    fn a_valid_answer_is_taken_and_the_account_served() {
        let mut store = Store::default();
        let id_token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2ln";
        assert!(crate::wire::jwt::decode(id_token).is_ok());
        take_in(
            &mut store,
            &[mirror("acc", false)],
            vec![("acc".to_owned(), Ok(answer(id_token)))],
        );
        let store = reloaded(&store);
        let account = store.get("acc").unwrap();
        assert_eq!(account.state, State::Ok);
        let tokens = account.tokens.as_ref().expect("tokens taken");
        assert!(
            tokens
                .refresh_token
                .expose()
                .starts_with("codex-broker-stand-in.")
        );
    }
}
