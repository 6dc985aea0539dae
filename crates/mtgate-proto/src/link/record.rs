//! The link's records: after the handshake every byte between a bridge and
//! an exit travels in records sealed with the negotiated AEAD.
//!
//! A record on the wire is a 2-byte big-endian length, then that many bytes
//! of ciphertext with its 16-byte tag. The length is the AEAD's associated
//! data, so it cannot be changed either. The plaintext's first byte is the
//! record's kind ([`Kind::Frames`] or [`Kind::Rekey`]), the rest its body.
//!
//! Each direction has its own key and a 64-bit record counter that is the
//! nonce (zero-padded to the AEAD's 12 or 24 bytes), so a nonce never
//! repeats under a key: a replayed, dropped or reordered record fails to
//! open, and so does any flipped bit. A [`Kind::Rekey`] record moves its
//! direction to the next key (HKDF-SHA256 of the current one), the counter
//! back to zero; the sender decides when (a volume or time limit, its
//! caller's to keep), the receiver follows. The counter is not allowed to
//! wrap: a direction that sealed 2^64 − 1 records refuses to seal more.

use super::negotiate::Cipher;
use zeroize::Zeroizing;

/// The most plaintext bytes a record carries (its kind byte included).
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// The AEAD tag every record ends in.
pub const TAG_LEN: usize = 16;
/// The length field in front of every record.
pub const HEADER_LEN: usize = 2;
/// The longest record on the wire.
pub const MAX_RECORD: usize = HEADER_LEN + MAX_PLAINTEXT + TAG_LEN;

/// What a record carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Multiplexer frames (`link::frame`).
    Frames = 0,
    /// The sender's next records use the next key.
    Rekey = 1,
}

/// Why a record could not be sealed or opened. Every one of these ends the
/// link: the two sides no longer agree on the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("link record: {0} bytes of plaintext (at most {MAX_PLAINTEXT})")]
    TooLong(usize),
    #[error("link record: length {0} is shorter than a tag")]
    TooShort(usize),
    #[error("link record: authentication failed (tampered, replayed or out of order)")]
    Auth,
    #[error("link record: unknown kind {0}")]
    UnknownKind(u8),
    #[error("link record: a rekey record carries no body")]
    RekeyBody,
    #[error("link record: nonce counter exhausted")]
    Exhausted,
}

/// One direction's AEAD under its current key, ring's (assembly: AES-NI and
/// CLMUL, or the vector units). XChaCha20-Poly1305 with a nonce whose
/// first 16 bytes are zero, as every nonce here is (`0¹⁶ ‖ counter`), is
/// ChaCha20-Poly1305 under the subkey HChaCha20(key, 0¹⁶) with the nonce
/// `0⁴ ‖ counter` (draft-irtf-cfrg-xchacha §2.3); the tests check it
/// against RustCrypto's XChaCha20-Poly1305.
struct Aead(ring::aead::LessSafeKey);

impl Aead {
    fn new(cipher: Cipher, key: &[u8; 32]) -> Aead {
        use ring::aead::{AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305};
        let sub;
        let (alg, k): (_, &[u8]) = match cipher {
            Cipher::Aes256Gcm => (&AES_256_GCM, &key[..]),
            Cipher::Aes128Gcm => (&AES_128_GCM, &key[..16]),
            Cipher::ChaCha20Poly1305 => (&CHACHA20_POLY1305, &key[..]),
            Cipher::XChaCha20Poly1305 => {
                let out = chacha20::hchacha::<chacha20::cipher::consts::U10>(
                    key.into(),
                    &[0u8; 16].into(),
                );
                sub = Zeroizing::new(<[u8; 32]>::from(out));
                (&CHACHA20_POLY1305, &sub[..])
            }
        };
        // The slices are the algorithms' key lengths (32, 16, 32, 32).
        let unbound = ring::aead::UnboundKey::new(alg, k).expect("a key of the algorithm's length");
        Aead(ring::aead::LessSafeKey::new(unbound))
    }

    fn seal(&self, counter: u64, aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce12(counter));
        // Sealing fails only past the AEAD's length limit (gigabytes), which
        // MAX_PLAINTEXT keeps far away.
        let mut out = [0u8; TAG_LEN];
        if let Ok(t) = self
            .0
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), buf)
        {
            out.copy_from_slice(t.as_ref());
        }
        out
    }

    fn open(&self, counter: u64, aad: &[u8], buf: &mut [u8], tag: &[u8]) -> Result<(), ()> {
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce12(counter));
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| ())?;
        self.0
            .open_in_place_separate_tag(
                nonce,
                ring::aead::Aad::from(aad),
                ring::aead::Tag::from(tag),
                buf,
                0..,
            )
            .map(|_| ())
            .map_err(|_| ())
    }
}

fn nonce12(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// The key after `key`: HKDF-SHA256 with the current key as its input.
fn next_key(key: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, key);
    // 32 bytes is far below HKDF's limit (255 × 32).
    let _ = hk.expand(b"mtgate link rekey v1", &mut out[..]);
    out
}

/// One direction's key, counter and tallies.
struct Direction {
    cipher: Cipher,
    key: Zeroizing<[u8; 32]>,
    aead: Aead,
    counter: u64,
    /// Records and plaintext bytes under the current key.
    records: u64,
    bytes: u64,
    /// Keys used after the first.
    rekeys: u64,
}

impl Direction {
    fn new(cipher: Cipher, key: Zeroizing<[u8; 32]>) -> Self {
        let aead = Aead::new(cipher, &key);
        Self {
            cipher,
            key,
            aead,
            counter: 0,
            records: 0,
            bytes: 0,
            rekeys: 0,
        }
    }

    fn next_nonce(&mut self) -> Result<u64, RecordError> {
        let n = self.counter;
        self.counter = n.checked_add(1).ok_or(RecordError::Exhausted)?;
        Ok(n)
    }

    fn rekey(&mut self) {
        self.key = next_key(&self.key);
        self.aead = Aead::new(self.cipher, &self.key);
        self.counter = 0;
        self.records = 0;
        self.bytes = 0;
        self.rekeys += 1;
    }
}

/// The sending half: seals records.
pub struct Sealer(Direction);

/// The receiving half: opens records.
pub struct Opener(Direction);

impl Sealer {
    /// A sealer for `cipher` under `key` (AES-128-GCM takes its first 16
    /// bytes).
    pub fn new(cipher: Cipher, key: Zeroizing<[u8; 32]>) -> Self {
        Self(Direction::new(cipher, key))
    }

    /// Appends one record of `kind` carrying `body` to `out`.
    pub fn seal(&mut self, kind: Kind, body: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        let plain = 1 + body.len();
        if plain > MAX_PLAINTEXT {
            return Err(RecordError::TooLong(plain));
        }
        let nonce = self.0.next_nonce()?;
        let len = (plain + TAG_LEN) as u16;
        let start = out.len();
        out.extend_from_slice(&len.to_be_bytes());
        out.push(kind as u8);
        out.extend_from_slice(body);
        let (head, rest) = out[start..].split_at_mut(HEADER_LEN);
        let tag = self.0.aead.seal(nonce, head, rest);
        out.extend_from_slice(&tag);
        self.0.records += 1;
        self.0.bytes += body.len() as u64;
        Ok(())
    }

    /// Appends a rekey record to `out` and moves to the next key.
    pub fn rekey(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.seal(Kind::Rekey, &[], out)?;
        self.0.rekey();
        Ok(())
    }

    /// Plaintext bytes sealed under the current key.
    pub fn bytes_since_rekey(&self) -> u64 {
        self.0.bytes
    }

    /// Records sealed under the current key.
    pub fn records_since_rekey(&self) -> u64 {
        self.0.records
    }

    /// Rekeys so far.
    pub fn rekeys(&self) -> u64 {
        self.0.rekeys
    }

    pub fn cipher(&self) -> Cipher {
        self.0.cipher
    }
}

/// An opened record: its kind and where its body lies in the buffer given
/// to [`Opener::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub kind: Kind,
    /// The body's range in the buffer (decrypted in place).
    pub body: std::ops::Range<usize>,
    /// Bytes of the buffer the record took.
    pub consumed: usize,
}

impl Opener {
    pub fn new(cipher: Cipher, key: Zeroizing<[u8; 32]>) -> Self {
        Self(Direction::new(cipher, key))
    }

    /// How many bytes the record at the front of `buf` needs in all, once
    /// its length is in (`None`: fewer than 2 bytes so far).
    pub fn needed(buf: &[u8]) -> Option<usize> {
        match buf {
            [a, b, ..] => Some(HEADER_LEN + usize::from(u16::from_be_bytes([*a, *b]))),
            _ => None,
        }
    }

    /// Opens the record at the front of `buf`, decrypting it in place.
    /// `Ok(None)`: the record is not complete yet. A rekey record moves
    /// this direction to the next key before returning.
    pub fn open(&mut self, buf: &mut [u8]) -> Result<Option<Opened>, RecordError> {
        let Some(total) = Self::needed(buf) else {
            return Ok(None);
        };
        let len = total - HEADER_LEN;
        if len < TAG_LEN + 1 {
            return Err(RecordError::TooShort(len));
        }
        if len > MAX_PLAINTEXT + TAG_LEN {
            return Err(RecordError::TooLong(len - TAG_LEN));
        }
        if buf.len() < total {
            return Ok(None);
        }
        let nonce = self.0.next_nonce()?;
        let (head, rest) = buf[..total].split_at_mut(HEADER_LEN);
        let (text, tag) = rest.split_at_mut(len - TAG_LEN);
        self.0
            .aead
            .open(nonce, head, text, tag)
            .map_err(|_| RecordError::Auth)?;
        let kind = match text[0] {
            0 => Kind::Frames,
            1 => Kind::Rekey,
            k => return Err(RecordError::UnknownKind(k)),
        };
        let body = HEADER_LEN + 1..HEADER_LEN + len - TAG_LEN;
        if kind == Kind::Rekey {
            if !body.is_empty() {
                return Err(RecordError::RekeyBody);
            }
            self.0.rekey();
        } else {
            self.0.records += 1;
            self.0.bytes += body.len() as u64;
        }
        Ok(Some(Opened {
            kind,
            body,
            consumed: total,
        }))
    }

    /// Rekeys so far.
    pub fn rekeys(&self) -> u64 {
        self.0.rekeys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair(c: Cipher) -> (Sealer, Opener) {
        let key = Zeroizing::new([7u8; 32]);
        (Sealer::new(c, key.clone()), Opener::new(c, key))
    }

    fn open_all(o: &mut Opener, wire: &mut [u8]) -> Result<Vec<Vec<u8>>, RecordError> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            match o.open(&mut wire[at..])? {
                None => break,
                Some(r) => {
                    if r.kind == Kind::Frames {
                        out.push(wire[at + r.body.start..at + r.body.end].to_vec());
                    }
                    at += r.consumed;
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn every_cipher_round_trips_and_rekeys() {
        for c in Cipher::ALL {
            let (mut s, mut o) = pair(c);
            let mut wire = Vec::new();
            s.seal(Kind::Frames, b"hello", &mut wire).unwrap();
            s.rekey(&mut wire).unwrap();
            s.seal(Kind::Frames, b"world", &mut wire).unwrap();
            assert_eq!(s.rekeys(), 1, "{c:?}");
            assert_eq!(s.bytes_since_rekey(), 5);
            let got = open_all(&mut o, &mut wire).unwrap();
            assert_eq!(got, vec![b"hello".to_vec(), b"world".to_vec()], "{c:?}");
            assert_eq!(o.rekeys(), 1);
        }
    }

    #[test]
    fn the_same_body_never_seals_the_same_twice() {
        let (mut s, _) = pair(Cipher::Aes256Gcm);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        s.seal(Kind::Frames, b"same", &mut a).unwrap();
        s.seal(Kind::Frames, b"same", &mut b).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_flipped_bit_a_replay_or_a_dropped_record_fails() {
        for c in Cipher::ALL {
            let (mut s, mut o) = pair(c);
            let (mut r1, mut r2) = (Vec::new(), Vec::new());
            s.seal(Kind::Frames, b"one", &mut r1).unwrap();
            s.seal(Kind::Frames, b"two", &mut r2).unwrap();
            // Dropped: the second record alone does not open as the first.
            let mut o2 = pair(c).1;
            assert_eq!(o2.open(&mut r2.clone()), Err(RecordError::Auth));
            // Replayed: the first twice.
            assert!(o.open(&mut r1.clone()).unwrap().is_some());
            assert_eq!(o.open(&mut r1.clone()), Err(RecordError::Auth));
            // Flipped anywhere, the length included.
            for i in 0..r1.len() {
                let mut bad = r1.clone();
                bad[i] ^= 0x01;
                let mut fresh = pair(c).1;
                assert!(
                    matches!(fresh.open(&mut bad), Err(_) | Ok(None)),
                    "{c:?} byte {i}"
                );
            }
        }
    }

    #[test]
    fn a_record_after_the_senders_rekey_needs_the_rekey_record() {
        let (mut s, mut o) = pair(Cipher::ChaCha20Poly1305);
        let mut skipped = Vec::new();
        s.rekey(&mut skipped).unwrap();
        let mut next = Vec::new();
        s.seal(Kind::Frames, b"x", &mut next).unwrap();
        assert_eq!(o.open(&mut next), Err(RecordError::Auth));
    }

    #[test]
    fn lengths_out_of_range_are_refused() {
        let (mut s, mut o) = pair(Cipher::Aes128Gcm);
        let mut out = Vec::new();
        assert_eq!(
            s.seal(Kind::Frames, &vec![0; MAX_PLAINTEXT], &mut out),
            Err(RecordError::TooLong(MAX_PLAINTEXT + 1))
        );
        s.seal(Kind::Frames, &vec![0; MAX_PLAINTEXT - 1], &mut out)
            .unwrap();
        assert_eq!(out.len(), MAX_RECORD);
        assert_eq!(o.open(&mut [0, 5, 1, 2]), Err(RecordError::TooShort(5)));
        assert_eq!(
            o.open(&mut [0xff, 0xff]),
            Err(RecordError::TooLong(0xffff - TAG_LEN))
        );
        assert_eq!(o.open(&mut [0]), Ok(None));
        assert_eq!(o.open(&mut out[..100]), Ok(None));
    }

    #[test]
    fn xchacha_is_rustcryptos_xchacha20_poly1305() {
        use chacha20poly1305::aead::{AeadInPlace, KeyInit};
        let key = [0x42u8; 32];
        let theirs = chacha20poly1305::XChaCha20Poly1305::new((&key).into());
        let (mut s, _) = (
            Sealer::new(Cipher::XChaCha20Poly1305, Zeroizing::new(key)),
            (),
        );
        for counter in 0u64..3 {
            let mut wire = Vec::new();
            s.seal(Kind::Frames, b"the same bytes", &mut wire).unwrap();
            let mut nonce = [0u8; 24];
            nonce[16..].copy_from_slice(&counter.to_be_bytes());
            let mut buf = b"\x00the same bytes".to_vec();
            let tag = theirs
                .encrypt_in_place_detached(&nonce.into(), &wire[..HEADER_LEN], &mut buf)
                .unwrap();
            buf.extend_from_slice(&tag);
            assert_eq!(&wire[HEADER_LEN..], &buf[..], "record {counter}");
        }
    }

    #[test]
    fn the_counter_does_not_wrap() {
        let (mut s, _) = pair(Cipher::Aes256Gcm);
        s.0.counter = u64::MAX;
        assert_eq!(
            s.seal(Kind::Frames, b"x", &mut Vec::new()),
            Err(RecordError::Exhausted)
        );
    }

    proptest! {
        #[test]
        fn random_bodies_round_trip(
            c in 0usize..4,
            bodies in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..600), 1..8),
            rekey_at in 0usize..8,
        ) {
            let c = Cipher::ALL[c];
            let (mut s, mut o) = pair(c);
            let mut wire = Vec::new();
            for (i, b) in bodies.iter().enumerate() {
                if i == rekey_at {
                    s.rekey(&mut wire).unwrap();
                }
                s.seal(Kind::Frames, b, &mut wire).unwrap();
            }
            prop_assert_eq!(open_all(&mut o, &mut wire).unwrap(), bodies);
        }

        #[test]
        fn garbage_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (_, mut o) = pair(Cipher::XChaCha20Poly1305);
            let _ = o.open(&mut bytes);
        }
    }
}
