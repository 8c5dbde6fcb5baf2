//! The daemon under load, each part against a baseline measured in the same
//! run:
//! - the socket API: `/v1/token` throughput and latency at 1, 32 and 256
//!   concurrent clients, against reading and parsing auth.json from disk
//!   per request; the daemon's resident memory;
//! - the forwarder: a small JSON request and a 100-event SSE stream through
//!   the forwarder, against the same requests sent straight to the same
//!   upstream: added latency, throughput at 32 connections, SSE event
//!   delivery delay, and memory per idle streaming connection;
//! - the forwarder's WebSocket relay: events of a streamed answer through
//!   the forwarder against a direct WebSocket to the same upstream (added
//!   delay per event), and memory per idle open WebSocket;
//! - a fresh client's first byte against a TLS upstream one emulated round
//!   trip away, through the forwarder against straight to the upstream,
//!   right after another request and after 100 s idle (the upstream closes
//!   connections idle for 60 s);
//! - instructions per forwarded request, counted by callgrind for the
//!   forwarder and for nginx (where valgrind is installed): unlike times,
//!   the same on every run of a build, however busy the machine is;
//! - throughput for an account whose refresh backs off (its token valid
//!   for days) against a healthy account;
//! - usage accounting: requests and streams through a daemon that counts
//!   their tokens against one that does not, and the size of a usage file
//!   of 30 days;
//! - the dashboard: its page weight, and the time to answer its state and
//!   a metrics scrape against one of its static files;
//! - Chat Completions: the delay each streamed chunk adds against the same
//!   stream on `/codex/responses`, throughput of `stream:false` requests
//!   against `/v1/responses`, and the mapping's own time per request;
//! - the prompt cache: throughput without a conversation header, with one
//!   conversation per connection and with a new one per request; memory
//!   per pinned conversation and per kept shadow body.
//!
//! Run: `cargo bench --bench broker`. BENCH_SECONDS sets the time per run;
//! BENCH_ONLY (`socket`, `forwarder`, `websocket`, `instructions`, `first_byte`,
//! `backoff`, `usage`, `dashboard`, `chat`, `prompt_cache`, comma-separated) runs only those parts; BENCH_CLIENTS (such as `32`)
//! only those client counts; TOKIO_WORKER_THREADS is passed to the daemon.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "broker/chat.rs"]
mod chat;
#[path = "broker/dashboard.rs"]
mod dashboard;
#[path = "broker/first_byte.rs"]
mod first_byte;
#[path = "broker/prompt_cache.rs"]
mod prompt_cache;

use codex_broker::codex::auth::CodexHome;
use codex_broker::socket::client::Connection;
use codex_broker::wire::jwt::{chatgpt_claims, encode_unsigned};
use hyper::Method;

const CONCURRENCY: [usize; 3] = [1, 32, 256];

/// Whether `part` is to run (BENCH_ONLY).
fn wanted(part: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only.split(',').any(|p| p.trim() == part))
}

/// The client counts to run (BENCH_CLIENTS, else [`CONCURRENCY`]).
fn concurrency() -> Vec<usize> {
    std::env::var("BENCH_CLIENTS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| CONCURRENCY.to_vec())
}

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

/// A program on PATH or in an sbin directory.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `program`, run under `wrap` (a command and its arguments) unless that is
/// empty.
fn wrapped(program: &Path, wrap: &[String]) -> Command {
    match wrap {
        [] => Command::new(program),
        [wrapper, options @ ..] => {
            let mut c = Command::new(wrapper);
            c.args(options).arg(program);
            c
        }
    }
}

/// A user with one account whose token stays valid for a day, imported
/// into the broker, and a daemon serving it; its forwarder (on a free
/// port) talks to `upstream`. The daemon runs under `wrap` (a command and
/// its arguments) when that is not empty.
fn start(home: &Path, upstream: SocketAddr, wrap: &[String]) -> Daemon {
    start_at(home, &format!("http://{upstream}"), &[], wrap)
}

/// [`start`] with the upstreams at `base` and `env` in the daemon's
/// environment.
fn start_at(home: &Path, base: &str, env: &[(&str, &str)], wrap: &[String]) -> Daemon {
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
        "last_refresh": codex_broker::codex::auth::format_timestamp(time::OffsetDateTime::now_utc()),
    });
    std::fs::write(
        codex_home.join("auth.json"),
        serde_json::to_vec_pretty(&auth).unwrap(),
    )
    .unwrap();
    let cmd = |wrap: &[String], args: &[&str]| {
        let mut c = wrapped(env!("CARGO_BIN_EXE_codex-broker").as_ref(), wrap);
        c.env_clear()
            .env("HOME", home)
            .envs(
                std::env::var("TOKIO_WORKER_THREADS")
                    .ok()
                    .map(|v| ("TOKIO_WORKER_THREADS", v)),
            )
            .env("CODEX_BROKER_CHATGPT_BASE", format!("{base}/backend-api"))
            .env("CODEX_BROKER_ISSUER", base)
            .envs(env.iter().copied())
            .args(args);
        c
    };
    assert!(
        cmd(&[], &["import"])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    let notify_path = home.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(if wrap.is_empty() {
            30
        } else {
            300
        })))
        .unwrap();
    let child = cmd(wrap, &["serve", "--listen", "127.0.0.1:0"])
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

/// The forwarder's address, from `/v1/health`.
fn forwarder_addr(runtime: &tokio::runtime::Runtime, socket: &Path) -> SocketAddr {
    runtime.block_on(async {
        let mut c = Connection::open(socket).await.unwrap();
        let (_, body) = c.send(Method::GET, "/v1/health", &[], None).await.unwrap();
        let health: serde_json::Value = serde_json::from_slice(&body).unwrap();
        health["forwarder"]["address"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    })
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time `pid` and the processes it started have used, in us.
fn cpu_us(pid: u32) -> u64 {
    let ticks_per_s = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after_name
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let own = fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0);
    let children: u64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .map(cpu_us)
        .sum();
    own * 1_000_000 / ticks_per_s + children
}

/// Requests per second, p50 and p99 in microseconds, and how many.
struct Stats {
    rate: f64,
    p50: f64,
    p99: f64,
    count: usize,
}

fn stats(mut latencies: Vec<u32>, elapsed: Duration) -> Stats {
    latencies.sort_unstable();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] as f64;
    Stats {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
        count: latencies.len(),
    }
}

/// Runs `op` in a loop on every connection until `run` has passed; each
/// call is one timed request.
async fn measure<C, F, Fut>(connections: Vec<C>, run: Duration, op: F) -> Stats
where
    C: Send + 'static,
    F: Fn(C) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = C> + Send,
{
    let start = Instant::now();
    let deadline = start + run;
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|mut c| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    c = op(c).await;
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
        measure(connections, run, |mut c: Connection| async move {
            let (status, body) = c.send(Method::GET, "/v1/token", &[], None).await.unwrap();
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            c
        })
        .await
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
    let upstream = upstream::start();
    let daemon = start(home.path(), upstream.addr, &[]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // One request so the daemon has loaded the store, then idle.
    socket_run(&runtime, &daemon.socket, 1, Duration::from_millis(1));
    std::thread::sleep(Duration::from_millis(200));
    let idle_rss = rss_kib(daemon.child.id());

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{seconds} s per run, {cpus} CPUs; daemon RSS idle {:.1} MiB",
        idle_rss as f64 / 1024.0
    );
    if wanted("socket") {
        socket_table(&runtime, &daemon, home.path(), run);
    }
    if wanted("forwarder") {
        let forwarder = forwarder_addr(&runtime, &daemon.socket);
        let nginx = nginx::start(home.path(), upstream.addr, &[]);
        forward::run(
            &runtime,
            &upstream,
            forward::Proxies {
                forwarder,
                nginx: nginx.as_ref().map(|n| (n.addr, n.child.id())),
            },
            daemon.child.id(),
            run,
            quick,
        );
    }
    drop(daemon);
    // Memory per open stream is measured on daemons of their own, so that
    // memory the runs above freed and the allocator kept is not counted as
    // memory the streams use.
    if wanted("forwarder") {
        let (_home, daemon) = fresh_daemon(&upstream);
        let forwarder = forwarder_addr(&runtime, &daemon.socket);
        forward::idle_streams(&runtime, &upstream, forwarder, daemon.child.id(), quick);
    }
    if wanted("websocket") {
        let (_home, daemon) = fresh_daemon(&upstream);
        let forwarder = forwarder_addr(&runtime, &daemon.socket);
        websocket::run(&runtime, &upstream, forwarder, daemon.child.id(), quick);
    }
    if wanted("instructions") {
        forward::instructions(&runtime, &upstream, quick);
    }
    if wanted("first_byte") {
        first_byte_table(&runtime, quick);
    }
    if wanted("backoff") {
        forward::backoff(&runtime, &upstream, run);
    }
    if wanted("usage") {
        forward::usage(&runtime, &upstream, run);
    }
    if wanted("chat") {
        chat::run(&runtime, &upstream, run, quick);
    }
    if wanted("prompt_cache") {
        prompt_cache::run(&runtime, &upstream, run, quick);
    }
    if wanted("dashboard") {
        let (_home, daemon) = fresh_daemon(&upstream);
        let forwarder = forwarder_addr(&runtime, &daemon.socket);
        dashboard::run(&runtime, forwarder, quick);
    }
}

/// A daemon whose upstreams are a TLS server one emulated round trip away.
fn first_byte_table(runtime: &tokio::runtime::Runtime, quick: bool) {
    println!();
    let setting = first_byte::Setting::new(quick);
    let upstream = first_byte::start(setting.idle_close);
    let home = tempfile::tempdir().unwrap();
    let cert = home.path().join("upstream.pem");
    std::fs::write(&cert, &upstream.cert_pem).unwrap();
    let base = format!("https://{}", upstream.addr);
    let env = [("SSL_CERT_FILE", cert.to_str().unwrap())];
    let daemon = start_at(home.path(), &base, &env, &[]);
    let forwarder = forwarder_addr(runtime, &daemon.socket);
    first_byte::run(runtime, &upstream, forwarder, &setting);
}

/// Puts the account of the broker in `home` into a refresh backoff that
/// lasts an hour, with its last refresh 9 days old (past Codex's 8-day
/// rule, so every request finds it due), as a failing issuer leaves it.
fn put_in_backoff(home: &Path) {
    let path = home.join(".config/codex-broker/accounts.json");
    let mut store: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let old = time::OffsetDateTime::from_unix_timestamp(now() - 9 * 86_400).unwrap();
    let account = &mut store["accounts"][0];
    account["last_refresh"] = codex_broker::codex::auth::format_timestamp(old).into();
    account["state"] = "refresh_backoff".into();
    account["state_reason"] = "could not connect".into();
    account["backoff_until"] = (now() + 3600).into();
    let tmp = path.with_extension("bench.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&store).unwrap()).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

/// A daemon in a home of its own.
fn fresh_daemon(upstream: &upstream::Upstream) -> (tempfile::TempDir, Daemon) {
    fresh_daemon_with(upstream, "")
}

/// [`fresh_daemon`] with `config` as its config.toml.
fn fresh_daemon_with(upstream: &upstream::Upstream, config: &str) -> (tempfile::TempDir, Daemon) {
    let home = tempfile::tempdir().unwrap();
    let broker_home = home.path().join(".config/codex-broker");
    std::fs::create_dir_all(&broker_home).unwrap();
    std::fs::write(broker_home.join("config.toml"), config).unwrap();
    let daemon = start(home.path(), upstream.addr, &[]);
    (home, daemon)
}

/// The socket API against reading auth.json per request.
fn socket_table(runtime: &tokio::runtime::Runtime, daemon: &Daemon, home: &Path, run: Duration) {
    println!();
    println!("socket API: GET /v1/token over the Unix socket");
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
    for clients in concurrency() {
        let s = socket_run(runtime, &daemon.socket, clients, run);
        let f = file_run(&home.join(".codex"), clients, run);
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
        "daemon RSS after the runs {:.1} MiB",
        loaded_rss as f64 / 1024.0
    );
}

/// nginx as a reference proxy: the same upstream behind `proxy_pass`, one
/// worker, upstream keepalive, no buffering (SSE passes as it comes).
mod nginx {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::process::{Child, Stdio};
    use std::time::{Duration, Instant};

    pub struct Nginx {
        pub addr: SocketAddr,
        pub child: Child,
    }

    impl Drop for Nginx {
        /// SIGTERM, not SIGKILL: the master then stops its worker too.
        fn drop(&mut self) {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }

    /// Starts nginx in `home` in front of `upstream`, where it is installed;
    /// under `wrap` (a command and its arguments) when that is not empty,
    /// and then as one process (no master).
    pub fn start(home: &Path, upstream: SocketAddr, wrap: &[String]) -> Option<Nginx> {
        let Some(bin) = super::find_program("nginx") else {
            println!();
            println!(
                "nginx: not installed, so no nginx column (Debian/Ubuntu: apt-get install nginx; macOS: brew install nginx)"
            );
            return None;
        };
        let dir = home.join(if wrap.is_empty() {
            "nginx"
        } else {
            "nginx-wrapped"
        });
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.display();
        let master = if wrap.is_empty() {
            ""
        } else {
            "master_process off;\n"
        };
        let config = format!(
            "worker_processes 1;\ndaemon off;\n{master}pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 300s;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             upstream backend {{ server {upstream}; keepalive 256; keepalive_requests 100000000; }}\n\
             server {{\n    listen 127.0.0.1:{port};\n\
             location /codex/ {{\n      proxy_pass http://backend/backend-api/codex/;\n\
             proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
             proxy_buffering off;\n    }}\n  }}\n}}\n"
        );
        let config_path = dir.join("nginx.conf");
        std::fs::write(&config_path, config).unwrap();
        let child = super::wrapped(&bin, wrap)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&config_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // From here on, dropping it stops nginx.
        let nginx = Nginx {
            addr: ([127, 0, 0, 1], port).into(),
            child,
        };
        let started = Instant::now();
        let patience = Duration::from_secs(if wrap.is_empty() { 10 } else { 300 });
        while std::net::TcpStream::connect(nginx.addr).is_err() {
            if started.elapsed() > patience {
                println!(
                    "nginx: did not start; see {}",
                    dir.join("error.log").display()
                );
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(nginx)
    }
}

/// The upstream both the forwarder and the direct baseline talk to.
mod upstream {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;

    pub type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

    /// Events in a streamed answer.
    pub const EVENTS: usize = 100;
    /// Time between two events.
    pub const EVENT_GAP: Duration = Duration::from_millis(1);

    pub struct Upstream {
        pub addr: SocketAddr,
        /// Released when the benchmark ends: held streams finish.
        pub release: Arc<tokio::sync::Notify>,
    }

    /// Microseconds since the epoch: the same clock in every process.
    pub fn now_us() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64
    }

    pub fn start() -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let release = Arc::new(tokio::sync::Notify::new());
        let held = release.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let _ = stream.set_nodelay(true);
                    let held = held.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |r| answer(r, held.clone()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    });
                }
            });
        });
        Upstream { addr, release }
    }

    async fn answer(
        mut request: Request<Incoming>,
        held: Arc<tokio::sync::Notify>,
    ) -> Result<Response<Body>, Infallible> {
        if let Some(key) = request.headers().get("sec-websocket-key") {
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                if let Ok(io) = upgrade.await {
                    websocket(TokioIo::new(io)).await;
                }
            });
            return Ok(Response::builder()
                .status(101)
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
                .header("sec-websocket-accept", accept)
                .body(Full::new(Bytes::new()).boxed())
                .unwrap());
        }
        let path = request.uri().path().to_owned();
        let asked = request.uri().query() == Some("stream");
        let body = request.into_body().collect().await.map(|b| b.to_bytes());
        // A public-API client cannot pass the query on: its input says it.
        let marked = body.is_ok_and(|b| b.windows(12).any(|w| w == b"bench-stream"));
        let streamed = asked || marked;
        let body = match path.as_str() {
            // An answer as the backend streams it, ending with the usage
            // the forwarder counts: at once, or EVENTS events apart.
            "/backend-api/codex/responses" => {
                let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(4);
                tokio::spawn(async move {
                    let events = if streamed { EVENTS } else { 2 };
                    for i in 1..=events {
                        let event = answer_event(i == events);
                        if tx.send_data(Bytes::from(event)).await.is_err() {
                            return;
                        }
                        if streamed {
                            tokio::time::sleep(EVENT_GAP).await;
                        }
                    }
                });
                body.boxed()
            }
            "/backend-api/codex/stream" => {
                let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(4);
                tokio::spawn(async move {
                    for _ in 0..EVENTS {
                        let event = format!("data: {{\"sent_us\":{}}}\n\n", now_us());
                        if tx.send_data(Bytes::from(event)).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(EVENT_GAP).await;
                    }
                });
                body.boxed()
            }
            "/backend-api/codex/hold" => {
                let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(1);
                tokio::spawn(async move {
                    let _ = tx.send_data(Bytes::from_static(b"data: {}\n\n")).await;
                    held.notified().await;
                });
                body.boxed()
            }
            other => {
                if other.ends_with("-2ms") {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Full::new(Bytes::from_static(
                    br#"{"id":"resp_bench","status":"completed"}"#,
                ))
                .boxed()
            }
        };
        Ok(Response::builder()
            .header(
                "content-type",
                if path.ends_with("stream") || path.ends_with("hold") || path.ends_with("responses")
                {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            )
            .body(body)
            .unwrap())
    }

    /// One SSE event of a streamed answer, carrying the time it was sent:
    /// a text delta, or the `response.completed` with its usage.
    fn answer_event(last: bool) -> String {
        let sent_us = now_us();
        let event = if last {
            serde_json::json!({"type": "response.completed", "sent_us": sent_us,
                "response": {"id": "resp_bench", "model": "gpt-bench", "usage": {
                    "input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024},
                    "output_tokens": 300, "output_tokens_details": {"reasoning_tokens": 128}}}})
        } else {
            serde_json::json!({"type": "response.output_text.delta", "sent_us": sent_us,
                "delta": sent_us.to_string()})
        };
        format!(
            "event: {}\ndata: {event}\n\n",
            event["type"].as_str().unwrap()
        )
    }

    /// A WebSocket of the Responses transport: every text message from the
    /// client is answered with [`EVENTS`] events, [`EVENT_GAP`] apart, each
    /// carrying the time it was sent.
    async fn websocket<S>(io: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            io,
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(message)) = ws.next().await {
            if !message.is_text() {
                continue;
            }
            for _ in 0..EVENTS {
                let event = format!(
                    "{{\"type\":\"response.output_text.delta\",\"delta\":\"hi\",\"sent_us\":{}}}",
                    now_us()
                );
                if ws.send(Message::text(event)).await.is_err() {
                    return;
                }
                tokio::time::sleep(EVENT_GAP).await;
            }
        }
    }
}

/// The forwarder's WebSocket relay against a direct WebSocket to the same
/// upstream.
mod websocket {
    use std::net::SocketAddr;
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use tokio::net::TcpStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

    use super::rss_kib;
    use super::upstream::{EVENTS, Upstream, now_us};

    type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

    async fn connect(addr: SocketAddr, path: &str) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
            .await
            .unwrap();
        ws
    }

    /// `turns` answers one after another on one connection; returns each
    /// event's delay from the upstream sending it to the client reading it,
    /// in us.
    async fn events(addr: SocketAddr, path: &str, turns: usize) -> Vec<u32> {
        let mut ws = connect(addr, path).await;
        let mut delays = Vec::new();
        for _ in 0..turns {
            ws.send(Message::text(r#"{"type":"response.create"}"#))
                .await
                .unwrap();
            let mut events = 0;
            while events < EVENTS {
                let Message::Text(text) = ws.next().await.unwrap().unwrap() else {
                    continue;
                };
                let arrived = now_us();
                let event: serde_json::Value = serde_json::from_str(&text).unwrap();
                let sent = event["sent_us"].as_u64().unwrap();
                delays.push(arrived.saturating_sub(sent) as u32);
                events += 1;
            }
        }
        delays
    }

    pub fn run(
        runtime: &tokio::runtime::Runtime,
        upstream: &Upstream,
        forwarder: SocketAddr,
        daemon_pid: u32,
        quick: bool,
    ) {
        let turns = if quick { 2 } else { 20 };
        let mut f = runtime.block_on(events(forwarder, "/codex/responses", turns));
        let mut d = runtime.block_on(events(upstream.addr, "/backend-api/codex/responses", turns));
        println!();
        println!(
            "WebSocket: {turns} answers of {EVENTS} events, 1 ms apart: delay from upstream write to client read"
        );
        println!("  {}", super::forward::delays(&mut f, &mut d));

        let idle = if quick { 20 } else { 200 };
        let before = rss_kib(daemon_pid);
        let held: Vec<Ws> = runtime.block_on(async {
            let mut held = Vec::new();
            for _ in 0..idle {
                let mut ws = connect(forwarder, "/codex/responses").await;
                // One answer: the connection is open end to end.
                ws.send(Message::text(r#"{"type":"response.create"}"#))
                    .await
                    .unwrap();
                for _ in 0..EVENTS {
                    ws.next().await.unwrap().unwrap();
                }
                held.push(ws);
            }
            held
        });
        std::thread::sleep(Duration::from_millis(200));
        let after = rss_kib(daemon_pid);
        println!(
            "idle WebSockets: {idle} open through the forwarder: daemon RSS {:.1} -> {:.1} MiB, {:.1} KiB per connection",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            after.saturating_sub(before) as f64 / idle as f64
        );
        drop(held);
    }
}

/// The forwarder against direct connections to the same upstream.
mod forward {
    use std::net::SocketAddr;
    use std::time::Duration;

    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper::client::conn::http1::SendRequest;
    use hyper::{Method, Request};
    use hyper_util::rt::TokioIo;

    use super::upstream::{EVENTS, Upstream, now_us};
    use super::{Stats, cpu_us, find_program, forwarder_addr, measure, nginx, rss_kib, start};

    const SMALL_BODY: &[u8] = br#"{"model":"gpt-5.1-codex","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]}],"stream":false}"#;

    pub async fn connect(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender
    }

    fn request(path: &str, body: &'static [u8]) -> Request<Full<Bytes>> {
        Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap()
    }

    /// Small JSON requests from `clients` connections for `run`.
    async fn small(addr: SocketAddr, path: &str, clients: usize, run: Duration) -> Stats {
        let mut senders = Vec::new();
        for _ in 0..clients {
            senders.push(connect(addr).await);
        }
        let path = path.to_owned();
        measure(senders, run, move |mut s: SendRequest<Full<Bytes>>| {
            let path = path.clone();
            async move {
                s.ready().await.unwrap();
                let response = s.send_request(request(&path, SMALL_BODY)).await.unwrap();
                assert!(response.status().is_success(), "{}", response.status());
                response.into_body().collect().await.unwrap();
                s
            }
        })
        .await
    }

    /// `streams` SSE answers one after another; returns each event's delay
    /// from the upstream writing it to the client reading it, in us.
    pub async fn sse(addr: SocketAddr, path: &str, streams: usize) -> Vec<u32> {
        let mut sender = connect(addr).await;
        let mut delays = Vec::new();
        for _ in 0..streams {
            sender.ready().await.unwrap();
            let response = sender.send_request(request(path, b"{}")).await.unwrap();
            let mut body = response.into_body();
            let mut pending = String::new();
            let mut events = 0;
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame.unwrap().into_data() else {
                    continue;
                };
                let arrived = now_us();
                pending.push_str(&String::from_utf8_lossy(&data));
                while let Some(end) = pending.find("\n\n") {
                    let event: String = pending.drain(..end + 2).collect();
                    let json = event
                        .lines()
                        .find_map(|l| l.strip_prefix("data: "))
                        .unwrap_or_default();
                    let v: serde_json::Value = serde_json::from_str(json).unwrap();
                    let sent = v["sent_us"].as_u64().unwrap();
                    delays.push(arrived.saturating_sub(sent) as u32);
                    events += 1;
                }
            }
            assert_eq!(events, EVENTS);
        }
        delays
    }

    /// Forwarded delays against direct ones: p50, p99 and what forwarding
    /// adds.
    pub fn delays(forwarded: &mut [u32], direct: &mut [u32]) -> String {
        let (f50, f99) = (percentile(forwarded, 0.5), percentile(forwarded, 0.99));
        let (d50, d99) = (percentile(direct, 0.5), percentile(direct, 0.99));
        format!(
            "forwarded p50 {f50:.0} us, p99 {f99:.0} us; direct p50 {d50:.0} us, p99 {d99:.0} us; \
             added p50 {:.0} us, p99 {:.0} us",
            f50 - d50,
            f99 - d99
        )
    }

    pub fn percentile(values: &mut [u32], q: f64) -> f64 {
        values.sort_unstable();
        values[((values.len() - 1) as f64 * q) as usize] as f64
    }

    /// The proxies measured against the direct connection.
    pub struct Proxies {
        pub forwarder: SocketAddr,
        /// nginx's address and master process, where it is installed.
        pub nginx: Option<(SocketAddr, u32)>,
    }

    /// Small requests through the proxy at `addr` (process `pid`), and the
    /// CPU time the proxy spent per request, in us.
    fn through(
        runtime: &tokio::runtime::Runtime,
        (addr, pid): (SocketAddr, u32),
        path: &str,
        clients: usize,
        run: Duration,
    ) -> (Stats, f64) {
        let before = cpu_us(pid);
        let stats = runtime.block_on(small(addr, path, clients, run));
        let used = cpu_us(pid).saturating_sub(before);
        let per_request = used as f64 / stats.count.max(1) as f64;
        (stats, per_request)
    }

    fn cell(s: &Stats) -> String {
        format!("{:>9.0} {:>6.0} {:>6.0}", s.rate, s.p50, s.p99)
    }

    pub fn run(
        runtime: &tokio::runtime::Runtime,
        upstream: &Upstream,
        proxies: Proxies,
        daemon_pid: u32,
        run: Duration,
        quick: bool,
    ) {
        let Proxies { forwarder, nginx } = proxies;
        let direct = upstream.addr;
        println!();
        println!(
            "forwarder: POST /codex/responses through the forwarder, through nginx proxy_pass (1 worker,"
        );
        println!(
            "upstream keepalive) and straight to the same upstream; req/s, p50 and p99 in us; the CPU time\nthe proxy process used per request"
        );
        println!(
            "{:>7} | {:>9} {:>6} {:>6} | {:>9} {:>6} {:>6} | {:>9} {:>6} {:>6} | {:>8} {:>8} | {:>9} {:>9} | {:>9} {:>9}",
            "clients",
            "fwd",
            "p50",
            "p99",
            "nginx",
            "p50",
            "p99",
            "direct",
            "p50",
            "p99",
            "fwd/dir",
            "fwd/ngx",
            "fwd +p50",
            "ngx +p50",
            "fwd cpu",
            "ngx cpu"
        );
        // An upstream that answers at once measures the proxies' own CPU
        // cost; one that takes 2 ms, like any real backend, measures what a
        // client sees.
        for (label, suffix) in [
            ("upstream answers at once", ""),
            ("upstream answers after 2 ms", "-2ms"),
        ] {
            println!("  {label}");
            for clients in super::concurrency() {
                let path = format!("/codex/responses{suffix}");
                let (f, f_cpu) = through(runtime, (forwarder, daemon_pid), &path, clients, run);
                let n = nginx.map(|nginx| through(runtime, nginx, &path, clients, run));
                let d = runtime.block_on(small(
                    direct,
                    &format!("/backend-api/codex/responses{suffix}"),
                    clients,
                    run,
                ));
                let (n_cell, f_over_n, n_added, n_cpu) = match &n {
                    Some((n, n_cpu)) => (
                        cell(n),
                        format!("{:>8.2}", f.rate / n.rate),
                        format!("{:>7.0}us", n.p50 - d.p50),
                        format!("{n_cpu:>7.1}us"),
                    ),
                    None => (
                        format!("{:>9} {:>6} {:>6}", "-", "-", "-"),
                        format!("{:>8}", "-"),
                        format!("{:>9}", "-"),
                        format!("{:>9}", "-"),
                    ),
                };
                println!(
                    "{clients:>7} | {} | {n_cell} | {} | {:>8.2} {f_over_n} | {:>7.0}us {n_added} | {f_cpu:>7.1}us {n_cpu}",
                    cell(&f),
                    cell(&d),
                    f.rate / d.rate,
                    f.p50 - d.p50,
                );
            }
        }

        let streams = if quick { 2 } else { 20 };
        let mut f = runtime.block_on(sse(forwarder, "/codex/stream", streams));
        let mut n = nginx.map(|(addr, _)| runtime.block_on(sse(addr, "/codex/stream", streams)));
        let mut d = runtime.block_on(sse(direct, "/backend-api/codex/stream", streams));
        println!();
        println!(
            "SSE: {streams} streams of {EVENTS} events, 1 ms apart: delay from upstream write to client read"
        );
        println!("  {}", delays(&mut f, &mut d));
        if let Some(n) = &mut n {
            println!(
                "  nginx p50 {:.0} us, p99 {:.0} us; added p50 {:.0} us",
                percentile(n, 0.5),
                percentile(n, 0.99),
                percentile(n, 0.5) - percentile(&mut d, 0.5)
            );
        }
    }

    /// What counting usage costs: the same requests and streams through a
    /// daemon that counts them and one with `usage = false`, alternating,
    /// the better of two runs each; and the size of a usage file of 30
    /// days of 3 accounts, 5 clients and 4 models.
    pub fn usage(runtime: &tokio::runtime::Runtime, upstream: &Upstream, run: Duration) {
        let (_counting_home, counting) = super::fresh_daemon(upstream);
        let (_off_home, off) = super::fresh_daemon_with(upstream, "usage = false\n");
        let addrs = [
            forwarder_addr(runtime, &counting.socket),
            forwarder_addr(runtime, &off.socket),
        ];
        let path = "/codex/responses";
        let mut best = [0.0f64; 2];
        let mut p50 = [0.0f64; 2];
        let mut delays: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..2 {
            for (i, addr) in addrs.into_iter().enumerate() {
                let stats = runtime.block_on(small(addr, path, 32, run));
                if stats.rate > best[i] {
                    (best[i], p50[i]) = (stats.rate, stats.p50);
                }
                delays[i].extend(runtime.block_on(sse(addr, "/codex/responses?stream", 5)));
            }
        }
        println!();
        println!(
            "usage accounting, POST /codex/responses (SSE answer with usage), 32 connections: \
             counting {:.0} req/s (p50 {:.0} us), not counting {:.0} req/s (p50 {:.0} us): {:.2}",
            best[0],
            p50[0],
            best[1],
            p50[1],
            best[0] / best[1]
        );
        let [counted, uncounted] = &mut delays;
        println!(
            "  SSE event delay, counting p50 {:.0} us, p99 {:.0} us; not counting p50 {:.0} us, \
             p99 {:.0} us",
            percentile(counted, 0.5),
            percentile(counted, 0.99),
            percentile(uncounted, 0.5),
            percentile(uncounted, 0.99)
        );
        let (rows, bytes) = usage_file_size();
        println!(
            "  usage.json of 30 days x 3 accounts x 5 clients x 4 models: {rows} rows, {:.1} MiB",
            bytes as f64 / (1024.0 * 1024.0)
        );
    }

    /// Rows and bytes of a usage file with an answer in every hour of 30
    /// days for every account, client and model of 3 x 5 x 4.
    fn usage_file_size() -> (usize, u64) {
        use codex_broker::engine::usage::{Answered, Usage};
        use codex_broker::wire::usage::Tokens;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.json");
        let usage = Usage::open(path.clone());
        let now = super::now();
        let tokens = Tokens {
            input: 123_456,
            cached_input: 100_000,
            output: 23_456,
            reasoning: 12_345,
        };
        for hour in 0..30 * 24 {
            for account in [
                "acc-1a2b3c4d-0001",
                "acc-1a2b3c4d-0002",
                "acc-1a2b3c4d-0003",
            ] {
                for client in ["codex_cli_rs", "opencode", "OpenAI", "pi", "curl"] {
                    for model in ["gpt-5.1-codex", "gpt-5.1-codex-mini", "gpt-5.1", "gpt-5"] {
                        let answered = Answered {
                            account,
                            client,
                            model: Some(model),
                            tokens: Some(tokens),
                        };
                        usage.record(&answered, now - hour * 3600);
                    }
                }
            }
        }
        usage.save(now).unwrap();
        let rows = usage.rows(0).len();
        (rows, std::fs::metadata(&path).unwrap().len())
    }

    /// Throughput for an account whose refresh backs off (its token valid
    /// for days, the issuer down) against a healthy one, same run.
    pub fn backoff(runtime: &tokio::runtime::Runtime, upstream: &Upstream, run: Duration) {
        let (_healthy_home, healthy) = super::fresh_daemon(upstream);
        let (waiting_home, waiting) = super::fresh_daemon(upstream);
        super::put_in_backoff(waiting_home.path());
        let path = "/codex/responses";
        let healthy = forwarder_addr(runtime, &healthy.socket);
        let waiting = forwarder_addr(runtime, &waiting.socket);
        // A first request each, so both daemons have read the store.
        runtime.block_on(small(healthy, path, 1, Duration::from_millis(50)));
        runtime.block_on(small(waiting, path, 1, Duration::from_millis(50)));
        // Alternating, the better of two runs each: the machine's own noise
        // is not the difference.
        let mut best = [0.0f64; 2];
        let mut p50 = [0.0f64; 2];
        for _ in 0..2 {
            for (i, addr) in [waiting, healthy].into_iter().enumerate() {
                let stats = runtime.block_on(small(addr, path, 32, run));
                if stats.rate > best[i] {
                    (best[i], p50[i]) = (stats.rate, stats.p50);
                }
            }
        }
        println!();
        println!(
            "refresh in backoff (token valid for days, issuer down), 32 connections: {:.0} req/s \
             (p50 {:.0} us) against {:.0} req/s (p50 {:.0} us) for a healthy account: {:.2}",
            best[0],
            p50[0],
            best[1],
            p50[1],
            best[0] / best[1]
        );
    }

    /// Memory per SSE stream held open (the upstream holds its answer
    /// after the first event), on a daemon that served nothing before.
    pub fn idle_streams(
        runtime: &tokio::runtime::Runtime,
        upstream: &Upstream,
        forwarder: SocketAddr,
        daemon_pid: u32,
        quick: bool,
    ) {
        let idle = if quick { 20 } else { 500 };
        let before = rss_kib(daemon_pid);
        let held: Vec<_> = runtime.block_on(async {
            let mut held = Vec::new();
            for _ in 0..idle {
                let mut s = connect(forwarder).await;
                s.ready().await.unwrap();
                let response = s.send_request(request("/codex/hold", b"{}")).await.unwrap();
                let mut body = response.into_body();
                // The first event: the stream is open end to end.
                body.frame().await.unwrap().unwrap();
                held.push((s, body));
            }
            held
        });
        std::thread::sleep(Duration::from_millis(200));
        let after = rss_kib(daemon_pid);
        println!();
        println!(
            "idle streams: {idle} open through the forwarder: daemon RSS {:.1} -> {:.1} MiB, {:.1} KiB per stream",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            after.saturating_sub(before) as f64 / idle as f64
        );
        upstream.release.notify_waiters();
        drop(held);
    }

    /// Small requests on one connection, one after another, each answered
    /// in full before the next.
    async fn one_by_one(sender: &mut SendRequest<Full<Bytes>>, requests: usize) {
        for _ in 0..requests {
            sender.ready().await.unwrap();
            let response = sender
                .send_request(request("/codex/responses", SMALL_BODY))
                .await
                .unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            response.into_body().collect().await.unwrap();
        }
    }

    /// Instructions the process `pid` (run by callgrind, its counting off)
    /// executes per small request sent to `addr`, counted over `requests`
    /// after a warm-up; `out` is the process's callgrind output file.
    fn count(
        runtime: &tokio::runtime::Runtime,
        control: &std::path::Path,
        (pid, addr): (u32, SocketAddr),
        out: &std::path::Path,
        requests: usize,
    ) -> u64 {
        let callgrind = |command: &[&str]| {
            let status = std::process::Command::new(control)
                .args(command)
                .arg(pid.to_string())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "callgrind_control {command:?} {pid}");
        };
        runtime.block_on(async {
            let mut sender = connect(addr).await;
            one_by_one(&mut sender, 50).await;
            callgrind(&["-i", "on"]);
            one_by_one(&mut sender, requests).await;
            callgrind(&["-i", "off"]);
        });
        callgrind(&["-d"]);
        // The dump is the output file's first part; its `totals:` line
        // holds the count (its `summary:` line reads 0 in a dump made on
        // request).
        let mut dump = out.as_os_str().to_owned();
        dump.push(".1");
        let text = std::fs::read_to_string(&dump).unwrap();
        let total: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("totals:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no total in {}", dump.to_string_lossy()));
        total / requests as u64
    }

    /// Instructions per small request through the forwarder and through
    /// nginx, each run by callgrind: a count that stays the same from run
    /// to run of a build, where times vary with the machine's load.
    pub fn instructions(runtime: &tokio::runtime::Runtime, upstream: &Upstream, quick: bool) {
        println!();
        let (Some(valgrind), Some(control)) =
            (find_program("valgrind"), find_program("callgrind_control"))
        else {
            println!(
                "instructions: valgrind is not installed, so no count (Debian/Ubuntu: apt-get install valgrind)"
            );
            return;
        };
        let requests = if quick { 20 } else { 2000 };
        let dir = tempfile::tempdir().unwrap();
        let out = |name: &str| dir.path().join(format!("{name}.callgrind"));
        let wrap = |out: &std::path::Path| {
            vec![
                valgrind.display().to_string(),
                "--tool=callgrind".to_owned(),
                "--instr-atstart=no".to_owned(),
                format!("--callgrind-out-file={}", out.display()),
            ]
        };
        let home = tempfile::tempdir().unwrap();
        let daemon = start(home.path(), upstream.addr, &wrap(&out("forwarder")));
        let forwarder = forwarder_addr(runtime, &daemon.socket);
        let f = count(
            runtime,
            &control,
            (daemon.child.id(), forwarder),
            &out("forwarder"),
            requests,
        );
        drop(daemon);
        let n = nginx::start(home.path(), upstream.addr, &wrap(&out("nginx"))).map(|nginx| {
            count(
                runtime,
                &control,
                (nginx.child.id(), nginx.addr),
                &out("nginx"),
                requests,
            )
        });
        println!(
            "instructions per small request (callgrind, {requests} requests on one connection, instant upstream):"
        );
        match n {
            Some(n) => println!(
                "  forwarder {f}, nginx {n}: forwarder/nginx {:.2}",
                f as f64 / n as f64
            ),
            None => println!("  forwarder {f}; nginx not installed, so no nginx count"),
        }
    }
}
