//! Property tests for every parser of outside input, and the replay of the
//! seed corpus the fuzz harness starts from. Each input goes through the
//! same entry point as the harness (`examples/fuzz/targets.rs`), which checks that
//! nothing panics and that what is accepted round-trips through a save and
//! a load; the properties below add what each parser promises on its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[path = "../../examples/fuzz/targets.rs"]
mod targets;

use codex_broker::engine::quota::Quota;
use codex_broker::wire::jwt;
use codex_broker::wire::ws_frame::Way;
use codex_broker::wire::ws_message::{Deflate, Messages};
use codex_broker::wire::ws_walk::Frames;
use proptest::prelude::*;
use serde_json::{Value, json};
use targets::{TARGETS, Verdict, target};

fn run(name: &str, input: &[u8]) -> Verdict {
    (target(name).expect("a target of that name").run)(input)
}

/// Runs the target on input that is valid: it must be accepted, or the
/// target's round trips were never exercised.
fn accepted(name: &str, input: &[u8]) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        run(name, input),
        Verdict::Accepted,
        "{} refused valid input: {}",
        name,
        String::from_utf8_lossy(input)
    );
    Ok(())
}

#[test]
fn the_seed_corpus_replays_clean() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/fuzz");
    for t in TARGETS {
        let dir = root.join(t.name);
        let (mut seeds, mut taken) = (0, 0);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            taken += usize::from((t.run)(&std::fs::read(&path).unwrap()) == Verdict::Accepted);
            seeds += 1;
        }
        assert!(seeds > 0, "no seeds for {}", t.name);
        assert!(taken > 0, "no seed of {} is accepted", t.name);
    }
}

/// Numbers as text, the way headers and hostile files write them.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f64>().prop_map(|f| f.to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<u64>().prop_map(|u| u.to_string()),
        Just("NaN".to_string()),
        Just("inf".to_string()),
        Just("-inf".to_string()),
        Just("1e400".to_string()),
        Just(" 42 ".to_string()),
        "[0-9eE.+-]{0,12}",
    ]
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<u64>().prop_map(|u| json!(u)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::hash_map("[a-z_]{1,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One of a few likely values for a field, or anything at all.
fn field(likely: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::sample::select(likely).prop_map(|s| json!(s)),
        1 => json_value(),
    ]
}

fn jwt_with(claims: Value) -> String {
    jwt::encode_unsigned(&claims)
}

/// JWT claims of every shape the issuer, or an attacker, may send.
fn claims() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            any::<i64>().prop_map(|i| json!(i)),
            any::<f64>().prop_map(|f| json!(f)),
            json_value()
        ],
        prop_oneof![any::<i64>().prop_map(|i| json!(i)), json_value()],
        field(&["acc-1", "acc-2", ""]),
        field(&["plus", "pro", "team"]),
        json_value(),
    )
        .prop_map(|(exp, iat, account, plan, extra)| {
            json!({
                "exp": exp,
                "iat": iat,
                "email": "a@example.com",
                "https://api.openai.com/auth": {
                    "chatgpt_account_id": account,
                    "chatgpt_plan_type": plan,
                },
                "extra": extra,
            })
        })
}

/// auth.json files: Codex's shape with any field replaced.
fn auth_json() -> impl Strategy<Value = Value> {
    (
        field(&["chatgpt", "apikey", "ChatGPT", "chatgptAuthTokens"]),
        claims(),
        claims(),
        field(&["rt-1", ""]),
        field(&["acc-1", "acc-2"]),
        field(&[
            "2026-11-01T10:00:00Z",
            "2026-11-01T10:00:00.123456789Z",
            "yesterday",
        ]),
        prop::option::of(field(&["sk-test", ""])),
        json_value(),
    )
        .prop_map(|(mode, id, access, refresh, account, last, key, extra)| {
            let mut auth = json!({
                "auth_mode": mode,
                "tokens": {
                    "id_token": jwt_with(id),
                    "access_token": jwt_with(access),
                    "refresh_token": refresh,
                    "account_id": account,
                },
                "last_refresh": last,
                "extra": extra,
            });
            if let Some(key) = key {
                auth["OPENAI_API_KEY"] = key;
            }
            auth
        })
}

fn window() -> impl Strategy<Value = Value> {
    (
        any::<f64>(),
        json_value(),
        any::<i64>(),
        prop::option::of(any::<i64>()),
    )
        .prop_map(|(used, minutes, reset, after)| {
            let mut w =
                json!({"used_percent": used, "window_minutes": minutes, "resets_at": reset});
            if let Some(after) = after {
                w["limit_window_seconds"] = json!(after);
                w["reset_after_seconds"] = json!(after);
                w["reset_at"] = json!(reset);
            }
            w
        })
}

/// accounts.json: a store of a few accounts with any quota and fields.
fn store() -> impl Strategy<Value = Value> {
    let account = (
        "[a-z0-9-]{1,10}",
        field(&["main", "fallback"]),
        field(&["chatgpt", "api_key"]),
        claims(),
        prop::option::of((window(), window())),
        any::<i64>(),
        json_value(),
    )
        .prop_map(|(id, role, kind, access, quota, expires, extra)| {
            json!({
                "id": id,
                "role": role,
                "kind": kind,
                "state": "ok",
                "tokens": {"id_token": jwt_with(access.clone()), "access_token": jwt_with(access), "refresh_token": format!("rt-{id}")},
                "last_refresh": "2026-11-01T10:00:00Z",
                "expires_at": expires,
                "quota": quota.map(|(five, week)| json!({"five_hour": five, "weekly": week, "source": "headers", "observed_at": 0})),
                "extra": extra,
            })
        });
    (
        prop::collection::vec(account, 0..4),
        field(&["main-first", "round-robin"]),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(accounts, routing, version)| {
            json!({"version": version.unwrap_or(1), "routing": routing, "accounts": accounts})
        })
}

/// A unix time the broker believes (years 1970 to 2100).
fn plausible_time() -> impl Strategy<Value = i64> {
    0i64..4_102_444_800
}

/// Claims the issuer sends: a ChatGPT account, its plan, dates in range.
fn valid_claims() -> impl Strategy<Value = Value> {
    (
        plausible_time(),
        plausible_time(),
        "acc-[a-z0-9]{1,8}",
        prop::sample::select(&["plus", "pro", "team"][..]),
    )
        .prop_map(|(exp, iat, account, plan)| {
            json!({
                "exp": exp,
                "iat": iat,
                "email": "a@example.com",
                "https://api.openai.com/auth": {
                    "chatgpt_account_id": account,
                    "chatgpt_plan_type": plan,
                },
            })
        })
}

/// auth.json as Codex writes it after a ChatGPT login.
fn valid_auth_json() -> impl Strategy<Value = Value> {
    (valid_claims(), "rt-[a-zA-Z0-9_-]{1,40}", any::<bool>()).prop_map(|(claims, refresh, mode)| {
        let account = claims["https://api.openai.com/auth"]["chatgpt_account_id"].clone();
        let mut auth = json!({
            "tokens": {
                "id_token": jwt_with(claims.clone()),
                "access_token": jwt_with(claims),
                "refresh_token": refresh,
                "account_id": account,
            },
            "last_refresh": "2026-11-01T10:00:00Z",
        });
        if mode {
            auth["auth_mode"] = json!("chatgpt");
        }
        auth
    })
}

/// A used share, window and reset the backend sends.
fn valid_window() -> impl Strategy<Value = (f64, i64, i64)> {
    (0.0f64..=100.0, 1i64..=10_080, 0i64..366 * 86_400)
}

/// accounts.json as the broker writes it: distinct ids, stored quota.
fn valid_store() -> impl Strategy<Value = Value> {
    let account = (
        valid_claims(),
        prop::option::of(plausible_time()),
        prop::option::of(valid_window()),
        any::<bool>(),
    );
    prop::collection::vec(account, 0..4).prop_map(|accounts| {
        let accounts: Vec<Value> = accounts
            .into_iter()
            .enumerate()
            .map(|(i, (claims, expires, window, main))| {
                let token = jwt_with(claims);
                let mut a = json!({
                    "id": format!("acc-{i}"),
                    "kind": "chatgpt",
                    "role": if main { "main" } else { "fallback" },
                    "tokens": {"id_token": token, "access_token": token, "refresh_token": format!("rt-{i}")},
                    "last_refresh": "2026-11-01T10:00:00Z",
                    "expires_at": expires,
                });
                if let Some((used, minutes, reset)) = window {
                    a["quota"] = json!({"five_hour": {"used_percent": used,
                        "window_minutes": minutes, "resets_at": 1_800_000_000 + reset},
                        "source": "headers", "observed_at": 1_800_000_000});
                }
                a
            })
            .collect();
        json!({"version": 1, "routing": "main-first", "accounts": accounts})
    })
}

/// A streamed answer as the backend sends it: created, text deltas, done.
fn valid_sse() -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec("[ -~]{0,20}", 0..6), any::<bool>()).prop_map(|(deltas, crlf)| {
        let end = if crlf { "\r\n" } else { "\n" };
        let event = |name: &str, data: Value| format!("event: {name}{end}data: {data}{end}{end}");
        let mut out = event(
            "response.created",
            json!({"type": "response.created", "response": {"id": "r", "status": "in_progress", "output": []}}),
        );
        for delta in &deltas {
            out += &event(
                "response.output_text.delta",
                json!({"type": "response.output_text.delta", "delta": delta}),
            );
        }
        let text = deltas.concat();
        out += &event(
            "response.completed",
            json!({"type": "response.completed", "response": {"id": "r", "status": "completed",
                "output": [{"type": "message", "role": "assistant",
                    "content": [{"type": "output_text", "text": text}]}]}}),
        );
        out.into_bytes()
    })
}

/// SSE streams: known and unknown events, broken data lines, both line ends.
fn sse_stream() -> impl Strategy<Value = Vec<u8>> {
    let event = (
        prop::sample::select(
            &[
                "response.created",
                "response.output_text.delta",
                "response.output_item.done",
                "response.completed",
                "response.failed",
                "error",
                "other",
            ][..],
        ),
        prop_oneof![json_value().prop_map(|v| v.to_string()), ".{0,40}"],
        any::<bool>(),
    )
        .prop_map(|(name, data, crlf)| {
            let end = if crlf { "\r\n" } else { "\n" };
            format!("event: {name}{end}data: {data}{end}{end}")
        });
    prop::collection::vec(event, 0..12).prop_map(|events| events.concat().into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn valid_files_and_bodies_are_accepted(
        auth in valid_auth_json(),
        store in valid_store(),
        ahead in 0u32..86_400,
        claims in valid_claims(),
        (used, minutes, reset) in valid_window(),
        sse in valid_sse(),
        prompt in "[ -~]{1,40}",
        stream in any::<bool>(),
        min_ttl in 0u32..86_400,
    ) {
        accepted("auth_json", &serde_json::to_vec(&auth).unwrap())?;
        accepted("accounts_json", &serde_json::to_vec(&store).unwrap())?;
        let config = format!("issuer = \"https://auth.example\"\nrefresh_ahead = {ahead}\n");
        accepted("config_toml", config.as_bytes())?;
        accepted("jwt", jwt_with(claims).as_bytes())?;
        let now = 1_800_000_000;
        let headers = format!(
            "x-codex-primary-used-percent: {used}\nx-codex-primary-window-minutes: {minutes}\n\
             x-codex-primary-reset-at: {}\n",
            now + reset
        );
        accepted("quota_headers", headers.as_bytes())?;
        let limit = json!({"error": {"type": "usage_limit_reached", "resets_at": now + reset}});
        accepted("usage_bodies", &serde_json::to_vec(&limit).unwrap())?;
        let usage = json!({"rate_limit": {"primary_window": {"used_percent": used,
            "limit_window_seconds": minutes * 60, "reset_at": now + reset}}});
        accepted("usage_bodies", &serde_json::to_vec(&usage).unwrap())?;
        accepted("sse", &sse)?;
        let body = json!({"model": "m", "input": prompt, "stream": stream});
        accepted("responses_rewrite", &serde_json::to_vec(&body).unwrap())?;
        let chat = json!({"model": "m", "stream": stream, "temperature": 0.5,
            "messages": [{"role": "system", "content": prompt}, {"role": "user", "content": prompt}]});
        accepted("chat_completions", &serde_json::to_vec(&chat).unwrap())?;
        let report = json!({"account_id": "acc-1", "status": 429,
            "headers": {"x-codex-primary-used-percent": used.to_string()}, "body": limit});
        accepted("socket_request", format!("account=acc-1&min_ttl={min_ttl}\n{report}").as_bytes())?;
    }

    #[test]
    fn auth_json_files_round_trip(auth in auth_json()) {
        run("auth_json", &serde_json::to_vec(&auth).unwrap());
    }

    #[test]
    fn arbitrary_bytes_never_break_a_parser(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for t in TARGETS {
            (t.run)(&bytes);
        }
    }

    #[test]
    fn stores_round_trip(store in store()) {
        run("accounts_json", &serde_json::to_vec(&store).unwrap());
    }

    #[test]
    fn config_files_give_a_config_or_an_error(
        issuer in field(&["https://auth.example", "ftp://x", ""]),
        ahead in prop_oneof![json_value(), number_text().prop_map(Value::String)],
        extra in "[a-z]{1,8}",
    ) {
        let text = format!(
            "issuer = {issuer}\nrefresh_ahead = {ahead}\n{extra} = 1\n",
        );
        run("config_toml", text.as_bytes());
    }

    #[test]
    fn jwt_dates_are_held_in_range(exp in any::<i64>(), iat in any::<f64>()) {
        let token = jwt_with(json!({"exp": exp, "iat": iat}));
        let claims = jwt::decode(&token).unwrap();
        const LIMIT: i64 = 253_402_300_799;
        prop_assert_eq!(claims.exp, Some(exp.clamp(-LIMIT, LIMIT)));
        if iat.is_finite() {
            let got = claims.iat.unwrap();
            prop_assert!(got.abs() <= LIMIT);
        }
        run("jwt", token.as_bytes());
    }

    #[test]
    fn any_claims_decode_without_panic(claims in claims()) {
        run("jwt", jwt_with(claims).as_bytes());
    }

    #[test]
    fn quota_headers_store_only_finite_percentages(
        used in number_text(),
        minutes in number_text(),
        reset in number_text(),
        weekly in number_text(),
    ) {
        let headers: HashMap<&str, &str> = [
            ("x-codex-primary-used-percent", used.as_str()),
            ("x-codex-primary-window-minutes", minutes.as_str()),
            ("x-codex-primary-reset-at", reset.as_str()),
            ("x-codex-secondary-used-percent", weekly.as_str()),
        ]
        .into_iter()
        .collect();
        if let Some(quota) = Quota::from_headers(|name| headers.get(name).copied(), 1_800_000_000) {
            for w in [&quota.five_hour, &quota.weekly].into_iter().flatten() {
                prop_assert!(w.used_percent.is_finite() && w.used_percent >= 0.0);
            }
        }
        let text: String = headers.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
        run("quota_headers", text.as_bytes());
    }

    #[test]
    fn usage_bodies_store_only_what_reads_back(
        resets in prop_oneof![any::<i64>().prop_map(|i| json!(i)), json_value()],
        seconds in prop_oneof![any::<i64>().prop_map(|i| json!(i)), json_value()],
        primary in window(),
        secondary in window(),
    ) {
        let limit = json!({"error": {"type": "usage_limit_reached", "resets_at": resets, "resets_in_seconds": seconds}});
        run("usage_bodies", &serde_json::to_vec(&limit).unwrap());
        let usage = json!({"rate_limit": {"primary_window": primary, "secondary_window": secondary}});
        run("usage_bodies", &serde_json::to_vec(&usage).unwrap());
    }

    #[test]
    fn sse_streams_assemble_or_fail_cleanly(stream in sse_stream()) {
        run("sse", &stream);
    }

    #[test]
    fn responses_requests_rewrite_idempotently(
        input in prop_oneof![".{0,30}".prop_map(Value::String), json_value()],
        stream in json_value(),
        reasoning in json_value(),
        include in json_value(),
        extra in json_value(),
    ) {
        let body = json!({"model": "m", "input": input, "stream": stream,
            "reasoning": reasoning, "include": include, "temperature": extra});
        run("responses_rewrite", &serde_json::to_vec(&body).unwrap());
    }

    #[test]
    fn socket_requests_parse_or_fail_cleanly(
        query in "[a-z_=&%0-9-]{0,40}",
        ttl in number_text(),
        status in json_value(),
        headers in prop::collection::hash_map("[A-Za-z-]{1,30}", number_text(), 0..6),
        body in json_value(),
    ) {
        let report = json!({"account_id": "acc-1", "status": status, "headers": headers, "body": body});
        let input = format!("{query}&min_ttl={ttl}\n{report}");
        run("socket_request", input.as_bytes());
    }

    #[test]
    fn websocket_messages_come_out_whole_in_any_pieces(
        messages in prop::collection::vec("[ -~]{1,300}", 1..6),
        fragments in 1usize..4,
        compressed in any::<bool>(),
        no_takeover in any::<bool>(),
        piece in 1usize..64,
    ) {
        let stream = websocket_stream(&messages, fragments, compressed, no_takeover);
        let deflate = compressed.then_some(Deflate {
            server_no_context_takeover: no_takeover,
            client_no_context_takeover: false,
        });
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let observer = Box::new(move |text: &[u8]| {
            recorded.lock().unwrap().push(String::from_utf8(text.to_vec()).unwrap());
        });
        let mut frames = Frames::new(Way::ToClient, compressed, Some(Messages::new(deflate, observer)));
        let mut buf = Vec::new();
        for bytes in stream.chunks(piece) {
            buf.extend_from_slice(bytes);
            let passed = frames.walk(&buf).expect("valid frames are accepted");
            buf.drain(..passed);
        }
        prop_assert!(buf.is_empty() && frames.at_boundary());
        prop_assert_eq!(&*seen.lock().unwrap(), &messages);
        // The same stream goes through the fuzz target's checks.
        let flags = 2 * u8::from(compressed) + 4 * u8::from(no_takeover);
        let mut input = vec![flags, piece as u8];
        input.extend_from_slice(&stream);
        accepted("websocket_frames", &input)?;
    }
}

/// Text messages as a server sends them: unmasked, each in `fragments`
/// frames with a ping between two, compressed with one shared window (or a
/// fresh one per message) when `compressed`.
fn websocket_stream(
    messages: &[String],
    fragments: usize,
    compressed: bool,
    no_takeover: bool,
) -> Vec<u8> {
    let mut compressor = flate2::Compress::new(flate2::Compression::default(), false);
    let mut stream = Vec::new();
    for text in messages {
        let payload = if compressed {
            if no_takeover {
                compressor.reset();
            }
            let mut out = Vec::with_capacity(text.len() + 64);
            compressor
                .compress_vec(text.as_bytes(), &mut out, flate2::FlushCompress::Sync)
                .unwrap();
            out.truncate(out.len() - 4);
            out
        } else {
            text.clone().into_bytes()
        };
        let size = payload.len().div_ceil(fragments).max(1);
        let parts: Vec<&[u8]> = payload.chunks(size).collect();
        for (i, part) in parts.iter().enumerate() {
            let fin = if i + 1 == parts.len() { 0x80 } else { 0 };
            let opcode = if i == 0 {
                0x1 | if compressed { 0x40 } else { 0 }
            } else {
                0x0
            };
            server_frame(&mut stream, fin | opcode, part);
            if i == 0 {
                server_frame(&mut stream, 0x89, b"ping");
            }
        }
    }
    stream
}

fn server_frame(out: &mut Vec<u8>, first: u8, payload: &[u8]) {
    out.push(first);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}
