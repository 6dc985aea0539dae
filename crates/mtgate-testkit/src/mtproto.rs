//! Just enough unencrypted MTProto for the fake DC and the scripted clients
//! (see tests/realclients/README.md, "Fake DC behaviour"). The `req_pq_multi`
//! / `resPQ` pair and the TL reader live in [`mtgate_proto::probe`] (the
//! product's `doctor` uses them) and are re-exported here.
//!
//! An unencrypted message is `auth_key_id:int64 = 0 | msg_id:int64 |
//! length:int32 | body`. Only the first two steps of the auth-key exchange are
//! modelled: `req_pq_multi`/`req_pq` → `resPQ` and `req_DH_params` →
//! `server_DH_params_ok`. Every parser here reads untrusted bytes through a
//! bounds-checked cursor and returns `None` on anything malformed; the inner
//! `length` field is never trusted (TDLib pads inside the message).

use std::time::{SystemTime, UNIX_EPOCH};

pub use mtgate_proto::probe::{
    parse_unencrypted, put_tl_string, wrap_unencrypted, ResPq, TlReader, REQ_PQ, REQ_PQ_MULTI,
    RES_PQ, VECTOR,
};

/// `req_DH_params#d712e4be nonce server_nonce p:string q:string fingerprint:long encrypted_data:string`
pub const REQ_DH_PARAMS: u32 = 0xd712_e4be;
/// `server_DH_params_ok#d0e8075c nonce server_nonce encrypted_answer:string`
pub const SERVER_DH_PARAMS_OK: u32 = 0xd0e8_075c;
/// The fake DC's `pq` (Telegram's documented example), big-endian.
pub const FAKE_PQ: u64 = 0x17ED_4894_1A08_F981;
/// Its factors, `p < q`.
pub const FAKE_P: u64 = 0x494C_553B;
pub const FAKE_Q: u64 = 0x5391_1073;
/// Telegram's production RSA key fingerprint, the only one the fake DC offers.
pub const FAKE_FINGERPRINT: i64 = 0xd09d_1d85_de64_fd85_u64 as i64;
/// Length of `encrypted_data` in a valid `req_DH_params`.
pub const ENCRYPTED_DATA_LEN: usize = 256;
/// Length of the fake DC's `encrypted_answer` (not a multiple of 16, so clients stop there).
pub const FAKE_ANSWER_LEN: usize = 15;

/// The big-endian bytes of `v` without leading zeros (TL encoding of a big integer).
pub fn be_bytes_minimal(v: u64) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|&&x| x == 0).count().min(7);
    b[skip..].to_vec()
}

/// A new message id: `(unix_time << 32) | fraction`, with the low two bits
/// forced to `low_bits` (0 for clients, 1 for server answers), and strictly
/// greater than `prev`.
pub fn next_msg_id(prev: u64, low_bits: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    mtgate_proto::probe::msg_id_at(now.as_secs(), now.subsec_nanos(), prev, low_bits)
}

/// The fake DC's answer for `nonce` and `server_nonce`.
pub fn fake_res_pq(nonce: [u8; 16], server_nonce: [u8; 16]) -> ResPq {
    ResPq {
        nonce,
        server_nonce,
        pq: FAKE_PQ.to_be_bytes().to_vec(),
        fingerprints: vec![FAKE_FINGERPRINT],
    }
}

/// A `req_DH_params` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReqDhParams {
    pub nonce: [u8; 16],
    pub server_nonce: [u8; 16],
    pub p: Vec<u8>,
    pub q: Vec<u8>,
    pub fingerprint: i64,
    pub encrypted_data: Vec<u8>,
}

impl ReqDhParams {
    /// The TL body (constructor included).
    pub fn to_body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(340);
        b.extend_from_slice(&REQ_DH_PARAMS.to_le_bytes());
        b.extend_from_slice(&self.nonce);
        b.extend_from_slice(&self.server_nonce);
        put_tl_string(&mut b, &self.p);
        put_tl_string(&mut b, &self.q);
        b.extend_from_slice(&self.fingerprint.to_le_bytes());
        put_tl_string(&mut b, &self.encrypted_data);
        b
    }

    /// Parses the fields after the constructor; trailing bytes are ignored.
    pub fn parse_fields(r: &mut TlReader<'_>) -> Option<Self> {
        Some(Self {
            nonce: r.array()?,
            server_nonce: r.array()?,
            p: r.tl_string()?.to_vec(),
            q: r.tl_string()?.to_vec(),
            fingerprint: r.i64()?,
            encrypted_data: r.tl_string()?.to_vec(),
        })
    }
}

/// A `server_DH_params_ok` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhParamsOk {
    pub nonce: [u8; 16],
    pub server_nonce: [u8; 16],
    pub encrypted_answer: Vec<u8>,
}

impl DhParamsOk {
    /// The TL body (constructor included).
    pub fn to_body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(52);
        b.extend_from_slice(&SERVER_DH_PARAMS_OK.to_le_bytes());
        b.extend_from_slice(&self.nonce);
        b.extend_from_slice(&self.server_nonce);
        put_tl_string(&mut b, &self.encrypted_answer);
        b
    }

    /// Parses a `server_DH_params_ok` body (constructor included).
    pub fn parse(body: &[u8]) -> Option<Self> {
        let mut r = TlReader::new(body);
        if r.u32()? != SERVER_DH_PARAMS_OK {
            return None;
        }
        Some(Self {
            nonce: r.array()?,
            server_nonce: r.array()?,
            encrypted_answer: r.tl_string()?.to_vec(),
        })
    }
}

/// The constructor id at the start of a body, if any.
pub fn constructor(body: &[u8]) -> Option<u32> {
    TlReader::new(body).u32()
}

fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    ((u128::from(a) * u128::from(b)) % u128::from(m)) as u64
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Splits `pq` into two factors `p <= q` with Pollard's rho (Brent), as clients
/// do for `resPQ`. `None` for 0, 1 or a prime.
pub fn factorize(pq: u64) -> Option<(u64, u64)> {
    if pq < 4 {
        return None;
    }
    if pq.is_multiple_of(2) {
        return Some((2, pq / 2));
    }
    for c in 1..64u64 {
        let f = |x: u64| (mul_mod(x, x, pq) + c) % pq;
        let (mut x, mut y, mut d) = (2u64, 2u64, 1u64);
        let mut steps = 0u32;
        while d == 1 && steps < 1 << 22 {
            x = f(x);
            y = f(f(y));
            d = gcd(x.abs_diff(y), pq);
            steps += 1;
        }
        if d != 1 && d != pq {
            let (p, q) = (d, pq / d);
            return Some((p.min(q), p.max(q)));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn res_pq_matches_readme_example() {
        let nonce: [u8; 16] = std::array::from_fn(|i| i as u8);
        let server_nonce: [u8; 16] = std::array::from_fn(|i| 0x10 + i as u8);
        let body = fake_res_pq(nonce, server_nonce).to_body();
        assert_eq!(
            hex::encode(&body),
            "63241605000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\
             0817ed48941a08f98100000015c4b51c0100000085fd64de851d9dd0"
        );
        let back = ResPq::parse(&body).unwrap();
        assert_eq!(back.pq_u64(), Some(FAKE_PQ));
        assert_eq!(back.fingerprints, vec![FAKE_FINGERPRINT]);
    }

    #[test]
    fn dh_ok_matches_readme_example() {
        let ok = DhParamsOk {
            nonce: std::array::from_fn(|i| i as u8),
            server_nonce: std::array::from_fn(|i| 0x10 + i as u8),
            encrypted_answer: vec![0; FAKE_ANSWER_LEN],
        };
        assert_eq!(
            hex::encode(ok.to_body()),
            "5c07e8d0000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\
             0f000000000000000000000000000000"
        );
        assert_eq!(DhParamsOk::parse(&ok.to_body()), Some(ok));
    }

    #[test]
    fn tl_strings_and_factors() {
        let mut b = Vec::new();
        put_tl_string(&mut b, &be_bytes_minimal(FAKE_P));
        assert_eq!(hex::encode(&b), "04494c553b000000");
        let long = vec![7u8; 300];
        put_tl_string(&mut b, &long);
        let mut r = TlReader::new(&b);
        assert_eq!(r.tl_string(), Some(&[0x49, 0x4c, 0x55, 0x3b][..]));
        assert_eq!(r.tl_string(), Some(&long[..]));
        assert_eq!(r.tl_string(), None);
        assert_eq!(factorize(FAKE_PQ), Some((FAKE_P, FAKE_Q)));
        assert_eq!(factorize(13), None);
    }

    #[test]
    fn msg_ids_are_increasing_with_low_bits() {
        let a = next_msg_id(0, 1);
        let b = next_msg_id(a, 1);
        assert!(b > a && a % 4 == 1 && b % 4 == 1);
        assert_eq!(next_msg_id(u64::MAX - 8, 0) % 4, 0);
    }

    #[test]
    fn parsers_survive_garbage() {
        for n in 0..80 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let _ = ResPq::parse(&junk);
            let _ = DhParamsOk::parse(&junk);
            let _ = parse_unencrypted(&junk);
            let _ = ReqDhParams::parse_fields(&mut TlReader::new(&junk));
        }
        let mut huge = RES_PQ.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 32]);
        huge.extend_from_slice(&[0, 0, 0, 0]);
        huge.extend_from_slice(&VECTOR.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(ResPq::parse(&huge), None);
    }
}
