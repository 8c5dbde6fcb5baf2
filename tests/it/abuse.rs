//! The abuse suite: a hostile upstream behind the forwarder, hostile
//! clients in front of it and of the socket API. Each case asserts a clear
//! answer, a daemon that still answers `/v1/health`, and bounded memory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::support::fake_upstream::FakeUpstream;
use crate::support::raw_upstream::{RawUpstream, Script};
use crate::support::{Daemon, TestAccount, TestEnv, wait_until};

/// Resident memory a daemon may reach in any of these cases.
const RSS_BOUND_KIB: u64 = 150 * 1024;

/// A daemon whose ChatGPT backend is `backend` (the issuer stays a fake
/// that knows the account, so that no refresh reaches the raw server).
fn daemon_with_backend(backend: &RawUpstream) -> (FakeUpstream, TestEnv, Daemon) {
    let issuer = FakeUpstream::start();
    let account = TestAccount::new("acc-abuse");
    let mut env = TestEnv::with_account(&issuer, &account);
    env.vars
        .push(("CODEX_BROKER_CHATGPT_BASE".into(), backend.url()));
    let daemon = env.start_daemon(&["--request-timeout", "2"]);
    (issuer, env, daemon)
}

fn connect(daemon: &Daemon) -> TcpStream {
    let address = daemon.forwarder();
    let stream = TcpStream::connect(address.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream
}

/// One request to the forwarder; the answer as text, read to its end.
fn ask(daemon: &Daemon, request: &str) -> String {
    let mut stream = connect(daemon);
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
}

/// The daemon is alive, answers, and stayed within its memory bound.
fn assert_healthy(daemon: &Daemon) {
    let started = Instant::now();
    let health = daemon.get("/v1/health");
    assert!(health["status"].is_string(), "{health}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "health took {:?}",
        started.elapsed()
    );
    let rss = daemon.rss_kib();
    assert!(rss < RSS_BOUND_KIB, "daemon RSS {rss} KiB");
}

fn assert_bad_gateway(answer: &str, code: &str) {
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains(&format!("\"{code}\"")), "{answer}");
}

#[test]
fn an_upstream_that_speaks_no_http_is_a_502() {
    let backend = RawUpstream::start(Script::Send(
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n\x00\xff".to_vec(),
    ));
    let (_issuer, _env, daemon) = daemon_with_backend(&backend);
    let answer = ask(&daemon, &get("/backend-api/probe"));
    assert_bad_gateway(&answer, "upstream_unreachable");
    assert_healthy(&daemon);
}

#[test]
fn an_endless_upstream_head_is_a_502_in_bounded_memory() {
    let backend = RawUpstream::start(Script::SendThenRepeat(
        b"HTTP/1.1 200 OK\r\nx-big: ".to_vec(),
        vec![b'a'; 64 * 1024],
    ));
    let (_issuer, _env, daemon) = daemon_with_backend(&backend);
    let answer = ask(&daemon, &get("/backend-api/probe"));
    assert_bad_gateway(&answer, "upstream_unreachable");
    assert_healthy(&daemon);
}

#[test]
fn a_bad_chunk_before_the_first_byte_is_a_502() {
    let backend = RawUpstream::start(Script::Send(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz-not-a-size\r\n".to_vec(),
    ));
    let (_issuer, _env, daemon) = daemon_with_backend(&backend);
    let answer = ask(&daemon, &get("/backend-api/probe"));
    assert_bad_gateway(&answer, "upstream_broken");
    assert!(answer.contains("before its first byte"), "{answer}");
    assert_healthy(&daemon);
}

#[test]
fn an_interim_answer_to_a_plain_request_is_a_502() {
    let backend = RawUpstream::start(Script::Send(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
            .to_vec(),
    ));
    let (_issuer, _env, daemon) = daemon_with_backend(&backend);
    let answer = ask(&daemon, &get("/backend-api/probe"));
    assert_bad_gateway(&answer, "upstream_broken");
    assert_healthy(&daemon);
}

#[test]
fn a_reset_mid_stream_cuts_the_answer_and_nothing_else() {
    let mut sent = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n".to_vec();
    sent.extend_from_slice(&[b'x'; 1000]);
    let backend = RawUpstream::start(Script::SendThenReset(sent));
    let (_issuer, _env, daemon) = daemon_with_backend(&backend);
    let answer = ask(&daemon, &get("/backend-api/probe"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.len() < 100_000, "a cut answer is not completed");
    assert_healthy(&daemon);
}

#[test]
fn an_endless_upstream_body_streams_in_bounded_memory() {
    let chunk = format!("10000\r\n{}\r\n", "y".repeat(0x10000)).into_bytes();
    let backend = RawUpstream::start(Script::SendThenRepeat(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
        chunk,
    ));
    let (_issuer, _env, daemon) = daemon_with_backend(&backend);
    let mut stream = connect(&daemon);
    stream
        .write_all(get("/backend-api/probe").as_bytes())
        .unwrap();
    // 512 MiB through the forwarder, read by a client as fast as it can.
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0usize;
    while total < 512 << 20 {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended after {total} bytes");
        total += n;
    }
    assert_healthy(&daemon);
    // A client that stops reading holds the upstream back instead of
    // filling the daemon's memory.
    std::thread::sleep(Duration::from_millis(500));
    assert_healthy(&daemon);
    drop(stream);
    assert_healthy(&daemon);
}

#[test]
fn a_non_streaming_answer_from_an_endless_stream_is_a_502() {
    let event = b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}\n\n";
    let mut chunk = format!("{:x}\r\n", event.len()).into_bytes();
    chunk.extend_from_slice(event);
    chunk.extend_from_slice(b"\r\n");
    let backend = RawUpstream::start(Script::SendThenRepeat(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec(),
        chunk,
    ));
    let (_issuer, _env, daemon) = daemon_with_backend(&backend);
    let body = br#"{"model":"gpt-5.1-codex","input":"hi","stream":false}"#;
    let request = format!(
        "POST /v1/responses HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        body.len(),
        String::from_utf8_lossy(body)
    );
    let answer = ask(&daemon, &request);
    assert_bad_gateway(&answer, "upstream_broken");
    assert_healthy(&daemon);
}

/// Raw bytes to the socket API; the answer as text.
fn ask_socket(env: &TestEnv, request: &[u8]) -> String {
    let mut stream = UnixStream::connect(env.socket_path()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn smuggled_requests_never_reach_the_upstream() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-smuggle");
    let env = TestEnv::with_backend_account(&upstream, &account);
    let daemon = env.start_daemon(&[]);
    let smuggled = "GET /backend-api/smuggled HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n";
    // CL.TE: a length that disagrees with the chunked framing. The chunks
    // frame the body (RFC 9112 6.3) and the connection closes after it, so
    // what follows is never read as a request of its own.
    let cl_te = format!(
        "POST /backend-api/front HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
    );
    let answer = ask(&daemon, &cl_te);
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    let refused = [
        // Two lengths.
        format!(
            "POST /backend-api/front HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 0\r\ncontent-length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        ),
        // A transfer coding that is not chunked last.
        format!(
            "POST /backend-api/front HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        // A space before the colon.
        format!(
            "POST /backend-api/front HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding : chunked\r\ncontent-length: 0\r\n\r\n{smuggled}"
        ),
    ];
    for attempt in &refused {
        let answer = ask(&daemon, attempt);
        assert!(answer.starts_with("HTTP/1.1 400"), "{attempt:?}: {answer}");
        let socket_answer = ask_socket(
            &env,
            attempt
                .replace("/backend-api/front", "/v1/report")
                .as_bytes(),
        );
        assert!(
            socket_answer.starts_with("HTTP/1.1 400"),
            "{attempt:?}: {socket_answer}"
        );
    }
    let fronts = upstream.requests_to("/backend-api/front");
    assert_eq!(fronts.len(), 1, "only the CL.TE request, once");
    assert!(fronts[0].body.is_empty(), "{:?}", fronts[0].body);
    let reached: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("smuggled"))
        .map(|r| r.path)
        .collect();
    assert!(reached.is_empty(), "{reached:?}");
    assert_healthy(&daemon);
}

#[test]
fn host_and_target_tricks_are_refused() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-host");
    let env = TestEnv::with_backend_account(&upstream, &account);
    let daemon = env.start_daemon(&[]);
    let cases: [(&str, &str); 8] = [
        (
            "GET /backend-api/x HTTP/1.1\r\nhost: 127.0.0.1.evil.example\r\n\r\n",
            "403",
        ),
        (
            "GET /backend-api/x HTTP/1.1\r\nhost: localhost@evil.example\r\n\r\n",
            "403",
        ),
        (
            "GET /backend-api/x HTTP/1.1\r\nhost: evil.example:1456\r\n\r\n",
            "403",
        ),
        (
            "GET /backend-api/x HTTP/1.1\r\nhost: 127.0.0.1\r\nhost: evil.example\r\n\r\n",
            "400",
        ),
        ("GET /backend-api/x HTTP/1.1\r\n\r\n", "400"),
        (
            "GET http://evil.example/backend-api/x HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n",
            "400",
        ),
        (
            "CONNECT chatgpt.com:443 HTTP/1.1\r\nhost: chatgpt.com:443\r\n\r\n",
            "400",
        ),
        (
            "GET /backend-api/x HTTP/1.1\r\nhost: 127.0.0.1\r\norigin: http://127.0.0.1.evil.example\r\n\r\n",
            "403",
        ),
    ];
    for (request, status) in cases {
        let request = request.replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n");
        let answer = ask(&daemon, &request);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{request:?}: {answer}"
        );
    }
    let reached = upstream.requests_to("/backend-api/x");
    assert!(reached.is_empty(), "{}", reached.len());
    assert_healthy(&daemon);
}

/// Lets this process hold up to `n` descriptors; returns how many it may.
fn allow_descriptors(n: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < n {
        setrlimit(Resource::RLIMIT_NOFILE, n.min(hard), hard).unwrap();
    }
    n.min(hard)
}

#[test]
fn slow_and_idle_clients_do_not_hold_the_daemon() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-idle");
    let env = TestEnv::with_account(&upstream, &account);
    let daemon = env.start_daemon(&["--request-timeout", "3"]);
    let before = daemon.rss_kib();
    // 2,500 idle connections on each server, fewer where the limit on open
    // files is lower (the test holds both ends of the Unix ones' peers).
    let idle = (allow_descriptors(8192).saturating_sub(512) / 2).min(2500) as usize;
    // Slowloris: heads that trickle in and never end.
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = connect(&daemon);
            s.write_all(b"GET /backend-api/x HTTP/1.1\r\nhost: 127.0.0.1\r\n")
                .unwrap();
            s
        })
        .collect();
    // Thousands of idle connections, half on each server.
    let idle_tcp: Vec<TcpStream> = (0..idle).map(|_| connect(&daemon)).collect();
    let idle_unix: Vec<UnixStream> = (0..idle)
        .map(|_| UnixStream::connect(env.socket_path()).unwrap())
        .collect();
    for s in &mut slow {
        let _ = s.write_all(b"x-slow: 1\r\n");
    }
    assert_healthy(&daemon);
    let loaded = daemon.rss_kib();
    // The head timeout closes every one of them.
    let closed_by_daemon = |stream: &mut dyn Read| {
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    };
    for s in slow.iter_mut() {
        assert!(closed_by_daemon(s), "a slow head was not cut off");
    }
    for mut s in idle_tcp.iter().step_by(100) {
        assert!(closed_by_daemon(&mut s), "an idle connection was kept");
    }
    for mut s in idle_unix.iter().step_by(100) {
        assert!(
            closed_by_daemon(&mut s),
            "an idle socket connection was kept"
        );
    }
    drop(slow);
    drop(idle_tcp);
    drop(idle_unix);
    assert_healthy(&daemon);
    // The memory the connections held goes back to the system once they
    // are gone (at least half of what they added).
    let settled = before + (loaded - before) / 2;
    let returned = wait_until(Duration::from_secs(10), || daemon.rss_kib() < settled);
    eprintln!(
        "daemon RSS: {before} KiB before, {loaded} KiB with {} connections, {} KiB after they closed",
        200 + 2 * idle,
        daemon.rss_kib()
    );
    assert!(returned.is_some(), "RSS stayed above {settled} KiB");
}
