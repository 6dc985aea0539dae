//! The state directory: where the generated default secret is kept so that
//! every start of a file-less `mtgate run` uses the same one. Written
//! atomically (temp file + rename), mode 0600.

use crate::config::{Modes, User};
use mtgate_crypto::Key16;
use std::io::Write;
use std::path::Path;

/// Name of the generated user.
pub const DEFAULT_USER: &str = "default";

/// Errors reading or writing state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} does not hold a 32-hex-digit secret; remove it to generate a new one")]
    Corrupt { path: String },
    /// The users managed through the admin API could not be taken.
    #[error("managed users: {0}")]
    Managed(String),
    /// A secret kept in the HSM could not be read.
    #[error("{0}")]
    Hsm(String),
}

/// Loads the default user's secret from `dir/secret`, creating it once if absent.
/// Returns the user and whether it was just created.
pub fn load_or_create_default_user(dir: &Path, modes: Modes) -> Result<(User, bool), StateError> {
    let path = dir.join("secret");
    let io = |source| StateError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = mtgate_proto::secret::parse_key(text.trim())
                .ok()
                .filter(|_| text.trim().len() == 32)
                .ok_or_else(|| StateError::Corrupt {
                    path: path.display().to_string(),
                })?;
            Ok((user(key, modes), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io)?;
            let key = Key16::generate();
            write_atomic(&path, format!("{}\n", hex::encode(key.expose())).as_bytes())
                .map_err(io)?;
            Ok((user(key, modes), true))
        }
        Err(e) => Err(io(e)),
    }
}

/// [`users_for`] without asking the HSM (its secrets stay labels) and, if
/// not `create`, without making the default user's secret (no default
/// user then): what `mtgate audit` reads.
pub fn users_unresolved(
    cfg: &crate::config::Config,
    create: bool,
) -> Result<(Vec<User>, bool), StateError> {
    let (users, created) = if !cfg.users.is_empty() {
        (cfg.users.clone(), false)
    } else if create || cfg.state_dir.join("secret").exists() {
        let (u, created) = load_or_create_default_user(&cfg.state_dir, cfg.default_modes)?;
        (vec![u], created)
    } else {
        (Vec::new(), false)
    };
    let managed = crate::control::users::load(&cfg.state_dir, cfg.default_modes)
        .map_err(|e| StateError::Managed(e.to_string()))?;
    let users = crate::control::users::merge(users, managed).map_err(StateError::Managed)?;
    Ok((users, created))
}

/// The users to serve: the configured ones, or the generated default user
/// (and whether it was created just now).
///
/// The users managed through the admin API (`state_dir/users.json`,
/// [`crate::control::users`]) are added to either.
pub fn users_for(cfg: &crate::config::Config) -> Result<(Vec<User>, bool), StateError> {
    let (mut users, created) = users_unresolved(cfg, true)?;
    crate::hsm::resolve(cfg.hsm.as_ref(), &mut users)
        .map_err(|e| StateError::Hsm(e.to_string()))?;
    if users
        .iter()
        .any(|u| u.secrets.iter().any(|s| s.hsm.is_some()))
    {
        shared_check(&users).map_err(StateError::Hsm)?;
    }
    Ok((users, created))
}

/// Refuses a key two secrets share (the HSM's keys, once read).
fn shared_check(users: &[User]) -> Result<(), String> {
    let mut seen: Vec<(&crate::config::Secret, &str)> = Vec::new();
    // In memory: the same bytes; in the HSM's digest mode: the same label.
    let same = |a: &crate::config::Secret, b: &crate::config::Secret| {
        let bytes = matches!((a.bytes(), b.bytes()), (Some(x), Some(y)) if x == y);
        bytes || (a.hsm.is_some() && a.hsm == b.hsm)
    };
    for u in users {
        for s in &u.secrets {
            if let Some((_, other)) = seen.iter().find(|(k, _)| same(k, s)) {
                return Err(format!(
                    "users `{other}` and `{}` share a secret (one of them in the HSM)",
                    u.name
                ));
            }
            seen.push((s, &u.name));
        }
    }
    Ok(())
}

fn user(key: Key16, modes: Modes) -> User {
    User::with_key(DEFAULT_USER, key, modes)
}

/// Writes `data` to `path` through a temporary file and a rename, mode 0600.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let modes = Modes {
            classic: false,
            secure: false,
            fake_tls: true,
        };
        let (a, created) = load_or_create_default_user(dir.path(), modes).unwrap();
        assert!(created);
        let (b, created) = load_or_create_default_user(dir.path(), modes).unwrap();
        assert!(!created);
        assert_eq!(a.secrets, b.secrets);
        std::fs::write(dir.path().join("secret"), "garbage").unwrap();
        assert!(matches!(
            load_or_create_default_user(dir.path(), modes),
            Err(StateError::Corrupt { .. })
        ));
    }
}
