//! FakeTLS (`ee` secrets, PROTOCOL §6): the ClientHello check, the fake
//! ServerHello, and the TLS record layer that wraps the obfuscated stream.

use crate::key::SecretOps;
use mtgate_crypto::{ct_eq, hmac_sha256, Key16};

pub mod client;
pub use client::build_client_hello;

/// Record header length.
pub const RECORD_HEADER_LEN: usize = 5;
/// Smallest ClientHello record body accepted (tdlib pads short hellos to 517 bytes in all).
pub const MIN_HELLO_BODY: usize = 512 - RECORD_HEADER_LEN;
/// Largest ClientHello record body accepted (2¹⁴ + 256, PROTOCOL §6.2).
pub const MAX_HELLO_BODY: usize = 16_640;
/// Largest application-data payload the proxy writes per record.
pub const MAX_RECORD_PAYLOAD: usize = 16_384;
/// Largest record payload accepted from a client (TLS 1.3 ciphertext limit 2¹⁴ + 256).
pub const MAX_CLIENT_RECORD: usize = 16_640;

const DIGEST_POS: usize = 11;
const DIGEST_LEN: usize = 32;
/// `14 03 03 00 01 01`: the ChangeCipherSpec record.
pub const CCS_RECORD: [u8; 6] = [0x14, 0x03, 0x03, 0x00, 0x01, 0x01];

/// What is wrong with a ClientHello (the connection is then not ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("not a TLS handshake record")]
    NotHandshake,
    #[error("ClientHello record length out of range")]
    Length,
    #[error("malformed ClientHello")]
    Malformed,
    #[error("unexpected TLS record type {0:#04x}")]
    RecordType(u8),
    #[error("TLS record too long")]
    RecordTooLong,
}

/// The fields of a ClientHello that the proxy needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    pub random: [u8; 32],
    pub session_id: Vec<u8>,
    /// The first non-GREASE TLS 1.3 suite offered (`0x1301..=0x1303`), if any.
    pub tls13_suite: Option<u16>,
    /// The SNI host name, if present.
    pub sni: Option<String>,
}

/// The length of the whole ClientHello record if `buf` starts like one, or an error.
/// Returns `Ok(None)` while fewer than 5 bytes are there.
pub fn hello_record_len(buf: &[u8]) -> Result<Option<usize>, TlsError> {
    if buf.len() >= 3 && buf[..3] != [0x16, 0x03, 0x01] {
        return Err(TlsError::NotHandshake);
    }
    if buf.len() < RECORD_HEADER_LEN {
        return Ok(None);
    }
    let body = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if !(MIN_HELLO_BODY..=MAX_HELLO_BODY).contains(&body) {
        return Err(TlsError::Length);
    }
    Ok(Some(RECORD_HEADER_LEN + body))
}

/// A bounds-checked cursor over untrusted bytes.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TlsError> {
        let end = self.pos.checked_add(n).ok_or(TlsError::Malformed)?;
        let s = self.b.get(self.pos..end).ok_or(TlsError::Malformed)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, TlsError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, TlsError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u24(&mut self) -> Result<usize, TlsError> {
        let s = self.take(3)?;
        Ok(((s[0] as usize) << 16) | ((s[1] as usize) << 8) | s[2] as usize)
    }
    fn vec8(&mut self) -> Result<&'a [u8], TlsError> {
        let n = self.u8()? as usize;
        self.take(n)
    }
    fn vec16(&mut self) -> Result<&'a [u8], TlsError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

/// Parses one complete ClientHello record (as sized by [`hello_record_len`]).
/// Extensions are walked generically: any order, GREASE, unknown types.
pub fn parse_client_hello(record: &[u8]) -> Result<ClientHello, TlsError> {
    let total = hello_record_len(record)?.ok_or(TlsError::Length)?;
    if record.len() != total {
        return Err(TlsError::Length);
    }
    let mut r = Reader {
        b: &record[RECORD_HEADER_LEN..],
        pos: 0,
    };
    if r.u8()? != 0x01 {
        return Err(TlsError::Malformed);
    }
    let hs_len = r.u24()?;
    if hs_len + 4 > total - RECORD_HEADER_LEN {
        return Err(TlsError::Malformed);
    }
    r.b = &r.b[..hs_len + 4];
    let _version = r.u16()?;
    let mut random = [0u8; 32];
    random.copy_from_slice(r.take(32)?);
    let session_id = r.vec8()?;
    if session_id.len() > 32 {
        return Err(TlsError::Malformed);
    }
    let suites = r.vec16()?;
    if !suites.len().is_multiple_of(2) {
        return Err(TlsError::Malformed);
    }
    let tls13_suite = suites
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .find(|s| !is_grease(*s))
        .filter(|s| (0x1301..=0x1303).contains(s));
    let _compression = r.vec8()?;
    let mut sni = None;
    if r.pos < r.b.len() {
        let mut ext = Reader {
            b: r.vec16()?,
            pos: 0,
        };
        while ext.pos < ext.b.len() {
            let ty = ext.u16()?;
            let data = ext.vec16()?;
            if ty == 0 && sni.is_none() {
                sni = parse_sni(data)?;
            }
        }
    }
    Ok(ClientHello {
        random,
        session_id: session_id.to_vec(),
        tls13_suite,
        sni,
    })
}

fn parse_sni(data: &[u8]) -> Result<Option<String>, TlsError> {
    let mut r = Reader { b: data, pos: 0 };
    let mut list = Reader {
        b: r.vec16()?,
        pos: 0,
    };
    while list.pos < list.b.len() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == 0 {
            let s = std::str::from_utf8(name).map_err(|_| TlsError::Malformed)?;
            return Ok(Some(s.to_ascii_lowercase()));
        }
    }
    Ok(None)
}

/// Checks the ClientHello digest against `key` (PROTOCOL §6.2); on success returns
/// the client's timestamp. HMAC runs over the record with the random zeroed.
pub fn verify_hello_digest(record: &[u8], key: &Key16) -> Option<u32> {
    verify_hello_digest_with(record, key)
}

/// [`verify_hello_digest`] with a key wherever it is kept ([`SecretOps`]);
/// a digest that cannot be computed does not verify.
pub fn verify_hello_digest_with<K: SecretOps + ?Sized>(record: &[u8], key: &K) -> Option<u32> {
    if record.len() < DIGEST_POS + DIGEST_LEN {
        return None;
    }
    let h = key.hmac(&[
        &record[..DIGEST_POS],
        &[0u8; DIGEST_LEN],
        &record[DIGEST_POS + DIGEST_LEN..],
    ])?;
    let got = &record[DIGEST_POS..DIGEST_POS + DIGEST_LEN];
    let mut x = [0u8; DIGEST_LEN];
    for i in 0..DIGEST_LEN {
        x[i] = h[i] ^ got[i];
    }
    if ct_eq(&x[..28], &[0u8; 28]) {
        Some(u32::from_le_bytes([x[28], x[29], x[30], x[31]]))
    } else {
        None
    }
}

/// Builds the client side of the digest (for scripted clients and tests):
/// writes the digest for `timestamp` into `record[11..43]`.
pub fn sign_hello(record: &mut [u8], key: &Key16, timestamp: u32) {
    if record.len() < DIGEST_POS + DIGEST_LEN {
        return;
    }
    record[DIGEST_POS..DIGEST_POS + DIGEST_LEN].fill(0);
    let mut h = hmac_sha256(key.expose(), &[record]);
    let ts = timestamp.to_le_bytes();
    for i in 0..4 {
        h[28 + i] ^= ts[i];
    }
    record[DIGEST_POS..DIGEST_POS + DIGEST_LEN].copy_from_slice(&h);
}

/// Builds the fake ServerHello + CCS + one application-data record (PROTOCOL §6.3),
/// key_share first as the official server does. `fake_payload` is the random
/// body of the application-data record (its length is the disguise's size).
pub fn build_server_hello(
    hello: &ClientHello,
    key: &Key16,
    x25519_public: &[u8; 32],
    fake_payload: &[u8],
) -> Vec<u8> {
    build_server_hello_ordered(hello, key, x25519_public, fake_payload, false)
}

/// As [`build_server_hello`], with supported_versions before key_share when
/// `versions_first` (the order some sites, and mtg, use).
pub fn build_server_hello_ordered(
    hello: &ClientHello,
    key: &Key16,
    x25519_public: &[u8; 32],
    fake_payload: &[u8],
    versions_first: bool,
) -> Vec<u8> {
    // A key in memory always gives its digest.
    build_server_hello_with(hello, key, x25519_public, fake_payload, versions_first)
        .unwrap_or_default()
}

/// [`build_server_hello_ordered`] with a key wherever it is kept
/// ([`SecretOps`]); `None` if its digest cannot be computed.
pub fn build_server_hello_with<K: SecretOps + ?Sized>(
    hello: &ClientHello,
    key: &K,
    x25519_public: &[u8; 32],
    fake_payload: &[u8],
    versions_first: bool,
) -> Option<Vec<u8>> {
    let sid = &hello.session_id;
    let suite = hello.tls13_suite.unwrap_or(0x1301);
    let hs_body_len = 2 + 32 + 1 + sid.len() + 2 + 1 + 2 + 46;
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + 4 + hs_body_len + 11 + fake_payload.len());
    out.extend_from_slice(&[0x16, 0x03, 0x03]);
    out.extend_from_slice(&((hs_body_len + 4) as u16).to_be_bytes());
    out.push(0x02);
    out.extend_from_slice(&(hs_body_len as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[0x03, 0x03]);
    out.extend_from_slice(&[0u8; 32]);
    out.push(sid.len() as u8);
    out.extend_from_slice(sid);
    out.extend_from_slice(&suite.to_be_bytes());
    out.push(0x00);
    out.extend_from_slice(&[0x00, 0x2e]);
    const VERSIONS: [u8; 6] = [0x00, 0x2b, 0x00, 0x02, 0x03, 0x04];
    if versions_first {
        out.extend_from_slice(&VERSIONS);
    }
    out.extend_from_slice(&[0x00, 0x33, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20]);
    out.extend_from_slice(x25519_public);
    if !versions_first {
        out.extend_from_slice(&VERSIONS);
    }
    out.extend_from_slice(&CCS_RECORD);
    out.extend_from_slice(&[0x17, 0x03, 0x03]);
    out.extend_from_slice(&(fake_payload.len() as u16).to_be_bytes());
    out.extend_from_slice(fake_payload);
    let digest = key.hmac(&[&hello.random, &out])?;
    out[DIGEST_POS..DIGEST_POS + DIGEST_LEN].copy_from_slice(&digest);
    Some(out)
}

/// Checks a server response as tdlib does (for scripted clients): one handshake
/// record, CCS, one application record, and the digest over all of it.
pub fn verify_server_hello(resp: &[u8], client_random: &[u8; 32], key: &Key16) -> bool {
    if resp.len() < DIGEST_POS + DIGEST_LEN {
        return false;
    }
    let mut zeroed = resp.to_vec();
    zeroed[DIGEST_POS..DIGEST_POS + DIGEST_LEN].fill(0);
    let d = hmac_sha256(key.expose(), &[client_random, &zeroed]);
    ct_eq(&d, &resp[DIGEST_POS..DIGEST_POS + DIGEST_LEN])
}

/// The length of a server response starting at `buf` (handshake record, CCS,
/// app record), once all headers are there.
pub fn server_hello_len(buf: &[u8]) -> Option<usize> {
    let hs = RECORD_HEADER_LEN + u16::from_be_bytes([*buf.get(3)?, *buf.get(4)?]) as usize;
    let app_hdr = hs + CCS_RECORD.len();
    let app_len = u16::from_be_bytes([*buf.get(app_hdr + 3)?, *buf.get(app_hdr + 4)?]) as usize;
    Some(app_hdr + RECORD_HEADER_LEN + app_len)
}

/// The header of an application-data record carrying `len` payload bytes.
#[inline]
pub fn app_record_header(len: usize) -> [u8; RECORD_HEADER_LEN] {
    let l = (len as u16).to_be_bytes();
    [0x17, 0x03, 0x03, l[0], l[1]]
}

/// Strips TLS record framing from the client's stream, in place.
///
/// Feed it whatever arrived; it moves the payload bytes of application-data
/// records to the front of the same buffer and returns how many there are.
/// ChangeCipherSpec records are skipped; any other type is an error. State
/// (a header split across reads, a partly read record) is kept between calls.
#[derive(Clone, Debug, Default)]
pub struct RecordStripper {
    hdr: [u8; RECORD_HEADER_LEN],
    hdr_len: usize,
    /// Payload bytes still to come in the current record.
    remaining: usize,
    /// Whether the current record is a CCS (payload dropped).
    skipping: bool,
}

impl RecordStripper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the stripper is between records (no partial header or payload).
    pub fn at_boundary(&self) -> bool {
        self.hdr_len == 0 && self.remaining == 0
    }

    /// Processes `buf` in place and returns the number of payload bytes now at `buf[..n]`.
    pub fn strip_in_place(&mut self, buf: &mut [u8]) -> Result<usize, TlsError> {
        let mut read = 0;
        let mut write = 0;
        while read < buf.len() {
            if self.remaining == 0 {
                let take = (RECORD_HEADER_LEN - self.hdr_len).min(buf.len() - read);
                self.hdr[self.hdr_len..self.hdr_len + take]
                    .copy_from_slice(&buf[read..read + take]);
                self.hdr_len += take;
                read += take;
                if self.hdr_len < RECORD_HEADER_LEN {
                    break;
                }
                self.hdr_len = 0;
                let len = u16::from_be_bytes([self.hdr[3], self.hdr[4]]) as usize;
                if self.hdr[1..3] != [0x03, 0x03] {
                    return Err(TlsError::RecordType(self.hdr[0]));
                }
                match self.hdr[0] {
                    0x17 => self.skipping = false,
                    0x14 => self.skipping = true,
                    other => return Err(TlsError::RecordType(other)),
                }
                if len > MAX_CLIENT_RECORD || len == 0 {
                    return Err(TlsError::RecordTooLong);
                }
                self.remaining = len;
                continue;
            }
            let take = self.remaining.min(buf.len() - read);
            if !self.skipping {
                buf.copy_within(read..read + take, write);
                write += take;
            }
            read += take;
            self.remaining -= take;
        }
        Ok(write)
    }
}

#[cfg(test)]
mod tests;
