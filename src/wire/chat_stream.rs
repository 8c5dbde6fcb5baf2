//! A Responses event stream told as Chat Completions chunks, event by
//! event: each upstream event gives the chunks it stands for at once
//! (text and tool-call argument deltas as they come), the last one the
//! finish reason, the usage chunk when asked for, and `[DONE]`.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::chat::{completion_id, finish_reason, tool_call, usage};
use super::usage::completed_event;

/// The state of one stream being told as chunks.
pub struct ChatStream {
    id: String,
    model: String,
    created: i64,
    include_usage: bool,
    /// The role chunk went out.
    started: bool,
    /// Per output item (by its index): the tool call it is, and whether
    /// its arguments went out.
    calls: HashMap<u64, (usize, bool)>,
    /// Output items whose text went out as deltas.
    texted: Vec<u64>,
    finished: bool,
}

impl ChatStream {
    /// A stream for a client that asked for `model`, at `created` (unix
    /// seconds).
    pub fn new(model: &str, created: i64, include_usage: bool) -> ChatStream {
        ChatStream {
            id: completion_id(None),
            model: model.to_owned(),
            created,
            include_usage,
            started: false,
            calls: HashMap::new(),
            texted: Vec::new(),
            finished: false,
        }
    }

    /// Takes the data of one upstream event; appends the SSE events the
    /// client gets for it to `out`.
    pub fn event(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        let Ok(event) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        let at = event
            .get("output_index")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        match event["type"].as_str().unwrap_or_default() {
            "response.created" => {
                if let Some(id) = event.pointer("/response/id").and_then(Value::as_str) {
                    self.id = completion_id(Some(id));
                }
                self.start(out);
            }
            "response.output_text.delta" => {
                self.texted.push(at);
                let delta = event["delta"].as_str().unwrap_or_default();
                self.delta(json!({ "content": delta }), out);
            }
            "response.output_item.added" if event["item"]["type"] == "function_call" => {
                self.call_started(at, &event["item"], out);
            }
            "response.function_call_arguments.delta" => {
                let index = self.call_index(at);
                if let Some((_, sent)) = self.calls.get_mut(&at) {
                    *sent = true;
                }
                let arguments = event["delta"].as_str().unwrap_or_default();
                let call = json!({"index": index, "function": {"arguments": arguments}});
                self.delta(json!({ "tool_calls": [call] }), out);
            }
            "response.output_item.done" => self.item_done(at, &event["item"], out),
            "response.completed" | "response.incomplete" => self.finish(&event, data, out),
            "response.failed" | "error" => {
                let error = event
                    .pointer("/response/error")
                    .or_else(|| event.get("error"))
                    .cloned()
                    .unwrap_or_else(|| json!({"message": "the backend failed the response"}));
                push(out, &json!({ "error": error }));
                self.done(out);
            }
            _ => {}
        }
    }

    /// A tool call begins: its index, id and name.
    fn call_started(&mut self, at: u64, item: &Value, out: &mut Vec<u8>) {
        let index = self.calls.len();
        self.calls.insert(at, (index, false));
        let mut call = tool_call(item);
        call["index"] = json!(index);
        call["function"]["arguments"] = json!("");
        self.delta(json!({ "tool_calls": [call] }), out);
    }

    fn call_index(&mut self, at: u64) -> usize {
        let next = self.calls.len();
        self.calls.entry(at).or_insert((next, false)).0
    }

    /// An output item is done: what of it did not go out as deltas goes
    /// now (a backend may send a whole item without deltas).
    fn item_done(&mut self, at: u64, item: &Value, out: &mut Vec<u8>) {
        match item["type"].as_str() {
            Some("message") if !self.texted.contains(&at) => {
                let text: String = item["content"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect();
                if !text.is_empty() {
                    self.delta(json!({ "content": text }), out);
                }
            }
            Some("function_call") => {
                if !self.calls.contains_key(&at) {
                    self.call_started(at, item, out);
                }
                let (index, sent) = self.calls[&at];
                if !sent {
                    let arguments = item["arguments"].as_str().unwrap_or_default();
                    let call = json!({"index": index, "function": {"arguments": arguments}});
                    self.delta(json!({ "tool_calls": [call] }), out);
                }
            }
            _ => {}
        }
    }

    /// The response is finished: the finish reason, the usage if asked,
    /// `[DONE]`.
    fn finish(&mut self, event: &Value, data: &[u8], out: &mut Vec<u8>) {
        self.start(out);
        let reason = finish_reason(&event["response"], !self.calls.is_empty());
        let mut chunk = self.chunk(json!({}));
        chunk["choices"][0]["finish_reason"] = json!(reason);
        push(out, &chunk);
        if self.include_usage
            && let Some((tokens, _)) = completed_event(data)
        {
            let mut chunk = self.chunk(json!({}));
            chunk["choices"] = json!([]);
            chunk["usage"] = usage(&tokens);
            push(out, &chunk);
        }
        self.done(out);
    }

    fn done(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.finished = true;
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            push(
                out,
                &self.chunk(json!({"role": "assistant", "content": ""})),
            );
        }
    }

    fn delta(&mut self, delta: Value, out: &mut Vec<u8>) {
        self.start(out);
        push(out, &self.chunk(delta));
    }

    fn chunk(&self, delta: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": null}],
        })
    }
}

fn push(out: &mut Vec<u8>, value: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&serde_json::to_vec(value).expect("JSON always serializes"));
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunks `events` give, as JSON (`[DONE]` as a string).
    fn chunks(events: &[Value], include_usage: bool) -> Vec<Value> {
        let mut stream = ChatStream::new("m", 1_800_000_000, include_usage);
        let mut out = Vec::new();
        for event in events {
            stream.event(event.to_string().as_bytes(), &mut out);
        }
        String::from_utf8(out)
            .unwrap()
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap_or_else(|_| json!(d)))
            .collect()
    }

    fn deltas(chunks: &[Value]) -> Vec<Value> {
        chunks
            .iter()
            .filter_map(|c| c.pointer("/choices/0/delta").cloned())
            .collect()
    }

    #[test]
    fn text_deltas_pass_one_by_one_then_the_finish_usage_and_done() {
        let events = [
            json!({"type": "response.created", "response": {"id": "resp_7"}}),
            json!({"type": "response.output_text.delta", "output_index": 0, "delta": "Hel"}),
            json!({"type": "response.output_text.delta", "output_index": 0, "delta": "lo"}),
            json!({"type": "response.output_item.done", "output_index": 0, "item": {"type": "message",
                "content": [{"type": "output_text", "text": "Hello"}]}}),
            json!({"type": "response.completed", "response": {"id": "resp_7", "usage": {
                "input_tokens": 10, "input_tokens_details": {"cached_tokens": 8},
                "output_tokens": 2, "output_tokens_details": {"reasoning_tokens": 1}}}}),
        ];
        let got = chunks(&events, true);
        assert_eq!(got.len(), 6, "{got:#?}");
        assert!(got[..5].iter().all(|c| c["id"] == "chatcmpl-resp_7"
            && c["object"] == "chat.completion.chunk"
            && c["model"] == "m"));
        assert_eq!(
            deltas(&got),
            [
                json!({"role": "assistant", "content": ""}),
                json!({"content": "Hel"}),
                json!({"content": "lo"}),
                json!({})
            ]
        );
        assert_eq!(got[3]["choices"][0]["finish_reason"], "stop");
        assert_eq!(got[4]["choices"], json!([]));
        assert_eq!(got[4]["usage"]["prompt_tokens"], 10);
        assert_eq!(got[4]["usage"]["prompt_tokens_details"]["cached_tokens"], 8);
        assert_eq!(
            got[4]["usage"]["completion_tokens_details"]["reasoning_tokens"],
            1
        );
        assert_eq!(got[5], "[DONE]");
        // Without include_usage: no usage chunk.
        let got = chunks(&events, false);
        assert!(got.iter().all(|c| c.get("usage").is_none()));
        assert_eq!(got.last().unwrap(), "[DONE]");
    }

    #[test]
    fn tool_calls_stream_with_their_index_and_arguments() {
        let events = [
            json!({"type": "response.created", "response": {"id": "r"}}),
            json!({"type": "response.output_item.added", "output_index": 1, "item": {
                "type": "function_call", "call_id": "call_a", "name": "look", "arguments": ""}}),
            json!({"type": "response.function_call_arguments.delta", "output_index": 1, "delta": "{\"x\""}),
            json!({"type": "response.function_call_arguments.delta", "output_index": 1, "delta": ":1}"}),
            json!({"type": "response.output_item.done", "output_index": 1, "item": {
                "type": "function_call", "call_id": "call_a", "name": "look", "arguments": "{\"x\":1}"}}),
            // A second call that comes whole, without deltas.
            json!({"type": "response.output_item.done", "output_index": 2, "item": {
                "type": "function_call", "call_id": "call_b", "name": "read", "arguments": "{}"}}),
            json!({"type": "response.completed", "response": {"id": "r"}}),
        ];
        let got = chunks(&events, true);
        let calls: Vec<Value> = deltas(&got)
            .into_iter()
            .filter_map(|d| d.get("tool_calls").map(|c| c[0].clone()))
            .collect();
        assert_eq!(
            calls[0],
            json!({"index": 0, "id": "call_a", "type": "function",
            "function": {"name": "look", "arguments": ""}})
        );
        assert_eq!(
            calls[1],
            json!({"index": 0, "function": {"arguments": "{\"x\""}})
        );
        assert_eq!(
            calls[2],
            json!({"index": 0, "function": {"arguments": ":1}"}})
        );
        assert_eq!(calls[3]["index"], 1);
        assert_eq!(calls[3]["id"], "call_b");
        assert_eq!(
            calls[4],
            json!({"index": 1, "function": {"arguments": "{}"}})
        );
        assert_eq!(calls.len(), 5, "no arguments twice");
        let finish = got
            .iter()
            .find(|c| c["choices"][0]["finish_reason"].is_string())
            .unwrap();
        assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
        assert!(
            got.iter().all(|c| c.get("usage").is_none()),
            "no usage reported"
        );
    }

    #[test]
    fn a_whole_message_a_cut_answer_and_a_failure() {
        // The text only in the done item (no deltas), then cut short.
        let events = [
            json!({"type": "response.output_item.done", "output_index": 0, "item": {"type": "message",
                "content": [{"type": "output_text", "text": "whole"}]}}),
            json!({"type": "response.incomplete", "response": {"incomplete_details": {"reason": "max_output_tokens"}}}),
            json!({"type": "response.output_text.delta", "delta": "after the end"}),
        ];
        let got = chunks(&events, false);
        assert_eq!(
            deltas(&got),
            [
                json!({"role": "assistant", "content": ""}),
                json!({"content": "whole"}),
                json!({})
            ]
        );
        assert_eq!(got[2]["choices"][0]["finish_reason"], "length");
        assert_eq!(got.last().unwrap(), "[DONE]");
        let failed = [json!({"type": "response.failed", "response": {"error": {
            "code": "server_error", "message": "boom"}}})];
        let got = chunks(&failed, false);
        assert_eq!(got[0]["error"]["message"], "boom");
        assert_eq!(got[1], "[DONE]");
        assert!(
            chunks(
                &[json!({"type": "response.in_progress"}), json!("x")],
                false
            )
            .is_empty()
        );
    }
}
