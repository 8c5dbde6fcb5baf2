//! `/v1/cachekeep` and `/v1/dump`: the prompt-cache switches, read with
//! GET and turned with POST `{"enabled": bool}` (the command that turns
//! one also writes config.toml, so the daemon keeps it after a restart);
//! `/v1/log-level`: the log level, read and changed (`{"level"}`).

use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use crate::engine::Engine;

/// The `enabled` of a POST body.
pub(super) fn enabled(body: &[u8]) -> Result<bool, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Switch {
        enabled: bool,
    }
    serde_json::from_slice::<Switch>(body)
        .map(|s| s.enabled)
        .map_err(|e| ApiError::bad_request(format!("the body must be {{\"enabled\": bool}}: {e}")))
}

/// Keep-warm: its settings and the conversations it keeps warm.
pub(super) fn cachekeep(shared: &Engine, turn: Option<bool>) -> Result<Value, ApiError> {
    if let Some(on) = turn {
        shared.cachekeep.set_enabled(on);
        tracing::info!("keep-warm turned {}", if on { "on" } else { "off" });
    }
    serde_json::to_value(shared.cachekeep.status()).map_err(ApiError::internal)
}

/// Request dumps: whether they are written, and where.
pub(super) fn dump(shared: &Engine, turn: Option<bool>) -> Value {
    if let Some(on) = turn {
        shared.dumps.set_enabled(on);
        tracing::info!("request dumps turned {}", if on { "on" } else { "off" });
    }
    let settings = shared.dumps.settings();
    json!({
        "enabled": settings.enabled,
        "dir": settings.dir,
        "max_files": settings.max_files,
    })
}

/// The log level; with a POST body `{"level": "..."}`, changed first.
pub(super) fn log_level(body: Option<&[u8]>) -> Result<Value, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Level {
        level: String,
    }
    if let Some(body) = body {
        let wanted = serde_json::from_slice::<Level>(body).map_err(|e| {
            ApiError::bad_request(format!("the body must be {{\"level\": \"...\"}}: {e}"))
        })?;
        let now = crate::base::logging::set_level(&wanted.level).map_err(ApiError::bad_request)?;
        tracing::warn!("log level set to {now}");
    }
    Ok(json!({ "level": crate::base::logging::level() }))
}
