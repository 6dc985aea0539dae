//! Signing in: a token opens a session of its own with a short expiry
//! (bound to the address that signed in, ended when its token is revoked),
//! and failed authentication is limited per address (an IPv4 address or an
//! IPv6 /64): past [`MAX_FAILURES`] within [`FAILURE_WINDOW`] the address
//! is refused until the window ends. Both tables are bounded.

use super::Principal;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// How long a session lasts.
pub const SESSION_TTL: u64 = 15 * 60;
/// The most sessions open at once (the oldest goes first).
pub const MAX_SESSIONS: usize = 4096;
/// What a session token begins with.
pub const SESSION_PREFIX: &str = "mtgs_";
/// Failed attempts an address may make within [`FAILURE_WINDOW`] by default
/// (`admin.auth_failures_per_minute`).
pub const MAX_FAILURES: u32 = 10;
/// Seconds.
pub const FAILURE_WINDOW: u64 = 60;
/// Addresses remembered at once.
const MAX_SOURCES: usize = 4096;

/// An address as the limit counts it.
fn source(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) & !((1u128 << 64) - 1)) | (1u128 << 127) | 1,
    }
}

struct Session {
    principal: Principal,
    expires: u64,
}

/// Open sign-in sessions, by the SHA-256 of their token.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    /// A session for `p` from now (`at`): its token and its expiry.
    pub fn open(&self, p: &Principal, at: u64) -> (String, u64) {
        let mut raw = [0u8; 32];
        mtgate_crypto::fill_random(&mut raw);
        let token = format!("{SESSION_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
        let expires = at + SESSION_TTL;
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, s| s.expires > at);
        if m.len() >= MAX_SESSIONS {
            if let Some(k) = m.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) {
                m.remove(&k);
            }
        }
        m.insert(
            mtgate_crypto::sha256(&[token.as_bytes()]),
            Session {
                principal: Principal {
                    session: true,
                    ..p.clone()
                },
                expires,
            },
        );
        (token, expires)
    }

    /// The principal of session `token` used from `ip` at `at`.
    pub fn check(&self, token: &str, ip: IpAddr, at: u64) -> Option<Principal> {
        let key = mtgate_crypto::sha256(&[token.as_bytes()]);
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = m.get(&key)?;
        if s.expires <= at {
            m.remove(&key);
            return None;
        }
        (source(s.principal.from) == source(ip)).then(|| s.principal.clone())
    }

    /// Ends session `token` (signing out).
    pub fn close(&self, token: &str) -> bool {
        let key = mtgate_crypto::sha256(&[token.as_bytes()]);
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(&key).is_some()
    }

    /// Ends every session of token `id` (it was revoked).
    pub fn end_of_token(&self, id: &str) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, s| s.principal.token_id != id);
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Failed authentication per address.
#[derive(Debug)]
pub struct Failures {
    /// Failures an address may make within [`FAILURE_WINDOW`].
    max: u32,
    /// (failures, window start).
    map: Mutex<HashMap<u128, (u32, u64)>>,
    /// Failed attempts since start (metrics).
    pub total: AtomicU64,
    /// Attempts refused for too many failures (metrics).
    pub limited: AtomicU64,
}

impl Default for Failures {
    fn default() -> Self {
        Self::new(MAX_FAILURES)
    }
}

impl Failures {
    /// At most `max` failures an address within [`FAILURE_WINDOW`].
    pub fn new(max: u32) -> Self {
        Self {
            max: max.max(1),
            map: Mutex::default(),
            total: AtomicU64::new(0),
            limited: AtomicU64::new(0),
        }
    }

    /// Whether `ip` may try at `at` (false: `429`).
    pub fn allowed(&self, ip: IpAddr, at: u64) -> bool {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let ok = match m.get(&source(ip)) {
            Some(&(n, since)) => n < self.max || at >= since + FAILURE_WINDOW,
            None => true,
        };
        if !ok {
            self.limited.fetch_add(1, Relaxed);
        }
        ok
    }

    /// `ip` failed to authenticate at `at`.
    pub fn failed(&self, ip: IpAddr, at: u64) {
        self.total.fetch_add(1, Relaxed);
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_SOURCES {
            m.retain(|_, (_, since)| at < *since + FAILURE_WINDOW);
            if m.len() >= MAX_SOURCES {
                if let Some(k) = m.iter().min_by_key(|(_, v)| v.1).map(|(k, _)| *k) {
                    m.remove(&k);
                }
            }
        }
        let e = m.entry(source(ip)).or_insert((0, at));
        if at >= e.1 + FAILURE_WINDOW {
            *e = (0, at);
        }
        e.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Role;

    fn who(ip: &str) -> Principal {
        Principal {
            token_id: "t1".into(),
            name: "ops".into(),
            role: Role::Admin,
            from: ip.parse().unwrap(),
            session: false,
        }
    }

    #[test]
    fn sessions_expire_stay_with_their_address_and_end_with_their_token() {
        let s = Sessions::default();
        let (t, exp) = s.open(&who("192.0.2.1"), 1000);
        assert_eq!(exp, 1000 + SESSION_TTL);
        let p = s.check(&t, "192.0.2.1".parse().unwrap(), 1001).unwrap();
        assert!(p.session && p.role == Role::Admin);
        assert!(s.check(&t, "192.0.2.2".parse().unwrap(), 1001).is_none());
        assert!(s.check(&t, "192.0.2.1".parse().unwrap(), exp).is_none());
        let (t2, _) = s.open(&who("192.0.2.1"), 2000);
        s.end_of_token("t1");
        assert!(s.check(&t2, "192.0.2.1".parse().unwrap(), 2001).is_none());
        let (t3, _) = s.open(&who("2001:db8::1"), 3000);
        assert!(s.check(&t3, "2001:db8::2".parse().unwrap(), 3001).is_some());
        assert!(s.close(&t3) && !s.close(&t3));
    }

    #[test]
    fn failures_limit_an_address_for_a_window() {
        let f = Failures::default();
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(f.allowed(a, 100));
            f.failed(a, 100);
        }
        assert!(!f.allowed(a, 101));
        assert!(f.allowed("198.51.100.8".parse().unwrap(), 101));
        assert!(f.allowed(a, 100 + FAILURE_WINDOW));
        assert_eq!(f.total.load(Relaxed), u64::from(MAX_FAILURES));
        // Bounded: many sources never grow the table past its cap.
        for i in 0..(MAX_SOURCES as u32 + 100) {
            f.failed(IpAddr::from(i.to_be_bytes()), 200);
        }
        assert!(f.map.lock().unwrap().len() <= MAX_SOURCES);
    }
}
