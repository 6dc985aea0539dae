//! What a running `mtgate run` records in its state directory
//! (`running.json`): its pid, the client port it is bound to and the public
//! host of its links, so that `mtgate link` without the run's flags prints
//! the links of the proxy as it runs. The record is removed at a clean exit;
//! a record whose process is gone is ignored.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file's name in the state directory.
pub const FILE: &str = "running.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub pid: u32,
    /// The first client listener's bound port.
    pub port: u16,
    /// The host the links name.
    pub public_host: String,
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Records this process as running.
pub fn record(dir: &Path, r: &Running) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let text = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    crate::state::write_atomic(&path(dir), &text)
}

/// Removes the record if it is this process's.
pub fn clear(dir: &Path, pid: u32) {
    if read_any(dir).is_some_and(|r| r.pid == pid) {
        let _ = std::fs::remove_file(path(dir));
    }
}

fn read_any(dir: &Path) -> Option<Running> {
    let text = std::fs::read(path(dir)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The record of a process that is still running, if any.
pub fn read(dir: &Path) -> Option<Running> {
    read_any(dir).filter(|r| alive(r.pid))
}

/// Whether `pid` is a running mtgate (Linux: from /proc; elsewhere assumed).
fn alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split('\0').next().is_some_and(|a| a.contains("mtgate")))
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_read_while_its_process_runs() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(read(dir.path()), None);
        let me = Running {
            pid: std::process::id(),
            port: 8443,
            public_host: "proxy.example.net".into(),
        };
        record(dir.path(), &me).expect("record");
        // This test process is not an mtgate: the record is stale to `read`.
        assert_eq!(read_any(dir.path()), Some(me.clone()));
        clear(dir.path(), me.pid + 1);
        assert!(
            read_any(dir.path()).is_some(),
            "another pid's clear leaves it"
        );
        clear(dir.path(), me.pid);
        assert_eq!(read_any(dir.path()), None);
        std::fs::write(dir.path().join(FILE), b"{garbage").expect("write");
        assert_eq!(read(dir.path()), None, "a bad file is ignored");
    }
}
