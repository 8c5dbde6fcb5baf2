//! `codex-broker login [--device] [--no-browser] [--label L] [--port N]`
//! and `login --api-key`

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Map;
use time::OffsetDateTime;

use crate::base::display;
use crate::base::paths::Paths;
use crate::base::secret::Secret;
use crate::codex::auth::{AuthDotJson, TokenData};
use crate::codex::publish::{publish, republish};
use crate::engine::config::Config;
use crate::engine::journal::{Entry, Event};
use crate::engine::store::{Account, Role, Upsert};
use crate::oauth::browser::{BrowserError, DEFAULT_PORT, PendingLogin};
use crate::oauth::device::CODE_LIFETIME;
use crate::oauth::{OAuthClient, TokenResponse};
use crate::wire::jwt;

/// Exit status: the login callback port is in use.
const EXIT_PORT_IN_USE: u8 = 13;

/// Log in to a ChatGPT account, or store an OpenAI API key
///
/// By default opens the browser at the issuer's sign-in page and receives
/// the result on http://localhost:PORT/auth/callback (PKCE). --device signs
/// in with a code typed at the issuer's page instead, for machines without
/// a browser. --api-key reads a key from stdin. Logging in again to an
/// account updates it; the first account becomes the main one and is
/// published to auth.json.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Sign in with a device code instead of a local callback
    #[arg(long, conflicts_with = "api_key")]
    pub device: bool,

    /// Print the sign-in URL instead of opening a browser
    #[arg(long)]
    pub no_browser: bool,

    /// A label for the account
    #[arg(long, value_name = "L")]
    pub label: Option<String>,

    /// Port of the local callback server (0: any free port)
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Read an OpenAI API key from stdin and store it as an account
    #[arg(long)]
    pub api_key: bool,

    /// Give up after this many seconds without a completed sign-in
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub timeout: u64,
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    let account = if args.api_key {
        api_key_account()?
    } else {
        let config = Config::load(&paths.home)?;
        let oauth = OAuthClient::new(&config.issuer);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let timeout = Duration::from_secs(args.timeout);
        let tokens = runtime.block_on(async {
            tokio::select! {
                tokens = async {
                    if args.device {
                        device_login(&oauth, timeout).await
                    } else {
                        browser_login(&oauth, args.port, !args.no_browser, timeout).await
                    }
                } => tokens,
                _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("login cancelled")),
            }
        })?;
        chatgpt_account(tokens)?
    };
    save_login(paths, account, args.label)
}

fn api_key_account() -> anyhow::Result<Account> {
    if std::io::stdin().is_terminal() {
        eprint!("Paste the API key and press Enter: ");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the API key from stdin")?;
    let key = line.trim();
    if key.is_empty() {
        return Err(super::Exit::usage(
            "no API key on stdin; pipe it in, for example: printenv OPENAI_API_KEY | codex-broker login --api-key",
        ));
    }
    let auth = AuthDotJson::api_key(Secret::from(key), Map::new());
    Account::from_auth(&auth).map_err(|p| anyhow::anyhow!("{p}"))
}

/// The account the issuer's tokens belong to.
fn chatgpt_account(tokens: TokenResponse) -> anyhow::Result<Account> {
    let (Some(id_token), Some(access_token), Some(refresh_token)) =
        (tokens.id_token, tokens.access_token, tokens.refresh_token)
    else {
        anyhow::bail!("the issuer's answer lacks a token (id, access and refresh are all needed)");
    };
    let claims = jwt::decode(id_token.expose()).context("the issuer's id_token")?;
    let data = TokenData {
        id_token,
        access_token,
        refresh_token,
        account_id: claims.account_id,
        extra: Secret::default(),
    };
    let auth = AuthDotJson::chatgpt(data, OffsetDateTime::now_utc(), Map::new());
    Account::from_auth(&auth).map_err(|p| anyhow::anyhow!("the issuer's tokens: {p}"))
}

async fn browser_login(
    oauth: &OAuthClient,
    port: u16,
    open_browser: bool,
    timeout: Duration,
) -> anyhow::Result<TokenResponse> {
    let pending = PendingLogin::start(oauth.issuer(), port)
        .await
        .map_err(|e| match e {
            BrowserError::PortInUse(_) => super::Exit {
                code: EXIT_PORT_IN_USE,
                message: e.to_string(),
            }
            .into(),
            other => anyhow::Error::from(other),
        })?;
    let opened = open_browser && crate::base::open::open_url(&pending.url);
    eprintln!(
        "{}\n\n  {}\n\nWaiting for the sign-in to finish (Ctrl-C cancels)...",
        if opened {
            "Your browser is opening the sign-in page. If it does not, open this URL:"
        } else {
            "Open this URL in a browser to sign in:"
        },
        pending.url
    );
    let redirect_uri = pending.redirect_uri.clone();
    let verifier = pending.pkce.verifier.clone();
    let code = pending.code(timeout).await?;
    oauth
        .exchange_code(&code, &redirect_uri, &verifier)
        .await
        .context("exchanging the sign-in code")
}

async fn device_login(oauth: &OAuthClient, timeout: Duration) -> anyhow::Result<TokenResponse> {
    let code = oauth.device_code().await?;
    let lifetime = timeout.min(CODE_LIFETIME);
    eprintln!(
        "To sign in, open {}\nand enter this code: {}   (valid for {})\n",
        code.verification_url,
        code.user_code,
        display::duration(lifetime.as_secs() as i64)
    );
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let spinner = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    let mut polls = 0usize;
    let approved = loop {
        if let Some(approved) = oauth.poll_device(&code).await? {
            break approved;
        }
        let elapsed = started.elapsed();
        if elapsed >= lifetime {
            if tty {
                eprintln!();
            }
            return Err(crate::oauth::device::DeviceError::Expired.into());
        }
        let wait = code.interval.min(lifetime - elapsed);
        let ticks = wait.as_secs().max(1);
        for _ in 0..ticks {
            if tty {
                let left = lifetime.saturating_sub(started.elapsed()).as_secs();
                eprint!(
                    "\r{} waiting for approval... {:02}:{:02} left ",
                    spinner[polls % spinner.len()],
                    left / 60,
                    left % 60
                );
                let _ = std::io::stderr().flush();
                polls += 1;
            }
            tokio::time::sleep(wait / ticks as u32).await;
        }
    };
    if tty {
        eprint!("\r\x1b[2K");
    }
    oauth
        .exchange_code(
            &approved.authorization_code,
            &oauth.device_redirect_uri(),
            &approved.code_verifier,
        )
        .await
        .context("exchanging the device code")
}

/// Adds or updates the account; the first account becomes main and is
/// published, and a re-login of the published account republishes it.
fn save_login(paths: &Paths, account: Account, label: Option<String>) -> anyhow::Result<()> {
    let codex = paths.codex();
    let id = account.id.clone();
    let journal = paths.journal();
    let shield = Config::load(&paths.home)?.shield;
    let new_rt = account
        .tokens
        .as_ref()
        .map(|t| t.refresh_token.expose().clone());
    let (saved, published) = paths.store().update(|store| {
        let replaced = store
            .get(&id)
            .and_then(|a| a.tokens.as_ref())
            .map(|t| t.refresh_token.expose().clone());
        if store.upsert_login(account) != Upsert::Unchanged {
            journal.record(
                &Entry::new(&id, Event::Login, "command `login`")
                    .replacing(replaced.as_deref(), new_rt.as_deref()),
            );
        }
        let a = store.get_mut(&id).expect("just upserted");
        if let Some(label) = label.filter(|l| !l.trim().is_empty()) {
            a.label = Some(label.trim().to_owned());
        }
        let first = a.role == Role::Main && store.published.is_none();
        store.shield |= shield;
        let published = if first {
            publish(&codex, store, &id, &journal)?.written
        } else {
            republish(&codex, store, &id, &journal)?
        };
        let saved = store.get(&id).expect("just upserted").clone();
        Ok::<_, anyhow::Error>((saved, published))
    })?;
    let details: Vec<&str> = [saved.email.as_deref(), saved.plan.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    let mut text = format!(
        "Logged in: {} ({}) is a {} account.\n",
        saved.name(),
        if details.is_empty() {
            saved.kind.to_string()
        } else {
            details.join(", ")
        },
        saved.role
    );
    if published {
        text.push_str(&format!(
            "Published it to {}.\n",
            codex.auth_path().display()
        ));
    }
    Ok(super::print(&text)?)
}
