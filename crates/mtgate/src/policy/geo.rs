//! Geo blocking: countries from a MaxMind-format database ([`GeoDb`]) and the
//! allow/deny decision on them ([`GeoPolicy`]).
//!
//! The database is read whole into memory (`maxminddb::Reader<Vec<u8>>`) and
//! held in an `ArcSwap`, so lookups take no lock and
//! [`GeoDb::reload_if_changed`] swaps in a new file atomically. A reload that
//! fails (missing, truncated, not a MaxMind DB) keeps the old database.
//! Country codes come from `country.iso_code`, else `registered_country.iso_code`.

use crate::config::policy::{GeoConfig, GeoList};
use crate::policy::error::PolicyError;
use arc_swap::ArcSwap;
use maxminddb::{geoip2, Reader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The largest database file read (GeoLite2-City is about 70 MB).
pub const MAX_DB_BYTES: u64 = 1 << 30;

/// `"de"` → `*b"DE"`; `None` unless two ASCII letters.
pub fn country_code(s: &str) -> Option<[u8; 2]> {
    match s.trim().as_bytes() {
        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Some([a.to_ascii_uppercase(), b.to_ascii_uppercase()])
        }
        _ => None,
    }
}

type Stamp = (u64, Option<SystemTime>);

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok((m.len(), m.modified().ok()))
}

fn load(path: &Path) -> Result<(Reader<Vec<u8>>, Stamp), PolicyError> {
    let read_err = |source| PolicyError::Read {
        path: path.to_owned(),
        source,
    };
    let st = stamp(path).map_err(read_err)?;
    if st.0 > MAX_DB_BYTES {
        return Err(PolicyError::TooLarge {
            path: path.to_owned(),
            len: st.0,
            max: MAX_DB_BYTES,
        });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    let reader = Reader::from_source(bytes).map_err(|e| PolicyError::GeoDb {
        path: path.to_owned(),
        msg: e.to_string(),
    })?;
    let ipv = reader.metadata().ip_version;
    if ipv != 4 && ipv != 6 {
        return Err(PolicyError::GeoDb {
            path: path.to_owned(),
            msg: format!("ip_version {ipv}"),
        });
    }
    Ok((reader, st))
}

/// A MaxMind-format country database, reloadable.
pub struct GeoDb {
    path: PathBuf,
    reader: ArcSwap<Reader<Vec<u8>>>,
    stamp: Mutex<Stamp>,
}

impl std::fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDb").field("path", &self.path).finish()
    }
}

impl GeoDb {
    /// Reads and checks the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        let path = path.as_ref().to_owned();
        let (reader, st) = load(&path)?;
        Ok(Self {
            path,
            reader: ArcSwap::from_pointee(reader),
            stamp: Mutex::new(st),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ISO 3166-1 alpha-2 code of `ip`'s country (upper case), if the
    /// database knows it. IPv4-mapped IPv6 addresses are looked up as IPv4.
    pub fn country(&self, ip: IpAddr) -> Option<[u8; 2]> {
        let ip = ip.to_canonical();
        let reader = self.reader.load();
        if ip.is_ipv6() && reader.metadata().ip_version == 4 {
            return None;
        }
        let found = reader.lookup(ip).ok()?;
        let rec = found.decode::<geoip2::Country>().ok()??;
        rec.country
            .iso_code
            .and_then(country_code)
            .or_else(|| rec.registered_country.iso_code.and_then(country_code))
    }

    /// Reads the file again if its length or modification time changed.
    /// `Ok(true)`: a new database is in use. On error the old one stays.
    pub fn reload_if_changed(&self) -> Result<bool, PolicyError> {
        let now = stamp(&self.path).map_err(|source| PolicyError::Read {
            path: self.path.clone(),
            source,
        })?;
        {
            let cur = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if *cur == now {
                return Ok(false);
            }
        }
        let (reader, st) = load(&self.path)?;
        self.reader.store(Arc::new(reader));
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = st;
        Ok(true)
    }
}

/// What [`GeoPolicy::decide`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeoVerdict {
    Allowed,
    /// `country` is `None` for an address the database does not place
    /// (refused by `unknown = "deny"`).
    Denied {
        country: Option<[u8; 2]>,
    },
}

/// Country allow/deny on a [`GeoDb`].
#[derive(Debug)]
pub struct GeoPolicy {
    db: GeoDb,
    allow_list: bool,
    countries: Vec<[u8; 2]>,
    unknown_allowed: bool,
}

impl GeoPolicy {
    /// Opens the configured database.
    pub fn new(cfg: &GeoConfig) -> Result<Self, PolicyError> {
        Ok(Self::with_db(GeoDb::open(&cfg.database)?, cfg))
    }

    /// The policy of `cfg` on an already open database.
    pub fn with_db(db: GeoDb, cfg: &GeoConfig) -> Self {
        let (allow_list, countries) = match &cfg.list {
            GeoList::Allow(c) => (true, c.clone()),
            GeoList::Deny(c) => (false, c.clone()),
        };
        Self {
            db,
            allow_list,
            countries,
            unknown_allowed: cfg.unknown_allowed,
        }
    }

    pub fn db(&self) -> &GeoDb {
        &self.db
    }

    /// Allowed or denied by the country of `ip`.
    pub fn decide(&self, ip: IpAddr) -> GeoVerdict {
        match self.db.country(ip) {
            None if self.unknown_allowed => GeoVerdict::Allowed,
            None => GeoVerdict::Denied { country: None },
            Some(c) => {
                if self.countries.contains(&c) == self.allow_list {
                    GeoVerdict::Allowed
                } else {
                    GeoVerdict::Denied { country: Some(c) }
                }
            }
        }
    }

    /// See [`GeoDb::reload_if_changed`].
    pub fn reload_if_changed(&self) -> Result<bool, PolicyError> {
        self.db.reload_if_changed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_codes() {
        assert_eq!(country_code("de"), Some(*b"DE"));
        assert_eq!(country_code(" Nl "), Some(*b"NL"));
        assert_eq!(country_code("DEU"), None);
        assert_eq!(country_code("D1"), None);
        assert_eq!(country_code("é"), None);
    }

    #[test]
    fn missing_and_bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("none.mmdb");
        assert!(matches!(GeoDb::open(&p), Err(PolicyError::Read { .. })));
        std::fs::write(&p, b"not a database at all").unwrap();
        let e = GeoDb::open(&p).unwrap_err();
        assert!(matches!(e, PolicyError::GeoDb { .. }), "{e}");
        assert!(e.to_string().contains("none.mmdb"));
    }
}
