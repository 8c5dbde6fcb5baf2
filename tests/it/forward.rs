//! The forwarder, against the fake issuer and backend.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::fake_upstream::FakeUpstream;
use crate::support::{Daemon, TestAccount, TestEnv, wait_until};

pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A refresh of `token` as Codex sends it, to the forwarder at `base`.
pub(crate) fn refresh_through(base: &str, token: &str) -> Answer {
    send(
        "POST",
        &format!("{base}/oauth/token"),
        &[("content-type", "application/json")],
        json!({"client_id": "app_EMoamEEZ73f0CkXaXp7hrann", "grant_type": "refresh_token",
            "refresh_token": token, "refresh_reason": "expired"})
        .to_string()
        .into_bytes(),
    )
}

pub(crate) fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = codex_broker::oauth::http_client(Duration::from_secs(60));
        let mut request = client.request(method.parse().unwrap(), url).body(body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap().to_vec();
        Answer {
            status,
            headers,
            body,
        }
    })
}

fn post_responses(daemon: &Daemon, body: &[u8]) -> Answer {
    send(
        "POST",
        &format!("{}/codex/responses", daemon.forwarder()),
        &[
            ("authorization", "Bearer client-own-secret"),
            ("chatgpt-account-id", "acc-client"),
            ("content-encoding", "zstd"),
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
            ("x-codex-turn-state", "turn-state-from-client"),
        ],
        zstd::encode_all(body, 3).unwrap(),
    )
}

fn backend_posts(upstream: &FakeUpstream) -> Vec<crate::support::fake_upstream::Recorded> {
    upstream
        .requests_to("/backend-api/codex/responses")
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect()
}

#[test]
fn codex_traffic_gets_the_routed_accounts_credentials() {
    let upstream = FakeUpstream::start();
    let (env, main, _) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&["-vv"]);
    let health = daemon.get("/v1/health");
    assert_eq!(
        health["forwarder"]["address"],
        format!("127.0.0.1:{}", health["forwarder"]["port"])
    );

    let body = br#"{"model":"gpt-5.1-codex","input":[],"stream":true,"store":false}"#;
    let answer = post_responses(&daemon, body);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.text().contains("hello from the fake backend"));
    assert_eq!(
        answer.headers["x-codex-turn-state"],
        "turn-state-from-backend"
    );
    assert_eq!(answer.headers["content-type"], "text/event-stream");

    let posts = backend_posts(&upstream);
    assert_eq!(posts.len(), 1);
    let seen = &posts[0];
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {}", main.access_token())
    );
    assert_eq!(seen.headers["chatgpt-account-id"], "acc-main");
    assert_eq!(seen.headers["x-codex-turn-state"], "turn-state-from-client");
    assert_eq!(seen.headers["content-encoding"], "zstd");
    assert_eq!(
        seen.body,
        zstd::encode_all(&body[..], 3).unwrap(),
        "the body passes untouched"
    );
    for r in upstream.requests() {
        assert!(
            !r.headers.values().any(|v| v.contains("client-own-secret")),
            "the client's bearer reached {}",
            r.path
        );
    }
    // The quota headers of that answer reach the store.
    upstream.set_quota("acc-main", 42.5);
    assert_eq!(post_responses(&daemon, body).status, 200);
    let quota = || {
        let status: Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
        status["accounts"][0]["quota"].clone()
    };
    wait_until(Duration::from_secs(5), || {
        quota()["five_hour"]["used_percent"] == 42.5
    })
    .unwrap_or_else(|| panic!("quota not stored: {}", quota()));
    assert_eq!(quota()["source"], "headers");
    assert_eq!(quota()["weekly"]["used_percent"], 12.0);
    let text = env.ok(&["status"]);
    assert!(text.contains(" 42%  resets in"), "{text}");
    assert_eq!(
        daemon.get("/v1/quota")["accounts"][0]["five_hour"]["used_percent"],
        42.5
    );
    // Debug logging on, and still no credential in the log.
    let log = daemon.log();
    assert!(log.contains("forwarded"), "{log}");
    for secret in [
        main.access_token(),
        "client-own-secret".into(),
        main.refresh_token.clone(),
    ] {
        assert!(!log.contains(&secret), "{log}");
    }
}

#[test]
fn sse_events_arrive_while_the_upstream_still_streams() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let hold = upstream.hold_streams();
    let port = daemon.get("/v1/health")["forwarder"]["port"]
        .as_u64()
        .unwrap();
    let mut stream = TcpStream::connect(("127.0.0.1", port as u16)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = r#"{"model":"m","input":[]}"#;
    write!(
        stream,
        "POST /codex/responses HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("response.created") {
        let n = stream
            .read(&mut buf)
            .expect("the first event arrives while the stream is held");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(!String::from_utf8_lossy(&seen).contains("response.completed"));
    hold.notify_one();
    while !String::from_utf8_lossy(&seen).contains("response.completed") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn a_warm_upstream_connection_carries_fresh_clients_and_is_dialled_again_when_closed() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&["-vv"]);
    let url = format!("{}/codex/responses", daemon.forwarder());
    // `requests` POSTs on one client connection, closed at the end.
    let client_connection = |requests: usize| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = codex_broker::oauth::http_client(Duration::from_secs(60));
        runtime.block_on(async {
            for _ in 0..requests {
                let answer = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(r#"{"model":"m","input":[]}"#)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(answer.status(), 200);
                let text = answer.text().await.unwrap();
                assert!(text.contains("response.completed"), "{text}");
            }
        });
    };
    // The issuer and the backend are one origin here: one warm connection,
    // opened before any request.
    let opened = |n: usize| {
        assert!(
            wait_until(Duration::from_secs(10), || upstream.connections() >= n).is_some(),
            "the forwarder opens a warm upstream connection"
        );
        assert_eq!(upstream.connections(), n);
    };
    opened(1);
    assert!(backend_posts(&upstream).is_empty());
    client_connection(5);
    client_connection(1);
    client_connection(1);
    assert_eq!(
        upstream.connections(),
        1,
        "the warm connection carries each fresh client's requests"
    );

    // The backend closes it, as a server ending idle connections does: a
    // new one is dialled with no request waiting, and carries the next.
    upstream.hang_up();
    opened(2);
    assert_eq!(backend_posts(&upstream).len(), 7);
    client_connection(2);
    assert_eq!(upstream.connections(), 2);
    assert_eq!(backend_posts(&upstream).len(), 9, "each request sent once");
    assert_eq!(upstream.open_connections(), 1);
}

#[test]
fn no_warm_connection_is_kept_while_the_store_has_no_account() {
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_backend(&upstream);
    let daemon = env.start_daemon(&["-vv"]);
    let answer = post_responses(&daemon, br#"{"model":"m","input":[]}"#);
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(upstream.connections(), 0);
    // An account arrives: the daemon opens a warm connection for it.
    let account = TestAccount::new("acc-late");
    upstream.add_account(&account);
    env.import_account(&account);
    assert!(
        wait_until(Duration::from_secs(10), || upstream.connections() == 1).is_some(),
        "a warm connection once the store has an account"
    );
    // It goes away again with the last account.
    env.ok(&["accounts", "remove", "acc-late"]);
    assert!(
        wait_until(Duration::from_secs(10), || upstream.open_connections() == 0).is_some(),
        "no warm connection once the store is empty"
    );
}

#[test]
fn a_429_is_retried_on_the_fallback_with_the_same_body() {
    let upstream = FakeUpstream::start();
    let (env, _, fallback) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    upstream.set_limited("acc-main");
    let body =
        br#"{"model":"gpt-5.1-codex","input":[{"type":"message","role":"user","content":[]}]}"#;
    let answer = post_responses(&daemon, body);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let posts = backend_posts(&upstream);
    assert_eq!(posts.len(), 2);
    assert_eq!(posts[0].headers["chatgpt-account-id"], "acc-main");
    assert_eq!(posts[1].headers["chatgpt-account-id"], "acc-fallback");
    assert_eq!(
        posts[1].headers["authorization"],
        format!("Bearer {}", fallback.access_token())
    );
    assert_eq!(posts[0].body, posts[1].body);

    // The main account is now known to be used up: skipped at once.
    let quota = || daemon.get("/v1/quota")["accounts"][0].clone();
    wait_until(Duration::from_secs(5), || {
        quota()["five_hour"]["used_percent"] == 100.0
    })
    .unwrap_or_else(|| panic!("{}", quota()));
    assert_eq!(quota()["source"], "usage_limit");
    assert_eq!(post_responses(&daemon, body).status, 200);
    let posts = backend_posts(&upstream);
    assert_eq!(posts.len(), 3);
    assert_eq!(posts[2].headers["chatgpt-account-id"], "acc-fallback");

    // Both used up: the client gets the backend's own 429, never a bypass.
    upstream.set_limited("acc-fallback");
    let answer = post_responses(&daemon, body);
    assert_eq!(answer.status, 429, "{}", answer.text());
    assert_eq!(answer.json()["error"]["type"], "usage_limit_reached");
    // Later requests: the same shape, for the first reset, without a try.
    let answer = post_responses(&daemon, body);
    assert_eq!(answer.status, 429, "{}", answer.text());
    assert_eq!(answer.json()["error"]["type"], "usage_limit_reached");
    assert!(answer.headers.contains_key("retry-after"));
    assert_eq!(backend_posts(&upstream).len(), 4);
}

#[test]
fn the_killswitch_blocks_an_account_over_its_threshold() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    env.ok(&["killswitch", "set", "acc-main:50,100"]);
    env.ok(&["killswitch", "on"]);
    let daemon = env.start_daemon(&[]);
    upstream.set_quota("acc-main", 60.0);
    let body = br#"{"model":"m","input":[]}"#;
    assert_eq!(post_responses(&daemon, body).status, 200);
    wait_until(Duration::from_secs(5), || {
        daemon.get("/v1/quota")["accounts"][0]["five_hour"]["used_percent"] == 60.0
    })
    .unwrap();
    assert_eq!(post_responses(&daemon, body).status, 200);
    let posts = backend_posts(&upstream);
    assert_eq!(posts[0].headers["chatgpt-account-id"], "acc-main");
    assert_eq!(posts[1].headers["chatgpt-account-id"], "acc-fallback");
}

#[test]
fn refreshes_of_owned_tokens_are_answered_without_the_issuer() {
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_backend(&upstream);
    // Four minutes left: the daemon refreshes it as it starts.
    let account = TestAccount::new("acc-owned").expiring_in(240);
    let daemon = env.start_daemon_refreshing(&upstream, &account);
    let base = daemon.forwarder();
    let refresh = |token: &str| refresh_through(&base, token);
    // Codex still holds the token the daemon already spent.
    let answer = refresh("rt-acc-owned-0");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let tokens = answer.json();
    let store = env.read_store();
    assert_eq!(
        tokens["access_token"],
        store["accounts"][0]["tokens"]["access_token"]
    );
    assert_eq!(tokens["refresh_token"], "rt-acc-owned-1");
    assert!(tokens["id_token"].as_str().unwrap().split('.').count() == 3);
    // The current token, refreshed less than a minute ago: answered too.
    assert_eq!(refresh("rt-acc-owned-1").status, 200);
    assert_eq!(
        upstream.requests_to("/oauth/token").len(),
        1,
        "no issuer call"
    );
    assert!(upstream.reused_tokens().is_empty());

    // A token the broker does not own goes to the issuer as it is.
    let answer = refresh("rt-somebody-else");
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json()["error"]["code"], "refresh_token_invalidated");
    let to_issuer = upstream.requests_to("/oauth/token");
    assert_eq!(to_issuer.len(), 2);
    assert_eq!(to_issuer[1].json()["refresh_token"], "rt-somebody-else");
    // Other issuer routes pass through.
    let answer = send(
        "POST",
        &format!("{}/oauth/revoke", daemon.forwarder()),
        &[],
        b"{}".to_vec(),
    );
    assert_eq!(answer.status, 200);
    assert_eq!(upstream.requests_to("/oauth/revoke").len(), 1);
}

#[test]
fn unknown_paths_websockets_and_bad_requests() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&["--request-timeout", "1"]);
    let base = daemon.forwarder();
    let before = upstream.requests().len();

    let answer = send("GET", &format!("{base}/elsewhere/x"), &[], vec![]);
    assert_eq!(
        (answer.status, answer.json()["error"]["code"].clone()),
        (404, json!("not_found"))
    );
    let answer = send(
        "GET",
        &format!("{base}/codex/models"),
        &[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        vec![],
    );
    assert_eq!(answer.status, 426);
    assert_eq!(answer.json()["error"]["code"], "websocket_unsupported");
    for (body, encoding, needle) in [
        (b"{not json".to_vec(), "identity", "not JSON"),
        (b"[1,2]".to_vec(), "identity", "JSON object"),
        (b"garbage".to_vec(), "zstd", "zstd"),
    ] {
        let answer = send(
            "POST",
            &format!("{base}/v1/responses"),
            &[("content-encoding", encoding)],
            body,
        );
        assert_eq!(answer.status, 400, "{}", answer.text());
        assert_eq!(answer.json()["error"]["code"], "invalid_request");
        assert!(
            answer.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{}",
            answer.text()
        );
    }
    // A page that rebinds its DNS name to 127.0.0.1 is refused.
    let answer = send(
        "GET",
        &format!("{base}/backend-api/me"),
        &[("host", "rebound.example:1456")],
        vec![],
    );
    assert_eq!(answer.status, 403);
    assert_eq!(answer.json()["error"]["code"], "forbidden_host");
    let huge = vec![b' '; 33 * 1024 * 1024];
    let answer = send("POST", &format!("{base}/v1/responses"), &[], huge);
    assert_eq!(answer.status, 413);
    assert_eq!(
        upstream.requests().len(),
        before,
        "nothing left for the upstream"
    );

    // A head that never ends is cut off; the forwarder keeps serving.
    let port = daemon.get("/v1/health")["forwarder"]["port"]
        .as_u64()
        .unwrap();
    let mut slow = TcpStream::connect(("127.0.0.1", port as u16)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(b"GET /codex/models HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    assert_eq!(
        send("GET", &format!("{base}/v1/models"), &[], vec![]).status,
        200
    );
}

#[test]
fn public_responses_api_clients_are_rewritten() {
    let upstream = FakeUpstream::start();
    let (env, main, _) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let request = json!({
        "model": "gpt-5.1-codex",
        "instructions": "Be brief.",
        "input": "say hello",
        "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}],
        "reasoning": {"effort": "low"},
        "store": true,
        "stream": false,
        "temperature": 0.2,
        "max_output_tokens": 100,
        "metadata": {"k": "v"},
    });
    let compressed = zstd::encode_all(request.to_string().as_bytes(), 3).unwrap();
    let answer = send(
        "POST",
        &format!("{}/v1/responses", daemon.forwarder()),
        &[
            ("authorization", "Bearer sk-dummy"),
            ("content-type", "application/json"),
            ("content-encoding", "zstd"),
        ],
        compressed,
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let response = answer.json();
    assert_eq!(response["id"], "resp_fake");
    assert_eq!(response["object"], "response");
    assert_eq!(
        response["output"][0]["content"][0]["text"],
        "hello from the fake backend"
    );

    let posts = backend_posts(&upstream);
    let seen = &posts[0];
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {}", main.access_token())
    );
    assert!(!seen.headers.contains_key("content-encoding"));
    insta::assert_json_snapshot!("rewritten_responses_request", seen.json());

    // A streaming client gets the SSE stream as it is.
    let answer = send(
        "POST",
        &format!("{}/v1/responses", daemon.forwarder()),
        &[],
        json!({"model": "gpt-5.1-codex", "input": "hi", "stream": true})
            .to_string()
            .into_bytes(),
    );
    assert_eq!(answer.status, 200);
    assert!(
        answer.text().starts_with("event: response.created"),
        "{}",
        answer.text()
    );

    let models = send(
        "GET",
        &format!("{}/v1/models", daemon.forwarder()),
        &[],
        vec![],
    );
    assert_eq!(models.status, 200);
    insta::assert_json_snapshot!("models", models.json());
    let asked = upstream.requests_to("/backend-api/codex/models");
    assert!(asked[0].headers["x-fake-query"].starts_with("client_version="));
}

#[test]
fn usage_is_answered_fresh_and_polled_by_status_refresh() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let out = env.ok(&["status", "--refresh", "--json"]);
    let status: Value = serde_json::from_str(&out).unwrap();
    for i in 0..2 {
        assert_eq!(
            status["accounts"][i]["quota"]["five_hour"]["used_percent"],
            33.0
        );
        assert_eq!(status["accounts"][i]["quota"]["source"], "usage");
    }
    let polled = upstream.requests_to("/backend-api/wham/usage");
    assert_eq!(polled.len(), 2);
    assert_eq!(polled[1].headers["chatgpt-account-id"], "acc-fallback");

    let daemon = env.start_daemon(&[]);
    let answer = send(
        "GET",
        &format!("{}/backend-api/wham/usage", daemon.forwarder()),
        &[],
        vec![],
    );
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json()["rate_limit"]["primary_window"]["used_percent"],
        33.0
    );
    let seen = upstream.requests_to("/backend-api/wham/usage");
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].headers["chatgpt-account-id"], "acc-main");
}

#[test]
fn hop_by_hop_headers_stop_at_the_forwarder_and_routing_is_honoured() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    env.ok(&["routing", "fallback-first"]);
    let daemon = env.start_daemon(&[]);
    let answer = send(
        "POST",
        &format!("{}/codex/responses", daemon.forwarder()),
        &[
            ("connection", "keep-alive, x-per-hop"),
            ("x-per-hop", "1"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic cHJveHk6c2VjcmV0"),
            ("x-end-to-end", "kept"),
        ],
        b"{}".to_vec(),
    );
    assert_eq!(answer.status, 200);
    let seen = &backend_posts(&upstream)[0];
    assert_eq!(
        seen.headers["chatgpt-account-id"], "acc-fallback",
        "fallback-first"
    );
    assert_eq!(seen.headers["x-end-to-end"], "kept");
    for dropped in ["x-per-hop", "te", "proxy-authorization"] {
        assert!(
            !seen.headers.contains_key(dropped),
            "{dropped} was forwarded"
        );
    }
}

#[test]
fn a_body_over_the_retry_buffer_is_streamed_and_not_retried() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    upstream.set_limited("acc-main");
    let mut big = vec![0u8; 33 * 1024 * 1024];
    getrandom::fill(&mut big).unwrap();
    let answer = send(
        "POST",
        &format!("{}/codex/responses", daemon.forwarder()),
        &[("content-type", "application/octet-stream")],
        big.clone(),
    );
    assert_eq!(answer.status, 429, "not retried: the body was not kept");
    let posts = backend_posts(&upstream);
    assert_eq!(posts.len(), 1);
    assert!(posts[0].body == big, "the whole body went through");
    // A small body on the same route is retried on the fallback.
    assert_eq!(post_responses(&daemon, b"{}").status, 200);
}

/// The backend refuses the account whatever its token: the account is
/// refreshed and the request replayed on it once, then the fallback serves.
#[test]
fn a_401_refreshes_and_replays_once_then_moves_to_the_fallback() {
    let upstream = FakeUpstream::start();
    let (env, main, _) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    upstream.set_rejected("acc-main");
    let answer = post_responses(&daemon, b"{}");
    assert_eq!(answer.status, 200, "{}", answer.text());
    let posts = backend_posts(&upstream);
    let to = |i: usize| posts[i].headers["chatgpt-account-id"].as_str();
    assert_eq!(
        [to(0), to(1), to(2)],
        ["acc-main", "acc-main", "acc-fallback"]
    );
    assert_eq!(posts.len(), 3);
    assert_eq!(
        posts[0].headers["authorization"],
        format!("Bearer {}", main.access_token())
    );
    assert_ne!(
        posts[1].headers["authorization"],
        posts[0].headers["authorization"]
    );
    let refreshes = upstream.requests_to("/oauth/token");
    assert_eq!(
        refreshes.len(),
        1,
        "one refresh, no second for the replay's 401"
    );
    assert_eq!(refreshes[0].json()["refresh_token"], main.refresh_token);
    assert_eq!(
        env.read_store()["accounts"][0]["tokens"]["refresh_token"],
        "rt-acc-main-1"
    );
}

/// A 401 for a token whose `exp` is ahead (a plan change, a server-side
/// revocation): the same request, body and all, is replayed on the same
/// account with the refreshed token; many such 401s cause one refresh.
#[test]
fn a_401_for_a_live_token_is_replayed_on_the_same_account_after_one_refresh() {
    let upstream = FakeUpstream::start();
    let (env, main, _) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    upstream.reject_token(&main.access_token());
    let body = br#"{"model":"gpt-5","input":"the same request"}"#;
    let answers: Vec<Answer> = std::thread::scope(|s| {
        let posts: Vec<_> = (0..8)
            .map(|_| s.spawn(|| post_responses(&daemon, body)))
            .collect();
        posts.into_iter().map(|p| p.join().unwrap()).collect()
    });
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    let posts = backend_posts(&upstream);
    assert!(
        posts
            .iter()
            .all(|p| p.headers["chatgpt-account-id"] == "acc-main"),
        "never moved to the fallback"
    );
    let renewed: Vec<_> = posts
        .iter()
        .filter(|p| p.headers["authorization"] != format!("Bearer {}", main.access_token()))
        .collect();
    assert_eq!(renewed.len(), 8, "each request answered on the new token");
    for post in &renewed {
        assert_eq!(zstd::decode_all(&post.body[..]).unwrap(), body);
    }
    assert_eq!(
        upstream.requests_to("/oauth/token").len(),
        1,
        "{}",
        daemon.log()
    );
}

#[test]
fn every_account_used_up_is_answered_with_the_first_reset() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    for (account, seconds) in [("acc-main", 7200), ("acc-fallback", 3600)] {
        let report = serde_json::json!({"account_id": account, "status": 429,
            "body": {"error": {"type": "usage_limit_reached", "resets_in_seconds": seconds}}});
        daemon.api("POST", "/v1/report", Some(&report.to_string()));
    }
    let first_reset = crate::support::now() + 3600;

    // The socket API: 503 quota_exhausted with the seconds to wait.
    let (status, body) = daemon.api("GET", "/v1/token", None);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "quota_exhausted");
    let retry = body["error"]["retry_after"].as_i64().unwrap();
    assert!((3590..=3600).contains(&retry), "{body}");

    // `token` exits 4 and says when.
    let out = env.run(&["token"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("every account has used its quota; the first resets at"),
        "{stderr}"
    );
    assert!(
        stderr.contains("(in 59m") || stderr.contains("(in 1h"),
        "{stderr}"
    );
    assert!(!stderr.contains("login"), "{stderr}");

    // The forwarder: what the backend would say, on every route.
    for path in ["/codex/responses", "/v1/responses"] {
        let answer = send(
            "POST",
            &format!("{}{path}", daemon.forwarder()),
            &[("content-type", "application/json")],
            br#"{"model":"m","input":"hi"}"#.to_vec(),
        );
        assert_eq!(answer.status, 429, "{path}: {}", answer.text());
        let body = answer.json();
        assert_eq!(body["error"]["type"], "usage_limit_reached", "{body}");
        let resets_at = body["error"]["resets_at"].as_i64().unwrap();
        assert!(
            (first_reset - 10..=first_reset).contains(&resets_at),
            "{body}"
        );
        let retry: i64 = answer.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((3590..=3600).contains(&retry), "{retry}");
        assert_eq!(answer.headers["x-codex-primary-used-percent"], "100");
    }
    assert!(backend_posts(&upstream).is_empty());
}

#[test]
fn a_used_up_account_without_a_reset_time_waits_one_window_not_a_login() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    // A 429 without `resets_at`, and a full 5-hour window with a reset a
    // century ahead: neither says when the quota comes back.
    let reports = [
        serde_json::json!({"account_id": "acc-main", "status": 429,
            "body": {"error": {"type": "usage_limit_reached", "resets_at": 1e20}}}),
        serde_json::json!({"account_id": "acc-fallback", "status": 200,
            "headers": {"x-codex-primary-used-percent": "100",
                        "x-codex-primary-reset-at": "99999999999999"}}),
    ];
    for report in reports {
        daemon.api("POST", "/v1/report", Some(&report.to_string()));
    }
    let lifts = crate::support::now() + 5 * 3600;

    let out = env.run(&["token"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("every account has used its quota"),
        "{stderr}"
    );
    assert!(!stderr.contains("login"), "{stderr}");

    let answer = send(
        "POST",
        &format!("{}/codex/responses", daemon.forwarder()),
        &[("content-type", "application/json")],
        br#"{"model":"m","input":"hi"}"#.to_vec(),
    );
    assert_eq!(answer.status, 429, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["error"]["type"], "usage_limit_reached", "{body}");
    let resets_at = body["error"]["resets_at"].as_i64().unwrap();
    assert!((lifts - 10..=lifts).contains(&resets_at), "{body}");
    let retry: i64 = answer.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((5 * 3600 - 10..=5 * 3600).contains(&retry), "{retry}");
    assert!(backend_posts(&upstream).is_empty());

    let status = env.ok(&["status"]);
    assert!(status.contains("at the latest"), "{status}");
}

#[test]
fn a_login_hint_is_kept_when_a_login_would_help() {
    use crate::support::fake_upstream::Refresh;
    let upstream = FakeUpstream::start();
    let env = TestEnv::with_backend(&upstream);
    let main = TestAccount::new("acc-main");
    let lost = TestAccount::new("acc-lost").expiring_in(60);
    for a in [&main, &lost] {
        upstream.add_account(a);
    }
    env.import_account(&main);
    env.import_other(&lost);
    upstream.set_refresh(Refresh::error(401, "refresh_token_invalidated"));
    let daemon = env.start_daemon(&[]);
    // The scheduler refreshes the expiring account at once: it needs a login.
    wait_until(Duration::from_secs(10), || {
        env.stored_account("acc-lost")["state"] == "needs_login"
    })
    .unwrap_or_else(|| panic!("{}", daemon.log()));
    let report = json!({"account_id": "acc-main", "status": 429,
        "body": {"error": {"type": "usage_limit_reached", "resets_in_seconds": 3600}}});
    daemon.api("POST", "/v1/report", Some(&report.to_string()));

    // One account waits for its quota, the other for a login: the answer
    // names the login, which is what fixes it.
    let (status, body) = daemon.api("GET", "/v1/token", None);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "no_usable_account", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("login"));
    let out = env.run(&["token"]);
    assert_eq!(out.status.code(), Some(3), "{}", env.render(&out));
    let answer = post_responses(&daemon, br#"{"model":"m","input":[]}"#);
    assert_eq!(answer.status, 503, "{}", answer.text());
}

/// A CONNECT proxy on 127.0.0.1:0 that records the targets it was asked
/// to tunnel to.
fn connect_proxy() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let addr = crate::support::serve_on_loopback(move |listener| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                recorded.lock().unwrap().push(line.clone());
                let Some(target) = line
                    .strip_prefix("CONNECT ")
                    .and_then(|l| l.split(' ').next())
                else {
                    return;
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr.port(), seen)
}

#[test]
fn an_http_proxy_in_the_environment_carries_backend_traffic() {
    let upstream = FakeUpstream::start();
    let (mut env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let (proxy_port, seen) = connect_proxy();
    env.vars.push((
        "HTTP_PROXY".into(),
        format!("http://127.0.0.1:{proxy_port}"),
    ));
    let daemon = env.start_daemon(&[]);
    let answer = post_responses(&daemon, br#"{"model":"gpt-5.1-codex","input":[]}"#);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let target = format!("CONNECT {} HTTP/1.1", upstream.addr);
    assert!(
        seen.lock().unwrap().contains(&target),
        "{:?}",
        seen.lock().unwrap()
    );
    drop(daemon);

    // NO_PROXY names the upstream: straight there.
    env.vars.push(("NO_PROXY".into(), "127.0.0.1".into()));
    let daemon = env.start_daemon(&[]);
    let before = seen.lock().unwrap().len();
    let answer = post_responses(&daemon, br#"{"model":"gpt-5.1-codex","input":[]}"#);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(seen.lock().unwrap().len(), before);
}

/// Codex asks for `zstd, gzip` and the backend compresses its 429s. Every
/// account used up: the very first request (and each one after, with no
/// pause) gets the broker's own answer, with the earliest `resets_at`
/// read from the compressed bodies, `retry-after` and the `plan_type`.
#[test]
fn compressed_usage_limits_give_the_first_reset_from_the_first_request() {
    for coding in ["zstd", "gzip", "br"] {
        let upstream = FakeUpstream::start();
        let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
        let daemon = env.start_daemon(&[]);
        upstream.compress_errors(coding);
        let soon = crate::support::now() + 1800;
        upstream.set_limited_until("acc-main", soon + 600);
        upstream.set_limited_until("acc-fallback", soon);
        for run in 0..5 {
            let answer = send(
                "POST",
                &format!("{}/codex/responses", daemon.forwarder()),
                &[
                    ("content-type", "application/json"),
                    ("accept-encoding", "zstd, gzip, br"),
                ],
                br#"{"model":"m","input":"hi"}"#.to_vec(),
            );
            assert_eq!(answer.status, 429, "{coding} run {run}: {}", answer.text());
            assert!(answer.headers.get("content-encoding").is_none());
            let body = answer.json();
            assert_eq!(body["error"]["type"], "usage_limit_reached", "{body}");
            assert_eq!(
                body["error"]["resets_at"], soon,
                "{coding} run {run}: {body}"
            );
            assert_eq!(body["error"]["plan_type"], "plus", "{body}");
            let retry: i64 = answer.headers["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1790..=1800).contains(&retry), "{retry}");
        }
        assert_eq!(
            backend_posts(&upstream).len(),
            2,
            "tried once each, then known"
        );
        let quota = daemon.get("/v1/quota");
        let resets: Vec<_> = quota["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["five_hour"]["resets_at"].clone())
            .collect();
        assert_eq!(resets, [soon + 600, soon], "{quota}");
    }
}

/// A refused answer the client gets passed on is readable: a compressed
/// 401 body is decoded once it is read, and sent without the coding.
#[test]
fn a_compressed_refusal_is_passed_on_decoded() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    upstream.compress_errors("zstd");
    upstream.set_rejected("acc-main");
    upstream.set_rejected("acc-fallback");
    let answer = send(
        "POST",
        &format!("{}/codex/responses", daemon.forwarder()),
        &[
            ("content-type", "application/json"),
            ("accept-encoding", "zstd"),
        ],
        b"{}".to_vec(),
    );
    assert_eq!(answer.status, 401, "{}", answer.text());
    assert!(answer.headers.get("content-encoding").is_none());
    assert_eq!(answer.json()["error"]["code"], "token_revoked");
}

/// An account whose refresh backs off (its issuer down) while its token is
/// good for days is served from memory: no request takes a lock or reads
/// a file for it (here the lock folder cannot even be made), and nothing
/// is sent to the issuer before the backoff ends.
#[test]
fn an_account_in_backoff_is_served_from_memory() {
    let upstream = FakeUpstream::start();
    let account = TestAccount::new("acc-waiting").expiring_in(2 * 86_400);
    let env = TestEnv::with_backend_account(&upstream, &account);
    let mut store = env.read_store();
    let old = time::OffsetDateTime::from_unix_timestamp(crate::support::now() - 9 * 86_400);
    store["accounts"][0]["last_refresh"] =
        serde_json::json!(codex_broker::codex::auth::format_timestamp(old.unwrap()));
    store["accounts"][0]["state"] = serde_json::json!("refresh_backoff");
    store["accounts"][0]["state_reason"] = serde_json::json!("the issuer answered HTTP 503");
    store["accounts"][0]["backoff_until"] = serde_json::json!(crate::support::now() + 600);
    std::fs::write(env.store_path(), store.to_string()).unwrap();
    let locks = env.broker_home().join("locks");
    let _ = std::fs::remove_dir_all(&locks);
    std::fs::write(&locks, b"not a folder").unwrap();
    let daemon = env.start_daemon(&[]);
    for _ in 0..20 {
        let answer = post_responses(&daemon, b"{}");
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    assert_eq!(backend_posts(&upstream).len(), 20);
    assert!(upstream.requests_to("/oauth/token").is_empty());
    assert_eq!(
        env.stored_account("acc-waiting")["state"],
        "refresh_backoff"
    );
}

/// `codex logout` revokes the refresh token it holds, at the revoke URL it
/// derives from the refresh URL (the forwarder). A token the broker manages
/// is never revoked at the issuer; anyone else's is passed on.
#[test]
fn a_revoke_of_a_managed_token_never_reaches_the_issuer() {
    let upstream = FakeUpstream::start();
    let (env, main, _) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let revoke = |body: String, content_type: &str| {
        send(
            "POST",
            &format!("{}/oauth/revoke", daemon.forwarder()),
            &[("content-type", content_type)],
            body.into_bytes(),
        )
    };
    let json = serde_json::json!({"token": main.refresh_token, "token_type_hint": "refresh_token",
        "client_id": "app_EMoamEEZ73f0CkXaXp7hrann"});
    assert_eq!(revoke(json.to_string(), "application/json").status, 200);
    let form = format!("token={}&token_type_hint=access_token", main.access_token());
    assert_eq!(
        revoke(form, "application/x-www-form-urlencoded").status,
        200
    );
    assert!(upstream.requests_to("/oauth/revoke").is_empty());
    let foreign = serde_json::json!({"token": "rt-someone-else"});
    assert_eq!(revoke(foreign.to_string(), "application/json").status, 200);
    let passed = upstream.requests_to("/oauth/revoke");
    assert_eq!(passed.len(), 1);
    assert_eq!(passed[0].json()["token"], "rt-someone-else");
    let (status, body) = daemon.api("GET", "/v1/token", None);
    assert_eq!(status, 200, "the login goes on: {body}");
}
