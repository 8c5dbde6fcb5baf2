//! `codex-broker doctor [--json]`: whether everything a client needs is in
//! place, one check a line, each failure with its fix.

use serde::Serialize;
use serde_json::json;

use crate::base::display;
use crate::base::paths::Paths;
use crate::codex::auth::{Credential, CredentialsStore};
use crate::engine::store::{State, Store};
use crate::socket::client::{self, Answer};
use crate::wire::proto::Health;

/// Check that the broker, its accounts and Codex's setup work together
///
/// Checks: the daemon runs and answers; the forwarder is reachable; each
/// account's state; auth.json holds a valid token of a known account;
/// Codex's config reaches the forwarder and keeps its login in the file;
/// the clock is sane; the issuer and the backend answer through the
/// forwarder. Exits 0 only when every check passes.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print {ok, checks: [{name, ok, message, fix?}]}
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Check {
    name: String,
    ok: bool,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

fn pass(name: &str, message: String) -> Check {
    Check {
        name: name.into(),
        ok: true,
        message,
        fix: None,
    }
}

fn fail(name: &str, message: String, fix: &str) -> Check {
    Check {
        name: name.into(),
        ok: false,
        message,
        fix: Some(fix.into()),
    }
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let checks = runtime.block_on(checks(paths));
    let ok = checks.iter().all(|c| c.ok);
    if args.json {
        super::print_json(&json!({"ok": ok, "checks": checks}))?;
    } else {
        let mut text = String::new();
        for c in &checks {
            text.push_str(&format!(
                "{} {}: {}\n",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.message
            ));
            if let Some(fix) = &c.fix {
                text.push_str(&format!("     fix: {fix}\n"));
            }
        }
        super::print(&text)?;
    }
    if !ok {
        return Err(super::Exit {
            code: 1,
            message: "some checks failed".into(),
        }
        .into());
    }
    Ok(())
}

async fn checks(paths: &Paths) -> Vec<Check> {
    let mut checks = Vec::new();
    let health = match client::get(paths, "/v1/health").await {
        Ok(Answer::Ok(value)) => serde_json::from_value::<Health>(value).ok(),
        _ => None,
    };
    checks.push(match &health {
        Some(h) => pass(
            "daemon",
            format!("codex-broker {} answers (pid {})", h.version, h.pid),
        ),
        None => fail(
            "daemon",
            format!("no daemon answers on {}", paths.socket.display()),
            "start it: codex-broker service install (or codex-broker serve)",
        ),
    });
    let forwarder = health
        .as_ref()
        .and_then(|h| h.forwarder.as_ref())
        .map(|f| format!("http://{}", f.address));
    let store = paths.store().load().ok();
    if let Some(store) = &store {
        checks.extend(accounts(store));
    }
    checks.extend(auth_json(paths, store.as_ref()));
    checks.push(codex_config(paths, forwarder.as_deref()));
    checks.extend(through_forwarder(forwarder.as_deref()).await);
    checks
}

fn accounts(store: &Store) -> Vec<Check> {
    if store.accounts.is_empty() {
        return vec![fail(
            "accounts",
            "the store holds no account".into(),
            "codex-broker login",
        )];
    }
    store
        .accounts
        .iter()
        .map(|a| {
            let name = format!("account {}", a.name());
            let reason = a.state_reason.as_deref().unwrap_or("no reason given");
            match a.state {
                State::Ok => pass(&name, "ok".into()),
                State::NeedsLogin => fail(
                    &name,
                    format!("needs a new login: {reason}"),
                    "codex-broker login",
                ),
                State::RefreshBackoff => fail(
                    &name,
                    format!("refreshing fails: {reason}"),
                    "the daemon retries; check the network, or codex-broker login",
                ),
                State::RefreshInterrupted => fail(
                    &name,
                    reason.to_owned(),
                    "codex-broker login before its access token expires",
                ),
            }
        })
        .collect()
}

fn auth_json(paths: &Paths, store: Option<&Store>) -> Vec<Check> {
    let codex = paths.codex();
    let path = codex.auth_path();
    let snapshot = codex.read().ok();
    let credential = snapshot
        .as_ref()
        .and_then(|s| s.valid())
        .and_then(|a| a.credential().ok());
    let Some(credential) = credential else {
        return vec![fail(
            "auth.json",
            format!("{} holds no valid login", path.display()),
            "codex-broker accounts switch ID",
        )];
    };
    let id = credential.account_id().to_owned();
    if store.is_none_or(|s| s.get(&id).is_none()) {
        return vec![fail(
            "auth.json",
            format!(
                "{} holds account {id}, which the broker does not know",
                path.display()
            ),
            "codex-broker import",
        )];
    }
    let now = display::now();
    let expires = match credential {
        Credential::ChatGpt { expires_at, .. } => expires_at,
        Credential::ApiKey { .. } => None,
    };
    let login = pass(
        "auth.json",
        format!("{} holds account {id}", path.display()),
    );
    let clock = match expires {
        Some(exp) if exp > now => pass(
            "clock",
            format!("the access token expires {}", display::relative(exp, now)),
        ),
        Some(exp) => fail(
            "clock",
            format!(
                "the access token in {} expired {} (or the clock is wrong)",
                path.display(),
                display::relative(exp, now)
            ),
            "check the system clock; the daemon refreshes tokens ahead of expiry",
        ),
        None => pass("clock", "no token expiry to check against".into()),
    };
    vec![login, clock]
}

fn codex_config(paths: &Paths, forwarder: Option<&str>) -> Check {
    let codex = paths.codex();
    let path = codex.config_path();
    if codex.credentials_store() != CredentialsStore::File {
        return fail(
            "codex config",
            format!("{} keeps Codex's login in the keyring", path.display()),
            "codex-broker setup codex",
        );
    }
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let table: toml::Table = toml::from_str(&text).unwrap_or_default();
    let url = table
        .get("openai_base_url")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let reaches = forwarder.is_some_and(|f| url.starts_with(f))
        || (forwarder.is_none() && url.starts_with("http://127.0.0.1"));
    if reaches {
        pass(
            "codex config",
            format!("{} sends Codex to {url}", path.display()),
        )
    } else {
        fail(
            "codex config",
            format!(
                "{} does not send Codex to the forwarder (openai_base_url = {url:?})",
                path.display()
            ),
            "codex-broker setup codex",
        )
    }
}

/// The forwarder answers itself, and it reaches the issuer and the backend.
async fn through_forwarder(forwarder: Option<&str>) -> Vec<Check> {
    let Some(base) = forwarder else {
        return vec![fail(
            "forwarder",
            "the daemon serves no forwarder".into(),
            "start codex-broker serve without --no-forward",
        )];
    };
    let http = crate::oauth::http_client(std::time::Duration::from_secs(10));
    let get = |path: &str| http.get(format!("{base}{path}")).send();
    let mut checks = Vec::new();
    checks.push(match get("/metrics").await {
        Ok(r) if r.status().is_success() => pass("forwarder", format!("{base} answers")),
        Ok(r) => fail(
            "forwarder",
            format!("{base} answered {}", r.status()),
            "codex-broker log level debug, then look at the daemon's log",
        ),
        Err(e) => fail(
            "forwarder",
            format!("{base}: {e}"),
            "codex-broker service install (or codex-broker serve)",
        ),
    });
    // Any answer of the issuer's own shows it is reached; the forwarder's
    // 502 says it is not.
    checks.push(match get("/oauth/authorize").await {
        Ok(r) if r.status() != reqwest::StatusCode::BAD_GATEWAY => pass(
            "issuer",
            format!("answers through the forwarder ({})", r.status()),
        ),
        Ok(r) => fail(
            "issuer",
            format!("not reached ({})", r.status()),
            "check the network and `issuer` in config.toml",
        ),
        Err(e) => fail("issuer", e.to_string(), "check the network"),
    });
    checks.push(match get("/backend-api/wham/usage").await {
        Ok(r) if r.status().is_success() => pass("backend", "answers through the forwarder".into()),
        Ok(r) => fail(
            "backend",
            format!("answered {}", r.status()),
            "look at the accounts above; codex-broker status",
        ),
        Err(e) => fail("backend", e.to_string(), "check the network"),
    });
    checks
}
