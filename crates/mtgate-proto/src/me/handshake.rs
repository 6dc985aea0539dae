//! Setting up an ME link: RPC_NONCE (PROTOCOL §7.4) and RPC_HANDSHAKE (§7.6).
//!
//! The proxy sends its nonce (plaintext, `seq -2`, no filler), reads the
//! ME's, derives keys ([`super::kdf`]), sends its handshake (the first
//! encrypted frame, `seq -1`) and checks the ME's answer. The checks are the
//! official proxy's: nonce type, schema, key selector and a ±30 s clock; the
//! answer's low flag byte zero, CRC32C only if offered, and `peer_pid`
//! matching our `sender_pid` field by field (each 0 or equal).

use super::frame::Checksum;
use super::{RPC_HANDSHAKE, RPC_HANDSHAKE_ERROR, RPC_NONCE};

/// Crypto schema "AES" (the only one proxies use).
pub const CRYPTO_AES: u32 = 1;
/// Crypto schema "AES with extra keys" (accepted from the ME).
pub const CRYPTO_AES_EXT: u32 = 2;
/// RPC_HANDSHAKE flag: use CRC32C after the handshakes.
pub const FLAG_CRC32C: u32 = 0x800;
/// How far the ME's nonce timestamp may be from ours.
pub const MAX_CLOCK_SKEW_SECS: u32 = 30;
/// Payload length of RPC_NONCE (schema 1) and RPC_HANDSHAKE.
pub const NONCE_LEN: usize = 32;
/// Payload length of RPC_HANDSHAKE.
pub const HANDSHAKE_LEN: usize = 32;

/// Why link set-up failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("expected constructor {want:08x}, got {got:08x}")]
    BadType { want: u32, got: u32 },
    #[error("set-up message of {0} bytes has the wrong length")]
    BadLength(usize),
    #[error("the ME uses crypto schema {0}")]
    BadSchema(u32),
    #[error("the ME's key selector does not match our proxy-secret")]
    KeySelect,
    #[error("the ME's clock is {0} s away from ours")]
    ClockSkew(i64),
    #[error("the ME's handshake flags {0:#x} are not acceptable")]
    BadFlags(u32),
    #[error("the ME chose CRC32C although we did not offer it")]
    Crc32cUnasked,
    #[error("the ME's peer_pid does not match our sender_pid")]
    PidMismatch,
    #[error("the ME answered RPC_HANDSHAKE_ERROR {0}")]
    Refused(i32),
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn expect_type(body: &[u8], want: u32) -> Result<(), HandshakeError> {
    if body.len() < 4 {
        return Err(HandshakeError::BadLength(body.len()));
    }
    match le32(body, 0) {
        got if got == want => Ok(()),
        got => Err(HandshakeError::BadType { want, got }),
    }
}

/// An RPC_NONCE payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nonce {
    /// The first 4 bytes of the proxy-secret.
    pub key_select: [u8; 4],
    pub schema: u32,
    /// Unix time of the sender.
    pub ts: u32,
    pub nonce: [u8; 16],
}

impl Nonce {
    /// Our nonce: schema 1, the secret's selector, `ts` and 16 random bytes.
    pub fn ours(secret: &[u8], ts: u32, nonce: [u8; 16]) -> Self {
        let mut key_select = [0u8; 4];
        for (d, s) in key_select.iter_mut().zip(secret) {
            *d = *s;
        }
        Self {
            key_select,
            schema: CRYPTO_AES,
            ts,
            nonce,
        }
    }

    /// The 32-byte payload.
    pub fn encode(&self) -> [u8; NONCE_LEN] {
        let mut b = [0u8; NONCE_LEN];
        b[..4].copy_from_slice(&RPC_NONCE.to_le_bytes());
        b[4..8].copy_from_slice(&self.key_select);
        b[8..12].copy_from_slice(&self.schema.to_le_bytes());
        b[12..16].copy_from_slice(&self.ts.to_le_bytes());
        b[16..].copy_from_slice(&self.nonce);
        b
    }

    /// Parses a nonce payload (schema 2 may carry an extra-key list after 32 bytes).
    pub fn parse(body: &[u8]) -> Result<Self, HandshakeError> {
        expect_type(body, RPC_NONCE)?;
        if body.len() < NONCE_LEN {
            return Err(HandshakeError::BadLength(body.len()));
        }
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&body[16..32]);
        Ok(Self {
            key_select: [body[4], body[5], body[6], body[7]],
            schema: le32(body, 8),
            ts: le32(body, 12),
            nonce,
        })
    }

    /// The official proxy's checks of the ME's nonce against ours.
    pub fn check_answer(&self, ours: &Nonce, body_len: usize) -> Result<(), HandshakeError> {
        match self.schema {
            CRYPTO_AES if body_len != NONCE_LEN => return Err(HandshakeError::BadLength(body_len)),
            CRYPTO_AES | CRYPTO_AES_EXT => {}
            s => return Err(HandshakeError::BadSchema(s)),
        }
        if self.key_select != ours.key_select {
            return Err(HandshakeError::KeySelect);
        }
        let skew = i64::from(self.ts) - i64::from(ours.ts);
        if skew.unsigned_abs() > u64::from(MAX_CLOCK_SKEW_SECS) {
            return Err(HandshakeError::ClockSkew(skew));
        }
        Ok(())
    }
}

/// A 12-byte process id: `{LE32 host-order IPv4, LE16 port, LE16 pid, LE32 utime}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcessId {
    pub ip: u32,
    pub port: u16,
    pub pid: u16,
    pub utime: u32,
}

impl ProcessId {
    pub fn to_bytes(self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&self.ip.to_le_bytes());
        b[4..6].copy_from_slice(&self.port.to_le_bytes());
        b[6..8].copy_from_slice(&self.pid.to_le_bytes());
        b[8..].copy_from_slice(&self.utime.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; 12]) -> Self {
        Self {
            ip: le32(b, 0),
            port: u16::from_le_bytes([b[4], b[5]]),
            pid: u16::from_le_bytes([b[6], b[7]]),
            utime: le32(b, 8),
        }
    }

    /// The official rule: every field of `echo` is 0 or equal to ours.
    pub fn matches_echo(self, echo: ProcessId) -> bool {
        (echo.ip == 0 || echo.ip == self.ip)
            && (echo.port == 0 || echo.port == self.port)
            && (echo.pid == 0 || echo.pid == self.pid)
            && (echo.utime == 0 || echo.utime == self.utime)
    }
}

/// An RPC_HANDSHAKE payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeMsg {
    pub flags: u32,
    pub sender_pid: ProcessId,
    pub peer_pid: ProcessId,
}

impl HandshakeMsg {
    /// The 32-byte payload.
    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut b = [0u8; HANDSHAKE_LEN];
        b[..4].copy_from_slice(&RPC_HANDSHAKE.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..20].copy_from_slice(&self.sender_pid.to_bytes());
        b[20..].copy_from_slice(&self.peer_pid.to_bytes());
        b
    }

    /// Parses a handshake payload; an RPC_HANDSHAKE_ERROR becomes [`HandshakeError::Refused`].
    pub fn parse(body: &[u8]) -> Result<Self, HandshakeError> {
        if body.len() >= 8 && le32(body, 0) == RPC_HANDSHAKE_ERROR {
            return Err(HandshakeError::Refused(le32(body, 4) as i32));
        }
        expect_type(body, RPC_HANDSHAKE)?;
        if body.len() != HANDSHAKE_LEN {
            return Err(HandshakeError::BadLength(body.len()));
        }
        let pid = |at: usize| {
            let mut b = [0u8; 12];
            b.copy_from_slice(&body[at..at + 12]);
            ProcessId::from_bytes(&b)
        };
        Ok(Self {
            flags: le32(body, 4),
            sender_pid: pid(8),
            peer_pid: pid(20),
        })
    }

    /// Checks the ME's answer to `ours`; returns the checksum for every later frame.
    pub fn check_answer(&self, ours: &HandshakeMsg) -> Result<Checksum, HandshakeError> {
        if self.flags & 0xff != 0 {
            return Err(HandshakeError::BadFlags(self.flags));
        }
        let offered = ours.flags & FLAG_CRC32C != 0;
        let chosen = self.flags & FLAG_CRC32C != 0;
        if chosen && !offered {
            return Err(HandshakeError::Crc32cUnasked);
        }
        if !ours.sender_pid.matches_echo(self.peer_pid) {
            return Err(HandshakeError::PidMismatch);
        }
        Ok(if chosen {
            Checksum::Crc32c
        } else {
            Checksum::Crc32
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn nonce_vectors_12_6_and_12_11() {
        let secret: Vec<u8> = (0..128).collect();
        let ours = Nonce::ours(&secret, 1_700_000_000, [0x22; 16]);
        assert_eq!(
            ours.encode().to_vec(),
            h("aa87cb7a000102030100000000f1536522222222222222222222222222222222")
        );
        let me_body = h("aa87cb7a000102030100000001f1536533333333333333333333333333333333");
        let me = Nonce::parse(&me_body).unwrap();
        assert_eq!(me.nonce, [0x33; 16]);
        assert_eq!(me.check_answer(&ours, me_body.len()), Ok(()));

        // Captured: the official proxy's nonce and the ME's answer.
        let proxy = Nonce::parse(&h(
            "aa87cb7ab33201d5010000003f53036b4387a4bc36f84e76f3019274ae215332",
        ))
        .unwrap();
        assert_eq!(proxy.ts, 1_795_380_031);
        let me = Nonce::parse(&h(
            "aa87cb7ab33201d5010000003f53036b000102030405060708090a0b0c0d0e0f",
        ))
        .unwrap();
        assert_eq!(me.check_answer(&proxy, 32), Ok(()));
    }

    #[test]
    fn nonce_checks() {
        let ours = Nonce::ours(&[1, 2, 3, 4, 5], 1000, [0; 16]);
        let mut me = ours;
        me.ts = 1031;
        assert_eq!(
            me.check_answer(&ours, 32),
            Err(HandshakeError::ClockSkew(31))
        );
        me.ts = 970;
        assert_eq!(me.check_answer(&ours, 32), Ok(()));
        me.key_select = [9; 4];
        assert_eq!(me.check_answer(&ours, 32), Err(HandshakeError::KeySelect));
        me = ours;
        for s in [0, 3] {
            me.schema = s;
            assert_eq!(
                me.check_answer(&ours, 32),
                Err(HandshakeError::BadSchema(s))
            );
        }
        me.schema = CRYPTO_AES;
        assert_eq!(
            me.check_answer(&ours, 36),
            Err(HandshakeError::BadLength(36))
        );
        assert!(matches!(
            Nonce::parse(
                &HandshakeMsg {
                    flags: 0,
                    sender_pid: ProcessId::default(),
                    peer_pid: ProcessId::default()
                }
                .encode()
            ),
            Err(HandshakeError::BadType { .. })
        ));
        assert_eq!(
            Nonce::parse(&[0xaa, 0x87]),
            Err(HandshakeError::BadLength(2))
        );
    }

    #[test]
    fn handshake_vectors_12_7_and_12_11() {
        let pid = ProcessId::from_bytes(b"IPIPPRPDTIME");
        let hs = HandshakeMsg {
            flags: 0,
            sender_pid: pid,
            peer_pid: pid,
        };
        assert_eq!(
            hs.encode().to_vec(),
            h("f5ee827600000000495049505052504454494d45495049505052504454494d45")
        );
        // Captured: the official proxy's handshake and the ME's answer (CRC32C chosen).
        let proxy = HandshakeMsg::parse(&h(
            "f5ee827600080000020200c0d8703b643f53036b00000000d270000000000000",
        ))
        .unwrap();
        assert_eq!(proxy.sender_pid.ip, 0xc000_0202);
        assert_eq!(proxy.sender_pid.port, 28888);
        let me = HandshakeMsg::parse(&h(
            "f5ee82760008000000000000d270ec633e53036b020200c0d8703b643f53036b",
        ))
        .unwrap();
        assert_eq!(me.check_answer(&proxy), Ok(Checksum::Crc32c));
    }

    #[test]
    fn handshake_checks() {
        let ours = HandshakeMsg {
            flags: FLAG_CRC32C,
            sender_pid: ProcessId {
                ip: 0x7f00_0001,
                port: 5,
                pid: 77,
                utime: 1000,
            },
            peer_pid: ProcessId::default(),
        };
        let mut me = HandshakeMsg {
            flags: 0,
            sender_pid: ProcessId::default(),
            peer_pid: ours.sender_pid,
        };
        assert_eq!(me.check_answer(&ours), Ok(Checksum::Crc32));
        me.peer_pid = ProcessId {
            ip: 0,
            port: 5,
            pid: 0,
            utime: 0,
        };
        assert_eq!(me.check_answer(&ours), Ok(Checksum::Crc32));
        // The oracle's bad-peer-pid fault.
        me.peer_pid = ProcessId {
            ip: 0x0a00_0001,
            port: 1,
            pid: 1,
            utime: 1,
        };
        assert_eq!(me.check_answer(&ours), Err(HandshakeError::PidMismatch));
        me.peer_pid = ours.sender_pid;
        // The oracle's handshake-flags fault.
        me.flags = 1;
        assert_eq!(me.check_answer(&ours), Err(HandshakeError::BadFlags(1)));
        me.flags = FLAG_CRC32C;
        let no_offer = HandshakeMsg { flags: 0, ..ours };
        assert_eq!(
            me.check_answer(&no_offer),
            Err(HandshakeError::Crc32cUnasked)
        );
        let mut err = h("da be 27 6a f8 ff ff ff".replace(' ', "").as_str());
        err.extend_from_slice(&[0; 12]);
        assert_eq!(HandshakeMsg::parse(&err), Err(HandshakeError::Refused(-8)));
        assert_eq!(
            HandshakeMsg::parse(&ours.encode()[..28]),
            Err(HandshakeError::BadLength(28))
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..48)) {
            let _ = Nonce::parse(&b);
            let _ = HandshakeMsg::parse(&b);
        }

        #[test]
        fn handshake_round_trip(flags in any::<u32>(), a in any::<[u8; 12]>(), c in any::<[u8; 12]>()) {
            let m = HandshakeMsg { flags, sender_pid: ProcessId::from_bytes(&a), peer_pid: ProcessId::from_bytes(&c) };
            prop_assert_eq!(HandshakeMsg::parse(&m.encode()), Ok(m));
            prop_assert_eq!(m.sender_pid.to_bytes(), a);
        }

        #[test]
        fn nonce_round_trip(ks in any::<[u8; 4]>(), schema in any::<u32>(), ts in any::<u32>(), n in any::<[u8; 16]>()) {
            let m = Nonce { key_select: ks, schema, ts, nonce: n };
            prop_assert_eq!(Nonce::parse(&m.encode()), Ok(m));
        }
    }
}
