//! `/v1/chat/completions` against the fake backend: the mapped request,
//! streamed chunks and one completion, tools, usage, errors, fallback.

use std::time::Duration;

use serde_json::{Value, json};

use crate::forward::{Answer, send};
use crate::support::fake_upstream::FakeUpstream;
use crate::support::{Daemon, TestEnv, wait_until};

const INFERENCE: &str = "/backend-api/codex/responses";

fn chat(daemon: &Daemon, body: &Value) -> Answer {
    send(
        "POST",
        &format!("{}/v1/chat/completions", daemon.forwarder()),
        &[
            ("authorization", "Bearer sk-anything"),
            ("content-type", "application/json"),
            ("user-agent", "OpenAI/Python 3.63.0"),
        ],
        body.to_string().into_bytes(),
    )
}

/// The `data:` payloads of an SSE answer (`[DONE]` as a string).
fn events(answer: &Answer) -> Vec<Value> {
    answer
        .text()
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| json!(d)))
        .collect()
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
}

#[test]
fn a_chat_completion_is_mapped_answered_and_counted() {
    let upstream = FakeUpstream::start();
    let (env, main, _) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let request = json!({"model": "gpt-5.1-codex", "temperature": 0.3, "max_tokens": 50,
        "messages": [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello"}]});
    let answer = chat(&daemon, &request);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let done = answer.json();
    assert_eq!(done["object"], "chat.completion");
    assert_eq!(done["id"], "chatcmpl-resp_fake");
    assert_eq!(
        done["choices"][0]["message"],
        json!({"role": "assistant", "content": "hello from the fake backend"})
    );
    assert_eq!(done["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        done["usage"],
        json!({"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
            "prompt_tokens_details": {"cached_tokens": 1024},
            "completion_tokens_details": {"reasoning_tokens": 128}})
    );
    let sent = upstream.requests_to(INFERENCE).pop().unwrap();
    assert_eq!(
        sent.headers["authorization"],
        format!("Bearer {}", main.access_token())
    );
    let body = sent.json();
    assert_eq!(body["instructions"], "Be brief.");
    assert_eq!(
        body["input"][0]["content"][0],
        json!({"type": "input_text", "text": "Say hello"})
    );
    assert_eq!(
        (&body["store"], &body["stream"]),
        (&json!(false), &json!(true))
    );
    assert!(body.get("temperature").is_none() && body.get("max_tokens").is_none());
    let usage: Value =
        serde_json::from_str(&env.ok(&["usage", "--json", "--by", "client"])).unwrap();
    assert_eq!(usage["rows"][0]["client"], "OpenAI", "{usage}");
    assert_eq!(usage["rows"][0]["input_tokens"], 1200);
}

#[test]
fn a_streamed_chat_with_tools_gives_chunks_then_usage_then_done() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    upstream.call_tools();
    let daemon = env.start_daemon(&[]);
    let mut request = json!({"model": "gpt-5.1-codex", "stream": true,
        "stream_options": {"include_usage": true}, "tools": weather_tools(),
        "messages": [{"role": "user", "content": "Weather in Paris?"}]});
    let answer = chat(&daemon, &request);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.headers["content-type"], "text/event-stream");
    let got = events(&answer);
    let calls: Vec<Value> = got
        .iter()
        .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0").cloned())
        .collect();
    assert_eq!(calls[0]["id"], "call_fake");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments: String = calls
        .iter()
        .map(|c| c["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(arguments, r#"{"city":"Paris"}"#);
    assert!(calls.iter().all(|c| c["index"] == 0));
    let n = got.len();
    assert_eq!(got[n - 3]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(got[n - 2]["choices"], json!([]));
    assert_eq!(got[n - 2]["usage"]["prompt_tokens"], 1200);
    assert_eq!(got[n - 1], "[DONE]");

    // The tool's result goes back with its call id; the answer uses it.
    request["stream"] = json!(false);
    let messages = request["messages"].as_array_mut().unwrap();
    messages.push(
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_fake",
        "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]}),
    );
    messages.push(json!({"role": "tool", "tool_call_id": "call_fake", "content": "sunny, 21 C"}));
    let answer = chat(&daemon, &request);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        answer.json()["choices"][0]["message"]["content"],
        "the tool said: sunny, 21 C"
    );
    let sent = upstream.requests_to(INFERENCE).pop().unwrap().json();
    let input = sent["input"].as_array().unwrap();
    assert_eq!(input[1]["type"], "function_call");
    assert_eq!(input[1]["call_id"], "call_fake");
    assert_eq!(
        input[2],
        json!({"type": "function_call_output", "call_id": "call_fake",
        "output": "sunny, 21 C"})
    );
    assert_eq!(sent["tools"][0]["name"], "get_weather");
}

#[test]
fn chat_falls_back_on_429_and_a_used_up_broker_answers_in_the_openai_shape() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let request = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    upstream.set_limited("acc-main");
    let answer = chat(&daemon, &request);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let last = upstream.requests_to(INFERENCE).pop().unwrap();
    assert_eq!(last.headers["chatgpt-account-id"], "acc-fallback");

    upstream.set_limited("acc-fallback");
    let answer = chat(&daemon, &request);
    assert_eq!(answer.status, 429, "{}", answer.text());
    assert!(
        answer.headers.contains_key("retry-after"),
        "{:?}",
        answer.headers
    );
    let error = &answer.json()["error"];
    assert_eq!(error["type"], "usage_limit_reached");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("used its quota"),
        "{error}"
    );
    assert!(error["resets_at"].as_i64().unwrap() > 0);
    // Streaming clients get the same answer.
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let answer = chat(&daemon, &streamed);
    assert_eq!(answer.status, 429);
    assert_eq!(answer.json()["error"]["type"], "usage_limit_reached");
}

#[test]
fn bad_chat_requests_are_refused_by_name_before_anything_goes_upstream() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let answer = chat(
        &daemon,
        &json!({"model": "m", "n": 3,
        "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(answer.status, 400);
    let error = &answer.json()["error"];
    assert_eq!(
        (&error["param"], &error["code"]),
        (&json!("n"), &json!("unsupported"))
    );
    assert_eq!(error["type"], "invalid_request_error");
    let answer = chat(&daemon, &json!({"model": "m", "messages": []}));
    assert_eq!(answer.json()["error"]["param"], "messages");
    let answer = send(
        "POST",
        &format!("{}/v1/chat/completions", daemon.forwarder()),
        &[],
        b"{not json".to_vec(),
    );
    assert_eq!(answer.status, 400);
    assert!(upstream.requests_to(INFERENCE).is_empty());
    // A backend failure keeps its status, in the OpenAI shape.
    upstream.fail_inference(Some(500));
    let answer = chat(
        &daemon,
        &json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(answer.status, 500);
    assert_eq!(answer.json()["error"]["message"], "the model failed");
    let counted = wait_until(Duration::from_secs(5), || {
        let usage: Value = serde_json::from_str(&env.ok(&["usage", "--json"])).unwrap();
        usage["rows"][0]["errors"] == 1
    });
    assert!(counted.is_some(), "the failed request counts as an error");
}

#[test]
fn a_chat_conversation_stays_on_its_account_by_its_prompt_cache_key() {
    let upstream = FakeUpstream::start();
    let (env, ..) = TestEnv::with_main_and_fallback(&upstream);
    let daemon = env.start_daemon(&[]);
    let request = json!({"model": "m", "prompt_cache_key": "chat-1",
        "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(chat(&daemon, &request).status, 200);
    env.ok(&["accounts", "switch", "acc-fallback"]);
    let other = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let switched = wait_until(Duration::from_secs(5), || {
        chat(&daemon, &other);
        upstream.requests_to(INFERENCE).pop().unwrap().headers["chatgpt-account-id"]
            == "acc-fallback"
    });
    assert!(switched.is_some());
    assert_eq!(chat(&daemon, &request).status, 200);
    let last = upstream.requests_to(INFERENCE).pop().unwrap();
    assert_eq!(last.headers["chatgpt-account-id"], "acc-main");
    assert_eq!(last.json()["prompt_cache_key"], "chat-1");
}
