//! What Chat Completions cost: the delay each streamed chunk adds from the
//! upstream writing the event to the client reading it, against the same
//! stream read on `/codex/responses` (p50 and p99, same run); `stream:false`
//! throughput at 32 connections against `/v1/responses`; and the mapping's
//! own time in process (a request, a chunk, a completion).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use serde_json::{Value, json};

use super::forward::{connect, percentile, sse};
use super::upstream::{Upstream, now_us};
use super::{forwarder_addr, fresh_daemon_with, measure};

fn post(path: &str, body: &Value) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn chat_body(stream: bool, text: &str) -> Value {
    json!({"model": "gpt-5.1-codex", "stream": stream,
        "messages": [{"role": "user", "content": text}]})
}

/// `streams` streamed chats one after another; each chunk's delay from
/// the upstream writing its event (the time is its text) to reading it.
async fn chat_delays(addr: SocketAddr, streams: usize) -> Vec<u32> {
    let mut sender = connect(addr).await;
    let mut delays = Vec::new();
    for _ in 0..streams {
        sender.ready().await.unwrap();
        let request = post("/v1/chat/completions", &chat_body(true, "bench-stream"));
        let response = sender.send_request(request).await.unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        let mut body = response.into_body();
        let mut pending = String::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.unwrap().into_data() else {
                continue;
            };
            let arrived = now_us();
            pending.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                let data = event.strip_prefix("data: ").unwrap_or_default().trim();
                let chunk: Value = serde_json::from_str(data).unwrap_or_default();
                let sent = chunk
                    .pointer("/choices/0/delta/content")
                    .and_then(Value::as_str);
                if let Some(sent) = sent.and_then(|s| s.parse::<u64>().ok()) {
                    delays.push(arrived.saturating_sub(sent) as u32);
                }
            }
        }
    }
    delays
}

/// `stream:false` requests of `body` to `path` from 32 connections.
async fn throughput(addr: SocketAddr, path: &'static str, body: Value, run: Duration) -> f64 {
    let mut senders = Vec::new();
    for _ in 0..32 {
        senders.push(connect(addr).await);
    }
    let stats = measure(senders, run, move |mut sender| {
        let request = post(path, &body);
        async move {
            sender.ready().await.unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            response.into_body().collect().await.unwrap();
            sender
        }
    })
    .await;
    stats.rate
}

/// Microseconds the mapping takes in process: a request mapped, one
/// event told as a chunk, a completion folded.
fn mapping_us(iterations: usize) -> (f64, f64, f64) {
    use codex_broker::wire::chat::{completion, request};
    use codex_broker::wire::chat_stream::ChatStream;
    let body = chat_body(true, "What is the weather like in Paris today?");
    let event = json!({"type": "response.output_text.delta", "output_index": 0, "delta": "text"})
        .to_string();
    let response = json!({"id": "resp_1", "output": [{"type": "message",
        "content": [{"type": "output_text", "text": "Sunny."}]}]});
    let per = |started: Instant, n: usize| started.elapsed().as_secs_f64() * 1e6 / n as f64;
    let started = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(request(body.clone()).unwrap());
    }
    let mapped = per(started, iterations);
    let mut stream = ChatStream::new("gpt-5.1-codex", 0, true);
    let mut out = Vec::with_capacity(1024);
    let started = Instant::now();
    for _ in 0..iterations {
        out.clear();
        stream.event(event.as_bytes(), &mut out);
    }
    let chunk = per(started, iterations);
    let started = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(completion(&response, "gpt-5.1-codex", None, 0));
    }
    (mapped, chunk, per(started, iterations))
}

pub fn run(runtime: &tokio::runtime::Runtime, upstream: &Upstream, run: Duration, quick: bool) {
    let (_home, daemon) = fresh_daemon_with(upstream, "");
    let addr = forwarder_addr(runtime, &daemon.socket);
    let streams = if quick { 2 } else { 20 };
    let (mut codex, mut chat) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        codex.extend(runtime.block_on(sse(addr, "/codex/responses?stream", streams / 2)));
        chat.extend(runtime.block_on(chat_delays(addr, streams / 2)));
    }
    println!();
    println!(
        "chat completions: streamed chunk delay p50 {:.0} us, p99 {:.0} us; the same events on \
         /codex/responses p50 {:.0} us, p99 {:.0} us ({} and {} events)",
        percentile(&mut chat, 0.5),
        percentile(&mut chat, 0.99),
        percentile(&mut codex, 0.5),
        percentile(&mut codex, 0.99),
        chat.len(),
        codex.len()
    );
    let responses = json!({"model": "gpt-5.1-codex", "input": "hi", "stream": false});
    let (mut best_chat, mut best_responses) = (0.0f64, 0.0f64);
    for _ in 0..2 {
        let rate = runtime.block_on(throughput(addr, "/v1/responses", responses.clone(), run));
        best_responses = best_responses.max(rate);
        let body = chat_body(false, "hi");
        let rate = runtime.block_on(throughput(addr, "/v1/chat/completions", body, run));
        best_chat = best_chat.max(rate);
    }
    println!(
        "  stream:false, 32 connections: /v1/chat/completions {best_chat:.0} req/s, \
         /v1/responses {best_responses:.0} req/s: {:.2}",
        best_chat / best_responses
    );
    let iterations = if quick { 100 } else { 100_000 };
    let (request, chunk, completion) = mapping_us(iterations);
    println!(
        "  the mapping in process: {request:.2} us per request, {chunk:.2} us per chunk, \
         {completion:.2} us per completion"
    );
}
