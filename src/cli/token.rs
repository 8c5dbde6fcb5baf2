//! `codex-broker token [--account ID] [--min-ttl SECS] [--json]`

use crate::config::Config;
use crate::display;
use crate::paths::Paths;
use crate::refresh::{LOGIN_HINT, RefreshError, Refresher};
use crate::routing;
use crate::view::TokenView;

/// Print a valid access token, refreshing it first when needed
///
/// Without --account, the routed account is used: the main account (or the
/// fallbacks first, with `routing fallback-first`), skipping accounts that
/// need a login, are used up or are blocked by the killswitch. Safe to run
/// from many processes at once: one refresh happens per rotation. Exits 3
/// when no account can serve.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Use this account (id, label or unique id prefix)
    #[arg(long, value_name = "ID")]
    pub account: Option<String>,

    /// Refresh first if the token expires within this many seconds
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub min_ttl: u32,

    /// Print {account_id, kind, access_token, expires_at, plan, email, headers}
    #[arg(long)]
    pub json: bool,
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    let config = Config::load(&paths.home)?;
    let store = paths.store().load()?;
    let ids: Vec<String> = match &args.account {
        Some(query) => vec![store.find(query)?.id.clone()],
        None => routing::candidates(&store, display::now())
            .iter()
            .map(|a| a.id.clone())
            .collect(),
    };
    if ids.is_empty() {
        return Err(no_usable_account(&store));
    }
    let refresher = Refresher::new(paths, &config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut last_error = None;
    for id in &ids {
        match runtime.block_on(refresher.fresh(id, i64::from(args.min_ttl))) {
            Ok(account) => {
                let view = TokenView::new(&account)
                    .ok_or_else(|| anyhow::anyhow!("account {id} holds no credential"))?;
                if args.json {
                    super::print_json(&view)?;
                } else {
                    super::print(&format!("{}\n", view.access_token))?;
                }
                return Ok(());
            }
            Err(e @ RefreshError::NeedsLogin { .. }) if args.account.is_none() => {
                tracing::info!("skipping: {e}");
                last_error = Some(e);
            }
            Err(e @ RefreshError::NeedsLogin { .. }) => {
                return Err(super::Exit::needs_login(e.to_string()));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let message = last_error.map_or_else(|| "no account can serve".to_owned(), |e| e.to_string());
    Err(super::Exit::needs_login(format!(
        "no usable account: {message}"
    )))
}

fn no_usable_account(store: &crate::store::Store) -> anyhow::Error {
    if store.accounts.is_empty() {
        return super::Exit::needs_login(format!(
            "no accounts yet; {LOGIN_HINT}, or import Codex's login with: codex-broker import"
        ));
    }
    let now = display::now();
    let reasons: Vec<String> = store
        .accounts
        .iter()
        .filter_map(|a| routing::blocked(store, a, now).map(|why| format!("{}: {why}", a.name())))
        .collect();
    super::Exit::needs_login(format!(
        "no usable account ({}); {LOGIN_HINT}",
        reasons.join("; ")
    ))
}
