//! Request dumps, to see why a prompt cache missed: each request the
//! forwarder sends to the backend leaves `<time>-<n>.body.json` (its body
//! as sent, decoded when it was compressed) and `<time>-<n>.meta.json`
//! (method, path, account, status, timings, headers with every credential
//! redacted), 0600 in a 0700 folder; past the cap the oldest files go.
//! Bodies hold prompts: dumps are off unless asked for.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::config::Dumps;
use crate::base::fsutil::{self, FsError};
use crate::wire::encoding::decode;

/// What a redacted header value becomes.
pub const REDACTED: &str = "[redacted]";
/// The most a compressed body is decoded to for its dump.
const DECODED_CAP: usize = 64 * 1024 * 1024;
/// Headers that carry credentials, whatever their value looks like.
const SECRET_HEADERS: [&str; 7] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "openai-api-key",
];

/// One request sent upstream, and what came of it.
pub struct Dump {
    pub method: String,
    pub url: String,
    pub account_id: String,
    /// The answer's status, when one came.
    pub status: Option<u16>,
    /// Why no answer came.
    pub error: Option<String>,
    pub started_at: OffsetDateTime,
    /// Milliseconds until the answer's head came (or the failure).
    pub head_ms: u64,
    pub headers: HeaderMap,
    /// The body as sent; `None` when it was streamed, not kept.
    pub body: Option<Bytes>,
}

/// Where dumps go, and whether they are written.
pub struct Dumper {
    /// The settings but `enabled`, which is [`Dumper::on`].
    settings: Dumps,
    /// Read for every request sent upstream: no lock.
    on: AtomicBool,
    seq: AtomicU64,
    /// One writer prunes at a time.
    writing: Mutex<()>,
}

impl Dumper {
    pub fn new(settings: Dumps) -> Dumper {
        Dumper {
            on: AtomicBool::new(settings.enabled),
            settings,
            seq: AtomicU64::new(0),
            writing: Mutex::new(()),
        }
    }

    pub fn settings(&self) -> Dumps {
        Dumps {
            enabled: self.enabled(),
            ..self.settings.clone()
        }
    }

    pub fn enabled(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    pub fn set_enabled(&self, enabled: bool) {
        self.on.store(enabled, Ordering::Relaxed);
    }

    /// Writes the two files of `dump` and removes the oldest past the cap
    /// (blocking: run it off the runtime's threads).
    pub fn write(&self, dump: &Dump) -> Result<(), FsError> {
        let settings = &self.settings;
        let _one = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        private_dir(&settings.dir)?;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let stem = format!("{}-{n:06}", stamp(dump.started_at));
        let body_file = dump.body.as_ref().map(|body| {
            let encoding = dump.headers.get(http::header::CONTENT_ENCODING);
            let encoding = encoding.and_then(|v| v.to_str().ok());
            (
                format!("{stem}.body.json"),
                decode(encoding, body, DECODED_CAP).unwrap_or_else(|_| body.to_vec()),
            )
        });
        if let Some((name, bytes)) = &body_file {
            fsutil::write_atomic(&settings.dir.join(name), bytes)?;
        }
        let meta = meta(dump, body_file.as_ref().map(|(name, _)| name.as_str()));
        let mut text = serde_json::to_vec_pretty(&meta).expect("JSON always serializes");
        text.push(b'\n');
        fsutil::write_atomic(&settings.dir.join(format!("{stem}.meta.json")), &text)?;
        prune(&settings.dir, settings.max_files);
        Ok(())
    }
}

/// Creates `dir` 0700 (or tightens it); one another user owns is refused.
fn private_dir(dir: &Path) -> Result<(), FsError> {
    fsutil::ensure_private_dir(dir)?;
    let meta = std::fs::metadata(dir).map_err(|e| FsError::new("cannot inspect", dir, e))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(FsError::new(
            "refusing to dump into",
            dir,
            std::io::Error::other(format!("it belongs to uid {}, not to you", meta.uid())),
        ));
    }
    Ok(())
}

/// `20261207T235901.123Z`: sorts as time goes.
fn stamp(at: OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
    );
    at.format(&format).unwrap_or_default()
}

fn meta(dump: &Dump, body_file: Option<&str>) -> Value {
    let path = dump
        .url
        .parse::<http::Uri>()
        .map(|u| u.path().to_owned())
        .unwrap_or_default();
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    json!({
        "method": dump.method,
        "path": path,
        "account_id": dump.account_id,
        "status": dump.status,
        "error": dump.error,
        "timings": {
            "started_at": dump.started_at.format(rfc3339).unwrap_or_default(),
            "head_ms": dump.head_ms,
        },
        "headers": redacted(&dump.headers),
        "body_file": body_file,
        "body_bytes": dump.body.as_ref().map(Bytes::len),
    })
}

/// The headers as JSON, every credential replaced by [`REDACTED`]: those
/// named for one, and any value that looks like a token.
pub fn redacted(headers: &HeaderMap) -> Value {
    let mut out = Map::new();
    for name in headers.keys() {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| {
                let text = String::from_utf8_lossy(v.as_bytes());
                if secret(name.as_str(), &text) || v.is_sensitive() {
                    REDACTED.to_owned()
                } else {
                    text.into_owned()
                }
            })
            .collect();
        out.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
    }
    Value::Object(out)
}

fn secret(name: &str, value: &str) -> bool {
    let looks_secret = |text: &str| {
        let lower = text.to_ascii_lowercase();
        [
            "token", "secret", "password", "bearer ", "basic ", "eyj", "sk-",
        ]
        .iter()
        .any(|mark| lower.contains(mark))
    };
    SECRET_HEADERS.contains(&name) || looks_secret(name) || looks_secret(value)
}

/// Removes the oldest dump files of `dir` while more than `max` remain.
fn prune(dir: &PathBuf, max: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(|c: char| c.is_ascii_digit())
                && (n.ends_with(".body.json") || n.ends_with(".meta.json"))
        })
        .collect();
    if names.len() <= max {
        return;
    }
    names.sort();
    for name in &names[..names.len() - max] {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use http::HeaderValue;

    use super::*;

    fn dump(headers: HeaderMap, body: &[u8]) -> Dump {
        Dump {
            method: "POST".into(),
            url: "http://127.0.0.1:9/backend-api/codex/responses?x=1".into(),
            account_id: "acc-main".into(),
            status: Some(200),
            error: None,
            started_at: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
            head_ms: 12,
            headers,
            body: Some(Bytes::from(body.to_vec())),
        }
    }

    fn dumper(dir: &Path, max_files: usize) -> Dumper {
        Dumper::new(Dumps {
            enabled: true,
            dir: dir.to_owned(),
            max_files,
        })
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_dump_is_complete_private_and_redacted() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("dumps");
        let mut headers = HeaderMap::new();
        let mut bearer = HeaderValue::from_static("Bearer eyJhbGciOi.secret.sig");
        bearer.set_sensitive(true);
        headers.insert("authorization", bearer);
        headers.insert("cookie", HeaderValue::from_static("a=b"));
        headers.insert("x-refresh-token", HeaderValue::from_static("plain"));
        headers.insert("x-odd", HeaderValue::from_static("eyJraWQ.payload.sig"));
        headers.insert("chatgpt-account-id", HeaderValue::from_static("acc-main"));
        headers.insert("session-id", HeaderValue::from_static("s-1"));
        headers.insert("content-encoding", HeaderValue::from_static("zstd"));
        let plain = br#"{"model":"m","input":"hello"}"#;
        let body = zstd::encode_all(&plain[..], 3).unwrap();
        dumper(&dir, 10).write(&dump(headers, &body)).unwrap();

        let names = files(&dir);
        assert_eq!(
            names,
            [
                "20270115T080000.000Z-000000.body.json",
                "20270115T080000.000Z-000000.meta.json"
            ]
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for name in &names {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }
        assert_eq!(std::fs::read(dir.join(&names[0])).unwrap(), plain);
        let text = std::fs::read_to_string(dir.join(&names[1])).unwrap();
        assert!(!text.contains("eyJ") && !text.contains("a=b") && !text.contains("plain"));
        let meta: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(meta["method"], "POST");
        assert_eq!(meta["path"], "/backend-api/codex/responses");
        assert_eq!(meta["account_id"], "acc-main");
        assert_eq!(meta["status"], 200);
        assert_eq!(meta["timings"]["head_ms"], 12);
        assert_eq!(meta["timings"]["started_at"], "2027-01-15T08:00:00Z");
        let h = &meta["headers"];
        for secret in ["authorization", "cookie", "x-refresh-token", "x-odd"] {
            assert_eq!(h[secret], REDACTED, "{secret}");
        }
        assert_eq!(h["chatgpt-account-id"], "acc-main");
        assert_eq!(h["session-id"], "s-1");
        assert_eq!(meta["body_bytes"], body.len());
    }

    #[test]
    fn the_oldest_files_go_past_the_cap() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("dumps");
        let dumper = dumper(&dir, 4);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        for n in 0..5 {
            let mut d = dump(HeaderMap::new(), b"{}");
            d.started_at += time::Duration::seconds(n);
            dumper.write(&d).unwrap();
        }
        let names = files(&dir);
        assert_eq!(names.len(), 5, "{names:?}");
        assert!(names.contains(&"notes.txt".to_owned()), "not a dump: kept");
        assert!(names[0].contains("-000003."), "{names:?}");
    }

    #[test]
    fn a_streamed_body_leaves_its_meta_alone() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("dumps");
        let mut d = dump(HeaderMap::new(), b"");
        d.body = None;
        (d.status, d.error) = (None, Some("cannot reach 127.0.0.1".into()));
        dumper(&dir, 10).write(&d).unwrap();
        let names = files(&dir);
        assert_eq!(names.len(), 1);
        let meta: Value =
            serde_json::from_slice(&std::fs::read(dir.join(&names[0])).unwrap()).unwrap();
        assert_eq!(meta["body_file"], Value::Null);
        assert_eq!(meta["status"], Value::Null);
        assert_eq!(meta["error"], "cannot reach 127.0.0.1");
    }
}
