//! Digest mode: the handshake's digests computed inside the token, so a
//! secret's bytes never enter mtgate's memory.
//!
//! A secret `hsm:LABEL` is two objects the token will not let out
//! (`CKA_SENSITIVE`, not `CKA_EXTRACTABLE`), both made by `mtgate hsm`:
//! `LABEL`, the 16-byte key, for obfuscated2's SHA-256(prefix ‖ key)
//! (`C_DigestUpdate(prefix)` + `C_DigestKey`), and `LABEL#hmac`, the key
//! padded with 16 zero bytes, for FakeTLS's HMAC-SHA256 (`CKM_SHA256_HMAC`;
//! HMAC pads a short key with zeros, so the digests are the key's own, and
//! tokens refuse HMAC keys shorter than the hash).
//!
//! One [`Token`] per module and token for the process keeps a bounded pool
//! of logged-in sessions, shared by every runtime a reload builds, so a
//! digest costs the PKCS#11 calls and nothing more (no open, no login). A
//! failed call drops its session and forgets the key's object handles (the
//! next call opens a fresh session, logging in again, and looks them up);
//! the failure is logged once, counted, and put in the audit trail by the
//! control plane's pump ([`health`]); the client is fronted like a stranger.

use super::{other, session, HsmConfig, HsmError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use mtgate_proto::key::SecretOps;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

/// The label of a secret's HMAC form.
pub fn hmac_label(label: &str) -> String {
    format!("{label}#hmac")
}

/// Idle sessions kept per token (more are closed when given back).
const POOL: usize = 8;

/// How the process's HSM digests are going, for metrics and the audit pump.
#[derive(Debug, Default)]
pub struct Health {
    failures: AtomicU64,
    failing: AtomicBool,
    last: Mutex<Option<String>>,
}

/// A copy of [`Health`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthView {
    /// Digests that failed since start.
    pub failures: u64,
    /// Whether the last digest failed.
    pub failing: bool,
    /// The last failure, as text (no key material: labels and PKCS#11 codes).
    pub last: Option<String>,
}

/// The process's HSM health.
pub fn health() -> HealthView {
    let h = HEALTH.get_or_init(Health::default);
    HealthView {
        failures: h.failures.load(Relaxed),
        failing: h.failing.load(Relaxed),
        last: h.last.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    }
}

static HEALTH: OnceLock<Health> = OnceLock::new();

fn failed(label: &str, e: &HsmError) {
    let h = HEALTH.get_or_init(Health::default);
    h.failures.fetch_add(1, Relaxed);
    let text = format!("key `{label}`: {e}");
    *h.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(text.clone());
    if !h.failing.swap(true, Relaxed) {
        tracing::error!(
            error = %text,
            "hsm: a digest failed; clients of keys in the HSM are fronted until it answers again"
        );
    }
}

fn answered() {
    let h = HEALTH.get_or_init(Health::default);
    if h.failing.load(Relaxed) && h.failing.swap(false, Relaxed) {
        tracing::warn!("hsm: the token answers again");
    }
}

/// One token of one module, with its pool of logged-in sessions.
pub struct Token {
    cfg: Mutex<HsmConfig>,
    pool: Mutex<Vec<Session>>,
}

impl Token {
    /// The process's token for `cfg` (made once per module and token label;
    /// a later `cfg`, e.g. a new PIN file after a reload, replaces the old).
    pub fn get(cfg: &HsmConfig) -> Arc<Token> {
        type Tokens = Mutex<Vec<Arc<Token>>>;
        static TOKENS: OnceLock<Tokens> = OnceLock::new();
        let mut all = TOKENS
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let same = |t: &Arc<Token>| {
            let c = t.cfg.lock().unwrap_or_else(|p| p.into_inner());
            c.module == cfg.module && c.token == cfg.token
        };
        if let Some(t) = all.iter().find(|t| same(t)) {
            *t.cfg.lock().unwrap_or_else(|p| p.into_inner()) = cfg.clone();
            return t.clone();
        }
        let t = Arc::new(Token {
            cfg: Mutex::new(cfg.clone()),
            pool: Mutex::default(),
        });
        all.push(t.clone());
        t
    }

    fn take(&self) -> Result<Session, HsmError> {
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match pooled {
            Some(s) => Ok(s),
            None => {
                let cfg = self.cfg.lock().unwrap_or_else(|p| p.into_inner()).clone();
                session(&cfg, false)
            }
        }
    }

    fn give(&self, s: Session) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL {
            pool.push(s);
        }
    }
}

/// A secret kept in the token: the handshake's digests of it, computed there.
pub struct Kept {
    token: Arc<Token>,
    label: String,
    /// (the key, its HMAC form), looked up on first use and after a failure.
    objects: Mutex<Option<(ObjectHandle, ObjectHandle)>>,
}

fn find(s: &Session, label: &str) -> Result<ObjectHandle, HsmError> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    s.find_objects(&template)
        .map_err(other)?
        .first()
        .copied()
        .ok_or_else(|| HsmError::NoKey(label.to_owned()))
}

impl Kept {
    /// The secret `label` of `token`; checked now (both objects there, a
    /// digest computed), so a missing key refuses the start or the reload.
    pub fn open(token: Arc<Token>, label: &str) -> Result<Arc<Kept>, HsmError> {
        let k = Arc::new(Kept {
            token,
            label: label.to_owned(),
            objects: Mutex::new(None),
        });
        k.call(|s, (key, mac)| {
            s.digest_init(&Mechanism::Sha256)?;
            s.digest_key(key)?;
            s.digest_final()?;
            s.sign(&Mechanism::Sha256Hmac, mac, b"mtgate")
        })?;
        Ok(k)
    }

    /// Runs `f` on a pooled session with the key's objects; on an error the
    /// session is dropped and the objects forgotten.
    fn call<T>(
        &self,
        f: impl FnOnce(&Session, (ObjectHandle, ObjectHandle)) -> cryptoki::error::Result<T>,
    ) -> Result<T, HsmError> {
        let s = self.token.take()?;
        let cached = *self.objects.lock().unwrap_or_else(|p| p.into_inner());
        let objects = match cached {
            Some(o) => o,
            None => {
                let o = (find(&s, &self.label)?, find(&s, &hmac_label(&self.label))?);
                *self.objects.lock().unwrap_or_else(|p| p.into_inner()) = Some(o);
                o
            }
        };
        match f(&s, objects) {
            Ok(v) => {
                self.token.give(s);
                Ok(v)
            }
            Err(e) => {
                *self.objects.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Err(other(e))
            }
        }
    }

    fn digest(&self, what: Result<Vec<u8>, HsmError>) -> Option<[u8; 32]> {
        let out = what.and_then(|v| {
            <[u8; 32]>::try_from(v.as_slice())
                .map_err(|_| HsmError::Other("a digest of the wrong length".into()))
        });
        match out {
            Ok(d) => {
                answered();
                Some(d)
            }
            Err(e) => {
                failed(&self.label, &e);
                None
            }
        }
    }
}

impl SecretOps for Kept {
    fn sha256_after(&self, prefix: &[u8; 32]) -> Option<[u8; 32]> {
        self.digest(self.call(|s, (key, _)| {
            s.digest_init(&Mechanism::Sha256)?;
            s.digest_update(prefix)?;
            s.digest_key(key)?;
            s.digest_final()
        }))
    }

    fn hmac(&self, parts: &[&[u8]]) -> Option<[u8; 32]> {
        self.digest(self.call(|s, (_, mac)| {
            s.sign_init(&Mechanism::Sha256Hmac, mac)?;
            for p in parts {
                s.sign_update(p)?;
            }
            s.sign_final()
        }))
    }
}
