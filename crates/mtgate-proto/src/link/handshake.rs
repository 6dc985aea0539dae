//! The link handshake: Noise `NKpsk0` with X25519, ChaCha20-Poly1305 and
//! SHA-256 (the `snow` crate), then data keys for the negotiated cipher.
//!
//! * **N K:** the bridge has no static key; it knows the exit's static
//!   public key (pinned in its configuration), so only that exit can read
//!   the bridge's first message and answer it.
//! * **psk0:** the link token, 32 bytes both sides were given, is mixed in
//!   before anything else: a bridge without it cannot produce a first
//!   message the exit can decrypt, so the exit learns nothing from it and
//!   can front it like any stranger.
//! * **Ephemeral keys** on both sides (`e`, `ee`): forward secrecy.
//!
//! Two messages, each a 2-byte big-endian length then the Noise message:
//!
//! ```text
//! bridge → exit   e, es (psk)   payload: bridge offer · unix seconds (u64 BE) · padding
//! exit → bridge   e, ee         payload: exit offer · chosen cipher id (0: none, 255: clock) · padding
//! ```
//!
//! Both payloads are encrypted and bound into the handshake hash, so an
//! offer changed in flight fails to decrypt. The data keys are HKDF-SHA256
//! of the handshake's split keys, salted with the handshake hash, with each
//! direction's label and [`super::negotiate::transcript`] as the info: two
//! sides that disagree on either offer or the choice cannot read each
//! other's first record. The padding (0–63 random bytes) keeps the
//! messages from having one length.

use super::negotiate::{self, Cipher, NegotiationError, Offer};
use super::record::{Opener, Sealer};
use zeroize::Zeroizing;

/// The Noise protocol name.
pub const PATTERN: &str = "Noise_NKpsk0_25519_ChaChaPoly_SHA256";
const PROLOGUE: &[u8] = b"mtgate link v1";
/// The longest handshake message (its length field excluded).
pub const MAX_MESSAGE: usize = 512;
/// How far a first message's clock may be from the exit's.
pub const MAX_SKEW_SECS: u64 = 120;

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The exit could not decrypt the first message with any token it has:
    /// a wrong token, a bridge that pinned another key, or not a link at
    /// all.
    #[error(
        "link handshake: not a link handshake, a wrong token, or a bridge pinning another exit key"
    )]
    NotOurs,
    /// The bridge could not decrypt the exit's answer.
    #[error("link handshake: the exit's answer did not authenticate (wrong exit key or token, or tampered)")]
    BadAnswer,
    #[error("link handshake: the bridge's clock is {0} s away from the exit's (at most {MAX_SKEW_SECS})")]
    Skew(u64),
    #[error("link handshake: message of {0} bytes (at most {MAX_MESSAGE})")]
    Length(usize),
    #[error("link handshake: {0}")]
    Offer(#[from] NegotiationError),
    #[error("link handshake: the exit offers {exit}, this bridge {bridge}: no cipher in common")]
    NoCommon { bridge: String, exit: String },
    #[error(
        "link handshake: the exit refused this bridge's clock (more than {MAX_SKEW_SECS} s off)"
    )]
    ClockRefused,
    #[error("link handshake: the exit chose {0}, which this bridge did not offer")]
    NotOffered(u8),
    #[error("link handshake: {0}")]
    Noise(String),
}

fn noise(e: snow::Error) -> HandshakeError {
    HandshakeError::Noise(e.to_string())
}

/// An exit's static key pair. The secret half is zeroed on drop and never
/// printed.
#[derive(Clone)]
pub struct ExitKey {
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
}

impl std::fmt::Debug for ExitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitKey")
            .field("public", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

impl ExitKey {
    /// A fresh key pair.
    pub fn generate() -> Self {
        let mut s = Zeroizing::new([0u8; 32]);
        mtgate_crypto::fill_random(&mut s[..]);
        Self::from_secret(s)
    }

    /// The pair of a stored secret.
    pub fn from_secret(secret: Zeroizing<[u8; 32]>) -> Self {
        let public = mtgate_crypto::x25519_public_key(*secret);
        Self { secret, public }
    }

    pub fn public(&self) -> [u8; 32] {
        self.public
    }

    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }
}

/// A pre-shared link token (the Noise PSK), zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn generate() -> Self {
        let mut t = Zeroizing::new([0u8; 32]);
        mtgate_crypto::fill_random(&mut t[..]);
        Self(t)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// A finished handshake: the chosen cipher and the two directions' record
/// halves.
pub struct Established {
    pub cipher: Cipher,
    pub sealer: Sealer,
    pub opener: Opener,
    /// Which of the exit's tokens the bridge used (0 on the bridge).
    pub token: usize,
    /// Both offers, as the transcript has them (logs, audit).
    pub bridge_offer: Offer,
    pub exit_offer: Offer,
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("cipher", &self.cipher)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

fn builder() -> snow::Builder<'static> {
    // The pattern is a constant this module's tests parse.
    snow::Builder::new(PATTERN.parse().expect("a valid Noise pattern")).prologue(PROLOGUE)
}

fn framed(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// The length of the handshake message at the front of `buf` with its
/// length field, once 2 bytes are in; an error past [`MAX_MESSAGE`].
pub fn message_len(buf: &[u8]) -> Result<Option<usize>, HandshakeError> {
    match buf {
        [a, b, ..] => {
            let n = usize::from(u16::from_be_bytes([*a, *b]));
            if n > MAX_MESSAGE || n == 0 {
                Err(HandshakeError::Length(n))
            } else {
                Ok(Some(2 + n))
            }
        }
        _ => Ok(None),
    }
}

fn unframe(msg: &[u8]) -> Result<&[u8], HandshakeError> {
    match message_len(msg)? {
        Some(n) if n == msg.len() => Ok(&msg[2..]),
        _ => Err(HandshakeError::Length(msg.len().saturating_sub(2))),
    }
}

fn padding(payload: &mut Vec<u8>) {
    let mut n = [0u8; 1];
    mtgate_crypto::fill_random(&mut n);
    let start = payload.len();
    payload.resize(start + usize::from(n[0] & 63), 0);
    mtgate_crypto::fill_random(&mut payload[start..]);
}

/// An offer at the front of `bytes` and what follows it.
fn split_offer(bytes: &[u8]) -> Result<(Offer, &[u8]), HandshakeError> {
    let n = match bytes {
        [_, count, ..] => 2 + usize::from(*count),
        _ => return Err(NegotiationError::Short.into()),
    };
    if bytes.len() < n {
        return Err(NegotiationError::Short.into());
    }
    Ok((Offer::decode(&bytes[..n])?, &bytes[n..]))
}

/// The answer's choice byte when the bridge's clock is refused.
const CLOCK: u8 = 0xff;

const LABEL_B2E: &[u8] = b"mtgate link v1 bridge to exit";
const LABEL_E2B: &[u8] = b"mtgate link v1 exit to bridge";

/// The two directions' data keys (bridge → exit, exit → bridge).
fn data_keys(
    hs: &mut snow::HandshakeState,
    transcript: &[u8; 32],
) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let (k1, k2) = hs.dangerously_get_raw_split();
    let (k1, k2) = (Zeroizing::new(k1), Zeroizing::new(k2));
    let mut ikm = Zeroizing::new([0u8; 64]);
    ikm[..32].copy_from_slice(&k1[..]);
    ikm[32..].copy_from_slice(&k2[..]);
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(hs.get_handshake_hash()), &ikm[..]);
    let key = |label: &[u8]| {
        let mut k = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF's limit.
        let _ = hk.expand_multi_info(&[label, transcript], &mut k[..]);
        k
    };
    (key(LABEL_B2E), key(LABEL_E2B))
}

/// The bridge's side: [`Bridge::start`] writes the first message,
/// [`Bridge::finish`] reads the answer.
pub struct Bridge {
    hs: snow::HandshakeState,
    offer: Offer,
}

impl Bridge {
    /// Starts a handshake with the exit whose static public key is
    /// `exit_key`; the first message (framed) comes back to be sent.
    pub fn start(
        exit_key: &[u8; 32],
        token: &Token,
        offer: Offer,
        now_unix: u64,
    ) -> Result<(Bridge, Vec<u8>), HandshakeError> {
        let mut hs = builder()
            .remote_public_key(exit_key)
            .psk(0, token.bytes())
            .build_initiator()
            .map_err(noise)?;
        let mut payload = offer.encode();
        payload.extend_from_slice(&now_unix.to_be_bytes());
        padding(&mut payload);
        let mut msg = vec![0u8; MAX_MESSAGE];
        let n = hs.write_message(&payload, &mut msg).map_err(noise)?;
        Ok((Bridge { hs, offer }, framed(&msg[..n])))
    }

    /// Reads the exit's answer (framed): the link's keys, or why not.
    pub fn finish(mut self, answer: &[u8]) -> Result<Established, HandshakeError> {
        let msg = unframe(answer)?;
        let mut payload = vec![0u8; MAX_MESSAGE];
        let n = self
            .hs
            .read_message(msg, &mut payload)
            .map_err(|_| HandshakeError::BadAnswer)?;
        let (exit_offer, rest) = split_offer(&payload[..n])?;
        let chosen = match rest.first() {
            None => return Err(NegotiationError::Short.into()),
            Some(0) => {
                return Err(HandshakeError::NoCommon {
                    bridge: names(&self.offer),
                    exit: names(&exit_offer),
                })
            }
            Some(&CLOCK) => return Err(HandshakeError::ClockRefused),
            Some(&id) => match Cipher::from_id(id) {
                Some(c) if self.offer.ciphers().contains(&c) => c,
                _ => return Err(HandshakeError::NotOffered(id)),
            },
        };
        let t = negotiate::transcript(&self.offer, &exit_offer, chosen);
        let (b2e, e2b) = data_keys(&mut self.hs, &t);
        Ok(Established {
            cipher: chosen,
            sealer: Sealer::new(chosen, b2e),
            opener: Opener::new(chosen, e2b),
            token: 0,
            bridge_offer: self.offer,
            exit_offer,
        })
    }
}

/// The names of an offer's ciphers, `a, b, c` (errors, logs).
pub fn names(o: &Offer) -> String {
    o.ciphers()
        .iter()
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the exit made of a first message.
pub struct Accepted {
    /// The framed answer to send (also when no cipher is common, so the
    /// bridge can say why).
    pub answer: Vec<u8>,
    /// The link, or why there is none (no common cipher, a clock too far).
    pub result: Result<Established, HandshakeError>,
}

/// The exit's side: reads a first message (framed) with its static `key`
/// and its `tokens` (one per bridge it serves); `Err(NotOurs)` when no
/// token decrypts it (front the connection), otherwise an answer.
pub fn accept(
    key: &ExitKey,
    tokens: &[Token],
    offer: &Offer,
    first: &[u8],
    now_unix: u64,
) -> Result<Accepted, HandshakeError> {
    let msg = unframe(first).map_err(|_| HandshakeError::NotOurs)?;
    let mut payload = vec![0u8; MAX_MESSAGE];
    let mut found = None;
    for (i, t) in tokens.iter().enumerate() {
        let mut hs = builder()
            .local_private_key(key.secret())
            .psk(0, t.bytes())
            .build_responder()
            .map_err(noise)?;
        if let Ok(n) = hs.read_message(msg, &mut payload) {
            found = Some((i, hs, n));
            break;
        }
    }
    let Some((token, mut hs, n)) = found else {
        return Err(HandshakeError::NotOurs);
    };
    let (bridge_offer, rest) = split_offer(&payload[..n])?;
    let sent = match rest.get(..8) {
        Some(b) => u64::from_be_bytes(b.try_into().unwrap_or([0; 8])),
        None => return Err(NegotiationError::Short.into()),
    };
    let skew = sent.abs_diff(now_unix);
    let chosen = negotiate::choose(&bridge_offer, offer);
    let mut reply = offer.encode();
    reply.push(match (&chosen, skew <= MAX_SKEW_SECS) {
        (_, false) => CLOCK,
        (Ok(c), true) => c.id(),
        (Err(_), true) => 0,
    });
    padding(&mut reply);
    let mut out = vec![0u8; MAX_MESSAGE];
    let m = hs.write_message(&reply, &mut out).map_err(noise)?;
    let answer = framed(&out[..m]);
    let result = if skew > MAX_SKEW_SECS {
        Err(HandshakeError::Skew(skew))
    } else {
        match chosen {
            Err(_) => Err(HandshakeError::NoCommon {
                bridge: names(&bridge_offer),
                exit: names(offer),
            }),
            Ok(c) => {
                let t = negotiate::transcript(&bridge_offer, offer, c);
                let (b2e, e2b) = data_keys(&mut hs, &t);
                Ok(Established {
                    cipher: c,
                    sealer: Sealer::new(c, e2b),
                    opener: Opener::new(c, b2e),
                    token,
                    bridge_offer,
                    exit_offer: offer.clone(),
                })
            }
        }
    };
    Ok(Accepted { answer, result })
}

#[cfg(test)]
mod tests;
