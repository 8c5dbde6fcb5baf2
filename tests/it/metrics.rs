//! Prometheus metrics: the forwarder's `/metrics` and the socket's
//! `/v1/metrics`, checked by `promtool` and scraped by a real Prometheus.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::forward::send;
use crate::support::fake_upstream::{FakeUpstream, Refresh};
use crate::support::{Daemon, TestEnv, free_port, skip, wait_until, which};
use crate::usage::infer;

fn scrape(daemon: &Daemon) -> String {
    let answer = send(
        "GET",
        &format!("{}/metrics", daemon.forwarder()),
        &[],
        vec![],
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let content_type = answer.headers["content-type"].to_str().unwrap();
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    answer.text()
}

/// The value of the sample written exactly as `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// A daemon whose main account is rate limited: one request falls back.
fn fell_back_once() -> (FakeUpstream, TestEnv, Daemon) {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    daemon.get("/v1/token?account=acc-main&min_ttl=86400");
    upstream.set_limited("acc-main");
    assert_eq!(infer(&daemon), 200);
    (upstream, env, daemon)
}

#[test]
fn the_forwarder_and_the_socket_expose_what_happened() {
    let (upstream, _env, daemon) = fell_back_once();
    let text = scrape(&daemon);
    let expected = [
        ("codex_broker_accounts{state=\"ok\"}", 2.0),
        ("codex_broker_accounts{state=\"needs_login\"}", 0.0),
        (
            "codex_broker_refreshes_total{account=\"acc-main\",result=\"rotated\"}",
            1.0,
        ),
        (
            "codex_broker_requests_total{account=\"acc-fallback\",route=\"codex\",code=\"200\"}",
            1.0,
        ),
        ("codex_broker_fallbacks_total{account=\"acc-main\"}", 1.0),
        (
            "codex_broker_tokens_total{account=\"acc-fallback\",kind=\"input\"}",
            1200.0,
        ),
        (
            "codex_broker_tokens_total{account=\"acc-fallback\",kind=\"cached_input\"}",
            1024.0,
        ),
        (
            "codex_broker_tokens_total{account=\"acc-fallback\",kind=\"reasoning\"}",
            128.0,
        ),
        (
            "codex_broker_quota_used_percent{account=\"acc-main\",window=\"5h\"}",
            100.0,
        ),
        (
            "codex_broker_quota_used_percent{account=\"acc-main\",window=\"weekly\"}",
            12.0,
        ),
        ("codex_broker_upstream_seconds_count{route=\"codex\"}", 1.0),
    ];
    for (series, value) in expected {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    }
    let resets = sample(
        &text,
        "codex_broker_quota_resets_at_seconds{account=\"acc-main\",window=\"5h\"}",
    );
    assert!(resets.unwrap() > crate::support::now() as f64, "{text}");
    let expiry = sample(
        &text,
        "codex_broker_token_expires_at_seconds{account=\"acc-fallback\"}",
    );
    assert!(expiry.unwrap() > crate::support::now() as f64, "{text}");
    assert!(
        text.contains("codex_broker_build_info{version=\""),
        "{text}"
    );
    assert!(!text.contains('@'), "an email in a label:\n{text}");

    // A refused refresh is counted, and the account's state moves.
    upstream.set_refresh(Refresh::error(401, "refresh_token_invalidated"));
    daemon.api("GET", "/v1/token?account=acc-fallback&min_ttl=86400", None);
    let text = scrape(&daemon);
    let rejected = "codex_broker_refreshes_total{account=\"acc-fallback\",result=\"rejected\"}";
    assert_eq!(sample(&text, rejected), Some(1.0), "{text}");
    let needs_login = "codex_broker_accounts{state=\"needs_login\"}";
    assert_eq!(sample(&text, needs_login), Some(1.0), "{text}");

    // The socket serves the same families.
    let (status, body) = daemon.api_raw("GET", "/v1/metrics", None);
    assert_eq!(status, 200);
    let socket = String::from_utf8(body).unwrap();
    for (series, _) in expected {
        assert!(sample(&socket, series).is_some(), "{series} in:\n{socket}");
    }
}

#[test]
fn the_metrics_keep_the_forwarders_guards() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let url = format!("{}/metrics", daemon.forwarder());
    let from_a_page = send("GET", &url, &[("origin", "https://evil.example")], vec![]);
    assert_eq!(from_a_page.status, 403, "{}", from_a_page.text());
    let other_host = send("GET", &url, &[("host", "metrics.example.com")], vec![]);
    assert_eq!(other_host.status, 403, "{}", other_host.text());
    let post = send("POST", &url, &[], vec![]);
    assert_eq!(post.status, 404, "{}", post.text());
    // A refused request is counted, under no account.
    let text = scrape(&daemon);
    let refused = "codex_broker_requests_total{account=\"\",route=\"refused\",code=\"403\"}";
    assert_eq!(sample(&text, refused), Some(2.0), "{text}");
}

#[test]
fn promtool_finds_nothing_wrong() {
    if which("promtool").is_none() {
        return skip("promtool (Debian package prometheus) is not installed");
    }
    let (_upstream, _env, daemon) = fell_back_once();
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let text = scrape(&daemon);
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "{said}\n{text}"
    );
}

/// A Prometheus server scraping `target` every second.
struct Prometheus {
    child: Child,
    api: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: codex-broker\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .unwrap();
        Prometheus {
            child,
            api: format!("http://127.0.0.1:{port}/api/v1"),
            _dir: dir,
        }
    }

    /// The value of an instant PromQL query with one result.
    fn query(&self, promql: &str) -> Option<f64> {
        let url = format!(
            "{}/query?query={}",
            self.api,
            url::form_urlencoded::byte_serialize(promql.as_bytes()).collect::<String>()
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answer: Value = runtime.block_on(async {
            let client = codex_broker::oauth::http_client(Duration::from_secs(5));
            let response = client.get(&url).send().await.ok()?;
            response.json().await.ok()
        })?;
        let value = answer["data"]["result"].as_array()?.first()?["value"][1].clone();
        value.as_str()?.parse().ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_prometheus_scrapes_the_forwarder_and_answers_promql() {
    if which("prometheus").is_none() {
        return skip("prometheus (Debian package prometheus) is not installed");
    }
    let (_upstream, _env, daemon) = fell_back_once();
    assert_eq!(infer(&daemon), 200);
    let target = daemon.forwarder().trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(&target);
    let tokens = "sum by (account) (codex_broker_tokens_total{kind=\"output\"})";
    let up = wait_until(Duration::from_secs(60), || {
        prometheus.query(tokens) == Some(600.0)
    });
    assert!(
        up.is_some(),
        "Prometheus never saw 600 output tokens: {:?}\n{}",
        prometheus.query(tokens),
        prometheus.log()
    );
    let weekly = "codex_broker_quota_used_percent{account=\"acc-main\",window=\"weekly\"}";
    assert_eq!(prometheus.query(weekly), Some(12.0));
    let until_reset = "min(codex_broker_quota_resets_at_seconds{window=\"5h\"}) - time()";
    let seconds = prometheus.query(until_reset).unwrap();
    assert!((3000.0..=3600.0).contains(&seconds), "{seconds}");
    let served = "sum(codex_broker_requests_total{route=\"codex\",code=\"200\"})";
    assert_eq!(prometheus.query(served), Some(2.0));

    // The README's queries answer: tokens per hour, and the weekly reset
    // (the fake gives no weekly reset time: one window after it was seen).
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"));
    let readme = readme.unwrap();
    let block = readme.split("```promql\n").nth(1).unwrap();
    let queries: Vec<&str> = block.split("```").next().unwrap().lines().collect();
    assert_eq!(queries.len(), 2, "{queries:?}");
    assert_eq!(infer(&daemon), 200);
    let grew = wait_until(Duration::from_secs(30), || {
        prometheus.query(queries[0]).is_some_and(|n| n > 0.0)
    });
    assert!(
        grew.is_some(),
        "{}: {:?}",
        queries[0],
        prometheus.query(queries[0])
    );
    let weekly_reset = prometheus.query(queries[1]).unwrap();
    assert!(
        (604_000.0..=604_800.0).contains(&weekly_reset),
        "{}: {weekly_reset}",
        queries[1]
    );
}
