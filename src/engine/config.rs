//! Settings: `<home>/config.toml`, overridden by the environment.
//! Precedence: flag > environment > config.toml > default.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::base::fsutil::{self, FsError};
pub use crate::base::logging::LogFile;

pub const CONFIG_FILE: &str = "config.toml";
pub const DEFAULT_ISSUER: &str = "https://auth.openai.com";
pub const DEFAULT_CHATGPT_BASE: &str = "https://chatgpt.com/backend-api";
/// How long before expiry a token is refreshed by default, seconds.
pub const DEFAULT_REFRESH_AHEAD: i64 = 30 * 60;
/// How long a forwarded WebSocket connection may idle by default, seconds.
pub const DEFAULT_WEBSOCKET_IDLE: i64 = 30 * 60;
/// How often a follower asks its leader for the account list by default,
/// seconds.
pub const DEFAULT_FOLLOW_INTERVAL: i64 = 30;
/// How many forwarded WebSocket connections may be open at once by default.
pub const DEFAULT_MAX_WEBSOCKETS: usize = 256;
/// The most forwarded WebSocket connections a config may allow.
const MAX_WEBSOCKETS_LIMIT: i64 = 65_536;
/// Seconds a conversation idles before keep-warm sends it a shadow request.
pub const DEFAULT_CACHEKEEP_INTERVAL: i64 = 270;
/// Seconds after its last real request that keep-warm stops warming a
/// conversation.
pub const DEFAULT_CACHEKEEP_IDLE_CAP: i64 = 3600;
/// The cap for a Codex subagent's conversation, whatever `idle_cap` says.
pub const SUBAGENT_IDLE_CAP: i64 = 1800;
/// Where request dumps go unless `dump_dir` says otherwise (in the home).
pub const DEFAULT_DUMP_DIR: &str = "dumps";
/// Dump files kept by default; past it the oldest go.
pub const DEFAULT_DUMP_MAX_FILES: usize = 200;
/// An account past this share of a window is told as `quota_low`.
pub const DEFAULT_NOTIFY_QUOTA_PERCENT: f64 = 90.0;
/// A lasting state is told again after this many seconds by default.
pub const DEFAULT_NOTIFY_REPEAT: i64 = 6 * 3600;
/// A log file rotates at this size by default.
pub const DEFAULT_LOG_ROTATE_BYTES: u64 = 5 * 1024 * 1024;
/// Older log files kept by default.
pub const DEFAULT_LOG_ROTATE_MAX_FILES: usize = 3;
/// The most dump files a config may keep.
const DUMP_MAX_FILES_LIMIT: i64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The file as written by the user; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    issuer: Option<String>,
    chatgpt_base: Option<String>,
    refresh_ahead: Option<toml::Value>,
    websocket: Option<bool>,
    websocket_idle_timeout: Option<toml::Value>,
    max_websockets: Option<i64>,
    shield: Option<bool>,
    follow_interval: Option<toml::Value>,
    usage: Option<bool>,
    cachekeep: Option<CacheKeepFile>,
    dump: Option<bool>,
    dump_dir: Option<PathBuf>,
    dump_max_files: Option<i64>,
    log_file: Option<PathBuf>,
    log_rotate_bytes: Option<i64>,
    log_rotate_max_files: Option<i64>,
    notify: Option<NotifyFile>,
}

/// The `[notify]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyFile {
    desktop: Option<bool>,
    command: Option<Vec<String>>,
    webhook: Option<String>,
    quota_percent: Option<f64>,
    repeat: Option<toml::Value>,
}

/// The `[cachekeep]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheKeepFile {
    enabled: Option<bool>,
    interval: Option<toml::Value>,
    idle_cap: Option<toml::Value>,
    subagents: Option<bool>,
}

/// The settings in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The OAuth issuer, without a trailing slash.
    pub issuer: String,
    /// The ChatGPT backend, without a trailing slash.
    pub chatgpt_base: String,
    /// Refresh a token once less than this many seconds of it remain.
    pub refresh_ahead: i64,
    /// How the forwarder treats WebSocket upgrades.
    pub websocket: WebSockets,
    /// Publish auth.json with a stand-in refresh token, always
    /// ([`crate::engine::shield`]); `shield off` then refuses.
    pub shield: bool,
    /// Seconds between a follower's rounds with its leader.
    pub follow_interval: i64,
    /// Count the tokens of the answers the forwarder relays
    /// ([`crate::engine::usage`]); false leaves answers unread.
    pub usage: bool,
    /// Keep-warm of idle conversations' prompt caches.
    pub cachekeep: CacheKeep,
    /// Dumps of the requests the forwarder sends upstream.
    pub dumps: Dumps,
    /// The daemon's log file besides stderr, when one is kept.
    pub log_file: Option<LogFile>,
    /// Where notices go ([`crate::engine::notify`]).
    pub notify: Notify,
}

/// The `[notify]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Notify {
    /// Desktop notifications: `None` means wherever a session bus (or
    /// macOS) is there.
    pub desktop: Option<bool>,
    /// An argv run with each notice as JSON on stdin.
    pub command: Vec<String>,
    /// A URL each notice is POSTed to as JSON.
    pub webhook: Option<String>,
    /// An account past this share of a window is `quota_low`.
    pub quota_percent: f64,
    /// Seconds before a lasting state is told again.
    pub repeat: i64,
}

impl Default for Notify {
    fn default() -> Notify {
        Notify {
            desktop: None,
            command: Vec::new(),
            webhook: None,
            quota_percent: DEFAULT_NOTIFY_QUOTA_PERCENT,
            repeat: DEFAULT_NOTIFY_REPEAT,
        }
    }
}

/// Keep-warm: shadow requests that keep an idle conversation's prompt
/// cache alive ([`crate::engine::cachekeep`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheKeep {
    pub enabled: bool,
    /// Seconds a conversation idles before each shadow request.
    pub interval: i64,
    /// Seconds after its last real request that a conversation is warmed.
    pub idle_cap: i64,
    /// Warm Codex subagents' conversations too (capped at
    /// [`SUBAGENT_IDLE_CAP`]).
    pub subagents: bool,
}

impl Default for CacheKeep {
    fn default() -> Self {
        CacheKeep {
            enabled: false,
            interval: DEFAULT_CACHEKEEP_INTERVAL,
            idle_cap: DEFAULT_CACHEKEEP_IDLE_CAP,
            subagents: false,
        }
    }
}

impl CacheKeep {
    /// Whether a conversation of this kind is kept warm.
    pub fn keeps(&self, subagent: bool) -> bool {
        self.enabled && (!subagent || self.subagents)
    }

    /// How long after its last real request a conversation is warmed.
    pub fn cap(&self, subagent: bool) -> i64 {
        if subagent {
            self.idle_cap.min(SUBAGENT_IDLE_CAP)
        } else {
            self.idle_cap
        }
    }
}

/// Request dumps ([`crate::engine::dumps`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dumps {
    pub enabled: bool,
    /// The folder (0700) the files go to.
    pub dir: PathBuf,
    /// Files kept; past it the oldest go.
    pub max_files: usize,
}

/// The forwarder's WebSocket settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebSockets {
    /// Forward upgrades of `/codex/responses`; when false they get 426 and
    /// clients use HTTP (SSE).
    pub enabled: bool,
    /// Connections open at once; more get 426.
    pub max_open: usize,
    /// Seconds a connection may pass no frame before both sides get a close.
    pub idle_timeout: i64,
}

impl Default for WebSockets {
    fn default() -> Self {
        WebSockets {
            enabled: true,
            max_open: DEFAULT_MAX_WEBSOCKETS,
            idle_timeout: DEFAULT_WEBSOCKET_IDLE,
        }
    }
}

impl Config {
    /// Reads `<home>/config.toml` (absent is fine) and applies the
    /// `CODEX_BROKER_ISSUER`, `CODEX_BROKER_CHATGPT_BASE` and
    /// `CODEX_BROKER_REFRESH_AHEAD` variables.
    pub fn load(home: &Path) -> Result<Config, ConfigError> {
        let path = home.join(CONFIG_FILE);
        match fsutil::read_optional(&path)? {
            None => Config::parse(&path, b""),
            Some(bytes) => Config::parse(&path, &bytes),
        }
    }

    /// Makes the config from the bytes of `path` (empty: no file) and the
    /// environment.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let text = std::str::from_utf8(bytes).map_err(|_| invalid("not UTF-8".into()))?;
        let file: File = toml::from_str(text).map_err(|e| invalid(e.message().to_owned()))?;
        let refresh_ahead = refresh_ahead(file.refresh_ahead.as_ref(), &invalid)?;
        let idle_timeout = positive_duration(
            file.websocket_idle_timeout.as_ref(),
            DEFAULT_WEBSOCKET_IDLE,
            "`websocket_idle_timeout` must be a positive number of seconds or a duration such \
             as \"30m\"",
        )
        .map_err(invalid)?;
        let follow_interval = positive_duration(
            file.follow_interval.as_ref(),
            DEFAULT_FOLLOW_INTERVAL,
            "`follow_interval` must be a positive number of seconds or a duration such as \"30s\"",
        )
        .map_err(invalid)?;
        let max_open = max_websockets(file.max_websockets).map_err(invalid)?;
        let cachekeep = cachekeep(file.cachekeep.unwrap_or_default()).map_err(invalid)?;
        let home = path.parent().unwrap_or(Path::new("."));
        let dumps = Dumps {
            enabled: file.dump.unwrap_or(false),
            dir: home.join(
                file.dump_dir
                    .as_deref()
                    .unwrap_or(Path::new(DEFAULT_DUMP_DIR)),
            ),
            max_files: dump_max_files(file.dump_max_files).map_err(invalid)?,
        };
        let notify = notify(file.notify.unwrap_or_default()).map_err(invalid)?;
        let log_file = match file.log_file {
            None => None,
            Some(path) => Some(LogFile {
                path: home.join(path),
                rotate_bytes: log_rotate_bytes(file.log_rotate_bytes).map_err(invalid)?,
                max_files: log_rotate_max_files(file.log_rotate_max_files).map_err(invalid)?,
            }),
        };
        let issuer = env("CODEX_BROKER_ISSUER").or(file.issuer);
        let chatgpt_base = env("CODEX_BROKER_CHATGPT_BASE").or(file.chatgpt_base);
        Ok(Config {
            issuer: http_url(issuer, DEFAULT_ISSUER, "issuer").map_err(invalid)?,
            chatgpt_base: http_url(chatgpt_base, DEFAULT_CHATGPT_BASE, "chatgpt_base")
                .map_err(invalid)?,
            refresh_ahead,
            websocket: WebSockets {
                enabled: file.websocket.unwrap_or(true),
                max_open,
                idle_timeout,
            },
            shield: file.shield.unwrap_or(false),
            follow_interval,
            usage: file.usage.unwrap_or(true),
            cachekeep,
            dumps,
            log_file,
            notify,
        })
    }
}

/// A variable of the environment, unless unset or blank.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `value` (else `default`) as a base URL without its trailing slash;
/// only http(s) URLs are taken.
fn http_url(value: Option<String>, default: &str, key: &str) -> Result<String, String> {
    let value = value.unwrap_or_else(|| default.to_owned());
    let trimmed = value.trim().trim_end_matches('/').to_owned();
    if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
        Ok(trimmed)
    } else {
        Err(format!("`{key}` must be an http(s) URL"))
    }
}

/// How long before expiry tokens are refreshed: `CODEX_BROKER_REFRESH_AHEAD`,
/// else the file's `refresh_ahead`, else the default.
fn refresh_ahead(
    file: Option<&toml::Value>,
    invalid: &impl Fn(String) -> ConfigError,
) -> Result<i64, ConfigError> {
    if let Some(text) = env("CODEX_BROKER_REFRESH_AHEAD") {
        return parse_duration(&text).ok_or_else(|| ConfigError::Invalid {
            path: "CODEX_BROKER_REFRESH_AHEAD".into(),
            message: format!("`{text}` is not a duration such as 1800, \"30m\" or \"1h\""),
        });
    }
    match file {
        None => Ok(DEFAULT_REFRESH_AHEAD),
        Some(value) => duration_value(value).ok_or_else(|| {
            invalid(format!(
                "`refresh_ahead` must be seconds or a duration such as \"30m\", not {value}"
            ))
        }),
    }
}

/// A positive duration setting, or `default` when absent; `rule` says
/// what it must be when it is not.
fn positive_duration(value: Option<&toml::Value>, default: i64, rule: &str) -> Result<i64, String> {
    match value {
        None => Ok(default),
        Some(value) => duration_value(value)
            .filter(|s| *s > 0)
            .ok_or_else(|| format!("{rule}, not {value}")),
    }
}

/// The `max_websockets` setting, from 1 to [`MAX_WEBSOCKETS_LIMIT`].
fn max_websockets(value: Option<i64>) -> Result<usize, String> {
    match value {
        None => Ok(DEFAULT_MAX_WEBSOCKETS),
        Some(n) if (1..=MAX_WEBSOCKETS_LIMIT).contains(&n) => Ok(n as usize),
        Some(n) => Err(format!(
            "`max_websockets` must be from 1 to {MAX_WEBSOCKETS_LIMIT}, not {n} (to answer every \
             upgrade with 426, set websocket = false)"
        )),
    }
}

/// The `[cachekeep]` settings: positive durations.
fn cachekeep(file: CacheKeepFile) -> Result<CacheKeep, String> {
    let rule = |key: &str| {
        format!(
            "`cachekeep.{key}` must be a positive number of seconds or a duration such as \"5m\""
        )
    };
    Ok(CacheKeep {
        enabled: file.enabled.unwrap_or(false),
        interval: positive_duration(
            file.interval.as_ref(),
            DEFAULT_CACHEKEEP_INTERVAL,
            &rule("interval"),
        )?,
        idle_cap: positive_duration(
            file.idle_cap.as_ref(),
            DEFAULT_CACHEKEEP_IDLE_CAP,
            &rule("idle_cap"),
        )?,
        subagents: file.subagents.unwrap_or(false),
    })
}

/// The `dump_max_files` setting, from 1 to [`DUMP_MAX_FILES_LIMIT`].
fn dump_max_files(value: Option<i64>) -> Result<usize, String> {
    match value {
        None => Ok(DEFAULT_DUMP_MAX_FILES),
        Some(n) if (1..=DUMP_MAX_FILES_LIMIT).contains(&n) => Ok(n as usize),
        Some(n) => Err(format!(
            "`dump_max_files` must be from 1 to {DUMP_MAX_FILES_LIMIT}, not {n}"
        )),
    }
}

/// The `[notify]` settings, checked.
fn notify(file: NotifyFile) -> Result<Notify, String> {
    let quota_percent = file.quota_percent.unwrap_or(DEFAULT_NOTIFY_QUOTA_PERCENT);
    if !(quota_percent > 0.0 && quota_percent <= 100.0) {
        return Err(format!(
            "`notify.quota_percent` must be above 0 and at most 100, not {quota_percent}"
        ));
    }
    let command = file.command.unwrap_or_default();
    if command.first().is_some_and(|p| p.trim().is_empty()) {
        return Err("`notify.command` must start with a program".into());
    }
    let webhook = match file.webhook {
        Some(url) => Some(http_url(Some(url), "", "notify.webhook")?),
        None => None,
    };
    let repeat = positive_duration(
        file.repeat.as_ref(),
        DEFAULT_NOTIFY_REPEAT,
        "`notify.repeat` must be a positive number of seconds or a duration such as \"6h\"",
    )?;
    Ok(Notify {
        desktop: file.desktop,
        command,
        webhook,
        quota_percent,
        repeat,
    })
}

/// The `log_rotate_bytes` setting: at least 1 KiB.
fn log_rotate_bytes(value: Option<i64>) -> Result<u64, String> {
    match value {
        None => Ok(DEFAULT_LOG_ROTATE_BYTES),
        Some(n) if n >= 1024 => Ok(n as u64),
        Some(n) => Err(format!("`log_rotate_bytes` must be at least 1024, not {n}")),
    }
}

/// The `log_rotate_max_files` setting, from 1 to 100.
fn log_rotate_max_files(value: Option<i64>) -> Result<usize, String> {
    match value {
        None => Ok(DEFAULT_LOG_ROTATE_MAX_FILES),
        Some(n) if (1..=100).contains(&n) => Ok(n as usize),
        Some(n) => Err(format!(
            "`log_rotate_max_files` must be from 1 to 100, not {n}"
        )),
    }
}

fn duration_value(value: &toml::Value) -> Option<i64> {
    match value {
        toml::Value::Integer(secs) if *secs >= 0 => Some(*secs),
        toml::Value::String(text) => parse_duration(text),
        _ => None,
    }
}

/// `90`, `90s`, `30m`, `1h`, `7d`: a non-negative number of seconds.
pub fn parse_duration(text: &str) -> Option<i64> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    digits.parse::<i64>().ok()?.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_file_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(dir.path()).unwrap();
        assert_eq!(c.issuer, DEFAULT_ISSUER);
        assert_eq!(c.refresh_ahead, DEFAULT_REFRESH_AHEAD);
        assert_eq!(c.chatgpt_base, DEFAULT_CHATGPT_BASE);
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "issuer = \"http://127.0.0.1:9/\"\nrefresh_ahead = \"45m\"\n",
        )
        .unwrap();
        let c = Config::load(dir.path()).unwrap();
        assert_eq!(c.issuer, "http://127.0.0.1:9");
        assert_eq!(c.refresh_ahead, 45 * 60);
        std::fs::write(dir.path().join(CONFIG_FILE), "refresh_ahead = -3\n").unwrap();
        let e = Config::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("`refresh_ahead` must be"), "{e}");
        assert_eq!(c.websocket, WebSockets::default());
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "websocket = false\nwebsocket_idle_timeout = \"2m\"\nmax_websockets = 8\n",
        )
        .unwrap();
        let c = Config::load(dir.path()).unwrap();
        let expected = WebSockets {
            enabled: false,
            max_open: 8,
            idle_timeout: 120,
        };
        assert_eq!(c.websocket, expected);
        assert!(!c.shield);
        std::fs::write(dir.path().join(CONFIG_FILE), "shield = true\n").unwrap();
        assert!(Config::load(dir.path()).unwrap().shield);
        for (bad, key) in [
            ("max_websockets = 0", "`max_websockets` must be from 1"),
            (
                "max_websockets = 99999999999",
                "`max_websockets` must be from 1",
            ),
            (
                "websocket_idle_timeout = 0",
                "`websocket_idle_timeout` must be",
            ),
            (
                "websocket_idle_timeout = \"soon\"",
                "`websocket_idle_timeout` must be",
            ),
            ("websocket = \"yes\"", "invalid type"),
        ] {
            std::fs::write(dir.path().join(CONFIG_FILE), bad).unwrap();
            let e = Config::load(dir.path()).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
        std::fs::write(dir.path().join(CONFIG_FILE), "isuer = \"x\"\n").unwrap();
        let e = Config::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("config.toml") && e.contains("isuer"), "{e}");
        std::fs::write(dir.path().join(CONFIG_FILE), "issuer = \"ftp://x\"\n").unwrap();
        let e = Config::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("`issuer` must be an http(s) URL"), "{e}");
    }

    #[test]
    fn cachekeep_and_dump_settings() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(dir.path()).unwrap();
        assert_eq!(c.cachekeep, CacheKeep::default());
        assert!(!c.cachekeep.enabled);
        assert_eq!(c.dumps.dir, dir.path().join("dumps"));
        assert_eq!((c.dumps.enabled, c.dumps.max_files), (false, 200));
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "dump = true\ndump_dir = \"/tmp/d\"\ndump_max_files = 3\n\n[cachekeep]\n\
             enabled = true\ninterval = \"2m\"\nidle_cap = 600\nsubagents = true\n",
        )
        .unwrap();
        let c = Config::load(dir.path()).unwrap();
        let expected = CacheKeep {
            enabled: true,
            interval: 120,
            idle_cap: 600,
            subagents: true,
        };
        assert_eq!(c.cachekeep, expected);
        assert_eq!((c.cachekeep.cap(false), c.cachekeep.cap(true)), (600, 600));
        assert_eq!(CacheKeep::default().cap(true), SUBAGENT_IDLE_CAP);
        assert_eq!(c.dumps.dir, Path::new("/tmp/d"));
        assert_eq!((c.dumps.enabled, c.dumps.max_files), (true, 3));
        assert_eq!(c.log_file, None);
        assert_eq!(c.notify, Notify::default());
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "[notify]\ndesktop = false\ncommand = [\"notify-send\", \"x\"]\n\
             webhook = \"http://127.0.0.1:9/hook\"\nquota_percent = 80\nrepeat = \"1h\"\n",
        )
        .unwrap();
        let expected = Notify {
            desktop: Some(false),
            command: vec!["notify-send".into(), "x".into()],
            webhook: Some("http://127.0.0.1:9/hook".into()),
            quota_percent: 80.0,
            repeat: 3600,
        };
        assert_eq!(Config::load(dir.path()).unwrap().notify, expected);
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "log_file = \"logs/broker.log\"\n",
        )
        .unwrap();
        let expected = LogFile {
            path: dir.path().join("logs/broker.log"),
            rotate_bytes: DEFAULT_LOG_ROTATE_BYTES,
            max_files: 3,
        };
        assert_eq!(Config::load(dir.path()).unwrap().log_file, Some(expected));
        for (bad, key) in [
            ("[cachekeep]\ninterval = 0", "`cachekeep.interval` must be"),
            (
                "[cachekeep]\nidle_cap = \"soon\"",
                "`cachekeep.idle_cap` must be",
            ),
            ("[cachekeep]\nwarm = true", "warm"),
            ("dump_max_files = 0", "`dump_max_files` must be from 1"),
            ("dump = 1", "invalid type"),
            (
                "log_file = \"l\"\nlog_rotate_bytes = 10",
                "`log_rotate_bytes` must be",
            ),
            (
                "log_file = \"l\"\nlog_rotate_max_files = 0",
                "`log_rotate_max_files` must be",
            ),
        ] {
            std::fs::write(dir.path().join(CONFIG_FILE), bad).unwrap();
            let e = Config::load(dir.path()).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(parse_duration("90s"), Some(90));
        assert_eq!(parse_duration("30m"), Some(1800));
        assert_eq!(parse_duration("2h"), Some(7200));
        assert_eq!(parse_duration("2d"), Some(172_800));
        assert_eq!(parse_duration("2w"), None);
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration(""), None);
    }
}
