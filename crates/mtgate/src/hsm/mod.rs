//! Secrets in an HSM (PKCS#11 through the `cryptoki` crate; issue 13).
//!
//! A user's secret may be `secret = "hsm:LABEL"`: a 16-byte generic
//! secret key labelled `LABEL` in the token `[hsm] token` of the module
//! `[hsm] module`, never written to the config or the state directory.
//! Two modes (`[hsm] mode`):
//!
//! - `digest` (the default, [`kept`]): the handshake's digests are computed
//!   inside the token, so the key's bytes never enter mtgate's memory; a
//!   handshake of such a key costs a few PKCS#11 calls on a pooled session.
//! - `unwrap`: the keys are read from the token wherever the users are built
//!   (start, reload, a change through the API) into locked, zeroized pages
//!   ([`locked`]), so the handshake costs what it costs without an HSM and
//!   the HSM is off the connection path entirely.
//!
//! Either way the token is asked at every start and reload: a token that
//! cannot be reached (module, token, PIN, a missing key) refuses the start
//! or the reload with an `hsm:` error, and the running keys stay.
//!
//! `mtgate hsm --label LABEL` makes such a key in the token, for the mode
//! configured, and prints its client forms once.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use mtgate_crypto::Key16;
use mtgate_proto::key::SecretKey;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use zeroize::Zeroizing;

/// The prefix of a secret kept in the HSM.
pub const PREFIX: &str = "hsm:";

/// `[hsm]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HsmConfig {
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
    /// A file holding the user PIN; else `MTGATE_HSM_PIN`.
    pub pin_file: Option<PathBuf>,
    pub mode: HsmMode,
}

/// `[hsm] mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HsmMode {
    /// The digests computed inside the token; the keys never in memory.
    #[default]
    Digest,
    /// The keys read into zeroized memory when the users are built.
    Unwrap,
}

pub mod kept;
#[cfg(unix)]
pub mod locked;
pub use kept::{health, HealthView};

/// Why the HSM did not give a key.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    #[error("hsm: no [hsm] section, but a user's secret is `hsm:{0}`")]
    NotConfigured(String),
    #[error("hsm: cannot load the PKCS#11 module {module}: {msg}")]
    Load { module: String, msg: String },
    #[error("hsm: no token labelled `{0}` (is the token initialised, the module right?)")]
    NoToken(String),
    #[error("hsm: the PIN: {0}")]
    Pin(String),
    #[error("hsm: logging in to token `{token}` failed: {msg}")]
    Login { token: String, msg: String },
    #[error("hsm: no secret key labelled `{0}` in the token")]
    NoKey(String),
    #[error(
        "hsm: key `{0}` is not a 16-byte key mtgate may read (make it with `mtgate hsm create`)"
    )]
    Unreadable(String),
    #[error("hsm: {0}")]
    Other(String),
}

fn other(e: impl std::fmt::Display) -> HsmError {
    HsmError::Other(e.to_string())
}

/// The modules loaded, by path.
type Loaded = Mutex<Vec<(PathBuf, Arc<Pkcs11>)>>;

/// One loaded module per path for the process (PKCS#11 is initialised once).
fn module(path: &std::path::Path) -> Result<Arc<Pkcs11>, HsmError> {
    static LOADED: OnceLock<Loaded> = OnceLock::new();
    let mut loaded = LOADED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some((_, m)) = loaded.iter().find(|(p, _)| p == path) {
        return Ok(m.clone());
    }
    let load = |msg: String| HsmError::Load {
        module: path.display().to_string(),
        msg,
    };
    let ctx = Pkcs11::new(path).map_err(|e| load(e.to_string()))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| load(e.to_string()))?;
    let ctx = Arc::new(ctx);
    loaded.push((path.to_owned(), ctx.clone()));
    Ok(ctx)
}

fn pin(cfg: &HsmConfig) -> Result<AuthPin, HsmError> {
    let text = match &cfg.pin_file {
        Some(f) => Zeroizing::new(
            std::fs::read_to_string(f)
                .map_err(|e| HsmError::Pin(format!("{}: {e}", f.display())))?,
        ),
        None => Zeroizing::new(
            std::env::var("MTGATE_HSM_PIN")
                .map_err(|_| HsmError::Pin("set hsm.pin_file or MTGATE_HSM_PIN".into()))?,
        ),
    };
    Ok(AuthPin::from(text.trim().to_owned()))
}

/// A logged-in session on the token of `cfg` (`rw` to make keys).
fn session(cfg: &HsmConfig, rw: bool) -> Result<Session, HsmError> {
    let ctx = module(&cfg.module)?;
    let slot: Slot = ctx
        .get_slots_with_token()
        .map_err(other)?
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .is_ok_and(|t| t.label().trim_end() == cfg.token)
        })
        .ok_or_else(|| HsmError::NoToken(cfg.token.clone()))?;
    let s = if rw {
        ctx.open_rw_session(slot)
    } else {
        ctx.open_ro_session(slot)
    }
    .map_err(other)?;
    match s.login(UserType::User, Some(&pin(cfg)?)) {
        // Another session of this process is logged in (digest mode's pool):
        // PKCS#11 logs in an application, not a session.
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(s),
        Err(e) => Err(HsmError::Login {
            token: cfg.token.clone(),
            msg: e.to_string(),
        }),
    }
}

fn template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// Reads the keys labelled `labels` (in that order) from the token.
pub fn read_keys(cfg: &HsmConfig, labels: &[String]) -> Result<Vec<Key16>, HsmError> {
    if labels.is_empty() {
        return Ok(Vec::new());
    }
    let s = session(cfg, false)?;
    let mut out = Vec::with_capacity(labels.len());
    for label in labels {
        let found = s.find_objects(&template(label)).map_err(other)?;
        let obj = *found
            .first()
            .ok_or_else(|| HsmError::NoKey(label.clone()))?;
        let attrs = s
            .get_attributes(obj, &[AttributeType::Value])
            .map_err(|_| HsmError::Unreadable(label.clone()))?;
        let value = attrs.into_iter().find_map(|a| match a {
            Attribute::Value(v) => Some(Zeroizing::new(v)),
            _ => None,
        });
        let bytes: [u8; 16] = value
            .as_deref()
            .and_then(|v| v.as_slice().try_into().ok())
            .ok_or_else(|| HsmError::Unreadable(label.clone()))?;
        out.push(Key16::new(bytes));
    }
    Ok(out)
}

/// Makes a new random 16-byte key labelled `label` in the token, for the
/// configured mode; its value, to print the client forms once.
///
/// Digest mode: the key is drawn here (this command, not the proxy) and put
/// in the token as two objects it will not let out (`label`, and
/// `label#hmac` = the key and 16 zero bytes, for HMAC); unwrap mode: the
/// token draws a key the proxy may read.
pub fn create_key(cfg: &HsmConfig, label: &str) -> Result<Key16, HsmError> {
    let s = session(cfg, true)?;
    for l in [label.to_owned(), kept::hmac_label(label)] {
        if !s.find_objects(&template(&l)).map_err(other)?.is_empty() {
            return Err(HsmError::Other(format!(
                "the token already holds a key labelled `{l}`"
            )));
        }
    }
    let common = |l: &str, sensitive: bool| {
        let mut t = template(l);
        t.extend([
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(sensitive),
            Attribute::Extractable(!sensitive),
        ]);
        t
    };
    if cfg.mode == HsmMode::Unwrap {
        let mut t = common(label, false);
        t.push(Attribute::ValueLen(16.into()));
        s.generate_key(&Mechanism::GenericSecretKeyGen, &t)
            .map_err(other)?;
        drop(s);
        return read_keys(cfg, &[label.to_owned()])?
            .pop()
            .ok_or_else(|| HsmError::NoKey(label.to_owned()));
    }
    let key = Key16::generate();
    let mut t = common(label, true);
    t.push(Attribute::Value(key.expose().to_vec()));
    let made = s.create_object(&t).map_err(other)?;
    let mut padded = Zeroizing::new([0u8; 32]);
    padded[..16].copy_from_slice(key.expose());
    let mut t = common(&kept::hmac_label(label), true);
    t.extend([
        Attribute::Value(padded.to_vec()),
        Attribute::Sign(true),
        Attribute::Verify(true),
    ]);
    if let Err(e) = s.create_object(&t) {
        let _ = s.destroy_object(made);
        return Err(other(e));
    }
    Ok(key)
}

/// Puts the HSM's keys into every secret of `users` that names one.
pub fn resolve(cfg: Option<&HsmConfig>, users: &mut [crate::config::User]) -> Result<(), HsmError> {
    let wanted: Vec<String> = users
        .iter()
        .flat_map(|u| u.secrets.iter().filter_map(|s| s.hsm.clone()))
        .collect();
    let Some(first) = wanted.first() else {
        return Ok(());
    };
    let cfg = cfg.ok_or_else(|| HsmError::NotConfigured(first.clone()))?;
    if cfg.mode == HsmMode::Digest {
        let token = kept::Token::get(cfg);
        for s in users.iter_mut().flat_map(|u| u.secrets.iter_mut()) {
            if let Some(label) = &s.hsm {
                s.key = SecretKey::External(kept::Kept::open(token.clone(), label)?);
            }
        }
        return Ok(());
    }
    let mut keys = read_keys(cfg, &wanted)?.into_iter();
    for s in users.iter_mut().flat_map(|u| u.secrets.iter_mut()) {
        if s.hsm.is_some() {
            if let Some(k) = keys.next() {
                // In a locked page of its own, where the platform has them.
                #[cfg(unix)]
                let key = SecretKey::External(Arc::new(locked::LockedKey::new(k)?));
                #[cfg(not(unix))]
                let key = SecretKey::Local(k);
                s.key = key;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(text: &str) -> Vec<crate::config::User> {
        crate::config::Config::from_toml(text, &crate::config::Overrides::default())
            .unwrap()
            .users
    }

    #[test]
    fn hsm_secrets_are_labels_until_read() {
        let mut u =
            users("[users.a]\nsecret = \"hsm:alice-2027\"\n[users.b]\nsecret = \"hsm:bob\"\n");
        assert_eq!(u[0].secrets[0].hsm.as_deref(), Some("alice-2027"));
        // Two placeholders are not "a shared secret" before they are read.
        assert_eq!(u.len(), 2);
        let e = resolve(None, &mut u).unwrap_err().to_string();
        assert_eq!(
            e,
            "hsm: no [hsm] section, but a user's secret is `hsm:alice-2027`"
        );
        let cfg = HsmConfig {
            module: "/nonexistent/libpkcs11.so".into(),
            token: "t".into(),
            pin_file: None,
            mode: HsmMode::Digest,
        };
        let e = resolve(Some(&cfg), &mut u).unwrap_err().to_string();
        assert!(
            e.starts_with("hsm: cannot load the PKCS#11 module /nonexistent/libpkcs11.so"),
            "{e}"
        );
        // Users without HSM secrets never touch the module.
        let mut plain = users("[users.a]\nsecret = \"00112233445566778899aabbccddeeff\"\n");
        assert!(resolve(Some(&cfg), &mut plain).is_ok());
        for bad in ["hsm:", "hsm:has space", &format!("hsm:{}", "x".repeat(65))] {
            let e = crate::config::Config::from_toml(
                &format!("[users.a]\nsecret = \"{bad}\"\n"),
                &crate::config::Overrides::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("hsm:LABEL"), "{bad}: {e}");
        }
    }
}
