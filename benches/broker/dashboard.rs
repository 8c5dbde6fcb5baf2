//! What the dashboard and the metrics cost: the page's weight, the size
//! of the state it polls, and the time to answer the state and a metrics
//! scrape against a static file of the page from the same forwarder.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The p50 of `n` sequential GETs of `path`, microseconds, and the size of
/// the last answer.
async fn p50(
    client: &reqwest::Client,
    forwarder: SocketAddr,
    path: &str,
    n: usize,
) -> (u64, usize) {
    let url = format!("http://{forwarder}{path}");
    let mut times = Vec::with_capacity(n);
    let mut size = 0;
    for _ in 0..n {
        let started = Instant::now();
        let answer = client.get(&url).send().await.unwrap();
        assert!(answer.status().is_success(), "{path}: {}", answer.status());
        size = answer.bytes().await.unwrap().len();
        times.push(started.elapsed().as_micros() as u64);
    }
    times.sort_unstable();
    (times[n / 2], size)
}

pub fn run(runtime: &tokio::runtime::Runtime, forwarder: SocketAddr, quick: bool) {
    let n = if quick { 20 } else { 500 };
    let client = codex_broker::oauth::http_client(Duration::from_secs(10));
    println!(
        "\ndashboard: page weight {} bytes (HTML, script and style, uncompressed)",
        codex_broker::forward::page_weight()
    );
    let (baseline, _) = runtime.block_on(p50(&client, forwarder, "/ui/app.css", n));
    println!(
        "{:<12} {:>8} {:>9} {:>10}",
        "GET", "p50 us", "bytes", "x app.css"
    );
    for path in ["/ui/app.css", "/ui/state", "/metrics"] {
        let (us, size) = runtime.block_on(p50(&client, forwarder, path, n));
        let ratio = us as f64 / baseline.max(1) as f64;
        println!("{path:<12} {us:>8} {size:>9} {ratio:>10.2}");
    }
}
