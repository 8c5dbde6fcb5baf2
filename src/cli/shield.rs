//! `codex-broker shield [on|off]`

use super::OnOff;
use crate::base::paths::Paths;
use crate::codex::publish::republish;
use crate::engine::config::{CONFIG_FILE, Config};
use crate::engine::shield::is_stand_in;

/// Publish auth.json with a stand-in refresh token, or the real one again
///
/// on: auth.json keeps the account's real access and id tokens, but its
/// refresh token becomes a stand-in that only this broker's forwarder
/// honours (it answers a refresh with the current tokens and the same
/// stand-in; the issuer rejects it). No tool that reads auth.json, here or
/// wherever the file is copied, can spend or fork the real refresh token.
/// Codex must then refresh through the forwarder
/// (CODEX_REFRESH_TOKEN_URL_OVERRIDE); the daemon keeps the access token
/// fresh, so it rarely needs to. A new `codex login` is adopted and shielded
/// in turn. off: the real refresh token is published again. Without an
/// argument, shows whether shield mode is on and what auth.json holds.
/// Config: `shield = true` keeps it on.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    pub mode: Option<OnOff>,
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    let config = Config::load(&paths.home)?;
    let codex = paths.codex();
    let Some(mode) = args.mode else {
        let store = paths.store().load()?;
        return Ok(super::print(&format!(
            "{}\n",
            describe(store.shield || config.shield, &codex)
        ))?);
    };
    let on = mode == OnOff::On;
    if !on && config.shield {
        anyhow::bail!(
            "{} sets shield = true; remove that line to turn shield mode off",
            paths.home.join(CONFIG_FILE).display()
        );
    }
    let journal = paths.journal();
    let published = paths.store().update(|store| {
        store.shield = on;
        match store.published.clone() {
            Some(id) => Ok::<_, anyhow::Error>(republish(&codex, store, &id, &journal)?),
            None => Ok(false),
        }
    })?;
    let mut text = format!("Shield mode is {}.\n", if on { "on" } else { "off" });
    if published {
        text.push_str(&format!(
            "Rewrote {} with {}.\n",
            codex.auth_path().display(),
            if on {
                "a stand-in refresh token"
            } else {
                "the real refresh token"
            }
        ));
    }
    if on {
        text.push_str(
            "Codex refreshes only through the forwarder now: auth.json names it as the issuer \
             (Codex 0.166 and later refresh there); older versions need \
             CODEX_REFRESH_TOKEN_URL_OVERRIDE=http://127.0.0.1:1456/oauth/token in their \
             environment.\n",
        );
    }
    Ok(super::print(&text)?)
}

/// Whether auth.json holds a stand-in, as `shield` and `status` say it.
pub fn auth_holds_stand_in(codex: &crate::codex::auth::CodexHome) -> Option<bool> {
    let snapshot = codex.read().ok()?;
    let tokens = snapshot.valid()?.tokens.as_ref()?;
    Some(is_stand_in(tokens.refresh_token.expose()))
}

fn describe(on: bool, codex: &crate::codex::auth::CodexHome) -> String {
    let file = match auth_holds_stand_in(codex) {
        Some(true) => "holds a stand-in refresh token",
        Some(false) => "holds a real refresh token",
        None => "holds no ChatGPT tokens",
    };
    format!(
        "shield: {}; {} {file}",
        if on { "on" } else { "off" },
        codex.auth_path().display()
    )
}
