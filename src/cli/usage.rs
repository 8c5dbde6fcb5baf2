//! `codex-broker usage [--since DURATION] [--by account|client|model] [--json]`

use std::collections::BTreeMap;

use clap::ValueEnum;
use serde_json::{Value, json};

use crate::base::display::{self, Table};
use crate::base::paths::Paths;
use crate::engine::config::parse_duration;
use crate::engine::usage::{Counts, Total, Usage, busiest_first};
use crate::socket::client::{self, Answer};

/// Show the tokens the forwarder's answers used
///
/// Requests, errors, input (and cached input), output and reasoning tokens
/// of every answer the forwarder relayed (SSE, WebSocket and stream:false),
/// summed per account, client (the first word of its User-Agent) or model.
/// The running daemon answers with what it counted up to now; without one,
/// the usage file (`usage.json` in the broker home, 30 days) is read.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How far back: `90m`, `24h`, `7d`
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    pub since: String,

    /// Sum per account, client or model (default: per account, client and model)
    #[arg(long, value_enum)]
    pub by: Option<By>,

    /// Print {since, until, rows: [{account_id, client, model, requests,
    /// errors, input_tokens, cached_input_tokens, output_tokens,
    /// reasoning_tokens}]}
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum By {
    Account,
    Client,
    Model,
}

pub fn run(paths: &Paths, args: Args) -> anyhow::Result<()> {
    let Some(ago) = parse_duration(&args.since) else {
        return Err(super::Exit::usage(format!(
            "--since `{}` is not a duration such as 90m, 24h or 7d",
            args.since
        )));
    };
    let now = display::now();
    let since = now.saturating_sub(ago);
    let rows = totals(paths, since, now)?;
    let rows = match args.by {
        Some(by) => summed(rows, by),
        None => rows,
    };
    if args.json {
        return Ok(super::print_json(
            &json!({"since": since, "until": now, "rows": rows}),
        )?);
    }
    Ok(super::print(&render(&rows, args.by, ago))?)
}

/// What the daemon counted (with what it has not saved yet), else the file.
fn totals(paths: &Paths, since: i64, now: i64) -> anyhow::Result<Vec<Total>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let target = format!("/v1/usage?since={}", now - since);
    match runtime.block_on(client::get(paths, &target))? {
        Answer::Ok(value) => Ok(serde_json::from_value(
            value.get("rows").cloned().unwrap_or(Value::Null),
        )?),
        Answer::NoDaemon => Ok(Usage::open(paths.usage()).totals(since)),
        Answer::Error { message, .. } => anyhow::bail!("the daemon: {message}"),
    }
}

/// The rows summed per account, client or model (the others become `*`).
fn summed(rows: Vec<Total>, by: By) -> Vec<Total> {
    let mut sums: BTreeMap<String, Counts> = BTreeMap::new();
    for row in rows {
        let key = match by {
            By::Account => row.account,
            By::Client => row.client,
            By::Model => row.model,
        };
        sums.entry(key).or_default().add(&row.counts);
    }
    let all = || "*".to_owned();
    let mut totals: Vec<Total> = sums
        .into_iter()
        .map(|(key, counts)| {
            let (account, client, model) = match by {
                By::Account => (key, all(), all()),
                By::Client => (all(), key, all()),
                By::Model => (all(), all(), key),
            };
            Total {
                account,
                client,
                model,
                counts,
            }
        })
        .collect();
    busiest_first(&mut totals);
    totals
}

fn render(rows: &[Total], by: Option<By>, ago: i64) -> String {
    if rows.is_empty() {
        return format!(
            "No usage in the last {}: nothing went through the forwarder.\n",
            display::duration(ago)
        );
    }
    let keys: &[&str] = match by {
        Some(By::Account) => &["ACCOUNT"],
        Some(By::Client) => &["CLIENT"],
        Some(By::Model) => &["MODEL"],
        None => &["ACCOUNT", "CLIENT", "MODEL"],
    };
    let numbers = [
        "REQUESTS",
        "ERRORS",
        "INPUT",
        "CACHED",
        "OUTPUT",
        "REASONING",
    ];
    let header: Vec<&str> = keys.iter().chain(numbers.iter()).copied().collect();
    let mut table = Table::new(&header);
    let mut total = Counts::default();
    for row in rows {
        total.add(&row.counts);
        let mut cells: Vec<String> = match by {
            Some(By::Account) => vec![row.account.clone()],
            Some(By::Client) => vec![row.client.clone()],
            Some(By::Model) => vec![row.model.clone()],
            None => vec![row.account.clone(), row.client.clone(), row.model.clone()],
        };
        cells.extend(counts_cells(&row.counts));
        table.row(cells);
    }
    let mut cells = vec!["total".to_owned()];
    cells.extend(std::iter::repeat_n(String::new(), keys.len() - 1));
    cells.extend(counts_cells(&total));
    table.row(cells);
    format!(
        "Usage in the last {}:\n{}",
        display::duration(ago),
        table.render()
    )
}

fn counts_cells(c: &Counts) -> Vec<String> {
    [
        c.requests,
        c.errors,
        c.tokens.input,
        c.tokens.cached_input,
        c.tokens.output,
        c.tokens.reasoning,
    ]
    .iter()
    .map(|n| display::grouped(*n))
    .collect()
}
