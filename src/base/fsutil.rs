//! File primitives every writer in the broker goes through: atomic private
//! writes, private directories and advisory locks.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use fs2::FileExt;

/// How many symlinks [`resolve_symlinks`] follows before giving up.
const MAX_SYMLINK_HOPS: usize = 40;

/// An I/O failure on a named path.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct FsError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FsError {
    pub fn new(action: &'static str, path: &Path, source: io::Error) -> Self {
        FsError {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

/// Follows `path` through any symlinks to the file that holds the data.
/// A missing final target is fine: the result is where it would be created.
pub fn resolve_symlinks(path: &Path) -> Result<PathBuf, FsError> {
    let mut current = path.to_owned();
    for _ in 0..MAX_SYMLINK_HOPS {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&current)
                    .map_err(|e| FsError::new("cannot read link", &current, e))?;
                current = match current.parent() {
                    Some(parent) if target.is_relative() => parent.join(target),
                    _ => target,
                };
            }
            Ok(_) => return Ok(current),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(current),
            Err(e) => return Err(FsError::new("cannot inspect", &current, e)),
        }
    }
    Err(FsError::new(
        "too many levels of symbolic links at",
        path,
        io::Error::other("symlink loop"),
    ))
}

/// Replaces the file at `path` with `bytes` so that a crash at any instant
/// leaves either the old or the new content: a temporary file in the same
/// directory (mode 0600) is written, fsynced and renamed over the target, then
/// the directory is fsynced. A symlink at `path` is written through to its
/// target, so the link itself survives.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let target = resolve_symlinks(path)?;
    if let Ok(meta) = fs::metadata(&target) {
        use std::os::unix::fs::MetadataExt;
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me && meta.uid() != 0 {
            return Err(FsError::new(
                "refusing to write",
                &target,
                io::Error::other(format!(
                    "it belongs to uid {}, not to you (uid {me}){}",
                    meta.uid(),
                    if target == path {
                        ""
                    } else {
                        "; a link led there"
                    }
                )),
            ));
        }
    }
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(&dir)
        .map_err(|e| FsError::new("cannot create a temporary file in", &dir, e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| FsError::new("cannot write", tmp.path(), e))?;
    tmp.persist(&target)
        .map_err(|e| FsError::new("cannot replace", &target, e.error))?;
    sync_dir(&dir)?;
    remove_stale_temporaries(&dir, &name);
    Ok(())
}

/// A writer killed between creating its temporary file and the rename
/// leaves the file behind; one older than this is certainly abandoned.
const STALE_TEMPORARY: Duration = Duration::from_secs(60);

/// Removes temporary files of `name` abandoned by killed writers, so that
/// no stray copy of a credential lingers (after each write, and when the
/// daemon starts). Failures are not errors: nothing depends on it.
pub fn remove_stale_temporaries(dir: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if !(file_name.starts_with(&prefix) && file_name.ends_with(".tmp")) {
            continue;
        }
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMPORARY);
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FsError::new("cannot sync directory", dir, e))
}

/// Creates `dir` (and missing parents) with mode 0700, or tightens an existing
/// directory of ours to 0700 when group or others may enter it.
pub fn ensure_private_dir(dir: &Path) -> Result<(), FsError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            if meta.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| FsError::new("cannot restrict permissions of", dir, e))?;
            }
            Ok(())
        }
        Ok(_) => Err(FsError::new(
            "not a directory:",
            dir,
            io::Error::other("expected a directory"),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_dir_if_missing(dir),
        Err(e) => Err(FsError::new("cannot inspect", dir, e)),
    }
}

/// Creates `dir` with mode 0700 when it does not exist; an existing directory
/// (such as a Codex home the user made) is left as it is.
pub fn create_dir_if_missing(dir: &Path) -> Result<(), FsError> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| FsError::new("cannot create directory", dir, e))
}

/// The largest file the broker reads: auth.json, the store and the config
/// are a few KiB.
pub const MAX_FILE: u64 = 4 * 1024 * 1024;

/// Reads a file, telling a missing file apart from a failure. Only a
/// regular file (after following links) of at most [`MAX_FILE`] bytes is
/// read: a FIFO, a device or a socket in its place is refused without
/// blocking, so that nobody can hang or flood the broker with one.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, FsError> {
    Ok(read_with_metadata(path)?.map(|(bytes, _)| bytes))
}

/// [`read_optional`], with the metadata of the file that was read (the
/// target of any links), so that its owner and mode can be checked.
pub fn read_with_metadata(path: &Path) -> Result<Option<(Vec<u8>, fs::Metadata)>, FsError> {
    use std::io::Read;
    let Some((file, meta)) = open_regular(path, 0)? else {
        return Ok(None);
    };
    let too_large = || {
        FsError::new(
            "refusing to read",
            path,
            io::Error::other(format!("it is larger than {} MiB", MAX_FILE >> 20)),
        )
    };
    if meta.len() > MAX_FILE {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FsError::new("cannot read", path, e))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(too_large());
    }
    Ok(Some((bytes, meta)))
}

/// Opens `path` for reading without blocking (`flags` adds to the open
/// flags), and only if it is a regular file; `None` when it does not exist.
pub fn open_regular(path: &Path, flags: i32) -> Result<Option<(File, fs::Metadata)>, FsError> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY | flags)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FsError::new("cannot read", path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| FsError::new("cannot inspect", path, e))?;
    if !meta.is_file() {
        return Err(FsError::new(
            "refusing to read",
            path,
            io::Error::other("it is not a regular file (a FIFO, device or socket?)"),
        ));
    }
    Ok(Some((file, meta)))
}

/// Why a file or directory with `meta` cannot be trusted with (or for)
/// this user's credentials: another uid than this user's (or root's) owns
/// it, or group or others may write it. `None` when it can be.
pub fn untrusted(meta: &fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Some(format!(
            "it belongs to uid {}, not to you (uid {me})",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o022 != 0 {
        return Some(format!(
            "group or others may write it (mode {mode:o}); run: chmod go-w on it"
        ));
    }
    None
}

/// An exclusive `flock` held until dropped.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the descriptor releases the lock too; unlocking first makes
        // the release independent of any descriptor a child may have inherited.
        let _ = FileExt::unlock(&self.file);
    }
}

fn open_lock_file(path: &Path) -> Result<File, FsError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| FsError::new("cannot open lock file", path, e))
}

/// Takes an exclusive lock on `path` (created if missing), waiting as long as
/// another holder keeps it. A wait is logged, so a stuck holder can be found.
pub fn lock_exclusive(path: &Path) -> Result<FileLock, FsError> {
    let file = open_lock_file(path)?;
    if file.try_lock_exclusive().is_err() {
        tracing::debug!(path = %path.display(), "waiting for file lock");
        file.lock_exclusive()
            .map_err(|e| FsError::new("cannot lock", path, e))?;
    }
    Ok(FileLock { file })
}

/// Takes an exclusive lock on `path`, retrying every `interval` until
/// `timeout` has passed, as Codex does for `auth.json.lock`.
pub fn lock_exclusive_within(
    path: &Path,
    timeout: Duration,
    interval: Duration,
) -> Result<FileLock, FsError> {
    let file = open_lock_file(path)?;
    let deadline = Instant::now() + timeout;
    loop {
        match file.try_lock_exclusive() {
            Ok(()) => return Ok(FileLock { file }),
            Err(e) if Instant::now() >= deadline => {
                return Err(FsError::new("timed out waiting for lock", path, e));
            }
            Err(_) => thread::sleep(interval),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn atomic_write_is_private_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        fs::write(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn abandoned_temporaries_are_removed_once_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        let stale = dir.path().join(".auth.json.abc123.tmp");
        let fresh = dir.path().join(".auth.json.def456.tmp");
        let unrelated = dir.path().join(".other.json.abc123.tmp");
        for p in [&stale, &fresh, &unrelated] {
            fs::write(p, b"left by a killed writer").unwrap();
        }
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        for p in [&stale, &unrelated] {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        write_atomic(&path, b"new").unwrap();
        assert!(!stale.exists());
        assert!(fresh.exists(), "a writer may still be using a fresh one");
        assert!(unrelated.exists());
    }

    #[test]
    fn atomic_write_goes_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let real_dir = dir.path().join("real");
        fs::create_dir(&real_dir).unwrap();
        let real = real_dir.join("auth.json");
        fs::write(&real, b"old").unwrap();
        let link = dir.path().join("auth.json");
        symlink("real/auth.json", &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&real).unwrap(), b"new");
    }

    #[test]
    fn symlink_loops_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        symlink(&b, &a).unwrap();
        symlink(&a, &b).unwrap();
        let err = write_atomic(&a, b"x").unwrap_err();
        assert!(err.to_string().contains("too many levels"), "{err}");
    }

    #[test]
    fn private_dir_is_created_and_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        ensure_private_dir(&nested).unwrap();
        assert_eq!(
            fs::metadata(&nested).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::set_permissions(&nested, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&nested).unwrap();
        assert_eq!(
            fs::metadata(&nested).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("auth.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = read_optional(&fifo).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(err.to_string().contains("auth.json"), "{err}");
        let zero = dir.path().join("zero.json");
        symlink("/dev/zero", &zero).unwrap();
        let err = read_optional(&zero).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let big = dir.path().join("big.json");
        File::create(&big).unwrap().set_len(MAX_FILE + 1).unwrap();
        let err = read_optional(&big).unwrap_err();
        assert!(err.to_string().contains("larger than 4 MiB"), "{err}");
        assert_eq!(read_optional(&dir.path().join("none")).unwrap(), None);
    }

    #[test]
    fn bounded_lock_times_out_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = lock_exclusive(&path).unwrap();
        let err = lock_exclusive_within(&path, Duration::from_millis(30), Duration::from_millis(5))
            .unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
        drop(held);
        lock_exclusive_within(&path, Duration::from_millis(30), Duration::from_millis(5)).unwrap();
    }
}
