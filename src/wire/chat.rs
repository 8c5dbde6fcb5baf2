//! OpenAI Chat Completions against the Responses dialect: a chat request
//! mapped to a Responses request (which [`super::responses::rewrite`]
//! then fits to the Codex backend), a finished response folded into one
//! `chat.completion`, and errors in the OpenAI error shape.

use serde_json::{Map, Value, json};

use super::usage::Tokens;

/// A chat request, mapped.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The Responses request.
    pub body: Value,
    /// The client asked for a stream.
    pub stream: bool,
    /// A streaming client asked for a last chunk with the usage.
    pub include_usage: bool,
    /// The model the client named.
    pub model: String,
}

/// Why a chat request is refused: the field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub param: String,
    pub message: String,
    /// The OpenAI error code (`unsupported`, `invalid_value`).
    pub code: &'static str,
}

fn invalid(param: &str, message: impl Into<String>) -> Refused {
    Refused {
        param: param.to_owned(),
        message: message.into(),
        code: "invalid_value",
    }
}

/// Maps a Chat Completions request to the Responses shape. Fields the
/// Codex backend rejects (sampling, token limits, `stop`, `user`, ...) are
/// left out; `n` above 1 is refused.
pub fn request(body: Value) -> Result<ChatRequest, Refused> {
    let Value::Object(chat) = body else {
        return Err(invalid("body", "the request body must be a JSON object"));
    };
    if let Some(n) = chat.get("n").filter(|n| !n.is_null())
        && n.as_u64() != Some(1)
    {
        return Err(Refused {
            param: "n".into(),
            message: format!("`n` = {n} is not supported: the backend gives one choice"),
            code: "unsupported",
        });
    }
    let model = match chat.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model.clone(),
        _ => return Err(invalid("model", "`model` must name a model")),
    };
    let messages = match chat.get("messages") {
        Some(Value::Array(messages)) if !messages.is_empty() => messages,
        _ => return Err(invalid("messages", "`messages` must be a non-empty array")),
    };
    let (instructions, input) = conversation(messages)?;
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    if !instructions.is_empty() {
        out.insert("instructions".into(), json!(instructions.join("\n\n")));
    }
    out.insert("input".into(), Value::Array(input));
    if let Some(tools) = chat.get("tools").filter(|t| !t.is_null()) {
        out.insert("tools".into(), self::tools(tools)?);
    }
    if let Some(choice) = chat.get("tool_choice").filter(|c| !c.is_null()) {
        out.insert("tool_choice".into(), tool_choice(choice)?);
    }
    for kept in ["parallel_tool_calls", "prompt_cache_key"] {
        if let Some(value) = chat.get(kept).filter(|v| !v.is_null()) {
            out.insert(kept.into(), value.clone());
        }
    }
    if let Some(effort) = chat.get("reasoning_effort").filter(|e| !e.is_null()) {
        if !effort.is_string() {
            return Err(invalid(
                "reasoning_effort",
                "`reasoning_effort` must be a string",
            ));
        }
        out.insert("reasoning".into(), json!({ "effort": effort }));
    }
    let format = chat.get("response_format").filter(|f| !f.is_null());
    if let Some(format) = format.map(text_format).transpose()?.flatten() {
        out.insert("text".into(), json!({ "format": format }));
    }
    let stream = chat.get("stream").and_then(Value::as_bool).unwrap_or(false);
    out.insert("stream".into(), json!(stream));
    let include_usage = chat
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(ChatRequest {
        body: Value::Object(out),
        stream,
        include_usage,
        model,
    })
}

/// The messages as instructions (system and developer texts) and input
/// items, in order.
fn conversation(messages: &[Value]) -> Result<(Vec<String>, Vec<Value>), Refused> {
    let mut instructions = Vec::new();
    let mut input = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let at = |field: &str| format!("messages[{i}].{field}");
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let content = message.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => instructions.push(text_of(content, &at("content"))?),
            "user" => input.push(json!({"type": "message", "role": "user",
                "content": user_parts(content, &at("content"))?})),
            "assistant" => assistant(message, &at, &mut input)?,
            "tool" => {
                let call_id = message.get("tool_call_id").and_then(Value::as_str);
                let call_id = call_id.ok_or_else(|| {
                    invalid(&at("tool_call_id"), "a tool message needs `tool_call_id`")
                })?;
                input.push(json!({"type": "function_call_output", "call_id": call_id,
                    "output": text_of(content, &at("content"))?}));
            }
            other => {
                return Err(invalid(
                    &at("role"),
                    format!(
                        "role `{other}` is not one of system, developer, user, assistant, tool"
                    ),
                ));
            }
        }
    }
    Ok((instructions, input))
}

/// An assistant message: its text, then its tool calls.
fn assistant(
    message: &Value,
    at: &impl Fn(&str) -> String,
    input: &mut Vec<Value>,
) -> Result<(), Refused> {
    let content = message.get("content").unwrap_or(&Value::Null);
    if !content.is_null() {
        let text = text_of(content, &at("content"))?;
        if !text.is_empty() {
            input.push(json!({"type": "message", "role": "assistant",
                "content": [{"type": "output_text", "text": text}]}));
        }
    }
    let calls = match message.get("tool_calls") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(calls)) => calls,
        Some(_) => return Err(invalid(&at("tool_calls"), "`tool_calls` must be an array")),
    };
    for (j, call) in calls.iter().enumerate() {
        let field = |f: &str| call.pointer(f).and_then(Value::as_str);
        let (Some(id), Some(name)) = (field("/id"), field("/function/name")) else {
            return Err(invalid(
                &at(&format!("tool_calls[{j}]")),
                "a tool call needs `id` and `function.name`",
            ));
        };
        input.push(json!({"type": "function_call", "call_id": id, "name": name,
            "arguments": field("/function/arguments").unwrap_or("{}")}));
    }
    Ok(())
}

/// The text of a content: a string, or the texts of its parts.
fn text_of(content: &Value, at: &str) -> Result<String, Refused> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => Ok(parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("")),
        _ => Err(invalid(at, "content must be a string or an array of parts")),
    }
}

/// A user content as Responses input parts: texts and images.
fn user_parts(content: &Value, at: &str) -> Result<Vec<Value>, Refused> {
    let parts = match content {
        Value::String(text) => return Ok(vec![json!({"type": "input_text", "text": text})]),
        Value::Array(parts) => parts,
        _ => return Err(invalid(at, "content must be a string or an array of parts")),
    };
    parts
        .iter()
        .enumerate()
        .map(|(k, part)| match part.get("type").and_then(Value::as_str) {
            Some("text") => Ok(json!({"type": "input_text",
                "text": part.get("text").and_then(Value::as_str).unwrap_or_default()})),
            Some("image_url") => {
                let image = &part["image_url"];
                let url = image
                    .as_str()
                    .or_else(|| image.get("url").and_then(Value::as_str));
                let url = url.ok_or_else(|| {
                    invalid(
                        &format!("{at}[{k}].image_url"),
                        "an image part needs its `url`",
                    )
                })?;
                let mut item = json!({"type": "input_image", "image_url": url});
                if let Some(detail) = image.get("detail").filter(|d| d.is_string()) {
                    item["detail"] = detail.clone();
                }
                Ok(item)
            }
            other => Err(Refused {
                param: format!("{at}[{k}].type"),
                message: format!("content part {other:?} is not supported (text, image_url)"),
                code: "unsupported",
            }),
        })
        .collect()
}

/// Function tools in the Responses form.
fn tools(tools: &Value) -> Result<Value, Refused> {
    let Value::Array(tools) = tools else {
        return Err(invalid("tools", "`tools` must be an array"));
    };
    let mapped = tools.iter().enumerate().map(|(i, tool)| {
        let function = tool.get("function").filter(|_| tool["type"] == "function");
        let Some(function) = function.and_then(Value::as_object) else {
            return Err(Refused {
                param: format!("tools[{i}]"),
                message: "only tools of type `function` are supported".into(),
                code: "unsupported",
            });
        };
        let mut out = Map::new();
        out.insert("type".into(), json!("function"));
        for key in ["name", "description", "parameters", "strict"] {
            if let Some(value) = function.get(key).filter(|v| !v.is_null()) {
                out.insert(key.into(), value.clone());
            }
        }
        if !out.get("name").is_some_and(Value::is_string) {
            return Err(invalid(
                &format!("tools[{i}].function.name"),
                "a tool needs a name",
            ));
        }
        Ok(Value::Object(out))
    });
    Ok(Value::Array(mapped.collect::<Result<_, _>>()?))
}

/// `tool_choice` in the Responses form.
fn tool_choice(choice: &Value) -> Result<Value, Refused> {
    match choice {
        Value::String(mode) if ["auto", "none", "required"].contains(&mode.as_str()) => {
            Ok(choice.clone())
        }
        Value::Object(_) => match choice.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => Ok(json!({"type": "function", "name": name})),
            None => Err(invalid(
                "tool_choice",
                "a named tool choice needs `function.name`",
            )),
        },
        _ => Err(invalid(
            "tool_choice",
            "`tool_choice` must be auto, none, required or a function",
        )),
    }
}

/// `response_format` as a Responses `text.format` (none for plain text).
fn text_format(format: &Value) -> Result<Option<Value>, Refused> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let schema = format.get("json_schema").and_then(Value::as_object);
            let schema = schema.ok_or_else(|| {
                invalid(
                    "response_format.json_schema",
                    "a json_schema format needs its schema",
                )
            })?;
            let mut out = Map::new();
            out.insert("type".into(), json!("json_schema"));
            out.insert(
                "name".into(),
                schema.get("name").cloned().unwrap_or(json!("response")),
            );
            for key in ["schema", "strict", "description"] {
                if let Some(value) = schema.get(key).filter(|v| !v.is_null()) {
                    out.insert(key.into(), value.clone());
                }
            }
            Ok(Some(Value::Object(out)))
        }
        _ => Err(invalid(
            "response_format.type",
            "`response_format.type` must be text, json_object or json_schema",
        )),
    }
}

/// The chat `usage` of a response's tokens.
pub fn usage(tokens: &Tokens) -> Value {
    json!({
        "prompt_tokens": tokens.input,
        "completion_tokens": tokens.output,
        "total_tokens": tokens.input.saturating_add(tokens.output),
        "prompt_tokens_details": {"cached_tokens": tokens.cached_input},
        "completion_tokens_details": {"reasoning_tokens": tokens.reasoning},
    })
}

/// The finish reason of a finished response, as chat names it.
pub fn finish_reason(response: &Value, called_tools: bool) -> &'static str {
    let reason = response
        .pointer("/incomplete_details/reason")
        .and_then(Value::as_str);
    match reason {
        Some("max_output_tokens") => "length",
        Some("content_filter") => "content_filter",
        _ if called_tools => "tool_calls",
        _ => "stop",
    }
}

/// The chat id of a response id.
pub fn completion_id(response_id: Option<&str>) -> String {
    format!("chatcmpl-{}", response_id.unwrap_or("broker"))
}

/// A tool call of a `function_call` output item, as chat shows it.
pub fn tool_call(item: &Value) -> Value {
    let text = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or_default();
    let id = item
        .get("call_id")
        .and_then(Value::as_str)
        .unwrap_or(text("id"));
    json!({"id": id, "type": "function",
        "function": {"name": text("name"), "arguments": text("arguments")}})
}

/// A finished Responses object folded into one `chat.completion`, with
/// `tokens` (what it used, when it said) and `created` (unix seconds).
pub fn completion(response: &Value, model: &str, tokens: Option<&Tokens>, created: i64) -> Value {
    let output = response["output"].as_array().map_or(&[][..], Vec::as_slice);
    let mut content = String::new();
    let mut calls = Vec::new();
    for item in output {
        match item["type"].as_str() {
            Some("message") => {
                for part in item["content"].as_array().into_iter().flatten() {
                    if let Some(text) = part.get("text").and_then(Value::as_str) {
                        content.push_str(text);
                    }
                }
            }
            Some("function_call") => calls.push(tool_call(item)),
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant",
        "content": if content.is_empty() && !calls.is_empty() { Value::Null } else { json!(content) }});
    let finish = finish_reason(response, !calls.is_empty());
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let mut completion = json!({
        "id": completion_id(response["id"].as_str()),
        "object": "chat.completion",
        "created": created,
        "model": response["model"].as_str().unwrap_or(model),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    });
    if let Some(tokens) = tokens {
        completion["usage"] = usage(tokens);
    }
    completion
}

/// An error answer's body in the OpenAI error shape: its message, type
/// and code kept when it has them.
pub fn error(status: u16, body: &[u8]) -> Value {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = parsed.get("error").unwrap_or(&parsed);
    let text = |k: &str| error.get(k).and_then(Value::as_str).map(str::to_owned);
    let message = text("message")
        .or_else(|| {
            parsed
                .get("detail")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .or_else(|| error.as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            let raw = String::from_utf8_lossy(body);
            let raw: String = raw.chars().take(500).collect();
            if raw.trim().is_empty() {
                format!("the backend answered HTTP {status}")
            } else {
                raw
            }
        });
    let kind = text("type").unwrap_or_else(|| default_type(status).into());
    let mut out = json!({"message": message, "type": kind, "param": error.get("param").cloned().unwrap_or(Value::Null),
        "code": error.get("code").cloned().unwrap_or(Value::Null)});
    if let Some(resets_at) = error.get("resets_at").filter(|r| r.is_i64() || r.is_u64()) {
        out["resets_at"] = resets_at.clone();
    }
    json!({ "error": out })
}

fn default_type(status: u16) -> &'static str {
    match status {
        400 | 404 | 413 | 422 => "invalid_request_error",
        401 | 403 => "authentication_error",
        429 => "rate_limit_error",
        _ => "server_error",
    }
}

/// A refusal in the OpenAI error shape.
pub fn refused(refusal: &Refused) -> Value {
    json!({"error": {"message": refusal.message, "type": "invalid_request_error",
        "param": refusal.param, "code": refusal.code}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_with_tools_maps_in_order() {
        let chat = json!({
            "model": "gpt-5.1-codex", "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": 0.2, "max_tokens": 100, "n": 1, "user": "u", "stop": ["x"],
            "reasoning_effort": "low", "parallel_tool_calls": false,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is in it?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"x\":1}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
                {"role": "assistant", "content": "A cat."},
                {"role": "user", "content": "Thanks"}
            ],
            "tools": [{"type": "function", "function": {"name": "look", "description": "d",
                "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "look"}},
            "response_format": {"type": "json_schema", "json_schema": {"name": "out",
                "schema": {"type": "object"}, "strict": true}}
        });
        let mapped = request(chat).unwrap();
        assert!(mapped.stream && mapped.include_usage);
        assert_eq!(mapped.model, "gpt-5.1-codex");
        insta::assert_json_snapshot!("chat_request_mapped", mapped.body);
    }

    #[test]
    fn bad_requests_are_refused_by_name_and_plain_ones_accepted() {
        let refused_param = |body: Value| request(body).unwrap_err().param;
        let ok = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let plain = request(ok.clone()).unwrap();
        assert!(!plain.stream && !plain.include_usage);
        assert_eq!(
            plain.body,
            json!({"model": "m", "input": [{"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "hi"}]}], "stream": false})
        );
        let with = |k: &str, v: Value| {
            let mut b = ok.clone();
            b[k] = v;
            b
        };
        let n = request(with("n", json!(2))).unwrap_err();
        assert_eq!((n.param.as_str(), n.code), ("n", "unsupported"));
        assert!(request(with("n", json!(1))).is_ok());
        assert!(request(with("n", Value::Null)).is_ok());
        assert_eq!(refused_param(json!([])), "body");
        assert_eq!(refused_param(with("model", json!(""))), "model");
        assert_eq!(refused_param(with("messages", json!([]))), "messages");
        assert_eq!(
            refused_param(with(
                "messages",
                json!([{"role": "function", "content": "x"}])
            )),
            "messages[0].role"
        );
        assert_eq!(
            refused_param(with("messages", json!([{"role": "tool", "content": "x"}]))),
            "messages[0].tool_call_id"
        );
        assert_eq!(
            refused_param(with("tools", json!([{"type": "web_search"}]))),
            "tools[0]"
        );
        assert_eq!(
            refused_param(with("tool_choice", json!("any"))),
            "tool_choice"
        );
        assert_eq!(
            refused_param(with("response_format", json!({"type": "yaml"}))),
            "response_format.type"
        );
        let text = request(with("response_format", json!({"type": "text"}))).unwrap();
        assert!(text.body.get("text").is_none());
    }

    #[test]
    fn a_finished_response_becomes_one_completion() {
        let response = json!({"id": "resp_1", "model": "gpt-x", "output": [
            {"type": "reasoning", "summary": []},
            {"type": "message", "content": [{"type": "output_text", "text": "Hel"},
                {"type": "output_text", "text": "lo"}]},
        ]});
        let tokens = Tokens {
            input: 10,
            cached_input: 4,
            output: 7,
            reasoning: 3,
        };
        let done = completion(&response, "m", Some(&tokens), 1_800_000_000);
        assert_eq!(done["id"], "chatcmpl-resp_1");
        assert_eq!(done["object"], "chat.completion");
        assert_eq!(done["model"], "gpt-x");
        assert_eq!(
            done["choices"][0]["message"],
            json!({"role": "assistant", "content": "Hello"})
        );
        assert_eq!(done["choices"][0]["finish_reason"], "stop");
        assert_eq!(done["usage"]["total_tokens"], 17);
        assert_eq!(done["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
        assert_eq!(
            done["usage"]["completion_tokens_details"]["reasoning_tokens"],
            3
        );
        let called = json!({"output": [{"type": "function_call", "call_id": "call_9",
            "name": "look", "arguments": "{}"}], "incomplete_details": null});
        let done = completion(&called, "m", None, 0);
        let message = &done["choices"][0]["message"];
        assert_eq!(message["content"], Value::Null);
        assert_eq!(message["tool_calls"][0]["id"], "call_9");
        assert_eq!(message["tool_calls"][0]["function"]["name"], "look");
        assert_eq!(done["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(done["model"], "m");
        assert!(done.get("usage").is_none());
        let cut = json!({"output": [], "incomplete_details": {"reason": "max_output_tokens"}});
        assert_eq!(
            completion(&cut, "m", None, 0)["choices"][0]["finish_reason"],
            "length"
        );
    }

    #[test]
    fn errors_take_the_openai_shape() {
        let limited = br#"{"error":{"type":"usage_limit_reached","message":"You've hit your usage limit.","resets_at":1800000000}}"#;
        let e = error(429, limited);
        assert_eq!(e["error"]["type"], "usage_limit_reached");
        assert_eq!(e["error"]["message"], "You've hit your usage limit.");
        assert_eq!(e["error"]["resets_at"], 1_800_000_000);
        assert_eq!(e["error"]["param"], Value::Null);
        let broker = br#"{"error":{"code":"needs_login","message":"log in"}}"#;
        let e = error(503, broker);
        assert_eq!(
            (&e["error"]["code"], &e["error"]["type"]),
            (&json!("needs_login"), &json!("server_error"))
        );
        assert_eq!(
            error(401, br#"{"detail":"Unauthorized"}"#)["error"]["message"],
            "Unauthorized"
        );
        assert_eq!(
            error(502, b"")["error"]["message"],
            "the backend answered HTTP 502"
        );
        assert_eq!(
            error(500, b"<html>oops</html>")["error"]["message"],
            "<html>oops</html>"
        );
        let long = "x".repeat(10_000);
        assert_eq!(
            error(500, long.as_bytes())["error"]["message"]
                .as_str()
                .unwrap()
                .len(),
            500
        );
    }
}
