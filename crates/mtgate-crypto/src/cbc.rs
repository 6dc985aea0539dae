//! The middle-proxy (ME) link's cryptography (PROTOCOL §7.5): AES-256-CBC as a
//! continuous stream per direction, and the MD5 / SHA-1 digests of its key
//! derivation.
//!
//! The ME link uses CBC without padding: one chain per direction for the whole
//! TCP connection, the IV of each 16-byte block being the previous ciphertext
//! block. Callers hand in whole 16-byte units (the RPC layer pads its output
//! with filler words, and a receiver decrypts only complete blocks); anything
//! else is refused with [`CbcError::Unaligned`] and leaves the chain untouched.

use aes::cipher::inout::InOutBuf;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use md5::Md5;
use sha1::{Digest, Sha1};

/// The AES block size; every call works on a multiple of it.
pub const CBC_BLOCK: usize = 16;

/// A buffer that is not a whole number of blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CbcError {
    /// `len` is not a multiple of 16.
    Unaligned(usize),
}

impl std::fmt::Display for CbcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unaligned(n) => write!(f, "CBC input of {n} bytes is not a multiple of 16"),
        }
    }
}

impl std::error::Error for CbcError {}

fn check(len: usize) -> Result<(), CbcError> {
    if len.is_multiple_of(CBC_BLOCK) {
        Ok(())
    } else {
        Err(CbcError::Unaligned(len))
    }
}

/// Encrypting side of one direction: AES-256-CBC, chain kept between calls.
pub struct AesCbcEnc {
    inner: cbc::Encryptor<aes::Aes256>,
}

impl AesCbcEnc {
    /// Starts a chain with `iv` as the first block's IV.
    pub fn new(key: &[u8; 32], iv: &[u8; 16]) -> Self {
        Self {
            inner: cbc::Encryptor::new(key.into(), iv.into()),
        }
    }

    /// Encrypts `buf` in place; `buf.len()` must be a multiple of 16.
    pub fn encrypt(&mut self, buf: &mut [u8]) -> Result<(), CbcError> {
        check(buf.len())?;
        let (blocks, _tail) = InOutBuf::from(buf).into_chunks();
        self.inner.encrypt_blocks_inout_mut(blocks);
        Ok(())
    }
}

/// Decrypting side of one direction: AES-256-CBC, chain kept between calls.
pub struct AesCbcDec {
    inner: cbc::Decryptor<aes::Aes256>,
}

impl AesCbcDec {
    /// Starts a chain with `iv` as the first block's IV.
    pub fn new(key: &[u8; 32], iv: &[u8; 16]) -> Self {
        Self {
            inner: cbc::Decryptor::new(key.into(), iv.into()),
        }
    }

    /// Decrypts `buf` in place; `buf.len()` must be a multiple of 16.
    pub fn decrypt(&mut self, buf: &mut [u8]) -> Result<(), CbcError> {
        check(buf.len())?;
        let (blocks, _tail) = InOutBuf::from(buf).into_chunks();
        self.inner.decrypt_blocks_inout_mut(blocks);
        Ok(())
    }
}

impl std::fmt::Debug for AesCbcEnc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesCbcEnc(..)")
    }
}

impl std::fmt::Debug for AesCbcDec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesCbcDec(..)")
    }
}

/// MD5 over the concatenation of `parts` (ME key derivation only).
pub fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// SHA-1 over the concatenation of `parts` (ME key derivation only).
pub fn sha1(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn arr<const N: usize>(s: &str) -> [u8; N] {
        h(s).try_into().unwrap()
    }

    /// PROTOCOL §12.7: the 48-byte RPC_HANDSHAKE (+ filler) under the IPv4 CLIENT key of §12.6.
    #[test]
    fn cbc_matches_vector_12_7() {
        let key = arr::<32>("551715f341d06b49118434ae96dc137b64de837ce806f3490d47abc1f457ce94");
        let iv = arr::<16>("80e1fbe3e7e73ae317edc7ca08b401ae");
        let plain = h(concat!(
            "2c000000fffffffff5ee827600000000495049505052504454494d4549504950",
            "5052504454494d4502761d8104000000"
        ));
        let wire = h(concat!(
            "66e1407fbbc203a280ee5692a75c513dd58c5d0487f1fcd2f280a6f27899f666",
            "c6881c2e67734b408b785c0bfaf14e1c"
        ));
        let mut buf = plain.clone();
        let mut enc = AesCbcEnc::new(&key, &iv);
        // Two calls: the chain continues across them.
        enc.encrypt(&mut buf[..16]).unwrap();
        enc.encrypt(&mut buf[16..]).unwrap();
        assert_eq!(buf, wire);
        let mut dec = AesCbcDec::new(&key, &iv);
        dec.decrypt(&mut buf[..32]).unwrap();
        dec.decrypt(&mut buf[32..]).unwrap();
        assert_eq!(buf, plain);
    }

    /// PROTOCOL §12.11: the official proxy's handshake, captured on the wire.
    #[test]
    fn cbc_matches_captured_12_11() {
        let key = arr::<32>("69a0b406e91356bb0d1887bb5893cf72243460732f895ac0090db286f941da03");
        let iv = arr::<16>("2e8ae7490767baead34158675730664a");
        let mut buf = h(concat!(
            "840f4e231fa91f06079f5c88dccf69458bfb5c5b52be82451cb6dac58894fe54",
            "715501abb669858217ae8225eb0b94c7"
        ));
        AesCbcDec::new(&key, &iv).decrypt(&mut buf).unwrap();
        assert_eq!(
            buf,
            h(concat!(
                "2c000000fffffffff5ee827600080000020200c0d8703b643f53036b00000000",
                "d2700000000000004668e95d04000000"
            ))
        );
    }

    #[test]
    fn unaligned_is_refused_and_chain_untouched() {
        let mut enc = AesCbcEnc::new(&[1; 32], &[2; 16]);
        let mut odd = [0u8; 17];
        assert_eq!(enc.encrypt(&mut odd), Err(CbcError::Unaligned(17)));
        assert_eq!(odd, [0u8; 17]);
        let mut a = [0u8; 16];
        enc.encrypt(&mut a).unwrap();
        let mut b = [0u8; 16];
        AesCbcEnc::new(&[1; 32], &[2; 16]).encrypt(&mut b).unwrap();
        assert_eq!(a, b);
        assert!(AesCbcDec::new(&[1; 32], &[2; 16]).decrypt(&mut []).is_ok());
    }

    #[test]
    fn digests_known_answers() {
        assert_eq!(
            md5(&[b"a", b"bc"]).to_vec(),
            h("900150983cd24fb0d6963f7d28e17f72")
        );
        assert_eq!(
            sha1(&[b"ab", b"c"]).to_vec(),
            h("a9993e364706816aba3e25717850c26c9cd0d89d")
        );
    }
}
