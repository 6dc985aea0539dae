//! Obfuscated2 (PROTOCOL §3, §5): the 64-byte init header.
//!
//! Client side: [`parse_client_header`] tries every user's key on a received
//! header and, on a match, hands back the two live ciphers (decrypt at stream
//! offset 64, encrypt at 0). DC side: [`build_dc_header`] makes the proxy's own
//! header toward a Telegram DC (raw keys, no secret hashing).

use crate::key::SecretOps;
use mtgate_crypto::{sha256, AesCtr, Key16};

/// Length of the obfuscated2 init header.
pub const HEADER_LEN: usize = 64;

/// The transport tag carried in header bytes 56..60 (PROTOCOL §3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtoTag {
    /// `ef ef ef ef`
    Abridged,
    /// `ee ee ee ee`
    Intermediate,
    /// `dd dd dd dd`
    Padded,
}

impl ProtoTag {
    pub fn from_bytes(b: [u8; 4]) -> Option<Self> {
        match b {
            [0xef, 0xef, 0xef, 0xef] => Some(Self::Abridged),
            [0xee, 0xee, 0xee, 0xee] => Some(Self::Intermediate),
            [0xdd, 0xdd, 0xdd, 0xdd] => Some(Self::Padded),
            _ => None,
        }
    }
    pub fn to_bytes(self) -> [u8; 4] {
        match self {
            Self::Abridged => [0xef; 4],
            Self::Intermediate => [0xee; 4],
            Self::Padded => [0xdd; 4],
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Abridged => "abridged",
            Self::Intermediate => "intermediate",
            Self::Padded => "padded",
        }
    }
}

/// The signed DC index of header bytes 60..62 (PROTOCOL §3.5): negative = media.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DcIndex(pub i16);

impl DcIndex {
    /// The DC number without the media sign (`-2` → 2).
    pub fn abs(self) -> u16 {
        self.0.unsigned_abs()
    }
    pub fn is_media(self) -> bool {
        self.0 < 0
    }
}

/// Two live ciphers for one side of the relay.
#[derive(Debug)]
pub struct CipherPair {
    /// Decrypts what the peer sends us.
    pub dec: AesCtr,
    /// Encrypts what we send the peer.
    pub enc: AesCtr,
}

/// A client header that matched one of the keys.
#[derive(Debug)]
pub struct ClientHeader {
    /// Index of the matching key in the slice given to [`parse_client_header`].
    pub key_index: usize,
    pub tag: ProtoTag,
    pub dc: DcIndex,
    /// Decrypt cipher at offset 64, encrypt cipher at offset 0.
    pub ciphers: CipherPair,
}

/// The header's key material: (decrypt prefix, decrypt IV, encrypt prefix,
/// encrypt IV), the encrypt side being bytes 8..56 reversed.
fn material(header: &[u8; HEADER_LEN]) -> ([u8; 32], [u8; 16], [u8; 32], [u8; 16]) {
    let dec_key: [u8; 32] = header[8..40].try_into().unwrap_or([0; 32]);
    let dec_iv: [u8; 16] = header[40..56].try_into().unwrap_or([0; 16]);
    let mut rev = [0u8; 48];
    rev.copy_from_slice(&header[8..56]);
    rev.reverse();
    let enc_key: [u8; 32] = rev[0..32].try_into().unwrap_or([0; 32]);
    let enc_iv: [u8; 16] = rev[32..48].try_into().unwrap_or([0; 16]);
    (dec_key, dec_iv, enc_key, enc_iv)
}

fn keys_for(
    header: &[u8; HEADER_LEN],
    secret: Option<&[u8; 16]>,
) -> ([u8; 32], [u8; 16], [u8; 32], [u8; 16]) {
    let (mut dec_key, dec_iv, mut enc_key, enc_iv) = material(header);
    if let Some(s) = secret {
        dec_key = sha256(&[&dec_key, s]);
        enc_key = sha256(&[&enc_key, s]);
    }
    (dec_key, dec_iv, enc_key, enc_iv)
}

/// Tries each key (PROTOCOL §3.3); the first giving a valid tag wins.
///
/// Cost: one SHA-256 and one 64-byte AES-CTR per key until a match, and one
/// more SHA-256 for the match. A random header matches by accident with
/// probability 3·2⁻³² per key.
pub fn parse_client_header(header: &[u8; HEADER_LEN], keys: &[&Key16]) -> Option<ClientHeader> {
    parse_client_header_with(header, keys)
}

/// [`parse_client_header`] over keys wherever they are kept ([`SecretOps`]):
/// a key whose digest cannot be computed does not match.
pub fn parse_client_header_with<K: SecretOps + ?Sized>(
    header: &[u8; HEADER_LEN],
    keys: &[&K],
) -> Option<ClientHeader> {
    let (dec_prefix, dec_iv, enc_prefix, enc_iv) = material(header);
    for (i, key) in keys.iter().enumerate() {
        let Some(dk) = key.sha256_after(&dec_prefix) else {
            continue;
        };
        let mut dec = AesCtr::new(&dk, &dec_iv);
        let mut plain = *header;
        dec.apply(&mut plain);
        let tag = [plain[56], plain[57], plain[58], plain[59]];
        if let Some(tag) = ProtoTag::from_bytes(tag) {
            let ek = key.sha256_after(&enc_prefix)?;
            let dc = DcIndex(i16::from_le_bytes([plain[60], plain[61]]));
            return Some(ClientHeader {
                key_index: i,
                tag,
                dc,
                ciphers: CipherPair {
                    dec,
                    enc: AesCtr::new(&ek, &enc_iv),
                },
            });
        }
    }
    None
}

/// Whether 64 random bytes may start an obfuscated2 stream (PROTOCOL §3.2 rule 1).
pub fn is_valid_init(init: &[u8; HEADER_LEN]) -> bool {
    const FORBIDDEN: [u32; 7] = [
        0x4441_4548,
        0x5453_4f50,
        0x2054_4547,
        0x4954_504f,
        0x0201_0316,
        0xdddd_dddd,
        0xeeee_eeee,
    ];
    let first = u32::from_le_bytes([init[0], init[1], init[2], init[3]]);
    init[0] != 0xef && !FORBIDDEN.contains(&first) && init[4..8] != [0, 0, 0, 0]
}

/// Builds a header from `random` (which must satisfy [`is_valid_init`]; the caller
/// redraws until it does). With `secret` = `None` this is the proxy→DC header of
/// PROTOCOL §5.1; with a secret it is what a client sends a proxy (used by the
/// testkit's scripted clients). Returns the wire bytes and the sender's ciphers
/// (encrypt at offset 64, decrypt at 0).
pub fn build_header(
    random: &[u8; HEADER_LEN],
    tag: ProtoTag,
    dc: DcIndex,
    secret: Option<&Key16>,
) -> ([u8; HEADER_LEN], CipherPair) {
    let mut init = *random;
    init[56..60].copy_from_slice(&tag.to_bytes());
    init[60..62].copy_from_slice(&dc.0.to_le_bytes());
    // The sender's keys are the mirror of what the receiver derives: the
    // receiver's decrypt key is our encrypt key.
    let (ek, eiv, dk, div) = keys_for(&init, secret.map(|k| k.expose()));
    let mut enc = AesCtr::new(&ek, &eiv);
    let mut wire = init;
    enc.apply(&mut wire);
    wire[..56].copy_from_slice(&init[..56]);
    (
        wire,
        CipherPair {
            dec: AesCtr::new(&dk, &div),
            enc,
        },
    )
}

/// The proxy→DC header of PROTOCOL §5.1 (no secret; DC index = `abs(dc)` as mtg does).
pub fn build_dc_header(
    random: &[u8; HEADER_LEN],
    tag: ProtoTag,
    dc: DcIndex,
) -> ([u8; HEADER_LEN], CipherPair) {
    build_header(random, tag, dc, None)
}

/// Parses a header as a Telegram DC does (no secret; used by the fake DC).
pub fn parse_dc_side_header(header: &[u8; HEADER_LEN]) -> Option<(ProtoTag, DcIndex, CipherPair)> {
    let (dk, div, ek, eiv) = keys_for(header, None);
    let mut dec = AesCtr::new(&dk, &div);
    let mut plain = *header;
    dec.apply(&mut plain);
    let tag = ProtoTag::from_bytes([plain[56], plain[57], plain[58], plain[59]])?;
    let dc = DcIndex(i16::from_le_bytes([plain[60], plain[61]]));
    Some((
        tag,
        dc,
        CipherPair {
            dec,
            enc: AesCtr::new(&ek, &eiv),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(['\n', ' '], "")).unwrap()
    }

    fn key() -> Key16 {
        Key16::new(h("00112233445566778899aabbccddeeff").try_into().unwrap())
    }

    #[test]
    fn client_header_vector_12_2() {
        let wire: [u8; 64] = h(
            "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f
            606162636465666768696a6b6c6d6e6f7071727374757677daacbd2ca7de43f9",
        )
        .try_into()
        .unwrap();
        let other = Key16::new([9; 16]);
        let k = key();
        let mut hdr = parse_client_header(&wire, &[&other, &k]).expect("matches second key");
        assert_eq!(hdr.key_index, 1);
        assert_eq!(hdr.tag, ProtoTag::Padded);
        assert_eq!(hdr.dc, DcIndex(2));
        let mut frame = h(
            "65621e73c82ff93d7905cf4b9916217e23b158cac3ad36f42d5c632bcfa0be86
            593de97d6e2e5f4462992b8fe60b98",
        );
        hdr.ciphers.dec.apply(&mut frame);
        assert_eq!(&frame[..16], &h("2b000000000000000000000004000000")[..]);
        let mut out = h("040000006cfeffff");
        hdr.ciphers.enc.apply(&mut out);
        assert_eq!(out, h("b793310a3dd459c1"));
        // Without the secret (what a DC computes) the tag is garbage.
        assert!(parse_client_header(&wire, &[&other]).is_none());
    }

    #[test]
    fn client_build_matches_vector_12_2() {
        let mut random = [0u8; 64];
        for (i, b) in random.iter_mut().enumerate() {
            *b = 0x40 + i as u8;
        }
        let (wire, _) = build_header(&random, ProtoTag::Padded, DcIndex(2), Some(&key()));
        assert_eq!(
            wire.to_vec(),
            h(
                "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f
               606162636465666768696a6b6c6d6e6f7071727374757677daacbd2ca7de43f9"
            )
        );
    }

    #[test]
    fn dc_header_vector_12_3() {
        let mut random = [0u8; 64];
        for (i, b) in random.iter_mut().enumerate() {
            *b = ((0x11 * i + 7) % 256) as u8;
        }
        assert!(is_valid_init(&random));
        let (wire, mut c) = build_dc_header(&random, ProtoTag::Padded, DcIndex(2));
        assert_eq!(
            wire.to_vec(),
            h(
                "0718293a4b5c6d7e8fa0b1c2d3e4f5061728394a5b6c7d8e9fb0c1d2e3f40516
               2738495a6b7c8d9eafc0d1e2f30415263748596a7b8c9dae7e7dcc0a34699d5b"
            )
        );
        let mut data = b"example relayed bytes 0123456789".to_vec();
        c.enc.apply(&mut data);
        assert_eq!(
            data,
            h("61c8fd936d842e94e40671495429d91c6c91d2a946731ded3d6b20d98c94bf87")
        );
        let (tag, dc, _) = parse_dc_side_header(&wire).unwrap();
        assert_eq!((tag, dc), (ProtoTag::Padded, DcIndex(2)));
    }

    #[test]
    fn forbidden_inits() {
        let mut r = [1u8; 64];
        assert!(is_valid_init(&r));
        r[0] = 0xef;
        assert!(!is_valid_init(&r));
        r[..4].copy_from_slice(b"HEAD");
        assert!(!is_valid_init(&r));
        r[..4].copy_from_slice(&[0x16, 3, 1, 2]);
        assert!(!is_valid_init(&r));
        r[..4].copy_from_slice(&[1, 1, 1, 1]);
        r[4..8].copy_from_slice(&[0; 4]);
        assert!(!is_valid_init(&r));
    }

    proptest! {
        #[test]
        fn any_header_parses_without_panic(b in any::<[u8; 32]>(), c in any::<[u8; 32]>()) {
            let mut hdr = [0u8; 64];
            hdr[..32].copy_from_slice(&b);
            hdr[32..].copy_from_slice(&c);
            let _ = parse_client_header(&hdr, &[&key()]);
            let _ = parse_dc_side_header(&hdr);
        }

        #[test]
        fn client_and_proxy_agree(b in any::<[u8; 32]>(), c in any::<[u8; 32]>(), dc in any::<i16>(), t in 0u8..3,
                                  payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut random = [0u8; 64];
            random[..32].copy_from_slice(&b);
            random[32..].copy_from_slice(&c);
            let tag = [ProtoTag::Abridged, ProtoTag::Intermediate, ProtoTag::Padded][t as usize];
            let (wire, mut client) = build_header(&random, tag, DcIndex(dc), Some(&key()));
            let mut srv = parse_client_header(&wire, &[&key()]).unwrap();
            prop_assert_eq!((srv.tag, srv.dc), (tag, DcIndex(dc)));
            let mut up = payload.clone();
            client.enc.apply(&mut up);
            srv.ciphers.dec.apply(&mut up);
            prop_assert_eq!(&up, &payload);
            let mut down = payload.clone();
            srv.ciphers.enc.apply(&mut down);
            client.dec.apply(&mut down);
            prop_assert_eq!(down, payload);
        }
    }
}
