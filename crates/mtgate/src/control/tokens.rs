//! Admin tokens: each a role, an optional expiry and optional source
//! networks, stored only as a SHA-256 hash (a token is 32 random bytes, so
//! a plain hash is as strong as a slow one here and costs nothing per
//! request). Kept in `admin-tokens.json` in the state directory, written
//! atomically on every change; `admin.token` from the configuration is a
//! `superuser` token with the id `config`, so existing deployments keep
//! working.

use super::{now, ControlError, Principal, Role};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;

/// The store's file in the state directory.
pub const FILE: &str = "admin-tokens.json";
/// The most tokens kept.
pub const MAX_TOKENS: usize = 1024;
/// What every token begins with (easy to find in a leaked paste).
pub const PREFIX: &str = "mtga_";

/// One token as stored (and listed: there is nothing secret in it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    #[serde(with = "role_name")]
    pub role: Role,
    /// Hex SHA-256 of the token.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub hash: String,
    pub created: u64,
    /// Unix seconds after which the token is refused.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expires: Option<u64>,
    /// Source networks it is accepted from (empty: any).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub from: Vec<IpNet>,
}

mod role_name {
    use super::Role;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(r: &Role, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(r.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let s = String::deserialize(d)?;
        Role::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown role {s:?}")))
    }
}

/// What creating a token takes.
#[derive(Clone, Debug, Default)]
pub struct NewToken {
    pub name: String,
    pub role: Option<Role>,
    pub expires: Option<u64>,
    pub from: Vec<IpNet>,
}

/// Why a bearer was not accepted (the API answers all of them alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Unknown,
    Expired,
    WrongSource,
}

/// The tokens.
pub struct TokenStore {
    path: Option<PathBuf>,
    records: Mutex<Vec<TokenRecord>>,
    /// `admin.token`: SHA-256 of it.
    config: Mutex<Option<[u8; 32]>>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn digest(token: &str) -> [u8; 32] {
    mtgate_crypto::sha256(&[token.as_bytes()])
}

/// Constant-time equality of two digests.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl TokenStore {
    /// The store kept in `dir` (loaded if there), or in memory only.
    pub fn open(dir: Option<PathBuf>) -> Result<Self, ControlError> {
        let path = dir.map(|d| d.join(FILE));
        let records = match &path {
            Some(p) if p.exists() => {
                let text =
                    std::fs::read_to_string(p).map_err(|e| ControlError::Storage(e.to_string()))?;
                serde_json::from_str(&text)
                    .map_err(|e| ControlError::Storage(format!("{}: {e}", p.display())))?
            }
            _ => Vec::new(),
        };
        Ok(Self {
            path,
            records: Mutex::new(records),
            config: Mutex::new(None),
        })
    }

    /// `admin.token` (a `superuser`), as the configuration now has it.
    pub fn set_config_token(&self, token: Option<&str>) {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = token.map(digest);
    }

    /// Who `token` is, from `ip` at `at` (Unix seconds).
    pub fn authenticate(&self, token: &str, ip: IpAddr, at: u64) -> Result<Principal, Refused> {
        let d = digest(token);
        if let Some(c) = *self.config.lock().unwrap_or_else(|p| p.into_inner()) {
            if same(&c, &d) {
                return Ok(Principal {
                    token_id: "config".into(),
                    name: "admin.token".into(),
                    role: Role::Superuser,
                    from: ip,
                    session: false,
                });
            }
        }
        let hex = hex::encode(d);
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        // Every record is compared, so timing does not tell which matched.
        let mut found = None;
        for r in records.iter() {
            let equal = r.hash.len() == hex.len()
                && r.hash
                    .bytes()
                    .zip(hex.bytes())
                    .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                    == 0;
            if equal {
                found = Some(r);
            }
        }
        let found = found.ok_or(Refused::Unknown)?;
        if found.expires.is_some_and(|e| at >= e) {
            return Err(Refused::Expired);
        }
        let ip = ip.to_canonical();
        if !found.from.is_empty() && !found.from.iter().any(|n| n.contains(&ip)) {
            return Err(Refused::WrongSource);
        }
        Ok(Principal {
            token_id: found.id.clone(),
            name: found.name.clone(),
            role: found.role,
            from: ip,
            session: false,
        })
    }

    /// The tokens (without their hashes).
    pub fn list(&self) -> Vec<TokenRecord> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records
            .iter()
            .map(|r| TokenRecord {
                hash: String::new(),
                ..r.clone()
            })
            .collect()
    }

    /// Creates a token: its record and the token itself (shown this once).
    pub fn create(&self, new: NewToken) -> Result<(TokenRecord, String), ControlError> {
        let name = new.name.trim();
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@ ".contains(&b))
        {
            return Err(ControlError::Invalid(
                "name: 1..64 of letters, digits, '-', '_', '.', '@', ' '".into(),
            ));
        }
        let role = new
            .role
            .ok_or_else(|| ControlError::Invalid("role is required".into()))?;
        let created = now();
        if new.expires.is_some_and(|e| e <= created) {
            return Err(ControlError::Invalid("expires is in the past".into()));
        }
        let mut raw = [0u8; 32];
        mtgate_crypto::fill_random(&mut raw);
        let token = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
        let mut id = [0u8; 6];
        mtgate_crypto::fill_random(&mut id);
        let record = TokenRecord {
            id: hex::encode(id),
            name: name.to_owned(),
            role,
            hash: hex::encode(digest(&token)),
            created,
            expires: new.expires,
            from: new.from.into_iter().map(|n| n.trunc()).collect(),
        };
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.len() >= MAX_TOKENS {
            return Err(ControlError::Invalid(format!(
                "at most {MAX_TOKENS} tokens"
            )));
        }
        if records.iter().any(|r| r.name == record.name) {
            return Err(ControlError::Exists(format!("a token named {name:?}")));
        }
        records.push(record.clone());
        self.save(&records)?;
        Ok((
            TokenRecord {
                hash: String::new(),
                ..record
            },
            token,
        ))
    }

    /// Revokes token `id`.
    pub fn revoke(&self, id: &str) -> Result<TokenRecord, ControlError> {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let at = records
            .iter()
            .position(|r| r.id == id)
            .ok_or(ControlError::NotFound("token"))?;
        let gone = records.remove(at);
        if let Err(e) = self.save(&records) {
            records.insert(at, gone);
            return Err(e);
        }
        Ok(TokenRecord {
            hash: String::new(),
            ..gone
        })
    }

    /// Every record as stored (hashes, never tokens): what another node
    /// takes (shared state).
    pub fn records(&self) -> Vec<TokenRecord> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes `records` from another node: saved and in force at once; the
    /// ids no longer there, or `None` when nothing changed.
    pub fn replace(&self, records: Vec<TokenRecord>) -> Result<Option<Vec<String>>, ControlError> {
        let mut mine = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if *mine == records {
            return Ok(None);
        }
        self.save(&records)?;
        let gone = mine
            .iter()
            .filter(|r| !records.iter().any(|n| n.id == r.id))
            .map(|r| r.id.clone())
            .collect();
        *mine = records;
        Ok(Some(gone))
    }

    /// Tokens with no expiry (what `mtgate audit` reports).
    pub fn without_expiry(&self) -> usize {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.iter().filter(|r| r.expires.is_none()).count()
    }

    fn save(&self, records: &[TokenRecord]) -> Result<(), ControlError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = serde_json::to_string_pretty(records)
            .map_err(|e| ControlError::Storage(e.to_string()))?;
        crate::state::write_atomic(path, text.as_bytes())
            .map_err(|e| ControlError::Storage(format!("{}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tokens_are_stored_as_hashes_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(Some(dir.path().into())).unwrap();
        let (rec, token) = store
            .create(NewToken {
                name: "ops".into(),
                role: Some(Role::Admin),
                ..Default::default()
            })
            .unwrap();
        assert!(token.starts_with(PREFIX));
        let file = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(
            !file.contains(&token[PREFIX.len()..]),
            "never the token itself"
        );
        assert!(rec.hash.is_empty(), "a listed record has no hash");
        let again = TokenStore::open(Some(dir.path().into())).unwrap();
        let p = again.authenticate(&token, ip("127.0.0.1"), now()).unwrap();
        assert_eq!((p.role, p.token_id), (Role::Admin, rec.id.clone()));
        again.revoke(&rec.id).unwrap();
        assert_eq!(
            again.authenticate(&token, ip("127.0.0.1"), now()),
            Err(Refused::Unknown)
        );
    }

    #[test]
    fn expiry_and_source_networks_are_enforced() {
        let store = TokenStore::open(None).unwrap();
        let t0 = now();
        let (_, token) = store
            .create(NewToken {
                name: "ci".into(),
                role: Some(Role::ReadOnly),
                expires: Some(t0 + 60),
                from: vec!["10.1.0.0/16".parse().unwrap()],
            })
            .unwrap();
        assert!(store.authenticate(&token, ip("10.1.2.3"), t0).is_ok());
        assert!(store
            .authenticate(&token, ip("::ffff:10.1.2.3"), t0)
            .is_ok());
        assert_eq!(
            store.authenticate(&token, ip("10.2.0.1"), t0),
            Err(Refused::WrongSource)
        );
        assert_eq!(
            store.authenticate(&token, ip("10.1.2.3"), t0 + 60),
            Err(Refused::Expired)
        );
    }

    #[test]
    fn the_configured_token_is_a_superuser_and_bad_input_is_refused() {
        let store = TokenStore::open(None).unwrap();
        store.set_config_token(Some("s3cret-config-token"));
        let p = store
            .authenticate("s3cret-config-token", ip("127.0.0.1"), now())
            .unwrap();
        assert_eq!((p.role, p.token_id.as_str()), (Role::Superuser, "config"));
        store.set_config_token(None);
        assert!(store
            .authenticate("s3cret-config-token", ip("127.0.0.1"), now())
            .is_err());
        for bad in ["", " ", "a/b", &"x".repeat(65)] {
            assert!(store
                .create(NewToken {
                    name: bad.into(),
                    role: Some(Role::None),
                    ..Default::default()
                })
                .is_err());
        }
        assert!(store
            .create(NewToken {
                name: "norole".into(),
                ..Default::default()
            })
            .is_err());
        let new = |n: &str| NewToken {
            name: n.into(),
            role: Some(Role::Standard),
            ..Default::default()
        };
        store.create(new("dup")).unwrap();
        assert!(matches!(
            store.create(new("dup")),
            Err(ControlError::Exists(_))
        ));
        assert_eq!(store.revoke("nope"), Err(ControlError::NotFound("token")));
    }
}
