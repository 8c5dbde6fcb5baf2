//! The store as the engine serves it: parsed once per version of the file
//! (a `stat` tells whether the cached copy is still current), with the
//! quota just observed in place before the disk has taken it, so that an
//! observation is applied before the next request is routed.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use crate::base::fsutil::FsError;
use crate::engine::quota::Quota;
use crate::engine::store::{Store, StoreError, StoreFile};

/// Identifies one version of a file: every save is a rename of a new file,
/// so a changed store has a new inode and change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServedError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// One store file, as served.
pub struct Served {
    file: StoreFile,
    cache: Mutex<Option<(FileStamp, Arc<Store>)>>,
    /// Quota observed and not yet known to be on disk, per account.
    quotas: Mutex<HashMap<String, Quota>>,
}

impl Served {
    pub fn new(file: StoreFile) -> Served {
        Served {
            file,
            cache: Mutex::new(None),
            quotas: Mutex::new(HashMap::new()),
        }
    }

    /// The store as it is on disk now, with the quota not saved yet in
    /// place.
    pub fn load(&self) -> Result<Arc<Store>, ServedError> {
        self.load_with(|| self.file.load())
    }

    /// [`Served::load`], reading the file with `read`.
    fn load_with(
        &self,
        read: impl FnOnce() -> Result<Store, StoreError>,
    ) -> Result<Arc<Store>, ServedError> {
        let path = self.file.path();
        let stamp = match std::fs::metadata(path) {
            Ok(meta) => Some(FileStamp::of(&meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(FsError::new("cannot inspect", path, e).into()),
        };
        let mut cache = self.cache.lock().expect("store cache lock");
        if let (Some(stamp), Some((cached, store))) = (stamp, cache.as_ref())
            && stamp == *cached
        {
            return Ok(store.clone());
        }
        // The overlay is held while the file is read: a save that lands
        // meanwhile cannot drop its quota from the overlay before this
        // copy, read from the file before that save, has it in place.
        let quotas = self.quotas.lock().expect("quota lock");
        let mut store = read()?;
        for (id, quota) in quotas.iter() {
            if let Some(a) = store.get_mut(id) {
                a.quota = Some(quota.clone());
            }
        }
        drop(quotas);
        let store = Arc::new(store);
        // Stamp taken before the read: a save racing with it only makes the
        // next call read again.
        *cache = stamp.map(|s| (s, store.clone()));
        Ok(store)
    }

    /// Serves `quota` for account `id` from now on, before it is saved.
    pub fn apply_quota(&self, id: &str, quota: &Quota) {
        self.quotas
            .lock()
            .expect("quota lock")
            .insert(id.to_owned(), quota.clone());
        let mut cache = self.cache.lock().expect("store cache lock");
        if let Some((_, store)) = cache.as_mut()
            && store.get(id).is_some()
        {
            let store = Arc::make_mut(store);
            if let Some(a) = store.get_mut(id) {
                a.quota = Some(quota.clone());
            }
        }
    }

    /// `quota` of account `id` is on disk: the file says it from now on,
    /// unless a newer one was observed meanwhile.
    pub fn quota_saved(&self, id: &str, quota: &Quota) {
        let mut quotas = self.quotas.lock().expect("quota lock");
        if quotas.get(id) == Some(quota) {
            quotas.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::quota::{Source, Window};
    use crate::engine::store::test_account;
    use std::time::Duration;

    fn quota(percent: f64) -> Quota {
        Quota {
            five_hour: Some(Window {
                used_percent: percent,
                window_minutes: Some(300),
                resets_at: Some(2_000_000_000),
            }),
            weekly: None,
            source: Source::Headers,
            observed_at: 1_900_000_000,
            plan_type: None,
            extra: Default::default(),
        }
    }

    /// A save that lands (and clears the overlay) while the file is read
    /// cannot leave the copy just read without its quota.
    #[test]
    fn a_save_landing_during_the_read_keeps_the_quota_in_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let file = StoreFile::new(dir.path());
        file.update(|s| {
            let mut account = test_account(Some(2_000_000_000), 1_900_000_000);
            account.id = "acc-1".into();
            s.accounts.push(account);
            Ok::<_, StoreError>(())
        })
        .unwrap();
        let served = Arc::new(Served::new(file.clone()));
        served.apply_quota("acc-1", &quota(100.0));
        let before_the_save = file.load().unwrap();
        let (saved_tx, saved_rx) = std::sync::mpsc::channel();
        let saver = {
            let served = served.clone();
            move || {
                std::thread::spawn(move || {
                    served.quota_saved("acc-1", &quota(100.0));
                    let _ = saved_tx.send(());
                })
            }
        };
        let mut thread = None;
        let store = served
            .load_with(|| {
                thread = Some(saver());
                // Unfixed, the save clears the overlay at once; fixed, it
                // waits for this read to finish.
                let cleared = saved_rx.recv_timeout(Duration::from_millis(500)).is_ok();
                assert!(!cleared, "the overlay was cleared while the file was read");
                Ok(before_the_save)
            })
            .unwrap();
        thread.unwrap().join().unwrap();
        assert_eq!(store.get("acc-1").unwrap().quota, Some(quota(100.0)));
    }

    #[test]
    fn an_observed_quota_is_served_before_and_after_it_is_saved() {
        let dir = tempfile::tempdir().unwrap();
        let file = StoreFile::new(dir.path());
        file.update(|s| {
            let mut account = test_account(Some(2_000_000_000), 1_900_000_000);
            account.id = "acc-1".into();
            s.accounts.push(account);
            Ok::<_, StoreError>(())
        })
        .unwrap();
        let served = Served::new(StoreFile::new(dir.path()));
        assert!(served.load().unwrap().get("acc-1").unwrap().quota.is_none());
        served.apply_quota("acc-1", &quota(100.0));
        let seen = |s: &Served| s.load().unwrap().get("acc-1").unwrap().quota.clone();
        assert_eq!(seen(&served), Some(quota(100.0)), "served at once");
        // Another writer changes the file before the quota is saved.
        file.update(|s| {
            s.accounts[0].label = Some("work".into());
            Ok::<_, StoreError>(())
        })
        .unwrap();
        assert_eq!(seen(&served), Some(quota(100.0)), "kept over a reload");
        file.update(|s| {
            s.accounts[0].quota = Some(quota(100.0));
            Ok::<_, StoreError>(())
        })
        .unwrap();
        served.quota_saved("acc-1", &quota(100.0));
        served.apply_quota("acc-1", &quota(40.0));
        served.quota_saved("acc-1", &quota(100.0));
        assert_eq!(
            seen(&served),
            Some(quota(40.0)),
            "a newer observation stays"
        );
    }
}
