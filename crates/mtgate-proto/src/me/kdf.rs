//! Session keys of an ME link (PROTOCOL §7.5).
//!
//! One byte string per direction (purpose `CLIENT` for proxy → ME, `SERVER`
//! for ME → proxy) built from both nonces, the proxy's nonce timestamp, the
//! addresses of this TCP connection (the proxy's **public** address after
//! NAT, its real local port) and the proxy-secret; then
//! `key = MD5(s[1..])[..12] ‖ SHA1(s)`, `iv = MD5(s[2..])`.

use mtgate_crypto::cbc::{md5, sha1};
use std::net::{IpAddr, SocketAddr};

/// Smallest proxy-secret the official proxy accepts.
pub const MIN_SECRET_LEN: usize = 32;
/// Largest proxy-secret the official proxy accepts.
pub const MAX_SECRET_LEN: usize = 256;

/// Which direction a key is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Proxy → ME (the proxy's write key).
    Client,
    /// ME → proxy (the proxy's read key).
    Server,
}

impl Purpose {
    fn tag(self) -> &'static [u8; 6] {
        match self {
            Self::Client => b"CLIENT",
            Self::Server => b"SERVER",
        }
    }
}

/// Why keys could not be derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KdfError {
    #[error("proxy-secret of {0} bytes (want 32..=256)")]
    SecretLength(usize),
    #[error("the two ends of the connection are of different address families")]
    MixedFamilies,
}

/// Everything the derivation reads.
#[derive(Clone, Copy, Debug)]
pub struct KdfInput<'a> {
    /// From the ME's RPC_NONCE.
    pub nonce_server: [u8; 16],
    /// Ours.
    pub nonce_client: [u8; 16],
    /// Our RPC_NONCE timestamp (not the ME's).
    pub client_ts: u32,
    /// Our address as the ME sees it (public IP after NAT) and our real local port.
    pub client: SocketAddr,
    /// The ME's address.
    pub server: SocketAddr,
    /// The whole proxy-secret.
    pub secret: &'a [u8],
}

/// Both directions' AES-256-CBC keys, from the proxy's point of view.
#[derive(Clone, PartialEq, Eq)]
pub struct MeKeys {
    pub write_key: [u8; 32],
    pub write_iv: [u8; 16],
    pub read_key: [u8; 32],
    pub read_iv: [u8; 16],
}

impl std::fmt::Debug for MeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeKeys(<redacted>)")
    }
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The byte string hashed for `purpose` (86 + L bytes on IPv4, 118 + L on IPv6).
pub fn kdf_string(input: &KdfInput<'_>, purpose: Purpose) -> Result<Vec<u8>, KdfError> {
    let l = input.secret.len();
    if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&l) {
        return Err(KdfError::SecretLength(l));
    }
    let (client_ip, server_ip) = (unmap(input.client.ip()), unmap(input.server.ip()));
    // IPv4 goes in as the LE32 of the host-order value: the 4 bytes reversed.
    let (c4, s4, v6) = match (client_ip, server_ip) {
        (IpAddr::V4(c), IpAddr::V4(s)) => (u32::from(c), u32::from(s), None),
        (IpAddr::V6(c), IpAddr::V6(s)) => (0, 0, Some((c.octets(), s.octets()))),
        _ => return Err(KdfError::MixedFamilies),
    };
    let mut s = Vec::with_capacity(118 + l);
    s.extend_from_slice(&input.nonce_server);
    s.extend_from_slice(&input.nonce_client);
    s.extend_from_slice(&input.client_ts.to_le_bytes());
    s.extend_from_slice(&s4.to_le_bytes());
    s.extend_from_slice(&input.client.port().to_le_bytes());
    s.extend_from_slice(purpose.tag());
    s.extend_from_slice(&c4.to_le_bytes());
    s.extend_from_slice(&input.server.port().to_le_bytes());
    s.extend_from_slice(input.secret);
    s.extend_from_slice(&input.nonce_server);
    if let Some((c6, s6)) = v6 {
        s.extend_from_slice(&c6);
        s.extend_from_slice(&s6);
    }
    s.extend_from_slice(&input.nonce_client);
    Ok(s)
}

fn key_iv(s: &[u8]) -> ([u8; 32], [u8; 16]) {
    let mut key = [0u8; 32];
    key[..12].copy_from_slice(&md5(&[&s[1..]])[..12]);
    key[12..].copy_from_slice(&sha1(&[s]));
    (key, md5(&[&s[2..]]))
}

/// Derives both directions' keys.
pub fn derive(input: &KdfInput<'_>) -> Result<MeKeys, KdfError> {
    let (write_key, write_iv) = key_iv(&kdf_string(input, Purpose::Client)?);
    let (read_key, read_iv) = key_iv(&kdf_string(input, Purpose::Server)?);
    Ok(MeKeys {
        write_key,
        write_iv,
        read_key,
        read_iv,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn synthetic(client: &str, server: &str) -> (Vec<u8>, KdfInput<'static>) {
        let secret: &'static [u8] = Box::leak((0u8..128).collect::<Vec<_>>().into_boxed_slice());
        (
            secret.to_vec(),
            KdfInput {
                nonce_server: [0x33; 16],
                nonce_client: [0x22; 16],
                client_ts: 1_700_000_000,
                client: client.parse().unwrap(),
                server: server.parse().unwrap(),
                secret,
            },
        )
    }

    #[test]
    fn ipv4_vector_12_6() {
        let (_, inp) = synthetic("198.51.100.7:40000", "149.154.175.50:8888");
        let s = kdf_string(&inp, Purpose::Client).unwrap();
        assert_eq!(s.len(), 214);
        assert_eq!(
            &s[..64],
            &h("333333333333333333333333333333332222222222222222222222222222222200f1536532af9a95409c434c49454e54076433c6b82200010203040506070809")[..]
        );
        let k = derive(&inp).unwrap();
        assert_eq!(
            k.write_key.to_vec(),
            h("551715f341d06b49118434ae96dc137b64de837ce806f3490d47abc1f457ce94")
        );
        assert_eq!(k.write_iv.to_vec(), h("80e1fbe3e7e73ae317edc7ca08b401ae"));
        assert_eq!(
            k.read_key.to_vec(),
            h("79c5a864edb0a2fbbfe902ffa8099f2f67a7732101babafad83d4241ea66308d")
        );
        assert_eq!(k.read_iv.to_vec(), h("3ffc8697b0e6c199921846d2a70b761d"));
    }

    #[test]
    fn ipv6_vector_12_6() {
        let (_, inp) = synthetic("[2001:db8::7]:40000", "[2001:b28:f23d:f001::d]:8888");
        let s = kdf_string(&inp, Purpose::Client).unwrap();
        assert_eq!(s.len(), 246);
        assert_eq!(
            &s[32..64],
            &h("00f1536500000000409c434c49454e5400000000b82200010203040506070809")[..]
        );
        assert_eq!(
            &s[198..],
            &h("20010db800000000000000000000000720010b28f23df001000000000000000d22222222222222222222222222222222")[..]
        );
        let k = derive(&inp).unwrap();
        assert_eq!(
            k.write_key.to_vec(),
            h("739a09882c377a1fe64f35dec9756b83fa219b410deec233656d62369cbde864")
        );
        assert_eq!(k.write_iv.to_vec(), h("42b9e1e45a0b5b9538f3334d3a9e06a5"));
        assert_eq!(
            k.read_key.to_vec(),
            h("1d8f712a87aa56dd60f8b390ae3c33cff922efe0b557e904c8fcff6beaf4334b")
        );
        assert_eq!(k.read_iv.to_vec(), h("2928399c60d6f5849da42f5fd9511509"));
    }

    #[test]
    fn captured_12_11() {
        let secret = h(concat!(
            "b33201d55ee3521a9bbd2c77c5cc64c4c1fab6018b5bec55412cde6286664ac5",
            "601cf98396ad19cf068eec8df449027e11168ab0f846b8dcc4b7309a2040dbf1",
            "d437874f8615cd9af5d9b62655bbe394e16fe5a3a7ca28a538f123a0095fa8a3",
            "d33964062987bfc27ba571e4335e3042479ebc115b2d2a46b7d00abbe84869a5"
        ));
        let inp = KdfInput {
            nonce_server: h("000102030405060708090a0b0c0d0e0f").try_into().unwrap(),
            nonce_client: h("4387a4bc36f84e76f3019274ae215332").try_into().unwrap(),
            client_ts: 1_795_380_031,
            client: "127.0.0.1:38603".parse().unwrap(),
            server: "127.0.0.1:28882".parse().unwrap(),
            secret: &secret,
        };
        let s = kdf_string(&inp, Purpose::Client).unwrap();
        assert_eq!(
            &s[32..54],
            &h("3f53036b0100007fcb96434c49454e540100007fd270")[..]
        );
        let k = derive(&inp).unwrap();
        assert_eq!(
            k.write_key.to_vec(),
            h("69a0b406e91356bb0d1887bb5893cf72243460732f895ac0090db286f941da03")
        );
        assert_eq!(k.write_iv.to_vec(), h("2e8ae7490767baead34158675730664a"));
        assert_eq!(
            k.read_key.to_vec(),
            h("3419cc77e43e40d3cf45dc67ae8417e7ae642b304b140eef3574813a66bab5be")
        );
        assert_eq!(k.read_iv.to_vec(), h("cba25d90cd458fa3a39735f6052513ce"));
        assert_eq!(format!("{k:?}"), "MeKeys(<redacted>)");
    }

    #[test]
    fn refusals() {
        let (_, mut inp) = synthetic("198.51.100.7:40000", "[2001:b28:f23d:f001::d]:8888");
        assert_eq!(derive(&inp), Err(KdfError::MixedFamilies));
        inp.server = "[::ffff:149.154.175.50]:8888".parse().unwrap();
        assert!(derive(&inp).is_ok(), "a mapped IPv4 address counts as IPv4");
        inp.secret = &[0; 31];
        assert_eq!(derive(&inp), Err(KdfError::SecretLength(31)));
    }

    proptest! {
        #[test]
        fn purposes_differ_only_in_the_tag(len in 32usize..=256, port in any::<u16>()) {
            let secret = vec![7u8; len];
            let inp = KdfInput {
                nonce_server: [1; 16], nonce_client: [2; 16], client_ts: 3,
                client: SocketAddr::from(([10, 0, 0, 1], port)),
                server: SocketAddr::from(([10, 0, 0, 2], 443)), secret: &secret,
            };
            let (a, b) = (kdf_string(&inp, Purpose::Client).unwrap(), kdf_string(&inp, Purpose::Server).unwrap());
            prop_assert_eq!(a.len(), 86 + len);
            prop_assert_eq!(&a[..42], &b[..42]);
            prop_assert_eq!(&a[48..], &b[48..]);
        }
    }
}
