//! `codex-broker token [--account ID] [--min-ttl SECS] [--json]`

use std::sync::OnceLock;

use crate::base::paths::Paths;
use crate::engine::config::Config;
use crate::engine::refresh::{Asker, Refresher};
use crate::engine::routing;
use crate::socket::client::{self, Answer};
use crate::wire::proto::{ErrorCode, MIN_TTL, TokenAnswer};

/// Print a valid access token, refreshing it first when needed
///
/// Without --account, the routed account is used: the main account (or the
/// fallbacks first, with `routing fallback-first`), skipping accounts that
/// need a login, are used up or are blocked by the killswitch. Asks the
/// daemon when it runs, and works without it otherwise. Safe to run from
/// many processes at once: one refresh happens per rotation. Exits 3 when no
/// account can serve and a login would help, 4 when every account has used
/// its quota (saying when the first resets). Interrupted (SIGINT, SIGTERM, SIGHUP) while a refresh
/// is in flight, it finishes and saves that refresh first.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Use this account (id, label or unique id prefix)
    #[arg(long, value_name = "ID")]
    pub account: Option<String>,

    /// Refresh first if the token expires within this many seconds
    #[arg(long, value_name = "SECS", default_value_t = MIN_TTL)]
    pub min_ttl: u32,

    /// Print {account_id, kind, access_token, expires_at, plan, email, headers}
    #[arg(long)]
    pub json: bool,
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    let engine = OnceLock::new();
    let answer = super::interruptible(&engine, async {
        if let Some(body) = from_daemon(paths, &args).await? {
            return Ok(body);
        }
        let config = Config::load(&paths.home)?;
        let refresher = engine.get_or_init(|| Refresher::new(paths, &config));
        let pick = routing::Pick {
            query: args.account.as_deref(),
            ..routing::Pick::default()
        };
        let by = Asker::command("token");
        let found = routing::fresh_account(refresher, pick, i64::from(args.min_ttl), &by).await;
        let account = match found {
            Ok(account) => account,
            Err(e @ routing::Unavailable::QuotaExhausted { .. }) => {
                return Err(super::Exit::quota_exhausted(e.to_string()));
            }
            Err(e) if e.needs_login() => return Err(super::Exit::needs_login(e.to_string())),
            Err(e) => return Err(e.into()),
        };
        TokenAnswer::new(&account)
            .ok_or_else(|| anyhow::anyhow!("account {} holds no credential", account.id))
    })?;
    if args.json {
        return Ok(super::print_json(&answer)?);
    }
    Ok(super::print(&format!("{}\n", answer.access_token))?)
}

/// The daemon's answer, or `None` when no daemon serves this home.
async fn from_daemon(paths: &Paths, args: &Args) -> anyhow::Result<Option<TokenAnswer>> {
    let mut query = format!("/v1/token?min_ttl={}", args.min_ttl);
    if let Some(account) = &args.account {
        query.push_str("&account=");
        query.push_str(&client::encode_query_value(account));
    }
    match client::get(paths, &query).await? {
        Answer::NoDaemon => Ok(None),
        Answer::Ok(body) => Ok(Some(serde_json::from_value(body).map_err(|e| {
            anyhow::anyhow!("the daemon's token answer is not one this version reads: {e}")
        })?)),
        Answer::Error { code, message, .. } => match code {
            ErrorCode::NeedsLogin | ErrorCode::NoUsableAccount => {
                Err(super::Exit::needs_login(message))
            }
            ErrorCode::QuotaExhausted => Err(super::Exit::quota_exhausted(message)),
            _ => Err(anyhow::anyhow!("{message}")),
        },
    }
}
