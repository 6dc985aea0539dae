//! The server handshake state machine (DESIGN §1 "handshake").
//!
//! Feed it the client's bytes as they arrive, with the current Unix time; it
//! answers [`Outcome::NeedMore`], [`Outcome::Respond`] (bytes to send, then keep
//! feeding), [`Outcome::Accepted`] (the client is valid: user, mode, ciphers and
//! any early stream bytes), or [`Outcome::Reject`] (not ours: the caller masks
//! or closes; [`Handshake::received`] holds every byte read so far, to replay).
//! It never touches I/O or clocks, so it is tested and fuzzed directly.

use crate::faketls::{self, ClientHello, RecordStripper};
use crate::key::SecretKey;
use crate::obfs2::{self, CipherPair, DcIndex, ProtoTag, HEADER_LEN};
use crate::replay::ReplayCache;

/// The client modes a user may be allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientMode {
    /// Plain obfuscated2 with the abridged or intermediate tag.
    Classic,
    /// Obfuscated2 with the padded-intermediate tag (`dd` secrets).
    Secure,
    /// FakeTLS (`ee` secrets).
    FakeTls,
}

impl ClientMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Secure => "dd",
            Self::FakeTls => "ee",
        }
    }
}

/// When a secret is accepted, in Unix seconds, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    pub not_before: u64,
    pub not_after: u64,
}

impl Window {
    /// Always valid.
    pub const ALWAYS: Window = Window {
        not_before: 0,
        not_after: u64::MAX,
    };

    pub fn contains(&self, now: u64) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

impl Default for Window {
    fn default() -> Self {
        Self::ALWAYS
    }
}

/// One secret of a user as the handshake sees it. A user with several
/// secrets (rotation) has a key for each, all naming it as `owner`.
#[derive(Clone, Debug)]
pub struct UserKey {
    /// In memory, or kept in an HSM (the handshake only takes digests of it).
    pub key: SecretKey,
    /// The user this key belongs to: what [`Accepted::user`] names.
    pub owner: usize,
    /// Outside it the key is not tried (a client of it is not ours).
    pub valid: Window,
    pub classic: bool,
    pub secure: bool,
    pub fake_tls: bool,
}

impl UserKey {
    /// A key of user `owner`, always valid, with these modes.
    pub fn new(
        key: impl Into<SecretKey>,
        owner: usize,
        classic: bool,
        secure: bool,
        fake_tls: bool,
    ) -> Self {
        Self {
            key: key.into(),
            owner,
            valid: Window::ALWAYS,
            classic,
            secure,
            fake_tls,
        }
    }

    fn allows(&self, m: ClientMode) -> bool {
        match m {
            ClientMode::Classic => self.classic,
            ClientMode::Secure => self.secure,
            ClientMode::FakeTls => self.fake_tls,
        }
    }
}

/// What the handshake checks against; built once per config and shared.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    /// Every user's secrets (a user may have several).
    pub users: Vec<UserKey>,
    /// Accepted SNI names for FakeTLS (lowercase). Empty = any.
    pub domains: Vec<String>,
    /// How far a FakeTLS timestamp may lie in the past / future, in seconds.
    pub max_past_secs: u64,
    pub max_future_secs: u64,
    /// Size range of the fake application-data record in the ServerHello
    /// (used when `observed_cert_lens` is empty).
    pub fake_cert_len: (u32, u32),
    /// Sizes learned from the mask site; one is drawn per handshake.
    pub observed_cert_lens: Vec<u32>,
    /// Put supported_versions before key_share, as the mask site does.
    pub versions_first: bool,
}

impl HandshakeConfig {
    fn any_obfs2(&self) -> bool {
        self.users.iter().any(|u| u.classic || u.secure)
    }
}

/// Why a handshake is not a valid client of any user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// First bytes are not TLS and no user allows obfuscated2.
    NotTls,
    /// The ClientHello record is malformed or of a bad size.
    BadHello,
    /// No user's key verifies the ClientHello digest.
    BadDigest,
    /// The SNI is absent or not one of the configured domains.
    UnknownSni,
    /// The FakeTLS timestamp is outside the window.
    BadTimestamp,
    /// A FakeTLS client random or obfuscated2 header seen before.
    Replay,
    /// No user's key gives a valid obfuscated2 tag.
    BadObfs2,
    /// The matching user does not allow this mode.
    ModeNotAllowed,
    /// Bad TLS records after the ServerHello.
    BadRecord,
}

impl RejectReason {
    /// Every reason, in [`RejectReason::index`] order.
    pub const ALL: [RejectReason; 9] = [
        Self::NotTls,
        Self::BadHello,
        Self::BadDigest,
        Self::UnknownSni,
        Self::BadTimestamp,
        Self::Replay,
        Self::BadObfs2,
        Self::ModeNotAllowed,
        Self::BadRecord,
    ];

    /// A dense index (for counter arrays).
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::NotTls => "not_tls",
            Self::BadHello => "bad_hello",
            Self::BadDigest => "bad_digest",
            Self::UnknownSni => "unknown_sni",
            Self::BadTimestamp => "bad_timestamp",
            Self::Replay => "replay",
            Self::BadObfs2 => "bad_obfs2",
            Self::ModeNotAllowed => "mode_not_allowed",
            Self::BadRecord => "bad_record",
        }
    }
}

/// A valid client.
#[derive(Debug)]
pub struct Accepted {
    /// The user ([`UserKey::owner`] of the key that matched).
    pub user: usize,
    /// Index of the matching key in [`HandshakeConfig::users`].
    pub key: usize,
    pub mode: ClientMode,
    pub tag: ProtoTag,
    pub dc: DcIndex,
    /// Client-side ciphers: `dec` at stream offset 64, `enc` at 0.
    pub ciphers: CipherPair,
    /// Obfuscated stream bytes that arrived with the header (still encrypted).
    pub early: Vec<u8>,
    /// For FakeTLS: the record stripper, positioned where the client stream is.
    pub tls: Option<RecordStripper>,
}

/// The result of feeding bytes.
#[derive(Debug)]
pub enum Outcome {
    NeedMore,
    /// Send these bytes to the client, then keep feeding.
    Respond(Vec<u8>),
    Accepted(Box<Accepted>),
    Reject(RejectReason),
}

#[derive(Debug)]
enum State {
    Start,
    /// FakeTLS verified for this user; collecting the obfuscated2 header from records.
    TlsInner {
        /// The key the hello's digest matched.
        key: usize,
        stripper: RecordStripper,
        stream: Vec<u8>,
    },
    Done,
}

/// Most raw bytes the handshake will buffer before giving up (a full ClientHello plus slack).
pub const MAX_HANDSHAKE_BYTES: usize = faketls::MAX_HELLO_BODY + faketls::RECORD_HEADER_LEN + 1024;

/// The per-connection handshake machine.
#[derive(Debug)]
pub struct Handshake {
    received: Vec<u8>,
    state: State,
    sni: Option<String>,
    /// The user whose key verified a handshake that was then refused.
    matched: Option<usize>,
    /// The fingerprint this handshake put in the replay cache.
    fingerprint: Option<[u8; 16]>,
}

impl Default for Handshake {
    fn default() -> Self {
        Self::new()
    }
}

impl Handshake {
    pub fn new() -> Self {
        Self {
            received: Vec::new(),
            state: State::Start,
            sni: None,
            matched: None,
            fingerprint: None,
        }
    }

    /// The fingerprint this handshake put in the local replay cache (the
    /// FakeTLS client random's first 16 bytes, or bytes 8..24 of an
    /// obfuscated2 header), once it did: for a replay check shared with
    /// other nodes.
    pub fn fingerprint(&self) -> Option<[u8; 16]> {
        self.fingerprint
    }

    /// For a refused handshake that one user's key verified (a replay, a
    /// stale FakeTLS timestamp, a mode or SNI the user may not use): that
    /// user, as [`Accepted::user`] would name it. `None` when no key
    /// verified (a stranger or a prober without the secret).
    pub fn matched_user(&self) -> Option<usize> {
        self.matched
    }

    /// Every byte received before the outcome (for replay to a mask site).
    pub fn received(&self) -> &[u8] {
        &self.received
    }

    /// The SNI of the ClientHello, once one was parsed (valid or not).
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// Feeds newly received bytes. `rand` fills buffers with random bytes.
    pub fn feed(
        &mut self,
        data: &[u8],
        now: u64,
        cfg: &HandshakeConfig,
        replay: &mut ReplayCache,
        rand: &mut dyn FnMut(&mut [u8]),
    ) -> Outcome {
        match &mut self.state {
            State::Done => Outcome::Reject(RejectReason::BadRecord),
            State::Start => {
                if self.received.len() + data.len() > MAX_HANDSHAKE_BYTES {
                    self.state = State::Done;
                    return Outcome::Reject(RejectReason::BadHello);
                }
                self.received.extend_from_slice(data);
                self.start(now, cfg, replay, rand)
            }
            State::TlsInner { .. } => {
                let mut chunk = data.to_vec();
                self.tls_inner(&mut chunk, cfg, replay, now)
            }
        }
    }

    fn start(
        &mut self,
        now: u64,
        cfg: &HandshakeConfig,
        replay: &mut ReplayCache,
        rand: &mut dyn FnMut(&mut [u8]),
    ) -> Outcome {
        let buf = &self.received;
        let looks_tls = buf.len() < 3 && [0x16, 0x03, 0x01][..buf.len()] == buf[..]
            || buf.len() >= 3 && buf[..3] == [0x16, 0x03, 0x01];
        if looks_tls && cfg.users.iter().any(|u| u.fake_tls) {
            let total = match faketls::hello_record_len(buf) {
                Ok(Some(t)) => t,
                Ok(None) => return Outcome::NeedMore,
                Err(_) => return self.reject(RejectReason::BadHello),
            };
            if buf.len() < total {
                return Outcome::NeedMore;
            }
            if buf.len() > total {
                // A real client waits for the ServerHello before sending more.
                return self.reject(RejectReason::BadHello);
            }
            return self.check_hello(now, cfg, replay, rand);
        }
        if !cfg.any_obfs2() {
            return self.reject(RejectReason::NotTls);
        }
        if buf.len() < HEADER_LEN {
            return Outcome::NeedMore;
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&buf[..HEADER_LEN]);
        let candidates: Vec<(usize, &SecretKey)> = cfg
            .users
            .iter()
            .enumerate()
            .filter(|(_, u)| (u.classic || u.secure) && u.valid.contains(now))
            .map(|(i, u)| (i, &u.key))
            .collect();
        let keys: Vec<&SecretKey> = candidates.iter().map(|(_, k)| *k).collect();
        let Some(hdr) = obfs2::parse_client_header_with(&header, &keys) else {
            return self.reject(RejectReason::BadObfs2);
        };
        let key = candidates[hdr.key_index].0;
        let user = cfg.users[key].owner;
        let mode = if hdr.tag == ProtoTag::Padded {
            ClientMode::Secure
        } else {
            ClientMode::Classic
        };
        if !cfg.users[key].allows(mode) {
            return self.reject_of(user, RejectReason::ModeNotAllowed);
        }
        let mut fp = [0u8; 16];
        fp.copy_from_slice(&header[8..24]);
        if replay.check_and_insert(fp, now) {
            return self.reject_of(user, RejectReason::Replay);
        }
        self.fingerprint = Some(fp);
        self.state = State::Done;
        Outcome::Accepted(Box::new(Accepted {
            user,
            key,
            mode,
            tag: hdr.tag,
            dc: hdr.dc,
            ciphers: hdr.ciphers,
            early: self.received[HEADER_LEN..].to_vec(),
            tls: None,
        }))
    }

    fn check_hello(
        &mut self,
        now: u64,
        cfg: &HandshakeConfig,
        replay: &mut ReplayCache,
        rand: &mut dyn FnMut(&mut [u8]),
    ) -> Outcome {
        let hello: ClientHello = match faketls::parse_client_hello(&self.received) {
            Ok(h) => h,
            Err(_) => return self.reject(RejectReason::BadHello),
        };
        self.sni.clone_from(&hello.sni);
        let found = cfg
            .users
            .iter()
            .enumerate()
            .filter(|(_, u)| u.fake_tls && u.valid.contains(now))
            .find_map(|(i, u)| {
                faketls::verify_hello_digest_with(&self.received, &u.key).map(|ts| (i, ts))
            });
        let Some((key, ts)) = found else {
            return self.reject(RejectReason::BadDigest);
        };
        let user = cfg.users[key].owner;
        if !cfg.domains.is_empty()
            && !hello
                .sni
                .as_ref()
                .is_some_and(|s| cfg.domains.iter().any(|d| d == s))
        {
            return self.reject_of(user, RejectReason::UnknownSni);
        }
        let ts = u64::from(ts);
        if ts + cfg.max_past_secs < now || ts > now + cfg.max_future_secs {
            return self.reject_of(user, RejectReason::BadTimestamp);
        }
        let mut fp = [0u8; 16];
        fp.copy_from_slice(&hello.random[..16]);
        if replay.check_and_insert(fp, now) {
            return self.reject_of(user, RejectReason::Replay);
        }
        self.fingerprint = Some(fp);
        let mut len_bytes = [0u8; 4];
        rand(&mut len_bytes);
        let r = u32::from_le_bytes(len_bytes);
        let len = if cfg.observed_cert_lens.is_empty() {
            let (lo, hi) = cfg.fake_cert_len;
            let span = hi.saturating_sub(lo).saturating_add(1);
            lo.saturating_add(r % span)
        } else {
            cfg.observed_cert_lens[r as usize % cfg.observed_cert_lens.len()]
        };
        let len = len.clamp(1, 16_384) as usize;
        let mut fake = vec![0u8; len];
        rand(&mut fake);
        // A real X25519 key share: from the pool mtgate fills ahead, else
        // computed here from `rand` (tests and fuzzing, where no pool runs).
        let share = mtgate_crypto::keyshare::key_share(rand);
        let Some(resp) = faketls::build_server_hello_with(
            &hello,
            &cfg.users[key].key,
            &share,
            &fake,
            cfg.versions_first,
        ) else {
            // The key verified the hello, then its keeper failed (an HSM gone).
            return self.reject(RejectReason::BadDigest);
        };
        self.state = State::TlsInner {
            key,
            stripper: RecordStripper::new(),
            stream: Vec::with_capacity(HEADER_LEN),
        };
        Outcome::Respond(resp)
    }

    fn tls_inner(
        &mut self,
        chunk: &mut [u8],
        cfg: &HandshakeConfig,
        replay: &mut ReplayCache,
        now: u64,
    ) -> Outcome {
        let State::TlsInner {
            key,
            stripper,
            stream,
        } = &mut self.state
        else {
            return Outcome::Reject(RejectReason::BadRecord);
        };
        let n = match stripper.strip_in_place(chunk) {
            Ok(n) => n,
            Err(_) => {
                self.state = State::Done;
                return Outcome::Reject(RejectReason::BadRecord);
            }
        };
        stream.extend_from_slice(&chunk[..n]);
        if stream.len() < HEADER_LEN {
            return Outcome::NeedMore;
        }
        let key = *key;
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&stream[..HEADER_LEN]);
        let early = stream[HEADER_LEN..].to_vec();
        let stripper = std::mem::take(stripper);
        self.state = State::Done;
        let Some(hdr) = obfs2::parse_client_header_with(&header, &[&cfg.users[key].key]) else {
            return Outcome::Reject(RejectReason::BadObfs2);
        };
        let mut fp = [0u8; 16];
        fp.copy_from_slice(&header[8..24]);
        if replay.check_and_insert(fp, now) {
            self.matched = Some(cfg.users[key].owner);
            return Outcome::Reject(RejectReason::Replay);
        }
        Outcome::Accepted(Box::new(Accepted {
            user: cfg.users[key].owner,
            key,
            mode: ClientMode::FakeTls,
            tag: hdr.tag,
            dc: hdr.dc,
            ciphers: hdr.ciphers,
            early,
            tls: Some(stripper),
        }))
    }

    fn reject(&mut self, r: RejectReason) -> Outcome {
        self.state = State::Done;
        Outcome::Reject(r)
    }

    /// A refusal after `user`'s key verified the handshake.
    fn reject_of(&mut self, user: usize, r: RejectReason) -> Outcome {
        self.matched = Some(user);
        self.reject(r)
    }
}

#[cfg(test)]
mod tests;
