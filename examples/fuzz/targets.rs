//! The parsers of outside input, each behind one entry point that takes
//! arbitrary bytes and checks what must hold for any input: no panic, and a
//! value that is accepted survives being written and read back unchanged.
//! Each says whether its parser accepted the input, so that a test can hold
//! valid input to being accepted (a parser that refused everything would
//! pass every other check).
//! The property tests and the corpus harness (`cargo run --release
//! --example fuzz`) drive the same targets.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use codex_broker::codex::auth::AuthDotJson;
use codex_broker::engine::quota::Quota;
use codex_broker::wire::ws_frame::Way;
use codex_broker::wire::ws_message::{Deflate, INSPECT_CAP, Messages};
use codex_broker::wire::ws_walk::Frames;

/// What a parser made of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    Rejected,
}

impl From<bool> for Verdict {
    fn from(accepted: bool) -> Verdict {
        if accepted {
            Verdict::Accepted
        } else {
            Verdict::Rejected
        }
    }
}

/// One parser under test.
pub struct Target {
    /// Also the name of its corpus directory under `fixtures/fuzz/`.
    pub name: &'static str,
    /// Runs the parser on `input`; panics when an invariant breaks.
    pub run: fn(&[u8]) -> Verdict,
}

/// Every target, in the order the harness runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "auth_json",
        run: auth_json,
    },
    Target {
        name: "accounts_json",
        run: accounts_json,
    },
    Target {
        name: "config_toml",
        run: config_toml,
    },
    Target {
        name: "jwt",
        run: jwt,
    },
    Target {
        name: "quota_headers",
        run: quota_headers,
    },
    Target {
        name: "usage_bodies",
        run: usage_bodies,
    },
    Target {
        name: "sse",
        run: sse,
    },
    Target {
        name: "responses_rewrite",
        run: responses_rewrite,
    },
    Target {
        name: "chat_completions",
        run: chat_completions,
    },
    Target {
        name: "chat_stream",
        run: chat_stream,
    },
    Target {
        name: "socket_request",
        run: socket_request,
    },
    Target {
        name: "websocket_frames",
        run: websocket_frames,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// A fixed clock for the targets, so that a failure replays exactly.
const NOW: i64 = 1_800_000_000;

/// auth.json: accepted files round-trip, and their account reads back.
fn auth_json(input: &[u8]) -> Verdict {
    let Ok(auth) = AuthDotJson::parse(input) else {
        return Verdict::Rejected;
    };
    let written = auth.to_bytes();
    let again = AuthDotJson::parse(&written).expect("a written auth.json parses");
    assert_eq!(again.to_bytes(), written, "auth.json round-trip");
    if let Ok(account) = codex_broker::engine::store::Account::from_auth(&auth) {
        let back = account.to_auth(serde_json::Map::new());
        if let Some(back) = back {
            AuthDotJson::parse(&back.to_bytes()).expect("an account's auth.json parses");
        }
    }
    Verdict::Accepted
}

/// accounts.json: accepted stores save and load to the same bytes.
fn accounts_json(input: &[u8]) -> Verdict {
    let path = Path::new("accounts.json");
    let Ok(store) = codex_broker::engine::store::parse_store(path, input) else {
        return Verdict::Rejected;
    };
    let written = serde_json::to_vec_pretty(&store).expect("a store serializes");
    let again =
        codex_broker::engine::store::parse_store(path, &written).expect("a written store parses");
    let rewritten = serde_json::to_vec_pretty(&again).expect("a store serializes");
    assert_eq!(rewritten, written, "accounts.json round-trip");
    Verdict::Accepted
}

/// config.toml: any file gives a config or an error, never a panic.
fn config_toml(input: &[u8]) -> Verdict {
    codex_broker::engine::config::Config::parse(Path::new("config.toml"), input)
        .is_ok()
        .into()
}

/// JWT claims: decoding never panics and dates stay in range.
fn jwt(input: &[u8]) -> Verdict {
    let Ok(text) = std::str::from_utf8(input) else {
        return Verdict::Rejected;
    };
    let Ok(claims) = codex_broker::wire::jwt::decode(text) else {
        return Verdict::Rejected;
    };
    for date in [claims.exp, claims.iat].into_iter().flatten() {
        assert!(date.unsigned_abs() <= 253_402_300_799, "date {date}");
    }
    Verdict::Accepted
}

/// A quota that the store takes must be one it can read back.
fn assert_storable(quota: &Quota) {
    let written = serde_json::to_vec(quota).expect("a quota serializes");
    let again: Quota = serde_json::from_slice(&written).expect("a written quota parses");
    assert_eq!(&again, quota, "quota round-trip");
}

/// Quota headers, one `name: value` per line.
fn quota_headers(input: &[u8]) -> Verdict {
    let text = String::from_utf8_lossy(input);
    let headers: HashMap<String, &str> = text
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value))
        .collect();
    let quota = Quota::from_headers(|name| headers.get(name).copied(), NOW);
    if let Some(quota) = &quota {
        assert_storable(quota);
    }
    quota.is_some().into()
}

/// 429 `usage_limit_reached` bodies and `/wham/usage` answers.
fn usage_bodies(input: &[u8]) -> Verdict {
    let Ok(body) = serde_json::from_slice::<Value>(input) else {
        return Verdict::Rejected;
    };
    let usage = Quota::from_usage(&body, NOW);
    if let Some(quota) = &usage {
        assert_storable(quota);
    }
    let mut limit = false;
    for previous in [None, usage.as_ref()] {
        if let Some(quota) = Quota::from_usage_limit(&body, previous, NOW) {
            assert_storable(&quota);
            limit = true;
        }
    }
    (usage.is_some() || limit).into()
}

/// SSE framing, as assembled into a `stream:false` answer.
fn sse(input: &[u8]) -> Verdict {
    match codex_broker::wire::responses::assemble(input) {
        Ok(answer) => {
            serde_json::to_vec(&answer).expect("an assembled answer serializes");
            Verdict::Accepted
        }
        Err((status, body)) => {
            assert!(status.is_client_error() || status.is_server_error());
            assert!(body.get("error").is_some(), "{body}");
            Verdict::Rejected
        }
    }
}

/// The `/v1/responses` rewrite into the Codex shape.
fn responses_rewrite(input: &[u8]) -> Verdict {
    let Ok(body) = serde_json::from_slice::<Value>(input) else {
        return Verdict::Rejected;
    };
    let Ok((rewritten, _stream)) = codex_broker::wire::responses::rewrite(body) else {
        return Verdict::Rejected;
    };
    let written = serde_json::to_vec(&rewritten).expect("a rewritten body serializes");
    let again: Value = serde_json::from_slice(&written).expect("it parses back");
    let (twice, _) =
        codex_broker::wire::responses::rewrite(again.clone()).expect("a rewrite is accepted");
    assert_eq!(twice, again, "the rewrite is idempotent");
    Verdict::Accepted
}

/// A Chat Completions request mapped to the Responses shape: what is
/// accepted is one the `/v1/responses` rewrite takes too, with the model
/// and the stream flag it asked for, and no field the backend rejects.
fn chat_completions(input: &[u8]) -> Verdict {
    let Ok(body) = serde_json::from_slice::<Value>(input) else {
        return Verdict::Rejected;
    };
    let asked_stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let Ok(mapped) = codex_broker::wire::chat::request(body.clone()) else {
        return Verdict::Rejected;
    };
    assert_eq!(mapped.stream, asked_stream);
    assert_eq!(body["model"], mapped.body["model"]);
    for dropped in ["temperature", "max_tokens", "n", "messages", "user", "stop"] {
        assert!(mapped.body.get(dropped).is_none(), "{dropped} passed on");
    }
    let messages = body["messages"].as_array().map_or(0, Vec::len);
    let items = mapped.body["input"]
        .as_array()
        .expect("input is a list")
        .len();
    assert!(
        items <= 2 * messages + count_calls(&body),
        "{items} items of {messages}"
    );
    let (rewritten, stream) = codex_broker::wire::responses::rewrite(mapped.body)
        .expect("a mapped request is one the rewrite takes");
    assert_eq!(stream, asked_stream);
    assert_eq!(rewritten["store"], false);
    Verdict::Accepted
}

/// The tool calls of a chat request's assistant messages.
fn count_calls(body: &Value) -> usize {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["tool_calls"].as_array())
        .map(Vec::len)
        .sum()
}

/// A backend SSE stream told as chat chunks, in pieces: every event out is
/// a JSON chunk (or error) or the one `[DONE]`, last; the pieces do not
/// change what comes out. Accepted when the stream finished.
fn chat_stream(input: &[u8]) -> Verdict {
    let [piece, stream @ ..] = input else {
        return Verdict::Rejected;
    };
    let told = |piece: usize| {
        let mut scan = codex_broker::wire::sse_scan::SseScan::every();
        let mut chat = codex_broker::wire::chat_stream::ChatStream::new("m", NOW, true);
        let mut out = Vec::new();
        for bytes in stream.chunks(piece.max(1)) {
            scan.feed(bytes, |event| chat.event(event, &mut out));
        }
        out
    };
    let out = told(stream.len().max(1));
    assert_eq!(out, told(usize::from(*piece)), "the same chunks, in pieces");
    let text = std::str::from_utf8(&out).expect("chunks are UTF-8");
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    for (i, event) in events.iter().enumerate() {
        let data = event.strip_prefix("data: ").expect("only data lines");
        if data == "[DONE]" {
            assert_eq!(i, events.len() - 1, "[DONE] comes last, once");
            continue;
        }
        let chunk: Value = serde_json::from_str(data).expect("each chunk is JSON");
        assert!(
            chunk.get("object").is_some() || chunk.get("error").is_some(),
            "{data}"
        );
    }
    (events.last() == Some(&"data: [DONE]")).into()
}

/// A socket API request: the query on the first line, the body after it.
fn socket_request(input: &[u8]) -> Verdict {
    let (query, body) = match input.iter().position(|b| *b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &[][..]),
    };
    let query = String::from_utf8_lossy(query);
    let ttl = codex_broker::socket::min_ttl(&codex_broker::socket::parse_query(Some(&query)));
    if let Ok(ttl) = ttl {
        assert!((0..=i64::from(u32::MAX)).contains(&ttl), "min_ttl {ttl}");
    }
    let report = codex_broker::socket::parse_report(body);
    if let Ok(report) = &report {
        let headers: HashMap<String, &str> = report
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
            .collect();
        if let Some(quota) = Quota::from_headers(|name| headers.get(name).copied(), NOW) {
            assert_storable(&quota);
        }
        if let Some(quota) = Quota::from_usage_limit(&report.body, None, NOW) {
            assert_storable(&quota);
        }
    }
    (ttl.is_ok() && report.is_ok()).into()
}

/// WebSocket frames, one way: the first byte picks the way and whether
/// permessage-deflate was agreed, the second how the rest arrives in
/// pieces. Walked whole and in pieces, the frames give the same messages
/// and the same verdict, and the walker never passes on more than it got.
fn websocket_frames(input: &[u8]) -> Verdict {
    let [flags, piece, stream @ ..] = input else {
        return Verdict::Rejected;
    };
    let way = if flags & 1 == 0 {
        Way::ToClient
    } else {
        Way::ToUpstream
    };
    let deflate = (flags & 2 != 0).then_some(Deflate {
        server_no_context_takeover: flags & 4 != 0,
        client_no_context_takeover: flags & 4 != 0,
    });
    let whole = walk_frames(way, deflate, stream, stream.len().max(1));
    let pieces = walk_frames(way, deflate, stream, usize::from(*piece).max(1));
    assert_eq!(whole, pieces, "the same frames, in pieces");
    whole.2.is_none().into()
}

/// What walking `stream` in pieces of `piece` bytes gives: the messages
/// observed, the bytes passed on (without a protocol error), the error.
type Walked = (Vec<Vec<u8>>, Option<usize>, Option<String>);

fn walk_frames(way: Way, deflate: Option<Deflate>, stream: &[u8], piece: usize) -> Walked {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let messages = {
        let seen = seen.clone();
        let observer = Box::new(move |text: &[u8]| {
            assert!(
                !text.is_empty() && text.len() <= INSPECT_CAP,
                "{}",
                text.len()
            );
            seen.lock().expect("not poisoned").push(text.to_vec());
        });
        Some(match way {
            Way::ToClient => Messages::new(deflate, observer),
            Way::ToUpstream => Messages::of_client(deflate, INSPECT_CAP, observer),
        })
    };
    let mut frames = Frames::new(way, deflate.is_some(), messages);
    let mut buf = Vec::new();
    let mut passed = 0;
    let mut error = None;
    for bytes in stream.chunks(piece) {
        buf.extend_from_slice(bytes);
        match frames.walk(&buf) {
            Ok(n) => {
                assert!(n <= buf.len(), "passed {n} of {} bytes", buf.len());
                passed += n;
                buf.drain(..n);
            }
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    if error.is_none() {
        assert_eq!(
            passed + buf.len(),
            stream.len(),
            "every byte passed or kept"
        );
        assert!(
            buf.len() < 14,
            "{} bytes kept: more than a frame head",
            buf.len()
        );
    }
    let seen = seen.lock().expect("not poisoned").clone();
    (seen, error.is_none().then_some(passed), error)
}
