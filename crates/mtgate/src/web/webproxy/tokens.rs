//! Bootstrap and session tokens: 32 random bytes in base64url. A bootstrap
//! token is made for each bridge page, lives two minutes and opens one
//! session (a retry with the same token gets the same session). Both
//! tables are bounded; the oldest bootstrap makes room for a new one.

use super::registry::Credential;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a bridge page's bootstrap token may open a session.
pub const BOOTSTRAP_LIFETIME: Duration = Duration::from_secs(120);
/// Bootstrap tokens outstanding at once.
const MAX_BOOTSTRAPS: usize = 4096;

fn new_token() -> String {
    let mut b = [0u8; 32];
    mtgate_crypto::fill_random(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

struct Bootstrap {
    credential: Credential,
    made: Instant,
    /// The session it opened (a retry gets the same).
    session: Option<String>,
}

/// A session's record.
#[derive(Clone, Debug)]
pub struct SessionEntry {
    pub credential: Credential,
    pub made: Instant,
    /// What its carriers share: lane ids used, lanes open, last activity.
    pub lanes: Arc<Lanes>,
    /// The `https` carrier's state, made on its first request.
    pub https: Arc<std::sync::OnceLock<Arc<super::carrier_https::HttpsState>>>,
    /// The `https-lanes` carrier's lanes.
    pub https_lanes: Arc<super::carrier_https::LaneTable>,
}

/// A session's lanes (`websocket-lanes`): ids are never reused.
#[derive(Debug, Default)]
pub struct Lanes {
    used: Mutex<std::collections::HashSet<u32>>,
    open: std::sync::atomic::AtomicUsize,
    idle_since: Mutex<Option<Instant>>,
}

/// How long a session with no carrier open is kept (the app reconnects
/// its lanes within it).
pub const SESSION_IDLE: Duration = Duration::from_secs(600);

impl Lanes {
    /// Claims lane `id` (false if it was used before or too many were).
    pub fn claim(&self, id: u32, max: usize) -> bool {
        let mut u = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if u.len() >= max * 64 || !u.insert(id) {
            return false;
        }
        self.open.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        true
    }

    /// A request of the `https` carrier is in progress (until [`Lanes::release`]).
    pub fn busy(&self) {
        self.open.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Lanes open now.
    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A lane (or the session's WebSocket) ended.
    pub fn release(&self) {
        if self.open.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            *self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.open() > 0 {
            return None;
        }
        self.idle_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
    }
}

/// The token tables of one site.
#[derive(Default)]
pub struct Tokens {
    bootstraps: Mutex<HashMap<String, Bootstrap>>,
    sessions: Mutex<HashMap<String, SessionEntry>>,
}

/// Why a session was not opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown, expired or already used elsewhere: the site's 404.
    Unknown,
    /// At capacity: `503 Retry-After: 1` (the bootstrap is kept).
    Full,
}

impl Tokens {
    /// A bootstrap token for a bridge page served to `credential`.
    pub fn bootstrap(&self, credential: Credential) -> String {
        let token = new_token();
        let mut b = self.bootstraps.lock().unwrap_or_else(|p| p.into_inner());
        b.retain(|_, v| v.made.elapsed() < BOOTSTRAP_LIFETIME);
        if b.len() >= MAX_BOOTSTRAPS {
            if let Some(oldest) = b.iter().min_by_key(|(_, v)| v.made).map(|(k, _)| k.clone()) {
                b.remove(&oldest);
            }
        }
        b.insert(
            token.clone(),
            Bootstrap {
                credential,
                made: Instant::now(),
                session: None,
            },
        );
        token
    }

    /// Opens (or, for a retry, finds again) the session of `bootstrap`,
    /// with room for `max_sessions`.
    pub fn open_session(
        &self,
        bootstrap: &str,
        max_sessions: usize,
    ) -> Result<(String, SessionEntry), Refusal> {
        let mut b = self.bootstraps.lock().unwrap_or_else(|p| p.into_inner());
        let entry = b.get_mut(bootstrap).ok_or(Refusal::Unknown)?;
        if entry.made.elapsed() >= BOOTSTRAP_LIFETIME {
            b.remove(bootstrap);
            return Err(Refusal::Unknown);
        }
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        // Sessions left without a carrier for long are gone.
        s.retain(|_, e| {
            let never = e.lanes.open() == 0 && e.made.elapsed() > SESSION_IDLE;
            !never && e.lanes.idle_for().is_none_or(|d| d < SESSION_IDLE)
        });
        if let Some(token) = &entry.session {
            return s
                .get(token)
                .map(|e| (token.clone(), e.clone()))
                .ok_or(Refusal::Unknown);
        }
        if s.len() >= max_sessions {
            return Err(Refusal::Full);
        }
        let token = new_token();
        let e = SessionEntry {
            credential: entry.credential.clone(),
            made: Instant::now(),
            lanes: Arc::default(),
            https: Arc::default(),
            https_lanes: Arc::default(),
        };
        s.insert(token.clone(), e.clone());
        entry.session = Some(token.clone());
        Ok((token, e))
    }

    /// Whether `token` is a live bootstrap token (used or not).
    pub fn is_bootstrap(&self, token: &str) -> bool {
        self.bootstraps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .is_some_and(|b| b.made.elapsed() < BOOTSTRAP_LIFETIME)
    }

    /// The session of `token`, if it is open.
    pub fn session(&self, token: &str) -> Option<SessionEntry> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    /// Ends a session (idempotent).
    pub fn close_session(&self, token: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::registry::WebMode;
    use super::*;

    fn cred() -> Credential {
        Credential {
            user: "alice".into(),
            mode: WebMode::Dd,
            host: "a.test".into(),
        }
    }

    #[test]
    fn a_bootstrap_opens_one_session_and_a_retry_gets_it_again() {
        let t = Tokens::default();
        let boot = t.bootstrap(cred());
        assert!(mtgate_proto::webproxy::is_token_shaped(&boot));
        let (s1, e) = t.open_session(&boot, 10).unwrap();
        assert_eq!(e.credential, cred());
        let (s2, _) = t.open_session(&boot, 10).unwrap();
        assert_eq!(s1, s2, "idempotent");
        assert_eq!(t.sessions(), 1);
        assert!(t.session(&s1).is_some());
        assert_eq!(t.open_session("nope", 10).unwrap_err(), Refusal::Unknown);
        t.close_session(&s1);
        t.close_session(&s1);
        assert!(t.session(&s1).is_none());
        assert_eq!(
            t.open_session(&boot, 10).unwrap_err(),
            Refusal::Unknown,
            "used"
        );
    }

    #[test]
    fn a_full_table_refuses_and_keeps_the_bootstrap() {
        let t = Tokens::default();
        let a = t.bootstrap(cred());
        let b = t.bootstrap(cred());
        t.open_session(&a, 1).unwrap();
        assert_eq!(t.open_session(&b, 1).unwrap_err(), Refusal::Full);
        assert!(t.open_session(&b, 2).is_ok(), "kept for a retry");
    }
}
