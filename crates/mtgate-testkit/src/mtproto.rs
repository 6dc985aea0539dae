//! Just enough unencrypted MTProto for the fake DC and the scripted clients
//! (see tests/realclients/README.md, "Fake DC behaviour").
//!
//! An unencrypted message is `auth_key_id:int64 = 0 | msg_id:int64 |
//! length:int32 | body`. Only the first two steps of the auth-key exchange are
//! modelled: `req_pq_multi`/`req_pq` → `resPQ` and `req_DH_params` →
//! `server_DH_params_ok`. Every parser here reads untrusted bytes through a
//! bounds-checked cursor and returns `None` on anything malformed; the inner
//! `length` field is never trusted (TDLib pads inside the message).

use std::time::{SystemTime, UNIX_EPOCH};

/// `req_pq_multi#be7e8ef1 nonce:int128`
pub const REQ_PQ_MULTI: u32 = 0xbe7e_8ef1;
/// `req_pq#60469778 nonce:int128`
pub const REQ_PQ: u32 = 0x6046_9778;
/// `resPQ#05162463 nonce server_nonce pq:string fingerprints:Vector<long>`
pub const RES_PQ: u32 = 0x0516_2463;
/// `req_DH_params#d712e4be nonce server_nonce p:string q:string fingerprint:long encrypted_data:string`
pub const REQ_DH_PARAMS: u32 = 0xd712_e4be;
/// `server_DH_params_ok#d0e8075c nonce server_nonce encrypted_answer:string`
pub const SERVER_DH_PARAMS_OK: u32 = 0xd0e8_075c;
/// The boxed `Vector` constructor.
pub const VECTOR: u32 = 0x1cb5_c415;

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

/// Appends a TL `bytes`/`string`: length prefix, data, zero padding to 4.
pub fn put_tl_string(out: &mut Vec<u8>, data: &[u8]) {
    let start = out.len();
    if data.len() < 254 {
        out.push(data.len() as u8);
    } else {
        let l = (data.len() as u32).to_le_bytes();
        out.extend_from_slice(&[254, l[0], l[1], l[2]]);
    }
    out.extend_from_slice(data);
    while !(out.len() - start).is_multiple_of(4) {
        out.push(0);
    }
}

/// The big-endian bytes of `v` without leading zeros (TL encoding of a big integer).
pub fn be_bytes_minimal(v: u64) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|&&x| x == 0).count().min(7);
    b[skip..].to_vec()
}

/// A bounds-checked cursor over untrusted TL bytes.
#[derive(Debug)]
pub struct TlReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> TlReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// The next `n` bytes, if there are that many.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.array::<4>().map(u32::from_le_bytes)
    }

    pub fn i64(&mut self) -> Option<i64> {
        self.array::<8>().map(i64::from_le_bytes)
    }

    pub fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// A TL `bytes`/`string` (with its padding skipped).
    pub fn tl_string(&mut self) -> Option<&'a [u8]> {
        let first = *self.take(1)?.first()?;
        let (len, hdr) = if first < 254 {
            (first as usize, 1)
        } else if first == 254 {
            let l = self.take(3)?;
            (u32::from_le_bytes([l[0], l[1], l[2], 0]) as usize, 4)
        } else {
            return None;
        };
        let data = self.take(len)?;
        let pad = (4 - (hdr + len) % 4) % 4;
        self.take(pad)?;
        Some(data)
    }
}

/// A new message id: `(unix_time << 32) | fraction`, with the low two bits
/// forced to `low_bits` (0 for clients, 1 for server answers), and strictly
/// greater than `prev`.
pub fn next_msg_id(prev: u64, low_bits: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let frac = (u64::from(now.subsec_nanos()) << 32) / 1_000_000_000;
    let id = ((now.as_secs() << 32) | frac) & !3 | low_bits;
    if id > prev {
        id
    } else {
        (prev & !3).wrapping_add(4) | low_bits
    }
}

/// Wraps `body` into an unencrypted MTProto message.
pub fn wrap_unencrypted(msg_id: u64, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + body.len());
    m.extend_from_slice(&0u64.to_le_bytes());
    m.extend_from_slice(&msg_id.to_le_bytes());
    m.extend_from_slice(&(body.len() as u32).to_le_bytes());
    m.extend_from_slice(body);
    m
}

/// An unencrypted message's id and body. The body is everything after the
/// 20-byte header (the `length` field is ignored); `None` if the message is
/// shorter than a header or has a non-zero `auth_key_id`.
pub fn parse_unencrypted(msg: &[u8]) -> Option<(u64, &[u8])> {
    let mut r = TlReader::new(msg);
    if r.i64()? != 0 {
        return None;
    }
    let msg_id = r.array::<8>().map(u64::from_le_bytes)?;
    let _untrusted_len = r.u32()?;
    msg.get(20..).map(|b| (msg_id, b))
}

/// A `resPQ` answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResPq {
    pub nonce: [u8; 16],
    pub server_nonce: [u8; 16],
    /// `pq` as big-endian bytes.
    pub pq: Vec<u8>,
    pub fingerprints: Vec<i64>,
}

impl ResPq {
    /// `pq` as an integer, if it fits in 64 bits.
    pub fn pq_u64(&self) -> Option<u64> {
        if self.pq.len() > 8 {
            return None;
        }
        Some(self.pq.iter().fold(0u64, |a, &b| (a << 8) | u64::from(b)))
    }

    /// The TL body (constructor included).
    pub fn to_body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&RES_PQ.to_le_bytes());
        b.extend_from_slice(&self.nonce);
        b.extend_from_slice(&self.server_nonce);
        put_tl_string(&mut b, &self.pq);
        b.extend_from_slice(&VECTOR.to_le_bytes());
        b.extend_from_slice(&(self.fingerprints.len() as u32).to_le_bytes());
        for f in &self.fingerprints {
            b.extend_from_slice(&f.to_le_bytes());
        }
        b
    }

    /// Parses a `resPQ` body (constructor included); trailing bytes are ignored.
    pub fn parse(body: &[u8]) -> Option<Self> {
        let mut r = TlReader::new(body);
        if r.u32()? != RES_PQ {
            return None;
        }
        let nonce = r.array()?;
        let server_nonce = r.array()?;
        let pq = r.tl_string()?.to_vec();
        if r.u32()? != VECTOR {
            return None;
        }
        let n = r.u32()? as usize;
        // Each entry is 8 bytes; refuse counts the body cannot hold before allocating.
        if n > body.len() / 8 {
            return None;
        }
        let fingerprints = (0..n).map(|_| r.i64()).collect::<Option<Vec<_>>>()?;
        Some(Self {
            nonce,
            server_nonce,
            pq,
            fingerprints,
        })
    }

    /// The fake DC's answer for `nonce` and `server_nonce`.
    pub fn fake(nonce: [u8; 16], server_nonce: [u8; 16]) -> Self {
        Self {
            nonce,
            server_nonce,
            pq: FAKE_PQ.to_be_bytes().to_vec(),
            fingerprints: vec![FAKE_FINGERPRINT],
        }
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
        let body = ResPq::fake(nonce, server_nonce).to_body();
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
