//! The audit trail: one JSON line per admin action and security event,
//! appended to `audit.log` in the state directory. Every entry carries its
//! sequence number, the hash of the entry before it (`prev`) and its own
//! `hash` (SHA-256 over `prev` and the entry's JSON without `hash`), so an
//! edited, removed, inserted or reordered line breaks the chain, which
//! [`verify`] (`mtgate audit verify`) finds. Past [`Audit::max_bytes`] the
//! file is rotated (`audit.log.1` … `audit.log.N`, the oldest dropped); the
//! new file's first entry links to the last of the old one, so the chain
//! runs across files; a verification of the files that remain starts at
//! the oldest entry kept.

use serde_json::{json, Map, Value};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The trail's file in the state directory.
pub const FILE: &str = "audit.log";
/// Rotate past this size by default.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;
/// Rotated files kept by default.
pub const DEFAULT_KEEP: usize = 8;
/// `prev` of the very first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, as the trail records it.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// `token.create`, `login.failed`, `reload`, `block.add`, …
    pub action: String,
    /// The token id (`config` for `admin.token`) and role, if a person acted.
    pub actor: Option<(String, String)>,
    /// Where from (an address), if known.
    pub from: Option<String>,
    /// What it acted on (a token id, a user, a network).
    pub target: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    /// `ok`, or why it was refused.
    pub result: String,
}

struct Tail {
    seq: u64,
    hash: String,
    bytes: u64,
}

/// The audit trail of one process.
pub struct Audit {
    path: Option<PathBuf>,
    max_bytes: u64,
    keep: usize,
    tail: Mutex<Tail>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Why the trail could not be read or written, or where its chain breaks.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {what}")]
    Broken {
        file: String,
        line: usize,
        what: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The entry's hash: SHA-256 over `prev` and its JSON without `hash`.
fn digest(prev: &str, body: &str) -> String {
    hex::encode(mtgate_crypto::sha256(&[
        prev.as_bytes(),
        b"\n",
        body.as_bytes(),
    ]))
}

/// The files of the trail at `path`, oldest first.
fn files(path: &Path, keep: usize) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (1..=keep)
        .rev()
        .map(|i| rotated(path, i))
        .filter(|p| p.exists())
        .collect();
    if path.exists() {
        out.push(path.to_path_buf());
    }
    out
}

fn rotated(path: &Path, i: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

impl Audit {
    /// The trail in `dir` (memory only, counting but keeping nothing: `None`).
    pub fn open(dir: Option<&Path>) -> Result<Self, AuditError> {
        Self::open_with(dir, DEFAULT_MAX_BYTES, DEFAULT_KEEP)
    }

    /// [`Audit::open`] rotating past `max_bytes`, keeping `keep` old files.
    pub fn open_with(dir: Option<&Path>, max_bytes: u64, keep: usize) -> Result<Self, AuditError> {
        let path = dir.map(|d| d.join(FILE));
        let mut tail = Tail {
            seq: 0,
            hash: GENESIS.to_owned(),
            bytes: 0,
        };
        if let Some(p) = &path {
            // Carry on from the last entry there is.
            for f in files(p, keep).iter().rev() {
                let last = last_entry(f)?;
                if let Some(v) = last {
                    tail.seq = v["seq"].as_u64().unwrap_or(0);
                    tail.hash = v["hash"].as_str().unwrap_or(GENESIS).to_owned();
                    break;
                }
            }
            tail.bytes = std::fs::metadata(p).map_or(0, |m| m.len());
        }
        Ok(Self {
            path,
            max_bytes: max_bytes.max(1024),
            keep: keep.max(1),
            tail: Mutex::new(tail),
        })
    }

    /// Appends `r`; its sequence number.
    pub fn append(&self, r: &Record) -> Result<u64, AuditError> {
        let mut t = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let seq = t.seq + 1;
        let mut m = Map::new();
        m.insert("seq".into(), json!(seq));
        m.insert("ts".into(), json!(crate::control::now()));
        m.insert("action".into(), json!(r.action));
        if let Some((id, role)) = &r.actor {
            m.insert("actor".into(), json!({ "token_id": id, "role": role }));
        }
        if let Some(f) = &r.from {
            m.insert("from".into(), json!(f));
        }
        if let Some(x) = &r.target {
            m.insert("target".into(), json!(x));
        }
        if let Some(b) = &r.before {
            m.insert("before".into(), b.clone());
        }
        if let Some(a) = &r.after {
            m.insert("after".into(), a.clone());
        }
        m.insert("result".into(), json!(r.result));
        m.insert("prev".into(), json!(t.hash));
        let body = Value::Object(m.clone()).to_string();
        let hash = digest(&t.hash, &body);
        m.insert("hash".into(), json!(hash));
        let line = Value::Object(m).to_string() + "\n";
        if let Some(path) = &self.path {
            if t.bytes > 0 && t.bytes + line.len() as u64 > self.max_bytes {
                self.rotate(path)?;
                t.bytes = 0;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(io(path))?;
            f.write_all(line.as_bytes()).map_err(io(path))?;
            f.sync_data().map_err(io(path))?;
        }
        t.bytes += line.len() as u64;
        t.seq = seq;
        t.hash = hash;
        Ok(seq)
    }

    /// `audit.log` → `.1` → … → `.keep` (the oldest dropped).
    fn rotate(&self, path: &Path) -> Result<(), AuditError> {
        let oldest = rotated(path, self.keep);
        if oldest.exists() {
            std::fs::remove_file(&oldest).map_err(io(&oldest))?;
        }
        for i in (1..self.keep).rev() {
            let from = rotated(path, i);
            if from.exists() {
                let to = rotated(path, i + 1);
                std::fs::rename(&from, &to).map_err(io(&from))?;
            }
        }
        let first = rotated(path, 1);
        std::fs::rename(path, &first).map_err(io(path))
    }

    /// The last `n` entries (newest last), for the console.
    pub fn recent(&self, n: usize) -> Vec<Value> {
        let Some(path) = &self.path else {
            return Vec::new();
        };
        let mut out = std::collections::VecDeque::with_capacity(n);
        if let Ok(f) = std::fs::File::open(path) {
            for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if out.len() == n {
                        out.pop_front();
                    }
                    out.push_back(v);
                }
            }
        }
        out.into()
    }
}

fn last_entry(path: &Path) -> Result<Option<Value>, AuditError> {
    let f = std::fs::File::open(path).map_err(io(path))?;
    let mut last = None;
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(io(path))?;
        if !line.trim().is_empty() {
            last = Some(line);
        }
    }
    Ok(last.and_then(|l| serde_json::from_str(&l).ok()))
}

/// What [`verify`] found of an intact chain.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub entries: u64,
    /// The first sequence number kept (1 unless old files were dropped).
    pub first_seq: u64,
    pub files: usize,
}

/// Checks the trail in `dir` (every file kept, oldest first): each entry's
/// hash, its link to the one before, and the sequence without gaps.
pub fn verify(dir: &Path, keep: usize) -> Result<Verified, AuditError> {
    let path = dir.join(FILE);
    let list = files(&path, keep.max(DEFAULT_KEEP).max(64));
    let mut prev: Option<(u64, String)> = None;
    let mut first_seq = 0;
    let mut entries = 0;
    for f in &list {
        let name = f.display().to_string();
        let file = std::fs::File::open(f).map_err(io(f))?;
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(io(f))?;
            let broken = |what: String| AuditError::Broken {
                file: name.clone(),
                line: i + 1,
                what,
            };
            if line.trim().is_empty() {
                continue;
            }
            let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(&line) else {
                return Err(broken("not a JSON object".into()));
            };
            let Some(Value::String(hash)) = m.remove("hash") else {
                return Err(broken("no hash".into()));
            };
            let seq = m.get("seq").and_then(Value::as_u64);
            let link = m.get("prev").and_then(Value::as_str).map(str::to_owned);
            let (Some(seq), Some(link)) = (seq, link) else {
                return Err(broken("no seq or prev".into()));
            };
            if digest(&link, &Value::Object(m).to_string()) != hash {
                return Err(broken(format!("entry {seq} was changed")));
            }
            match &prev {
                Some((p_seq, p_hash)) => {
                    if seq != p_seq + 1 {
                        return Err(broken(format!(
                            "entry {seq} follows entry {p_seq}: entries are missing or out of order"
                        )));
                    }
                    if &link != p_hash {
                        return Err(broken(format!(
                            "entry {seq} does not link to entry {p_seq}"
                        )));
                    }
                }
                None => {
                    // The oldest entry kept: the genesis if nothing was dropped.
                    if seq == 1 && link != GENESIS {
                        return Err(broken("the first entry does not start the chain".into()));
                    }
                    first_seq = seq;
                }
            }
            prev = Some((seq, hash));
            entries += 1;
        }
    }
    // Entries before the oldest kept are gone legitimately only when
    // rotation has dropped files (every slot is taken); otherwise the front
    // of the trail was cut.
    if first_seq > 1 && !rotated(&path, keep.max(1)).exists() {
        return Err(AuditError::Broken {
            file: list
                .first()
                .map(|f| f.display().to_string())
                .unwrap_or_default(),
            line: 1,
            what: format!("entries 1..{first_seq} are missing"),
        });
    }
    Ok(Verified {
        entries,
        first_seq,
        files: list.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(action: &str) -> Record {
        Record {
            action: action.into(),
            actor: Some(("config".into(), "superuser".into())),
            from: Some("127.0.0.1".into()),
            target: Some("t1".into()),
            before: None,
            after: Some(json!({ "role": "admin" })),
            result: "ok".into(),
        }
    }

    fn lines(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join(FILE))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write(dir: &Path, lines: &[String]) {
        std::fs::write(dir.join(FILE), lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn the_chain_verifies_and_carries_on_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let a = Audit::open(Some(dir.path())).unwrap();
        for i in 0..5 {
            assert_eq!(a.append(&rec(&format!("a{i}"))).unwrap(), i + 1);
        }
        drop(a);
        let a = Audit::open(Some(dir.path())).unwrap();
        assert_eq!(a.append(&rec("after-restart")).unwrap(), 6);
        let v = verify(dir.path(), DEFAULT_KEEP).unwrap();
        assert_eq!((v.entries, v.first_seq), (6, 1));
        assert_eq!(a.recent(2).len(), 2);
    }

    #[test]
    fn an_edited_removed_reordered_or_inserted_line_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let a = Audit::open(Some(dir.path())).unwrap();
        for i in 0..4 {
            a.append(&rec(&format!("a{i}"))).unwrap();
        }
        let good = lines(dir.path());
        let mut edited = good.clone();
        edited[1] = edited[1].replace("\"admin\"", "\"superuser\"");
        let mut removed = good.clone();
        removed.remove(2);
        let mut reordered = good.clone();
        reordered.swap(1, 2);
        let mut inserted = good.clone();
        inserted.insert(2, good[1].clone());
        let mut first_gone = good.clone();
        first_gone.remove(0);
        for (what, l) in [
            ("edited", edited),
            ("removed", removed),
            ("reordered", reordered),
            ("inserted", inserted),
        ] {
            write(dir.path(), &l);
            assert!(verify(dir.path(), DEFAULT_KEEP).is_err(), "{what}");
        }
        // Cut at the front, with no rotated file dropped: found too.
        write(dir.path(), &first_gone);
        assert!(verify(dir.path(), DEFAULT_KEEP).is_err(), "front cut");
        write(dir.path(), &good);
        assert_eq!(verify(dir.path(), DEFAULT_KEEP).unwrap().entries, 4);
    }

    #[test]
    fn rotation_keeps_the_chain_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = Audit::open_with(Some(dir.path()), 1024, 3).unwrap();
        for i in 0..40 {
            a.append(&rec(&format!("event-{i}"))).unwrap();
        }
        assert!(rotated(&dir.path().join(FILE), 1).exists());
        assert!(!rotated(&dir.path().join(FILE), 4).exists(), "only 3 kept");
        let v = verify(dir.path(), 3).unwrap();
        assert_eq!(v.files, 4, "three rotated and the current");
        assert!(v.first_seq > 1, "the oldest were dropped by rotation");
        assert_eq!(v.first_seq + v.entries - 1, 40, "up to the last entry");
        // A rotated file edited: found.
        let r1 = rotated(&dir.path().join(FILE), 1);
        let text = std::fs::read_to_string(&r1).unwrap();
        std::fs::write(&r1, text.replacen("event-", "evemt-", 1)).unwrap();
        assert!(verify(dir.path(), 3).is_err());
    }
}
