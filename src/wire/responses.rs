//! The public Responses API against the Codex backend's dialect: a
//! request rewritten to the shape the backend accepts, and a backend SSE
//! stream folded into the one response a non-streaming client asked for.

use hyper::StatusCode;
use serde_json::{Value, json};

/// Public-API fields the Codex backend rejects.
const REJECTED_FIELDS: [&str; 14] = [
    "max_output_tokens",
    "max_completion_tokens",
    "max_tokens",
    "temperature",
    "top_p",
    "top_logprobs",
    "truncation",
    "user",
    "metadata",
    "previous_response_id",
    "background",
    "service_tier",
    "safety_identifier",
    "stream_options",
];

/// Rewrites a Responses API request for the Codex backend. Returns the new
/// body and whether the client asked for a stream.
pub fn rewrite(body: Value) -> Result<(Value, bool), String> {
    let Value::Object(mut body) = body else {
        return Err("the request body must be a JSON object".into());
    };
    let client_stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    for field in REJECTED_FIELDS {
        body.remove(field);
    }
    body.insert("store".into(), Value::Bool(false));
    body.insert("stream".into(), Value::Bool(true));
    if let Some(Value::String(text)) = body.get("input") {
        let message = json!([{"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": text}]}]);
        body.insert("input".into(), message);
    }
    if body.get("reasoning").is_some_and(|r| !r.is_null()) {
        let include = body
            .entry("include")
            .or_insert_with(|| Value::Array(Vec::new()));
        match include {
            Value::Array(items) => {
                let wanted = Value::String("reasoning.encrypted_content".into());
                if !items.contains(&wanted) {
                    items.push(wanted);
                }
            }
            _ => return Err("`include` must be an array".into()),
        }
    }
    Ok((Value::Object(body), client_stream))
}

/// The most of a backend stream assembled for a `stream:false` client.
pub const MAX_ASSEMBLED: usize = 32 * 1024 * 1024;

/// Folds a Codex SSE stream into the final Responses object.
pub fn assemble(stream: &[u8]) -> Result<Value, (StatusCode, Value)> {
    let text = String::from_utf8_lossy(stream).replace("\r\n", "\n");
    let mut items = Vec::new();
    for block in text.split("\n\n") {
        let data: String = block
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim_start)
            .collect::<Vec<_>>()
            .join("\n");
        let Ok(event) = serde_json::from_str::<Value>(&data) else {
            continue;
        };
        match event["type"].as_str().unwrap_or_default() {
            "response.output_item.done" => items.push(event["item"].clone()),
            "response.completed" | "response.done" | "response.incomplete" => {
                let mut response = event["response"].clone();
                let empty = response["output"].as_array().is_none_or(Vec::is_empty);
                if empty && let Some(obj) = response.as_object_mut() {
                    obj.insert("output".into(), Value::Array(items));
                }
                if let Some(obj) = response.as_object_mut() {
                    obj.entry("object").or_insert_with(|| json!("response"));
                }
                return Ok(response);
            }
            "response.failed" => {
                let error = event["response"]["error"].clone();
                return Err((StatusCode::BAD_GATEWAY, json!({"error": error})));
            }
            "error" => {
                return Err((
                    StatusCode::BAD_GATEWAY,
                    json!({"error": event.get("error").unwrap_or(&event)}),
                ));
            }
            _ => {}
        }
    }
    Err((
        StatusCode::BAD_GATEWAY,
        json!({"error": {"code": "incomplete_stream",
            "message": "the backend's stream ended before the response completed"}}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/sse")
            .join(name);
        std::fs::read(path).unwrap()
    }

    #[test]
    fn assembles_streams_into_one_response() {
        insta::assert_json_snapshot!("assembled_text", assemble(&fixture("text.sse")).unwrap());
        insta::assert_json_snapshot!(
            "assembled_reasoning_tool_call",
            assemble(&fixture("reasoning_tool_call.sse")).unwrap()
        );
        let (status, error) = assemble(&fixture("failed.sse")).unwrap_err();
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(error["error"]["code"], "server_error");
        let text = fixture("text.sse");
        let (_, error) = assemble(&text[..text.len() / 2]).unwrap_err();
        assert_eq!(error["error"]["code"], "incomplete_stream");
        // CRLF line ends, as some servers send.
        let crlf = String::from_utf8(text).unwrap().replace('\n', "\r\n");
        assert_eq!(assemble(crlf.as_bytes()).unwrap()["id"], "resp_0a1b2c");
    }

    #[test]
    fn rewrites_public_api_requests() {
        let (body, stream) = rewrite(json!({"model": "m", "input": "hi", "stream": true,
            "store": true, "include": ["file_search_call.results"], "reasoning": {"effort": "high"},
            "temperature": 1, "tools": [{"type": "web_search"}]}))
        .unwrap();
        assert!(stream);
        insta::assert_json_snapshot!("rewritten_with_include", body);
        let (body, stream) =
            rewrite(json!({"model": "m", "input": [{"role": "user", "content": "x"}]})).unwrap();
        assert!(!stream);
        assert_eq!(
            body["input"][0]["content"], "x",
            "list input is kept as it is"
        );
        assert!(body.get("include").is_none(), "no reasoning, no include");
        assert!(rewrite(json!("text")).is_err());
        assert!(rewrite(json!({"reasoning": {}, "include": "x"})).is_err());
    }
}
