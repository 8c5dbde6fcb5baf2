//! `codex-broker status [--json]`

use std::path::Path;
use std::sync::OnceLock;

use serde::Serialize;

use crate::base::display::{self, Table};
use crate::base::paths::Paths;
use crate::codex::auth::{AuthState, CredentialsStore};
use crate::codex::provenance::{self, DEFAULT_FORWARDER};
use crate::engine::config::Config;
use crate::engine::quota::{Quota, Standing, Window};
use crate::engine::refresh::{Asker, Refresher};
use crate::engine::store::{Account, Killswitch, Kind, Routing, State, Store};
use crate::socket::client::{self, Answer};
use crate::wire::proto::{Health, MIN_TTL, Problem, ProblemCode};
use crate::wire::view::AccountView;

/// Show every account's state, token expiry and quota
///
/// Per account: label, email, plan, role, state, token expiry, last refresh,
/// and the last known 5-hour and weekly quota with their reset times. Also
/// whether the daemon runs (and the problems it reports) and which account
/// auth.json holds. With --refresh, the quota is first asked of the usage
/// endpoint.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the status as JSON: {daemon, codex_auth, routing, killswitch, shield,
    /// follows, accounts}
    #[arg(long)]
    pub json: bool,

    /// Ask the usage endpoint for every ChatGPT account's quota first
    #[arg(long)]
    pub refresh: bool,
}

#[derive(Debug, Serialize)]
struct Status<'a> {
    daemon: Daemon<'a>,
    codex_auth: CodexAuth<'a>,
    routing: Routing,
    killswitch: &'a Killswitch,
    /// Whether auth.json is published with stand-in refresh tokens.
    shield: bool,
    /// The leader's socket, when this home belongs to a follower.
    follows: Option<&'a Path>,
    accounts: Vec<AccountView<'a>>,
}

#[derive(Debug, Serialize)]
struct Daemon<'a> {
    running: bool,
    socket: &'a Path,
    pid: Option<u32>,
    version: Option<String>,
    /// The forwarder's address, when it runs.
    forwarder: Option<String>,
    /// Conversations the forwarder keeps on their account.
    pinned_conversations: usize,
    /// What the daemon reports as wrong (without a daemon: what the
    /// journal and Codex's config tell), `{code, message}` each.
    problems: Vec<Problem>,
}

impl<'a> Daemon<'a> {
    fn ask(paths: &'a Paths) -> anyhow::Result<Daemon<'a>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut daemon = Daemon {
            running: false,
            socket: &paths.socket,
            pid: None,
            version: None,
            forwarder: None,
            pinned_conversations: 0,
            problems: Vec::new(),
        };
        match runtime.block_on(client::get(paths, "/v1/health")) {
            Ok(Answer::NoDaemon) => {
                let interrupted = paths.journal().interrupted(display::now())?;
                daemon.problems = interrupted
                    .iter()
                    .map(|i| Problem {
                        code: ProblemCode::RefreshInterrupted,
                        message: i.message(),
                    })
                    .collect();
                if let Some(message) = paths.codex().keyring_problem() {
                    daemon.problems.push(Problem {
                        code: ProblemCode::CodexKeyring,
                        message,
                    });
                }
            }
            Ok(Answer::Ok(health)) => {
                let health: Health = serde_json::from_value(health)
                    .map_err(|e| anyhow::anyhow!("the daemon's health answer: {e}"))?;
                daemon.running = true;
                daemon.pid = Some(health.pid);
                daemon.version = Some(health.version);
                daemon.forwarder = health.forwarder.map(|f| f.address);
                daemon.pinned_conversations = health.pinned_conversations;
                daemon.problems = health.problems;
            }
            Ok(Answer::Error { message, .. }) => {
                daemon.running = true;
                daemon.problems.push(Problem {
                    code: ProblemCode::DaemonUnreachable,
                    message,
                });
            }
            Err(e) => daemon.problems.push(Problem {
                code: ProblemCode::DaemonUnreachable,
                message: e.to_string(),
            }),
        }
        Ok(daemon)
    }
}

#[derive(Debug, Serialize)]
struct CodexAuth<'a> {
    path: &'a Path,
    /// `ok`, `missing` or `invalid`.
    state: &'static str,
    /// The account the file holds.
    account_id: Option<String>,
    /// What is wrong with an invalid file.
    problem: Option<String>,
    /// Where Codex keeps its login: `file`, `keyring` or `auto`.
    credentials_store: CredentialsStore,
    /// Whether its refresh token is a stand-in (shield mode); `null`
    /// without ChatGPT tokens.
    shielded: Option<bool>,
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    if args.refresh {
        poll_usage(paths)?;
    }
    let store = paths.store().load()?;
    let auth_path = paths.codex().auth_path();
    let snapshot = paths.codex().read()?;
    let codex_auth = CodexAuth {
        path: &auth_path,
        state: match snapshot.state {
            AuthState::Missing => "missing",
            AuthState::Invalid(_) => "invalid",
            AuthState::Untrusted(_) => "untrusted",
            AuthState::Valid(_) => "ok",
        },
        account_id: snapshot.account_id(),
        problem: match &snapshot.state {
            AuthState::Invalid(problem) => Some(problem.to_string()),
            AuthState::Untrusted(problem) => Some(problem.clone()),
            _ => None,
        },
        credentials_store: paths.codex().credentials_store(),
        shielded: super::shield::auth_holds_stand_in(&paths.codex()),
    };
    let status = Status {
        daemon: Daemon::ask(paths)?,
        codex_auth,
        routing: store.routing,
        killswitch: &store.killswitch,
        shield: store.shield || Config::load(&paths.home)?.shield,
        follows: store.follows.as_deref(),
        accounts: store
            .accounts
            .iter()
            .map(|a| AccountView::new(&store, a))
            .collect(),
    };
    if args.json {
        return Ok(super::print_json(&status)?);
    }
    Ok(super::print(&render(&status, &store, display::now()))?)
}

/// Asks `{chatgpt_base}/wham/usage` for the quota of every ChatGPT account
/// that can be used, and stores the answers. An account that fails is
/// reported and skipped.
fn poll_usage(paths: &Paths) -> anyhow::Result<()> {
    let config = Config::load(&paths.home)?;
    let engine = OnceLock::new();
    let refresher = engine.get_or_init(|| Refresher::new(paths, &config));
    let client = crate::oauth::http_client(std::time::Duration::from_secs(20));
    let url = format!("{}/wham/usage", config.chatgpt_base);
    let by = Asker::command("status --refresh");
    let store = refresher.store()?;
    super::interruptible(&engine, async {
        for account in store
            .accounts
            .iter()
            .filter(|a| a.kind == Kind::Chatgpt && a.state != State::NeedsLogin)
        {
            let polled = async {
                let fresh = refresher
                    .fresh(&account.id, i64::from(MIN_TTL), &by)
                    .await?;
                let token = fresh
                    .tokens
                    .as_ref()
                    .map(|t| t.access_token.expose().clone())
                    .unwrap_or_default();
                let response = client
                    .get(&url)
                    .bearer_auth(token)
                    .header("chatgpt-account-id", &account.id)
                    .send()
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("cannot reach the usage endpoint: {}", e.without_url())
                    })?;
                let status = response.status();
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                anyhow::ensure!(status.is_success(), "the usage endpoint answered {status}");
                Quota::from_usage(&body, refresher.now())
                    .ok_or_else(|| anyhow::anyhow!("the usage endpoint's answer has no rate_limit"))
            };
            match polled.await {
                Ok(quota) => paths.store().update(|s| {
                    if let Some(a) = s.get_mut(&account.id) {
                        a.quota = Some(quota);
                    }
                    Ok::<_, anyhow::Error>(())
                })?,
                Err(e) => eprintln!("warning: {}: quota not refreshed: {e:#}", account.name()),
            }
        }
        Ok(())
    })
}

fn render(status: &Status, store: &Store, now: i64) -> String {
    let mut head = Table::new(&["Daemon:", &daemon_line(&status.daemon)]);
    head.row(vec![
        "auth.json:".into(),
        auth_line(&status.codex_auth, store),
    ]);
    if let Some(leader) = status.follows {
        head.row(vec![
            "Follows:".into(),
            format!(
                "the leader at {} (no refresh token is kept here)",
                leader.display()
            ),
        ]);
    }
    head.row(vec!["Routing:".into(), status.routing.to_string()]);
    head.row(vec![
        "Shield:".into(),
        if status.shield {
            "on (auth.json gets stand-in refresh tokens)"
        } else {
            "off"
        }
        .into(),
    ]);
    head.row(vec![
        "Killswitch:".into(),
        if status.killswitch.enabled {
            "on"
        } else {
            "off"
        }
        .into(),
    ]);
    let mut text = head.render();
    for problem in &status.daemon.problems {
        text.push_str(&format!("! {}\n", problem.message));
    }
    if store.accounts.is_empty() {
        text.push('\n');
        text.push_str(super::NO_ACCOUNTS);
        return text;
    }
    for account in &store.accounts {
        text.push('\n');
        text.push_str(&account_block(store, account, now));
    }
    text
}

fn daemon_line(daemon: &Daemon) -> String {
    if daemon.running {
        let pid = daemon
            .pid
            .map_or_else(String::new, |p| format!("pid {p}, "));
        let forwarder = daemon
            .forwarder
            .as_ref()
            .map_or_else(String::new, |a| format!(", forwarder http://{a}"));
        let pinned = match daemon.pinned_conversations {
            0 => String::new(),
            1 => ", 1 conversation pinned".to_owned(),
            n => format!(", {n} conversations pinned"),
        };
        format!(
            "running ({pid}socket {}{forwarder}{pinned})",
            daemon.socket.display()
        )
    } else {
        format!("not running (no daemon at {})", daemon.socket.display())
    }
}

fn auth_line(auth: &CodexAuth, store: &Store) -> String {
    let path = auth.path.display();
    match (auth.state, &auth.account_id, &auth.problem) {
        ("missing", ..) => format!("{path} does not exist (Codex is logged out)"),
        ("invalid", _, Some(problem)) => format!("{path} is invalid: {problem}"),
        ("untrusted", _, Some(problem)) => format!("{path} is not trusted: {problem}"),
        (_, Some(id), _) => match store.get(id) {
            Some(a) if auth.shielded == Some(true) => {
                format!("{path} holds {} (with a stand-in refresh token)", a.name())
            }
            Some(a) => format!("{path} holds {}", a.name()),
            None => {
                format!("{path} holds {id}, which is not in the store (run: codex-broker import)")
            }
        },
        _ => path.to_string(),
    }
}

/// The issuer the account's login came from (`tokens.oauth_provenance`),
/// and the forwarder auth.json names instead while it is shielded.
fn provenance_line(store: &Store, a: &Account) -> Option<String> {
    let tokens = a.tokens.as_ref()?;
    let original = provenance::issuer(tokens.codex_extra.expose());
    let forwarder = store.forwarder.as_deref().unwrap_or(DEFAULT_FORWARDER);
    match (original, store.shield && a.stand_in.is_some()) {
        (Some(issuer), true) => Some(format!("{issuer} (auth.json names {forwarder})")),
        (None, true) => Some(format!("- (auth.json names {forwarder})")),
        (Some(issuer), false) => Some(issuer.to_owned()),
        (None, false) => None,
    }
}

fn account_block(store: &Store, a: &Account, now: i64) -> String {
    let published = if store.published.as_deref() == Some(a.id.as_str()) {
        "  published"
    } else {
        ""
    };
    let title = match &a.label {
        Some(label) => format!("{label} ({})", a.id),
        None => a.id.clone(),
    };
    let shielded = if a.stand_in.is_some() {
        "  shielded"
    } else {
        ""
    };
    let mut text = format!("{title}  {}  {}{published}{shielded}\n", a.role, a.state);
    let mut t = Fields::default();
    t.row("email", a.email.as_deref().unwrap_or("-"));
    t.row("plan", a.plan.clone().unwrap_or_else(|| a.kind.to_string()));
    if let Some(reason) = &a.state_reason {
        t.row("problem", reason.clone());
    }
    if let Some(issuer) = provenance_line(store, a) {
        t.row("issuer", issuer);
    }
    let token = match a.expires_at {
        Some(at) if a.api_key.is_none() => format!(
            "{} ({})",
            super::accounts::token_summary(a, now),
            display::timestamp(at)
        ),
        _ => super::accounts::token_summary(a, now),
    };
    t.row("token", token);
    if let Some(at) = a.last_refresh {
        t.row("refreshed", display::relative(at.unix_timestamp(), now));
    }
    let quota = a.quota.as_ref();
    let [(_, five_hour), (_, weekly)] = quota.map(|q| q.standing(now)).unwrap_or_default();
    t.row(
        "5h quota",
        window_line(quota.and_then(|q| q.five_hour.as_ref()), five_hour, now),
    );
    t.row(
        "weekly",
        window_line(quota.and_then(|q| q.weekly.as_ref()), weekly, now),
    );
    if let Some(q) = quota {
        t.row(
            "seen",
            format!(
                "{} from {}",
                display::relative(q.observed_at, now),
                q.source
            ),
        );
    }
    if let Some(limits) = store.killswitch.limits.get(&a.id) {
        t.row(
            "killswitch",
            format!("5h > {}%, weekly > {}%", limits.five_hour, limits.weekly),
        );
    }
    text.push_str(&t.0);
    text
}

fn window_line(window: Option<&Window>, standing: Option<Standing>, now: i64) -> String {
    let (Some(w), Some(standing)) = (window, standing) else {
        return "unknown (no traffic seen yet)".into();
    };
    let used = standing.used_percent;
    let mut line = format!("{} {:>3.0}%", display::bar(used, 10), used);
    if standing.resets_by > now {
        let when = display::relative(standing.resets_by, now);
        match w.resets_at {
            Some(_) => line.push_str(&format!("  resets {when}")),
            None => line.push_str(&format!("  resets {when} at the latest")),
        }
    }
    line
}

/// `  label      value` lines with the values in one column across accounts.
#[derive(Default)]
struct Fields(String);

impl Fields {
    fn row(&mut self, label: &str, value: impl AsRef<str>) {
        self.0
            .push_str(&format!("  {label:<11}{}\n", value.as_ref()));
    }
}
