//! The Telegram-provided files (PROTOCOL §7.2), read from local paths.
//!
//! `proxy-secret` (32..=256 raw bytes) and `proxy-multi.conf` (IPv4 and/or
//! IPv6). Each good file is copied to `state_dir/me/` (temp file + rename);
//! when a configured file is missing or bad, that last good copy is used
//! instead, so a botched download does not take ME mode down. A file with no
//! local path but fetched over HTTPS ([`super::fetch`], `[me] fetch = true`)
//! is read from that copy, which only a good fetch replaces.

use crate::config::MeConfig;
use mtgate_proto::me::conf::{ConfError, MeAddr, ProxyMultiConf};
use mtgate_proto::me::kdf::{MAX_SECRET_LEN, MIN_SECRET_LEN};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why the ME files could not be loaded (neither the file nor a last good copy).
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: proxy-secret of {len} bytes (want 32..=256)")]
    SecretLength { path: String, len: usize },
    #[error("{path}: {source}")]
    Conf { path: String, source: ConfError },
    #[error("{path}: not UTF-8 text")]
    NotText { path: String },
    #[error("no proxy-multi.conf configured")]
    NoConf,
}

/// The loaded files: the secret and the clusters of both families merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeFiles {
    pub secret: Vec<u8>,
    /// `(dc, addresses)`, IPv4 file first then IPv6.
    pub clusters: Vec<(i16, Vec<MeAddr>)>,
    pub default_dc: Option<i16>,
    /// The files' `min_connections` / `max_connections` (first file that has them).
    pub min_connections: Option<u32>,
    pub max_connections: Option<u32>,
}

impl MeFiles {
    /// Links to keep per address: `connections_per_addr` when configured;
    /// else the files' `min_connections` (capped by their `max_connections`,
    /// within 1..=64), as the official proxy does; else the default.
    pub fn links_per_addr(&self, cfg: &MeConfig) -> usize {
        if cfg.connections_per_addr_set {
            return cfg.connections_per_addr;
        }
        match self.min_connections {
            Some(min) => {
                let n = self.max_connections.map_or(min, |max| min.min(max));
                (n as usize).clamp(1, 64)
            }
            None => cfg.connections_per_addr,
        }
    }

    /// The addresses for `dc` (its own cluster, else the default cluster).
    pub fn addrs_for(&self, dc: i16) -> Option<&[MeAddr]> {
        let find = |d: i16| self.clusters.iter().find(|c| c.0 == d);
        find(dc)
            .or_else(|| self.default_dc.and_then(find))
            .map(|c| c.1.as_slice())
    }

    /// Every distinct address.
    pub fn all_addrs(&self) -> Vec<MeAddr> {
        let mut v: Vec<MeAddr> = Vec::new();
        for a in self.clusters.iter().flat_map(|c| &c.1) {
            if !v.contains(a) {
                v.push(a.clone());
            }
        }
        v
    }
}

fn read(path: &Path) -> Result<Vec<u8>, FilesError> {
    // Bounded read: neither file is anywhere near this size.
    let data = std::fs::read(path).map_err(|source| FilesError::Read {
        path: path.display().to_string(),
        source,
    })?;
    if data.len() > mtgate_proto::me::conf::MAX_CONF_BYTES {
        return Err(FilesError::Conf {
            path: path.display().to_string(),
            source: ConfError::TooLarge(data.len()),
        });
    }
    Ok(data)
}

pub(crate) fn check_secret(path: &Path, data: Vec<u8>) -> Result<Vec<u8>, FilesError> {
    if (MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&data.len()) {
        Ok(data)
    } else {
        Err(FilesError::SecretLength {
            path: path.display().to_string(),
            len: data.len(),
        })
    }
}

pub(crate) fn check_conf(path: &Path, data: Vec<u8>) -> Result<ProxyMultiConf, FilesError> {
    let p = || path.display().to_string();
    let text = String::from_utf8(data).map_err(|_| FilesError::NotText { path: p() })?;
    ProxyMultiConf::parse(&text).map_err(|source| FilesError::Conf { path: p(), source })
}

pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Loads one file: the configured path, else the last good copy in `keep`
/// (refreshed from a good configured file when `save`). With no configured
/// path (a fetched file) only the copy is read.
fn load_one<T>(
    configured: Option<&Path>,
    keep: &Path,
    save: bool,
    check: impl Fn(&Path, Vec<u8>) -> Result<T, FilesError>,
) -> Result<T, FilesError> {
    let Some(configured) = configured else {
        return read(keep).and_then(|d| check(keep, d));
    };
    let first = read(configured).and_then(|d| check(configured, d.clone()).map(|v| (v, d)));
    match first {
        Ok((v, raw)) => {
            if save && std::fs::read(keep).ok().as_deref() != Some(&raw[..]) {
                if let Err(e) = write_atomic(keep, &raw) {
                    tracing::warn!(path = %keep.display(), error = %e, "cannot keep a copy of an ME file");
                }
            }
            Ok(v)
        }
        Err(e) => {
            let copy = read(keep).and_then(|d| check(keep, d));
            match copy {
                Ok(v) => {
                    tracing::warn!(error = %e, copy = %keep.display(), "ME file unusable; using the last good copy");
                    Ok(v)
                }
                Err(_) => Err(e),
            }
        }
    }
}

/// Where the last good copies live.
pub fn keep_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("me")
}

/// Loads the secret and the configs of `cfg`, keeping copies under
/// `state_dir` when `save` (not when only checking a configuration).
pub fn load(cfg: &MeConfig, state_dir: &Path, save: bool) -> Result<MeFiles, FilesError> {
    let keep = keep_dir(state_dir);
    let fetch = cfg.fetch.as_ref();
    let secret_path = cfg.proxy_secret_file.as_deref();
    if secret_path.is_none() && fetch.and_then(|f| f.secret_url.as_ref()).is_none() {
        return Err(FilesError::NoConf);
    }
    let secret = load_one(secret_path, &keep.join("proxy-secret"), save, check_secret)?;
    let mut files = MeFiles {
        secret,
        clusters: Vec::new(),
        default_dc: None,
        min_connections: None,
        max_connections: None,
    };
    let confs = [
        (
            &cfg.proxy_config_file,
            fetch.is_some_and(|f| f.config_url.is_some()),
            "proxy-multi.conf",
        ),
        (
            &cfg.proxy_config_v6_file,
            fetch.is_some_and(|f| f.config_v6_url.is_some()),
            "proxy-multi-v6.conf",
        ),
    ];
    let mut any = false;
    for (path, fetched, name) in confs {
        if path.is_none() && !fetched {
            continue;
        }
        let conf = load_one(path.as_deref(), &keep.join(name), save, check_conf)?;
        any = true;
        files.default_dc = files.default_dc.or(conf.default_dc);
        files.min_connections = files.min_connections.or(conf.min_connections);
        files.max_connections = files.max_connections.or(conf.max_connections);
        for c in conf.clusters {
            match files.clusters.iter_mut().find(|(dc, _)| *dc == c.dc) {
                Some((_, addrs)) => addrs.extend(c.addrs),
                None => files.clusters.push((c.dc, c.addrs)),
            }
        }
    }
    if !any {
        return Err(FilesError::NoConf);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn cfg(dir: &Path, v6: bool) -> MeConfig {
        let mut text = format!(
            "[me]\nenabled = true\nproxy_secret_file = \"{0}/secret\"\nproxy_config_file = \"{0}/conf\"\n",
            dir.display()
        );
        if v6 {
            text.push_str(&format!(
                "proxy_config_v6_file = \"{}/conf6\"\n",
                dir.display()
            ));
        }
        Config::from_toml(&text, &Overrides::default()).unwrap().me
    }

    #[test]
    fn loads_merges_and_keeps_a_copy() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        std::fs::write(d.path().join("secret"), [7u8; 128]).unwrap();
        std::fs::write(
            d.path().join("conf"),
            "default 2;\nproxy_for 2 127.0.0.1:1;\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("conf6"),
            "proxy_for 2 [::1]:1;\nproxy_for 4 [::1]:2;\n",
        )
        .unwrap();
        let f = load(&cfg(d.path(), true), &state, true).unwrap();
        assert_eq!(f.secret, vec![7u8; 128]);
        assert_eq!(f.addrs_for(2).unwrap().len(), 2);
        assert_eq!(f.addrs_for(99).unwrap().len(), 2, "default cluster");
        assert_eq!(f.all_addrs().len(), 3);
        assert!(keep_dir(&state).join("proxy-secret").exists());

        // A broken download: the last good copy is used.
        std::fs::write(d.path().join("secret"), [7u8; 5]).unwrap();
        std::fs::write(d.path().join("conf"), "garbage").unwrap();
        let f = load(&cfg(d.path(), false), &state, true).unwrap();
        assert_eq!(f.secret.len(), 128);
        assert_eq!(f.addrs_for(2).unwrap().len(), 1);

        // No copy either: the error names the file.
        let e = load(&cfg(d.path(), false), &d.path().join("other"), false).unwrap_err();
        assert!(e.to_string().contains("secret"), "{e}");
    }
}
