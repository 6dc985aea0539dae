//! The policy state file (`policy-state.json` in the state directory): quota
//! usage, blocks and reputation carried across reloads and restarts.
//!
//! [`load`] never fails startup on a bad file: a file that does not parse is
//! renamed to `*.corrupt` (kept for inspection), logged, and treated as
//! absent. [`save`] writes through [`crate::state::write_atomic`] (temp file,
//! fsync, rename), so a crash leaves the old or the new file, never half of
//! one. [`Persister`] is the background writer: it takes a snapshot every
//! `interval`, writes it only when its bytes changed, and once more on
//! shutdown; at most one write per interval, so a crash loses at most one
//! interval of accounting.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

/// The state file's name in the state directory.
pub const STATE_FILE: &str = "policy-state.json";
/// The suggested write interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("policy state {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("policy state {path}: cannot encode: {source}")]
    Encode {
        path: String,
        source: serde_json::Error,
    },
}

fn io_err(path: &Path, source: std::io::Error) -> PersistError {
    PersistError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where [`load`] moves a file that does not parse.
pub fn corrupt_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".corrupt");
    PathBuf::from(s)
}

/// Reads the state file: `None` if it is missing or was corrupt (then renamed
/// to [`corrupt_path`] and logged). An error only when it cannot be read.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, PersistError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            let moved = corrupt_path(path);
            match std::fs::rename(path, &moved) {
                Ok(()) => tracing::warn!(
                    path = %path.display(),
                    moved_to = %moved.display(),
                    error = %e,
                    "policy state file is corrupt; starting from empty state"
                ),
                Err(re) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    rename_error = %re,
                    "policy state file is corrupt and could not be moved aside; starting from empty state"
                ),
            }
            Ok(None)
        }
    }
}

/// Encodes a state value as the file holds it.
pub fn encode<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>, PersistError> {
    serde_json::to_vec_pretty(value).map_err(|source| PersistError::Encode {
        path: path.display().to_string(),
        source,
    })
}

/// Writes bytes to the state file atomically, creating the directory.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    }
    crate::state::write_atomic(path, bytes).map_err(|e| io_err(path, e))
}

/// Writes `value` to the state file atomically.
pub fn save<T: Serialize>(path: &Path, value: &T) -> Result<(), PersistError> {
    write_bytes(path, &encode(path, value)?)
}

/// What a [`Persister`] did, returned when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistStats {
    /// Files written.
    pub writes: u64,
    /// Writes that failed (retried at the next interval).
    pub failures: u64,
}

/// The background writer of the state file.
#[derive(Debug)]
pub struct Persister {
    path: PathBuf,
    interval: Duration,
    last: Option<Vec<u8>>,
    stats: PersistStats,
}

impl Persister {
    /// Writes to `path` at most once per `interval` (at least 10 ms).
    pub fn new(path: impl Into<PathBuf>, interval: Duration) -> Self {
        Self {
            path: path.into(),
            interval: interval.max(Duration::from_millis(10)),
            last: None,
            stats: PersistStats::default(),
        }
    }

    /// Declares what the file already holds (e.g. the value just loaded), so
    /// an unchanged state is not written again.
    pub fn assume_written<T: Serialize>(mut self, value: &T) -> Self {
        self.last = encode(&self.path, value).ok();
        self
    }

    /// Runs until `shutdown` turns true (or its sender is dropped): every
    /// interval, writes `snapshot()` if it changed; then writes once more.
    pub async fn run<T, F>(
        mut self,
        snapshot: F,
        mut shutdown: watch::Receiver<bool>,
    ) -> PersistStats
    where
        T: Serialize,
        F: Fn() -> T,
    {
        let start = tokio::time::Instant::now() + self.interval;
        let mut tick = tokio::time::interval_at(start, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            tokio::select! {
                _ = tick.tick() => {
                    let bytes = encode(&self.path, &snapshot());
                    self.write_if_changed(bytes).await;
                }
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        let bytes = encode(&self.path, &snapshot());
        self.write_if_changed(bytes).await;
        self.stats
    }

    async fn write_if_changed(&mut self, bytes: Result<Vec<u8>, PersistError>) {
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                self.stats.failures += 1;
                tracing::warn!(error = %e, "policy state not saved");
                return;
            }
        };
        if self.last.as_deref() == Some(bytes.as_slice()) {
            return;
        }
        let path = self.path.clone();
        let done = tokio::task::spawn_blocking(move || {
            let r = write_bytes(&path, &bytes);
            (r, bytes)
        })
        .await;
        match done {
            Ok((Ok(()), bytes)) => {
                self.stats.writes += 1;
                self.last = Some(bytes);
            }
            Ok((Err(e), _)) => {
                self.stats.failures += 1;
                tracing::warn!(error = %e, "policy state not saved; retrying at the next interval");
            }
            Err(e) => {
                self.stats.failures += 1;
                tracing::warn!(error = %e, "policy state writer task failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::Arc;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct S {
        n: u64,
    }

    #[test]
    fn missing_is_none_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join(STATE_FILE);
        assert_eq!(load::<S>(&p).unwrap(), None);
        save(&p, &S { n: 7 }).unwrap();
        assert_eq!(load::<S>(&p).unwrap(), Some(S { n: 7 }));
        assert!(!p.with_extension("tmp").exists());
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(STATE_FILE);
        for junk in [&b"{\"n\": "[..], b"\xff\xfe garbage", b"", b"[1,2]"] {
            std::fs::write(&p, junk).unwrap();
            assert_eq!(load::<S>(&p).unwrap(), None);
            assert!(!p.exists());
            assert_eq!(std::fs::read(corrupt_path(&p)).unwrap(), junk);
        }
        // Then starts clean.
        save(&p, &S { n: 1 }).unwrap();
        assert_eq!(load::<S>(&p).unwrap(), Some(S { n: 1 }));
    }

    #[test]
    fn unreadable_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: reading fails, but not with NotFound.
        let p = dir.path().join(STATE_FILE);
        std::fs::create_dir(&p).unwrap();
        assert!(matches!(load::<S>(&p), Err(PersistError::Io { .. })));
    }

    #[tokio::test]
    async fn writes_at_most_once_per_interval_and_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(STATE_FILE);
        let counter = Arc::new(AtomicU64::new(0));
        let c = Arc::clone(&counter);
        let (tx, rx) = watch::channel(false);
        // The snapshot changes at every call: every tick writes.
        let task = tokio::spawn(Persister::new(&p, Duration::from_millis(100)).run(
            move || S {
                n: c.fetch_add(1, Relaxed),
            },
            rx,
        ));
        tokio::time::sleep(Duration::from_millis(550)).await;
        tx.send(true).unwrap();
        let stats = task.await.unwrap();
        // Ticks at 100..500 ms (5) plus the one on shutdown; never more.
        assert!(
            (2..=6).contains(&stats.writes),
            "{stats:?} (the snapshot was taken {} times)",
            counter.load(Relaxed)
        );
        assert_eq!(stats.failures, 0);
        let last = counter.load(Relaxed) - 1;
        assert_eq!(load::<S>(&p).unwrap(), Some(S { n: last }));
        assert!(!p.with_extension("tmp").exists());
    }

    #[tokio::test]
    async fn unchanged_state_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(STATE_FILE);
        let (tx, rx) = watch::channel(false);
        let task =
            tokio::spawn(Persister::new(&p, Duration::from_millis(20)).run(|| S { n: 5 }, rx));
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(tx); // a dropped sender also stops it
        let stats = task.await.unwrap();
        assert_eq!(stats.writes, 1);
        assert_eq!(load::<S>(&p).unwrap(), Some(S { n: 5 }));

        // Told what the file holds, it writes nothing at all.
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(
            Persister::new(&p, Duration::from_millis(20))
                .assume_written(&S { n: 5 })
                .run(|| S { n: 5 }, rx),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(true).unwrap();
        assert_eq!(task.await.unwrap().writes, 0);
    }

    #[tokio::test]
    async fn shutdown_before_the_first_tick_still_writes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(STATE_FILE);
        let (_tx, rx) = watch::channel(true);
        let stats = Persister::new(&p, Duration::from_secs(3600))
            .run(|| S { n: 9 }, rx)
            .await;
        assert_eq!(stats.writes, 1);
        assert_eq!(load::<S>(&p).unwrap(), Some(S { n: 9 }));
    }

    #[tokio::test]
    async fn failed_writes_are_retried() {
        let dir = tempfile::tempdir().unwrap();
        // The parent is a file: every write fails; the persister keeps going.
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let p = blocker.join(STATE_FILE);
        let (tx, rx) = watch::channel(false);
        let task =
            tokio::spawn(Persister::new(&p, Duration::from_millis(20)).run(|| S { n: 1 }, rx));
        tokio::time::sleep(Duration::from_millis(110)).await;
        tx.send(true).unwrap();
        let stats = task.await.unwrap();
        assert_eq!(stats.writes, 0);
        assert!(stats.failures >= 2, "{stats:?}");
    }
}
