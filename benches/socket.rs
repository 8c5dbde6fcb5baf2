//! The socket API under load: `/v1/token` throughput and latency at 1, 32
//! and 256 concurrent clients, against a baseline measured in the same run
//! (each request served by reading and parsing auth.json from disk), and
//! the daemon's resident memory.
//!
//! Run: `cargo bench --bench socket` (BENCH_SECONDS sets the time per run).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use codex_broker::codex_auth::CodexHome;
use codex_broker::jwt::{chatgpt_claims, encode_unsigned};
use codex_broker::socket::client::Connection;
use hyper::Method;

const CONCURRENCY: [usize; 3] = [1, 32, 256];

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A user with one account whose token stays valid for a day, imported
/// into the broker, and a daemon serving it.
fn start(home: &Path) -> Daemon {
    let codex_home = home.join(".codex");
    std::fs::create_dir_all(&codex_home).unwrap();
    let token = encode_unsigned(&chatgpt_claims(
        "acc-bench",
        "pro",
        "bench@example.com",
        now() + 86_400,
    ));
    let auth = serde_json::json!({
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": null,
        "tokens": {"id_token": token, "access_token": token, "refresh_token": "rt-bench",
                   "account_id": "acc-bench"},
        "last_refresh": codex_broker::codex_auth::format_timestamp(time::OffsetDateTime::now_utc()),
    });
    std::fs::write(
        codex_home.join("auth.json"),
        serde_json::to_vec_pretty(&auth).unwrap(),
    )
    .unwrap();
    let cmd = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_codex-broker"));
        c.env_clear().env("HOME", home).args(args);
        c
    };
    assert!(
        cmd(&["import"])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    let notify_path = home.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let child = cmd(&["serve", "--no-forward"])
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("the daemon gets ready");
    assert!(buf[..n].starts_with(b"READY=1"));
    Daemon {
        child,
        socket: home.join(".config/codex-broker/run/broker.sock"),
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Requests per second, p50 and p99 in microseconds.
struct Stats {
    rate: f64,
    p50: f64,
    p99: f64,
}

fn stats(mut latencies: Vec<u32>, elapsed: Duration) -> Stats {
    latencies.sort_unstable();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] as f64;
    Stats {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
    }
}

fn socket_run(
    runtime: &tokio::runtime::Runtime,
    socket: &Path,
    clients: usize,
    run: Duration,
) -> Stats {
    runtime.block_on(async {
        let mut connections = Vec::new();
        for _ in 0..clients {
            connections.push(Connection::open(socket).await.unwrap());
        }
        let start = Instant::now();
        let deadline = start + run;
        let tasks: Vec<_> = connections
            .into_iter()
            .map(|mut c| {
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let (status, body) =
                            c.send(Method::GET, "/v1/token", &[], None).await.unwrap();
                        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                        latencies.push(t.elapsed().as_micros() as u32);
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        stats(all, start.elapsed())
    })
}

fn file_run(codex_home: &Path, clients: usize, run: Duration) -> Stats {
    let start = Instant::now();
    let deadline = start + run;
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let codex = CodexHome::new(codex_home);
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let snapshot = codex.read().unwrap();
                    assert!(snapshot.valid().is_some());
                    latencies.push(t.elapsed().as_micros() as u32);
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().unwrap());
    }
    stats(all, start.elapsed())
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // and only checks that this builds and runs briefly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 0.2 } else { 3.0 });
    let run = Duration::from_secs_f64(seconds);
    let home = tempfile::tempdir().unwrap();
    let daemon = start(home.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // One request so the daemon has loaded the store, then idle.
    socket_run(&runtime, &daemon.socket, 1, Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(200));
    let idle_rss = rss_kib(daemon.child.id());

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("socket API: GET /v1/token over the Unix socket, {seconds} s per run, {cpus} CPUs");
    println!("baseline:   read and parse auth.json from disk per request");
    println!();
    println!(
        "{:>7} | {:>12} {:>8} {:>8} | {:>12} {:>8} {:>8} | {:>10}",
        "clients",
        "socket req/s",
        "p50 us",
        "p99 us",
        "file req/s",
        "p50 us",
        "p99 us",
        "socket/file"
    );
    for clients in CONCURRENCY {
        let s = socket_run(&runtime, &daemon.socket, clients, run);
        let f = file_run(&home.path().join(".codex"), clients, run);
        println!(
            "{clients:>7} | {:>12.0} {:>8.0} {:>8.0} | {:>12.0} {:>8.0} {:>8.0} | {:>10.2}",
            s.rate,
            s.p50,
            s.p99,
            f.rate,
            f.p50,
            f.p99,
            s.rate / f.rate
        );
    }
    let loaded_rss = rss_kib(daemon.child.id());
    println!();
    println!(
        "daemon RSS: idle {:.1} MiB, after the runs {:.1} MiB",
        idle_rss as f64 / 1024.0,
        loaded_rss as f64 / 1024.0
    );
}
