//! Users managed through the control plane, kept in `state_dir/users.json`
//! beside the config file's own.
//!
//! Each entry has the shape of a `[users.NAME]` table (`secret`, `modes`,
//! `limits`) and passes exactly the config file's checks
//! ([`crate::config::parse_users_json`]). The file is written atomically,
//! mode 0600 (it holds secrets). The running proxy learns of a change the way
//! it learns of a reload: the service rebuilds the runtime with the merged
//! users ([`crate::state::users_for`]) and swaps it in; sessions of a user
//! removed, disabled or given a new secret are drained after
//! `server.drain_grace`.
//!
//! The config file stays the owner of what it defines: its users are shown
//! but not changed here (`409`), and a name it gains later wins over the
//! managed entry of that name (which is then skipped with a warning).

use crate::config::{Modes, User};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file in the state directory.
pub const FILE: &str = "users.json";

/// At most this many managed users (every table is bounded).
pub const MAX_USERS: usize = 10_000;

/// The managed entries by name, as stored.
pub type Entries = BTreeMap<String, Value>;

/// Why the managed users could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a JSON object of users: {msg}")]
    Corrupt { path: String, msg: String },
    #[error("{path}: {msg}")]
    Invalid { path: String, msg: String },
}

/// Reads `dir/users.json` (absent: none).
pub fn read(dir: &Path) -> Result<Entries, StoreError> {
    let path = dir.join(FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Entries::new()),
        Err(source) => {
            return Err(StoreError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    };
    serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
        path: path.display().to_string(),
        msg: e.to_string(),
    })
}

/// The managed users of `dir`, checked like the config file's.
pub fn load(dir: &Path, default_modes: Modes) -> Result<Vec<User>, StoreError> {
    let entries = read(dir)?;
    crate::config::parse_users_json(&entries, default_modes).map_err(|e| StoreError::Invalid {
        path: dir.join(FILE).display().to_string(),
        msg: e.to_string(),
    })
}

/// Writes the entries atomically (mode 0600).
pub fn write(dir: &Path, entries: &Entries) -> Result<(), StoreError> {
    let path = dir.join(FILE);
    let io = |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let text = serde_json::to_vec_pretty(entries).unwrap_or_default();
    crate::state::write_atomic(&path, &text).map_err(io)
}

/// The store: one change at a time.
#[derive(Debug)]
pub struct Store {
    pub(super) dir: Option<PathBuf>,
    pub(super) lock: Mutex<()>,
}

impl Store {
    /// The store in `dir` (`None`: no state directory, nothing can be managed).
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            lock: Mutex::new(()),
        }
    }

    /// The entries now.
    pub fn entries(&self) -> Entries {
        self.dir
            .as_deref()
            .and_then(|d| read(d).ok())
            .unwrap_or_default()
    }

    /// Runs `change` on the entries under the store's lock and writes the
    /// result; then `apply` (which makes the running proxy take it). When
    /// `apply` fails, the entries before the change are written back.
    pub fn change<T, E: From<StoreError>>(
        &self,
        change: impl FnOnce(&mut Entries) -> Result<T, E>,
        apply: impl FnOnce() -> Result<(), E>,
    ) -> Result<T, E> {
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(dir) = self.dir.as_deref() else {
            return Err(StoreError::Io {
                path: FILE.into(),
                source: std::io::Error::other("no state directory"),
            }
            .into());
        };
        let before = read(dir)?;
        let mut after = before.clone();
        let out = change(&mut after)?;
        write(dir, &after)?;
        if let Err(e) = apply() {
            write(dir, &before)?;
            return Err(e);
        }
        Ok(out)
    }
}

/// The config users, or the generated default user, plus the managed ones
/// (skipping a name the config also has; a secret two users share is refused).
pub fn merge(mut users: Vec<User>, managed: Vec<User>) -> Result<Vec<User>, String> {
    for m in managed {
        if users.iter().any(|u| u.name == m.name) {
            tracing::warn!(user = %m.name, "a user of {FILE} is also in the config file; the config file's is used");
            continue;
        }
        if let Some(u) = users.iter().find(|u| {
            u.secrets
                .iter()
                .any(|s| m.secrets.iter().any(|t| t.key == s.key))
        }) {
            return Err(format!(
                "users `{}` and `{}` share a secret",
                u.name, m.name
            ));
        }
        users.push(m);
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODES: Modes = Modes {
        classic: false,
        secure: true,
        fake_tls: true,
    };

    fn entry(secret: &str) -> Value {
        serde_json::json!({ "secret": secret, "modes": ["ee"], "limits": { "max_connections": 3 } })
    }

    #[test]
    fn entries_round_trip_and_pass_the_config_checks() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), MODES).unwrap().is_empty());
        let mut e = Entries::new();
        e.insert("bob".into(), entry("00112233445566778899aabbccddeeff"));
        write(dir.path(), &e).unwrap();
        let users = load(dir.path(), MODES).unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].name, "bob");
        assert!(users[0].modes.fake_tls && !users[0].modes.secure);
        assert_eq!(users[0].limits.max_connections, Some(3));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_bad_entry_or_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Entries::new();
        e.insert("bob".into(), serde_json::json!({ "secret": "zz" }));
        write(dir.path(), &e).unwrap();
        let err = load(dir.path(), MODES).unwrap_err().to_string();
        assert!(err.contains("users.bob.secret"), "{err}");
        e.insert(
            "bob".into(),
            serde_json::json!({ "secret": "00112233445566778899aabbccddeeff", "colour": 1 }),
        );
        write(dir.path(), &e).unwrap();
        let err = load(dir.path(), MODES).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
        std::fs::write(dir.path().join(FILE), b"[1,2]").unwrap();
        assert!(matches!(read(dir.path()), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn a_failed_apply_restores_the_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(Some(dir.path().to_owned()));
        store
            .change::<_, StoreError>(
                |e| {
                    e.insert("bob".into(), entry("00112233445566778899aabbccddeeff"));
                    Ok(())
                },
                || Ok(()),
            )
            .unwrap();
        let r = store.change(
            |e| {
                e.clear();
                Ok(())
            },
            || {
                Err(StoreError::Corrupt {
                    path: "x".into(),
                    msg: "refused".into(),
                })
            },
        );
        assert!(r.is_err());
        assert!(store.entries().contains_key("bob"));
    }

    #[test]
    fn config_names_win_and_shared_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = Entries::new();
        e.insert("alice".into(), entry("ffeeddccbbaa99887766554433221100"));
        e.insert("bob".into(), entry("00112233445566778899aabbccddeeff"));
        write(dir.path(), &e).unwrap();
        let managed = load(dir.path(), MODES).unwrap();
        let mut cfg_alice = managed[1].clone();
        cfg_alice.name = "alice".into();
        cfg_alice.secrets = vec![crate::config::Secret::always(
            mtgate_crypto::Key16::generate(),
        )];
        let merged = merge(vec![cfg_alice.clone()], managed.clone()).unwrap();
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].secrets, cfg_alice.secrets);
        let mut carol = managed[1].clone();
        carol.name = "carol".into();
        let err = merge(vec![carol], managed).unwrap_err();
        assert!(err.contains("share a secret"), "{err}");
    }
}
