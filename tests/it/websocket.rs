//! The forwarder's WebSocket transport: handshakes with the routed
//! account's credentials, frames relayed both ways, quota and limits read
//! from the stream, fallback at the handshake, limits and shutdown.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderMap;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::fake_upstream::FakeUpstream;
use crate::support::{Daemon, TestEnv, wait_until};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Opens a WebSocket to `path` at the forwarder at `base` as Codex does:
/// its own (stale) credentials, the beta header and session headers.
async fn connect(base: &str, path: &str) -> Result<(Ws, HeaderMap), WsError> {
    let url = base.replace("http://", "ws://") + path;
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    for (name, value) in [
        ("authorization", "Bearer the-clients-own-token"),
        ("chatgpt-account-id", "not-the-routed-account"),
        ("openai-beta", "responses_websockets=2026-02-06"),
        ("session-id", "session-1"),
        ("x-codex-turn-metadata", "{\"turn\":1}"),
        ("originator", "codex_exec"),
        (
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits, x-webkit-deflate-frame",
        ),
    ] {
        headers.insert(name, value.parse().unwrap());
    }
    let (ws, response) = tokio_tungstenite::connect_async(request).await?;
    Ok((ws, response.headers().clone()))
}

/// The next message that is not a ping or pong, within 10 s.
async fn next(ws: &mut Ws) -> Message {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("the connection is open")
            .expect("a well-formed message");
        if !matches!(message, Message::Ping(_) | Message::Pong(_)) {
            return message;
        }
    }
}

/// Sends `response.create` and reads the events up to `response.completed`
/// (or an `error`): their types.
async fn turn(ws: &mut Ws) -> Vec<Value> {
    let create = json!({"type": "response.create", "model": "gpt-5.1-codex", "input": []});
    ws.send(Message::text(create.to_string())).await.unwrap();
    let mut events = Vec::new();
    loop {
        let Message::Text(text) = next(ws).await else {
            panic!("a text event");
        };
        let event: Value = serde_json::from_str(&text).unwrap();
        let last = matches!(event["type"].as_str(), Some("response.completed" | "error"));
        events.push(event);
        if last {
            return events;
        }
    }
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

/// The account's quota as `/v1/quota` reports it, once `check` holds.
fn quota_when(daemon: &Daemon, account: &str, check: impl Fn(&Value) -> bool) -> Value {
    let quota = || {
        daemon.get("/v1/quota")["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["account_id"] == account)
            .cloned()
            .unwrap_or_default()
    };
    let held = wait_until(Duration::from_secs(5), || check(&quota()));
    assert!(held.is_some(), "{account}: {}", quota());
    quota()
}

fn handshakes(upstream: &FakeUpstream) -> Vec<String> {
    upstream
        .requests_to("/backend-api/codex/responses")
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.headers["chatgpt-account-id"].clone())
        .collect()
}

#[test]
fn frames_are_relayed_both_ways_with_the_routed_accounts_credentials() {
    let upstream = FakeUpstream::start();
    let (env, main, _) = TestEnv::with_main_and_fallback(&upstream);
    upstream.set_quota("acc-main", 37.5);
    let daemon = env.start_daemon(&[]);
    let base = daemon.forwarder();
    runtime().block_on(async {
        let (mut ws, head) = connect(&base, "/codex/responses?client_version=0.169.0")
            .await
            .unwrap();
        // The upstream's handshake headers reach the client.
        assert_eq!(head["x-codex-turn-state"], "turn-state-from-backend");
        assert_eq!(head["x-reasoning-included"], "true");

        let events = turn(&mut ws).await;
        assert_eq!(
            types(&events),
            [
                "codex.rate_limits",
                "response.created",
                "response.output_item.done",
                "response.completed"
            ]
        );
        // Text, binary and ping go through and come back.
        let echo = json!({"type": "echo", "text": "ünïcödé"}).to_string();
        ws.send(Message::text(echo.clone())).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text(echo));
        let blob: Vec<u8> = (0..=255).cycle().take(70_000).collect();
        ws.send(Message::binary(blob.clone())).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::binary(blob));
        ws.send(Message::Ping(b"are you there".to_vec().into()))
            .await
            .unwrap();
        let pong = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(Ok(Message::Pong(data))) = ws.next().await {
                    return data;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(&pong[..], b"are you there");

        // The upstream's close code and reason reach the client.
        let close = json!({"type": "close", "code": 4000, "reason": "done here"});
        ws.send(Message::text(close.to_string())).await.unwrap();
        let Message::Close(Some(frame)) = next(&mut ws).await else {
            panic!("a close frame");
        };
        assert_eq!(
            (u16::from(frame.code), frame.reason.as_str()),
            (4000, "done here")
        );
    });

    // The backend saw the routed account's credentials, never the client's,
    // and every other header of the client's handshake.
    let handshake = upstream
        .requests_to("/backend-api/codex/responses")
        .pop()
        .unwrap();
    assert_eq!(handshake.method, "GET");
    assert_eq!(
        handshake.headers["authorization"],
        format!("Bearer {}", main.access_token())
    );
    assert_eq!(handshake.headers["chatgpt-account-id"], "acc-main");
    assert_eq!(
        handshake.headers["openai-beta"],
        "responses_websockets=2026-02-06"
    );
    assert_eq!(handshake.headers["session-id"], "session-1");
    assert_eq!(handshake.headers["x-codex-turn-metadata"], "{\"turn\":1}");
    assert_eq!(handshake.headers["x-fake-query"], "client_version=0.169.0");
    // Only the extension the relay can read is offered upstream.
    assert_eq!(
        handshake.headers["sec-websocket-extensions"],
        "permessage-deflate; client_max_window_bits"
    );
    assert!(
        !format!("{:?}", handshake.headers).contains("the-clients-own-token"),
        "{:?}",
        handshake.headers
    );
    let seen: Vec<String> = upstream
        .websocket_seen()
        .into_iter()
        .map(|s| s.message)
        .collect();
    assert!(seen[0].contains("response.create"), "{seen:?}");
    assert!(seen.contains(&"binary 70000".to_owned()), "{seen:?}");
    assert!(seen.contains(&"ping".to_owned()), "{seen:?}");

    // The rate-limit event is the account's quota now.
    let quota = quota_when(&daemon, "acc-main", |q| {
        q["five_hour"]["used_percent"] == 37.5
    });
    assert_eq!(quota["source"], "websocket", "{quota}");
    assert_eq!(quota["weekly"]["used_percent"], 12.0, "{quota}");
    let status: Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
    assert_eq!(
        status["accounts"][0]["quota"]["five_hour"]["used_percent"],
        37.5
    );
}

#[test]
fn a_refused_handshake_falls_back_and_a_limit_on_the_stream_moves_the_next_connection() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let base = daemon.forwarder();
    let rt = runtime();
    // The main account is used up: its handshake gets 429, and the
    // connection opens on the fallback.
    upstream.set_limited("acc-main");
    rt.block_on(async {
        let (mut ws, _) = connect(&base, "/backend-api/codex/responses")
            .await
            .unwrap();
        assert_eq!(handshakes(&upstream), ["acc-main", "acc-fallback"]);
        let events = turn(&mut ws).await;
        assert_eq!(types(&events).last(), Some(&"response.completed"));
    });
    assert_eq!(upstream.websocket_seen()[0].account, "acc-fallback");
    quota_when(&daemon, "acc-main", |q| {
        q["five_hour"]["used_percent"] == 100.0
    });

    // A fresh start: the main account serves until the backend says, on the
    // open connection, that its limit is reached.
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let base = daemon.forwarder();
    let mut ws = rt.block_on(async {
        let (mut ws, _) = connect(&base, "/codex/responses").await.unwrap();
        let events = turn(&mut ws).await;
        assert_eq!(types(&events).last(), Some(&"response.completed"));
        upstream.set_limited_in_stream("acc-main");
        let events = turn(&mut ws).await;
        let error = events.last().unwrap();
        assert_eq!(error["status"], 429, "the client sees the limit: {error}");
        assert_eq!(error["error"]["type"], "usage_limit_reached");
        ws
    });
    quota_when(&daemon, "acc-main", |q| {
        q["five_hour"]["used_percent"] == 100.0
    });
    // The client's reconnection lands on the next account.
    rt.block_on(async {
        ws.close(None).await.unwrap();
        let (mut again, _) = connect(&base, "/codex/responses").await.unwrap();
        assert_eq!(handshakes(&upstream), ["acc-main", "acc-fallback"]);
        let events = turn(&mut again).await;
        assert_eq!(types(&events).last(), Some(&"response.completed"));
    });
}

#[test]
fn every_account_used_up_answers_the_handshake_with_the_first_reset() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    upstream.set_limited("acc-main");
    upstream.set_limited("acc-fallback");
    let daemon = env.start_daemon(&[]);
    let base = daemon.forwarder();
    runtime().block_on(async {
        // The first handshake learns it from the backend, and passes on
        // the last 429.
        let Err(WsError::Http(first)) = connect(&base, "/codex/responses").await else {
            panic!("the handshake is refused");
        };
        assert_eq!(first.status(), 429);
        assert_eq!(handshakes(&upstream).len(), 2);
    });
    for account in ["acc-main", "acc-fallback"] {
        quota_when(&daemon, account, |q| {
            q["five_hour"]["used_percent"] == 100.0
        });
    }
    runtime().block_on(async {
        // The next one is answered by the forwarder, as the backend would.
        let Err(WsError::Http(answer)) = connect(&base, "/codex/responses").await else {
            panic!("the handshake is refused");
        };
        assert_eq!(answer.status(), 429);
        let retry_after: i64 = answer.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((3500..=3600).contains(&retry_after), "{retry_after}");
        assert_eq!(answer.headers()["x-codex-primary-used-percent"], "100");
        let body: Value = serde_json::from_slice(answer.body().as_deref().unwrap()).unwrap();
        assert_eq!(body["error"]["type"], "usage_limit_reached", "{body}");
        assert!(body["error"]["resets_at"].as_i64().unwrap() > crate::support::now());
        assert_eq!(
            handshakes(&upstream).len(),
            2,
            "nothing more was sent upstream"
        );
    });
}

#[test]
fn open_connections_are_closed_when_the_daemon_stops() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&["--grace", "5"]);
    let base = daemon.forwarder();
    runtime().block_on(async {
        let (mut first, _) = connect(&base, "/codex/responses").await.unwrap();
        let (mut second, _) = connect(&base, "/codex/responses").await.unwrap();
        assert_eq!(types(&turn(&mut first).await).len(), 3);
        let started = Instant::now();
        let stopping = tokio::task::spawn_blocking(move || daemon.stop());
        for ws in [&mut first, &mut second] {
            let Message::Close(Some(frame)) = next(ws).await else {
                panic!("a close frame");
            };
            assert_eq!(u16::from(frame.code), 1001);
            assert_eq!(frame.reason.as_str(), "codex-broker is stopping");
        }
        drop((first, second));
        let status = stopping.await.unwrap();
        assert!(status.success(), "{status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    });
    let closes = upstream
        .websocket_seen()
        .into_iter()
        .filter(|s| s.message == "close 1001 codex-broker is stopping")
        .count();
    assert_eq!(closes, 2, "{:?}", upstream.websocket_seen());
}

#[test]
fn limits_idle_connections_and_no_websocket_are_answered() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    std::fs::write(
        env.broker_home().join("config.toml"),
        "max_websockets = 1\nwebsocket_idle_timeout = 1\n",
    )
    .unwrap();
    let daemon = env.start_daemon(&[]);
    let base = daemon.forwarder();
    runtime().block_on(async {
        let (mut ws, _) = connect(&base, "/codex/responses").await.unwrap();
        // One open connection is the most allowed: the next is told to use
        // HTTP.
        let Err(WsError::Http(refused)) = connect(&base, "/codex/responses").await else {
            panic!("the second connection is refused");
        };
        assert_eq!(refused.status(), 426);
        let body: Value = serde_json::from_slice(refused.body().as_deref().unwrap()).unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_websockets"),
            "{body}"
        );
        // Idle for the timeout: both sides are closed.
        let Message::Close(Some(frame)) = next(&mut ws).await else {
            panic!("a close frame");
        };
        assert_eq!(
            (u16::from(frame.code), frame.reason.as_str()),
            (1001, "idle")
        );
        drop(ws);
        assert!(
            upstream.wait_for_websocket(Duration::from_secs(5), |s| s.message == "close 1001 idle")
        );
        // Its place is free again once the relay has let go of it.
        let mut reopened = None;
        for _ in 0..100 {
            if let Ok(open) = connect(&base, "/codex/responses").await {
                reopened = Some(open);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(reopened.is_some(), "the connection's place was not freed");
        drop(reopened);
        // A path other than the Responses endpoint is not relayed.
        let Err(WsError::Http(other)) = connect(&base, "/backend-api/wham/usage").await else {
            panic!("refused");
        };
        assert_eq!(other.status(), 426);
    });
    drop(daemon);

    let before = upstream.requests_to("/backend-api/codex/responses").len();
    let daemon = env.start_daemon(&["--no-websocket"]);
    let base = daemon.forwarder();
    runtime().block_on(async {
        let Err(WsError::Http(refused)) = connect(&base, "/codex/responses").await else {
            panic!("WebSockets are off");
        };
        assert_eq!(refused.status(), 426);
        let body: Value = serde_json::from_slice(refused.body().as_deref().unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "websocket_unsupported");
    });
    assert_eq!(
        upstream.requests_to("/backend-api/codex/responses").len(),
        before,
        "--no-websocket sends nothing upstream"
    );
}

#[test]
fn a_bad_handshake_is_refused_before_anything_goes_upstream() {
    use std::io::{Read, Write};
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let port = daemon.get("/v1/health")["forwarder"]["port"]
        .as_u64()
        .unwrap();
    let cases = [
        (
            "sec-websocket-version: 8\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
            "version 13",
        ),
        (
            "sec-websocket-version: 13\r\nsec-websocket-key: short",
            "16 bytes",
        ),
        ("sec-websocket-version: 13", "16 bytes"),
    ];
    for (headers, expected) in cases {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port as u16)).unwrap();
        write!(
            stream,
            "GET /codex/responses HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: upgrade\r\n\
             upgrade: websocket\r\n{headers}\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains(expected), "{answer}");
    }
    assert!(
        upstream
            .requests_to("/backend-api/codex/responses")
            .is_empty()
    );
}

#[test]
fn compressed_frames_pass_unchanged_and_are_read_for_quota() {
    use std::io::{Read, Write};
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    upstream.speak_deflate();
    upstream.set_quota("acc-main", 77.5);
    let daemon = env.start_daemon(&[]);
    let port = daemon.get("/v1/health")["forwarder"]["port"]
        .as_u64()
        .unwrap();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port as u16)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /codex/responses HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: upgrade\r\n\
         upgrade: websocket\r\nsec-websocket-version: 13\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         sec-websocket-extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
    )
    .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the handshake ended early");
        received.extend_from_slice(&buf[..n]);
    }
    let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&received[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-extensions: permessage-deflate"),
        "the client learns what the backend agreed to: {head}"
    );
    // One masked text frame from the client: {"type":"response.create"}.
    let payload = br#"{"type":"response.create"}"#;
    let key = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    stream.write_all(&frame).unwrap();
    // The backend's compressed frames arrive as it sent them (RSV1 set),
    // then its close.
    let mut frames = received[head_end..].to_vec();
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => frames.extend_from_slice(&buf[..n]),
        }
        if frames.windows(4).any(|w| w == [0x88, 0x02, 0x03, 0xe8]) {
            break;
        }
    }
    assert_eq!(frames[0], 0x80 | 0x40 | 0x1, "{frames:?}");
    let second = 2 + frames[1] as usize;
    assert_eq!(frames[second], 0x80 | 0x40 | 0x1, "{frames:?}");
    // Read through the shared window: the event is the account's quota.
    let quota = quota_when(&daemon, "acc-main", |q| {
        q["five_hour"]["used_percent"] == 77.5
    });
    assert_eq!(quota["source"], "websocket");
}

#[test]
fn each_completed_response_on_a_websocket_counts_its_tokens() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let base = daemon.forwarder();
    runtime().block_on(async {
        let (mut ws, _) = connect(&base, "/codex/responses").await.unwrap();
        for _ in 0..3 {
            let events = turn(&mut ws).await;
            assert_eq!(types(&events).last(), Some(&"response.completed"));
        }
    });
    // Counted as the events pass, before the connection ends.
    let (status, body) = daemon.api("GET", "/v1/usage", None);
    assert_eq!(status, 200, "{body}");
    let rows = body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{body}");
    let row = &rows[0];
    assert_eq!(row["account_id"], "acc-main");
    assert_eq!(row["client"], "unknown", "tungstenite sends no User-Agent");
    assert_eq!(row["requests"], 3);
    assert_eq!(row["input_tokens"], 3 * 1200);
    assert_eq!(row["reasoning_tokens"], 3 * 128);
}

/// The HTTP shadows keep-warm sent for conversation `session`.
fn shadows_of(upstream: &FakeUpstream, session: &str) -> Vec<Value> {
    upstream
        .requests_to("/backend-api/codex/responses")
        .iter()
        .filter(|r| {
            r.method == "POST" && r.headers.get("session-id").map(String::as_str) == Some(session)
        })
        .map(|r| {
            assert_eq!(r.headers["chatgpt-account-id"], "acc-main");
            assert!(!r.headers.contains_key("upgrade") && !r.headers.contains_key("openai-beta"));
            r.json()
        })
        .collect()
}

#[test]
fn keep_warm_repeats_a_websocket_conversations_whole_request_over_http() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    env.write_config("[cachekeep]\nenabled = true\ninterval = 1\nidle_cap = 30\n");
    let daemon = env.start_daemon(&[]);
    let forwarder = daemon.forwarder();
    runtime().block_on(async {
        let (mut ws, _) = connect(&forwarder, "/codex/responses").await.unwrap();
        assert_eq!(
            types(&turn(&mut ws).await).last(),
            Some(&"response.completed")
        );
        let warmed = wait_until(Duration::from_secs(10), || {
            !shadows_of(&upstream, "session-1").is_empty()
        });
        assert!(warmed.is_some(), "a shadow of the WebSocket turn");
        let expected =
            json!({"model": "gpt-5.1-codex", "input": [], "store": false, "stream": true});
        assert_eq!(shadows_of(&upstream, "session-1")[0], expected);

        // A turn chained onto the last answer keeps the conversation
        // active; its shadow stays the whole request.
        let chained = json!({"type": "response.create", "model": "gpt-5.1-codex",
            "previous_response_id": "resp_fake", "input": [{"type": "message"}]});
        ws.send(Message::text(chained.to_string())).await.unwrap();
        let before = shadows_of(&upstream, "session-1").len();
        let more = wait_until(Duration::from_secs(10), || {
            shadows_of(&upstream, "session-1").len() > before
        });
        assert!(more.is_some());
        assert!(
            shadows_of(&upstream, "session-1")
                .iter()
                .all(|s| *s == expected)
        );
    });
    let (_, status) = daemon.api("GET", "/v1/cachekeep", None);
    assert_eq!(status["sessions"][0]["key"], "session-1", "{status}");
    assert!(
        status["sessions"][0]["warms"].as_u64().unwrap() >= 2,
        "{status}"
    );
}
