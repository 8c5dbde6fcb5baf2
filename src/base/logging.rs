//! Logs: stderr always (journald under systemd), and a file when the
//! daemon is told to keep one, rotated by size; the level can be changed
//! while the daemon runs.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::OnceLock;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use super::fsutil::{self, FsError};

/// The handle that changes the level of the running process.
static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// How a log file is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    pub path: std::path::PathBuf,
    /// A file rotates once it would pass this size.
    pub rotate_bytes: u64,
    /// Older generations kept: `<file>.1` (the newest) to `<file>.N`.
    pub max_files: usize,
}

/// The level for `verbose` `-v` flags (one more for the daemon).
pub fn level_for(verbose: u8, daemon: bool) -> &'static str {
    match verbose + u8::from(daemon) {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    }
}

/// Sets up logging to stderr (and to `file`'s writer): at `level` unless
/// `CODEX_BROKER_LOG` says otherwise.
pub fn init(level: &str, file: Option<NonBlocking>) {
    let filter =
        EnvFilter::try_from_env("CODEX_BROKER_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let (filter, handle) = reload::Layer::new(filter);
    let stderr = fmt::layer()
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_target(false);
    let file = file.map(|writer| {
        fmt::layer()
            .with_writer(writer)
            .with_ansi(false)
            .with_target(false)
    });
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file)
        .try_init();
    if installed.is_ok() {
        let _ = LEVEL.set(handle);
    }
}

/// A writer to `file`, rotated by size, written off the caller's thread;
/// the guard flushes it when dropped. The folder is made (0700) and the
/// file is 0600.
pub fn file_writer(file: &LogFile) -> Result<(NonBlocking, WorkerGuard), FsError> {
    if let Some(dir) = file.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fsutil::create_dir_if_missing(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true).create(true).append(true).mode(0o600);
    // Opened once here, so that a path that cannot be written is an error
    // now and not a log that silently goes nowhere.
    options
        .open(&file.path)
        .map_err(|e| FsError::new("cannot open the log file", &file.path, e))?;
    let rotating = FileRotate::new(
        &file.path,
        AppendCount::new(file.max_files),
        ContentLimit::Bytes(usize::try_from(file.rotate_bytes).unwrap_or(usize::MAX)),
        Compression::None,
        Some(options),
    );
    Ok(tracing_appender::non_blocking(rotating))
}

/// The level filter in force, as `log level` shows it.
pub fn level() -> Option<String> {
    LEVEL.get()?.with_current(|f| f.to_string()).ok()
}

/// Changes the level at once: `info`, `debug`, or any filter such as
/// `codex_broker=debug,hyper=warn`.
pub fn set_level(level: &str) -> Result<String, String> {
    // A bare word is a target to EnvFilter (`loud` = everything of the
    // target `loud`): only level names stand alone here.
    let levels = ["off", "error", "warn", "info", "debug", "trace"];
    let bare = level
        .split(',')
        .map(str::trim)
        .find(|d| !d.contains('=') && !levels.contains(&d.to_ascii_lowercase().as_str()));
    if let Some(word) = bare {
        return Err(format!(
            "`{word}` is not a level: use off, error, warn, info, debug, trace or target=level"
        ));
    }
    let filter = EnvFilter::try_new(level).map_err(|e| format!("`{level}` is not a level: {e}"))?;
    let handle = LEVEL.get().ok_or("logging is not set up")?;
    handle
        .reload(filter)
        .map_err(|e| format!("cannot change the level: {e}"))?;
    handle
        .with_current(|f| f.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_file_rotates_by_size_and_keeps_its_generations() {
        let dir = tempfile::tempdir().unwrap();
        let file = LogFile {
            path: dir.path().join("logs/broker.log"),
            rotate_bytes: 1000,
            max_files: 3,
        };
        let (writer, guard) = file_writer(&file).unwrap();
        let mut writer = writer;
        let line = [b'x'; 99];
        for _ in 0..100 {
            writer.write_all(&line).unwrap();
            writer.write_all(b"\n").unwrap();
        }
        drop(writer);
        drop(guard);
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("logs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["broker.log", "broker.log.1", "broker.log.2", "broker.log.3"]
        );
        for name in &names {
            let meta = std::fs::metadata(dir.path().join("logs").join(name)).unwrap();
            assert!(meta.len() <= 1000, "{name}: {}", meta.len());
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        }
        assert_eq!(
            std::fs::metadata(dir.path().join("logs"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
    }

    #[test]
    fn a_path_that_cannot_be_written_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let file = LogFile {
            path: dir.path().to_owned(),
            rotate_bytes: 1000,
            max_files: 3,
        };
        let e = file_writer(&file).unwrap_err().to_string();
        assert!(e.contains("log file"), "{e}");
    }

    #[test]
    fn levels() {
        assert_eq!(level_for(0, false), "warn");
        assert_eq!(level_for(0, true), "info");
        assert_eq!(level_for(1, true), "debug");
        assert_eq!(level_for(5, false), "trace");
        for bad in ["not a level !!", "loud", "info,loud", "", "hyper=loud"] {
            assert!(set_level(bad).is_err(), "{bad}");
        }
    }
}
