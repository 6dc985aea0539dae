//! A user's secret as the handshake uses it: only through the two digests
//! the protocol takes of it (PROTOCOL §3.3 and §6.2).
//!
//! A key in memory ([`Key16`]) computes them itself, as it always did. A key
//! held elsewhere (an HSM token: mtgate's `hsm` module) implements
//! [`SecretOps`] and computes them there, so its bytes never enter this
//! process; the handshake holds it as [`SecretKey::External`]. The two cases
//! are one `match` apart, so a proxy without an HSM pays nothing for it.
//!
//! A digest that cannot be computed (the token is gone) is `None`: the
//! handshake treats the key as not matching, and the client is fronted like
//! any stranger. Reporting the failure is the implementation's job.

use mtgate_crypto::{hmac_sha256, sha256, Key16};
use std::sync::Arc;

/// The digests the handshake takes of a secret.
pub trait SecretOps: Send + Sync {
    /// SHA-256(`prefix` ‖ secret): obfuscated2's key derivation.
    fn sha256_after(&self, prefix: &[u8; 32]) -> Option<[u8; 32]>;
    /// HMAC-SHA256 keyed with the secret over the concatenation of `parts`:
    /// FakeTLS's ClientHello and ServerHello digests.
    fn hmac(&self, parts: &[&[u8]]) -> Option<[u8; 32]>;
    /// The bytes, if this process holds them (a key in locked memory does;
    /// a key in a token does not): for links.
    fn exposed(&self) -> Option<&Key16> {
        None
    }
}

impl SecretOps for Key16 {
    #[inline]
    fn sha256_after(&self, prefix: &[u8; 32]) -> Option<[u8; 32]> {
        Some(sha256(&[prefix, self.expose()]))
    }

    #[inline]
    fn hmac(&self, parts: &[&[u8]]) -> Option<[u8; 32]> {
        Some(hmac_sha256(self.expose(), parts))
    }

    fn exposed(&self) -> Option<&Key16> {
        Some(self)
    }
}

/// A user's secret: its bytes in memory, or a handle to where it is kept.
#[derive(Clone)]
pub enum SecretKey {
    Local(Key16),
    External(Arc<dyn SecretOps>),
}

impl SecretKey {
    /// The bytes, when this process holds them (for links and tests).
    pub fn local(&self) -> Option<&Key16> {
        match self {
            SecretKey::Local(k) => Some(k),
            SecretKey::External(e) => e.exposed(),
        }
    }
}

impl From<Key16> for SecretKey {
    fn from(k: Key16) -> Self {
        SecretKey::Local(k)
    }
}

impl SecretOps for SecretKey {
    #[inline]
    fn sha256_after(&self, prefix: &[u8; 32]) -> Option<[u8; 32]> {
        match self {
            SecretKey::Local(k) => k.sha256_after(prefix),
            SecretKey::External(e) => e.sha256_after(prefix),
        }
    }

    #[inline]
    fn hmac(&self, parts: &[&[u8]]) -> Option<[u8; 32]> {
        match self {
            SecretKey::Local(k) => k.hmac(parts),
            SecretKey::External(e) => e.hmac(parts),
        }
    }
}

/// Keys in memory are equal by their bytes (in constant time); keys kept
/// elsewhere by their handle.
impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (SecretKey::Local(a), SecretKey::Local(b)) => a == b,
            (SecretKey::External(a), SecretKey::External(b)) => {
                std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
            }
            _ => false,
        }
    }
}
impl Eq for SecretKey {}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretKey::Local(k) => k.fmt(f),
            SecretKey::External(_) => f.write_str("SecretKey::External"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key kept "elsewhere": the same digests through the trait object,
    /// or none at all (a token that is gone).
    struct Elsewhere(Option<Key16>);

    impl SecretOps for Elsewhere {
        fn sha256_after(&self, prefix: &[u8; 32]) -> Option<[u8; 32]> {
            self.0.as_ref()?.sha256_after(prefix)
        }
        fn hmac(&self, parts: &[&[u8]]) -> Option<[u8; 32]> {
            self.0.as_ref()?.hmac(parts)
        }
    }

    #[test]
    fn external_keys_give_the_local_digests() {
        let k = Key16::new([7; 16]);
        let local = SecretKey::from(k.clone());
        let ext = SecretKey::External(Arc::new(Elsewhere(Some(k.clone()))));
        let p = [3u8; 32];
        assert_eq!(local.sha256_after(&p), ext.sha256_after(&p));
        assert_eq!(local.hmac(&[b"a", b"bc"]), ext.hmac(&[b"abc"]));
        assert_eq!(local.sha256_after(&p), Some(sha256(&[&p, k.expose()])));
        assert!(local.local().is_some() && ext.local().is_none());
        assert!(local == SecretKey::from(k.clone()) && ext == ext.clone() && local != ext);
        let gone = SecretKey::External(Arc::new(Elsewhere(None)));
        assert_eq!(gone.hmac(&[b"x"]), None);
        assert_eq!(format!("{ext:?}"), "SecretKey::External");
        assert!(!format!("{local:?}").contains('7'));
    }
}
