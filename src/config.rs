//! Settings: `<home>/config.toml`, overridden by the environment.
//! Precedence: flag > environment > config.toml > default.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::fsutil::{self, FsError};

pub const CONFIG_FILE: &str = "config.toml";
pub const DEFAULT_ISSUER: &str = "https://auth.openai.com";

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
}

/// The settings in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The OAuth issuer, without a trailing slash.
    pub issuer: String,
}

impl Config {
    /// Reads `<home>/config.toml` (absent is fine) and applies the
    /// `CODEX_BROKER_ISSUER` variable.
    pub fn load(home: &Path) -> Result<Config, ConfigError> {
        let path = home.join(CONFIG_FILE);
        let invalid = |message: String| ConfigError::Invalid {
            path: path.clone(),
            message,
        };
        let file: File = match fsutil::read_optional(&path)? {
            None => File::default(),
            Some(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8".into()))?;
                toml::from_str(&text).map_err(|e| invalid(e.message().to_owned()))?
            }
        };
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let url = |value: String, key: &str| -> Result<String, ConfigError> {
            let trimmed = value.trim().trim_end_matches('/').to_owned();
            if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
                Ok(trimmed)
            } else {
                Err(invalid(format!("`{key}` must be an http(s) URL")))
            }
        };
        Ok(Config {
            issuer: url(
                env("CODEX_BROKER_ISSUER")
                    .or(file.issuer)
                    .unwrap_or_else(|| DEFAULT_ISSUER.into()),
                "issuer",
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_file_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(dir.path()).unwrap();
        assert_eq!(c.issuer, DEFAULT_ISSUER);
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "issuer = \"http://127.0.0.1:9/\"\n",
        )
        .unwrap();
        let c = Config::load(dir.path()).unwrap();
        assert_eq!(c.issuer, "http://127.0.0.1:9");
        std::fs::write(dir.path().join(CONFIG_FILE), "isuer = \"x\"\n").unwrap();
        let e = Config::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("config.toml") && e.contains("isuer"), "{e}");
        std::fs::write(dir.path().join(CONFIG_FILE), "issuer = \"ftp://x\"\n").unwrap();
        let e = Config::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("`issuer` must be an http(s) URL"), "{e}");
    }
}
