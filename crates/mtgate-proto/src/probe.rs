//! The smallest piece of unencrypted MTProto needed to prove that a peer is a
//! Telegram DC: `req_pq_multi` out, `resPQ` back (the first step of the
//! auth-key exchange). Used by `mtgate doctor` and by the testkit's fake DC and
//! scripted clients.
//!
//! An unencrypted message is `auth_key_id:int64 = 0 | msg_id:int64 |
//! length:int32 | body`. Sans-I/O like the rest of the crate: the message id
//! (which carries the sender's clock) is passed in, see [`msg_id_at`]. Every
//! parser reads untrusted bytes through the bounds-checked [`TlReader`] and
//! returns `None` on anything malformed; the inner `length` field is never
//! trusted (TDLib pads inside the message).

/// `req_pq_multi#be7e8ef1 nonce:int128`
pub const REQ_PQ_MULTI: u32 = 0xbe7e_8ef1;
/// `req_pq#60469778 nonce:int128`
pub const REQ_PQ: u32 = 0x6046_9778;
/// `resPQ#05162463 nonce server_nonce pq:string fingerprints:Vector<long>`
pub const RES_PQ: u32 = 0x0516_2463;
/// The boxed `Vector` constructor.
pub const VECTOR: u32 = 0x1cb5_c415;
/// Length of the unencrypted message header.
pub const UNENCRYPTED_HEADER_LEN: usize = 20;

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

/// A message id for the time `unix_secs` + `nanos`: `(secs << 32) | fraction`,
/// low two bits forced to `low_bits` (0 for clients, 1 for server answers), and
/// strictly greater than `prev`.
pub fn msg_id_at(unix_secs: u64, nanos: u32, prev: u64, low_bits: u64) -> u64 {
    let frac = (u64::from(nanos.min(999_999_999)) << 32) / 1_000_000_000;
    let id = ((unix_secs << 32) | frac) & !3 | (low_bits & 3);
    if id > prev {
        id
    } else {
        (prev & !3).wrapping_add(4) | (low_bits & 3)
    }
}

/// The sender's clock (Unix seconds) carried in a message id.
pub fn msg_id_time(msg_id: u64) -> u64 {
    msg_id >> 32
}

/// Wraps `body` into an unencrypted MTProto message.
pub fn wrap_unencrypted(msg_id: u64, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(UNENCRYPTED_HEADER_LEN + body.len());
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
    msg.get(UNENCRYPTED_HEADER_LEN..).map(|b| (msg_id, b))
}

/// The body of `req_pq_multi` with `nonce`.
pub fn req_pq_multi_body(nonce: &[u8; 16]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20);
    b.extend_from_slice(&REQ_PQ_MULTI.to_le_bytes());
    b.extend_from_slice(nonce);
    b
}

/// The whole unencrypted `req_pq_multi` message.
pub fn req_pq_multi(msg_id: u64, nonce: &[u8; 16]) -> Vec<u8> {
    wrap_unencrypted(msg_id, &req_pq_multi_body(nonce))
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
}

/// Why an answer to [`req_pq_multi`] does not prove a DC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("the answer is not an unencrypted MTProto message")]
    NotUnencrypted,
    #[error("the answer is not a resPQ (constructor {0:#010x})")]
    NotResPq(u32),
    #[error("the resPQ does not echo our nonce")]
    WrongNonce,
}

/// Checks a whole unencrypted message answering our `req_pq_multi` with
/// `nonce`: returns the server's message id (its clock) and the `resPQ`.
pub fn check_res_pq(msg: &[u8], nonce: &[u8; 16]) -> Result<(u64, ResPq), ProbeError> {
    let (msg_id, body) = parse_unencrypted(msg).ok_or(ProbeError::NotUnencrypted)?;
    let res = ResPq::parse(body)
        .ok_or_else(|| ProbeError::NotResPq(TlReader::new(body).u32().unwrap_or(0)))?;
    if &res.nonce != nonce {
        return Err(ProbeError::WrongNonce);
    }
    Ok((msg_id, res))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn req_pq_multi_bytes() {
        let nonce: [u8; 16] = std::array::from_fn(|i| i as u8);
        let m = req_pq_multi(0x5f00_0000_0000_0004, &nonce);
        assert_eq!(
            hex::encode(&m),
            "0000000000000000040000000000005f14000000f18e7ebe000102030405060708090a0b0c0d0e0f"
        );
        let (id, body) = parse_unencrypted(&m).unwrap();
        assert_eq!(id, 0x5f00_0000_0000_0004);
        assert_eq!(body, &req_pq_multi_body(&nonce)[..]);
    }

    #[test]
    fn res_pq_round_trip_and_check() {
        let nonce: [u8; 16] = std::array::from_fn(|i| i as u8);
        let res = ResPq {
            nonce,
            server_nonce: std::array::from_fn(|i| 0x10 + i as u8),
            pq: 0x17ED_4894_1A08_F981u64.to_be_bytes().to_vec(),
            fingerprints: vec![0xd09d_1d85_de64_fd85_u64 as i64],
        };
        assert_eq!(
            hex::encode(res.to_body()),
            "63241605000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\
             0817ed48941a08f98100000015c4b51c0100000085fd64de851d9dd0"
        );
        let id = msg_id_at(1_700_000_000, 5, 0, 1);
        let msg = wrap_unencrypted(id, &res.to_body());
        let (got_id, back) = check_res_pq(&msg, &nonce).unwrap();
        assert_eq!((got_id, &back), (id, &res));
        assert_eq!(msg_id_time(got_id), 1_700_000_000);
        assert_eq!(back.pq_u64(), Some(0x17ED_4894_1A08_F981));
        assert_eq!(check_res_pq(&msg, &[9; 16]), Err(ProbeError::WrongNonce));
        let other = wrap_unencrypted(id, &req_pq_multi_body(&nonce));
        assert_eq!(
            check_res_pq(&other, &nonce),
            Err(ProbeError::NotResPq(REQ_PQ_MULTI))
        );
        let mut keyed = msg.clone();
        keyed[0] = 1;
        assert_eq!(
            check_res_pq(&keyed, &nonce),
            Err(ProbeError::NotUnencrypted)
        );
    }

    #[test]
    fn msg_ids_increase_with_low_bits() {
        let a = msg_id_at(100, 0, 0, 1);
        let b = msg_id_at(100, 0, a, 1);
        assert!(b > a && a % 4 == 1 && b % 4 == 1);
        assert_eq!(msg_id_at(1, 0, u64::MAX - 8, 0) % 4, 0);
        assert_eq!(msg_id_time(msg_id_at(12345, 999_999_999, 0, 0)), 12345);
    }

    #[test]
    fn tl_strings() {
        let mut b = Vec::new();
        put_tl_string(&mut b, &[0x49, 0x4c, 0x55, 0x3b]);
        assert_eq!(hex::encode(&b), "04494c553b000000");
        let long = vec![7u8; 300];
        put_tl_string(&mut b, &long);
        let mut r = TlReader::new(&b);
        assert_eq!(r.tl_string(), Some(&[0x49, 0x4c, 0x55, 0x3b][..]));
        assert_eq!(r.tl_string(), Some(&long[..]));
        assert_eq!(r.tl_string(), None);
    }

    #[test]
    fn huge_vector_count_is_refused() {
        let mut huge = RES_PQ.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 32]);
        huge.extend_from_slice(&[0, 0, 0, 0]);
        huge.extend_from_slice(&VECTOR.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(ResPq::parse(&huge), None);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(junk in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ResPq::parse(&junk);
            let _ = parse_unencrypted(&junk);
            let _ = check_res_pq(&junk, &[0; 16]);
            let _ = TlReader::new(&junk).tl_string();
        }
    }
}
