//! `codex-broker killswitch [on|off|set ID:5H,1W ...]`

use std::str::FromStr;

use clap::Subcommand;

use crate::base::display::Table;
use crate::base::paths::Paths;
use crate::engine::store::{Limits, Store};

/// Show or set the killswitch that blocks accounts near their limits
///
/// With the killswitch on, an account whose used share of its 5-hour or weekly
/// window is above its thresholds serves no request until the window resets.
/// `set ID:5H,1W` gives an account its thresholds in percent (for example
/// `set work:80,95`) and turns the killswitch on.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Option<Action>,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Turn the killswitch on
    On,
    /// Turn the killswitch off (thresholds are kept)
    Off,
    /// Set per-account thresholds and turn the killswitch on
    Set {
        /// ID:5H,1W — account (id, label or id prefix), then the 5-hour and
        /// weekly thresholds in percent
        #[arg(value_name = "ID:5H,1W", required = true)]
        limits: Vec<Spec>,
    },
}

/// One `ID:5H,1W` argument.
#[derive(Debug, Clone)]
pub struct Spec {
    account: String,
    limits: Limits,
}

impl FromStr for Spec {
    type Err = String;

    fn from_str(s: &str) -> Result<Spec, String> {
        let usage = || format!("`{s}` is not ID:5H,1W (for example work:80,95)");
        let (account, numbers) = s.rsplit_once(':').ok_or_else(usage)?;
        let (five_hour, weekly) = numbers.split_once(',').ok_or_else(usage)?;
        let percent = |text: &str, name: &str| -> Result<f64, String> {
            let value: f64 = text
                .trim()
                .trim_end_matches('%')
                .parse()
                .map_err(|_| usage())?;
            if (0.0..=100.0).contains(&value) {
                Ok(value)
            } else {
                Err(format!(
                    "in `{s}`: the {name} threshold must be between 0 and 100"
                ))
            }
        };
        if account.is_empty() {
            return Err(usage());
        }
        Ok(Spec {
            account: account.to_owned(),
            limits: Limits {
                five_hour: percent(five_hour, "5-hour")?,
                weekly: percent(weekly, "weekly")?,
            },
        })
    }
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    let store = match args.action {
        None => paths.store().load()?,
        Some(action) => paths.store().update(|store| {
            match action {
                Action::On => store.killswitch.enabled = true,
                Action::Off => store.killswitch.enabled = false,
                Action::Set { limits } => {
                    for spec in limits {
                        let id = store.find(&spec.account)?.id.clone();
                        store.killswitch.limits.insert(id, spec.limits);
                    }
                    store.killswitch.enabled = true;
                }
            }
            Ok::<_, anyhow::Error>(store.clone())
        })?,
    };
    Ok(super::print(&render(&store))?)
}

fn render(store: &Store) -> String {
    let ks = &store.killswitch;
    let mut text = format!("Killswitch: {}\n", if ks.enabled { "on" } else { "off" });
    if ks.limits.is_empty() {
        text.push_str("No thresholds set. Set some with: codex-broker killswitch set ID:5H,1W\n");
        return text;
    }
    let mut table = Table::new(&["  ACCOUNT", "5H", "WEEKLY"]);
    for (id, limits) in &ks.limits {
        let name = store.get(id).map_or(id.as_str(), |a| a.name());
        table.row(vec![
            format!("  {name}"),
            format!("> {}%", limits.five_hour),
            format!("> {}%", limits.weekly),
        ]);
    }
    text.push_str(&table.render());
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let s: Spec = "work:80,95".parse().unwrap();
        assert_eq!(s.account, "work");
        assert_eq!(
            s.limits,
            Limits {
                five_hour: 80.0,
                weekly: 95.0
            }
        );
        let s: Spec = "a:b:50%,60.5".parse().unwrap();
        assert_eq!(s.account, "a:b");
        assert_eq!(s.limits.weekly, 60.5);
        assert!("work".parse::<Spec>().is_err());
        assert!("work:80".parse::<Spec>().is_err());
        assert!(":80,90".parse::<Spec>().is_err());
        assert!(
            "w:101,90"
                .parse::<Spec>()
                .unwrap_err()
                .contains("between 0 and 100")
        );
        assert!("w:x,90".parse::<Spec>().is_err());
    }
}
