//! Secret forms and proxy links (PROTOCOL §1).
//!
//! A user owns one 16-byte [`Key16`]; what a client is given is a *client
//! secret*: the key alone (plain obfuscated2), `dd` + key (padded intermediate)
//! or `ee` + key + domain (FakeTLS). Each form can be written as hex or
//! base64url; [`ProxySecret::parse`] accepts all of them.

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use mtgate_crypto::Key16;

/// Longest FakeTLS domain a client secret may carry (tdlib truncates at 182).
pub const MAX_DOMAIN_LEN: usize = 182;

/// Which client mode a secret selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// Plain obfuscated2 (any tag).
    Plain,
    /// `dd`: obfuscated2 with the padded-intermediate tag.
    Dd,
    /// `ee`: FakeTLS with this SNI domain.
    Ee(String),
}

/// A client-side secret: a key and the mode marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySecret {
    pub key: Key16,
    pub kind: SecretKind,
}

/// Why a secret string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret is neither hex nor base64url")]
    Encoding,
    #[error("secret has an unsupported length or prefix (want 16 bytes, dd+16, or ee+16+domain)")]
    Shape,
    #[error("ee domain is empty, too long, or not a valid host name")]
    Domain,
}

impl ProxySecret {
    /// Parses any form of PROTOCOL §1.2: hex first, then base64url (padding optional).
    pub fn parse(s: &str) -> Result<Self, SecretError> {
        let s = s.trim();
        // Hex first (as tdlib does); a string that is valid hex but of no usable
        // shape may still be base64url (22 base64 characters can all be hex digits).
        let from_hex = hex::decode(s)
            .map_err(|_| SecretError::Encoding)
            .and_then(|b| Self::from_bytes(&b));
        match from_hex {
            Ok(v) => Ok(v),
            Err(hex_err) => match decode_b64(s) {
                Ok(b) => Self::from_bytes(&b),
                Err(_) if hex_err != SecretError::Encoding => Err(hex_err),
                Err(e) => Err(e),
            },
        }
    }

    /// Interprets the binary layout of a client secret.
    pub fn from_bytes(b: &[u8]) -> Result<Self, SecretError> {
        let key = |s: &[u8]| -> Key16 {
            let mut k = [0u8; 16];
            k.copy_from_slice(s);
            Key16::new(k)
        };
        match (b.len(), b.first()) {
            (16, _) => Ok(Self {
                key: key(b),
                kind: SecretKind::Plain,
            }),
            (17, Some(0xdd)) => Ok(Self {
                key: key(&b[1..17]),
                kind: SecretKind::Dd,
            }),
            (n, Some(0xee)) if n >= 18 => {
                let domain = std::str::from_utf8(&b[17..]).map_err(|_| SecretError::Domain)?;
                validate_domain(domain)?;
                Ok(Self {
                    key: key(&b[1..17]),
                    kind: SecretKind::Ee(domain.to_owned()),
                })
            }
            _ => Err(SecretError::Shape),
        }
    }

    /// The binary client secret (marker, key, domain).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(17 + 32);
        match &self.kind {
            SecretKind::Plain => {}
            SecretKind::Dd => v.push(0xdd),
            SecretKind::Ee(_) => v.push(0xee),
        }
        v.extend_from_slice(self.key.expose());
        if let SecretKind::Ee(d) = &self.kind {
            v.extend_from_slice(d.as_bytes());
        }
        v
    }

    /// Lowercase hex, as tdlib exports plain and `dd` secrets.
    pub fn to_hex(&self) -> String {
        hex::encode(self.to_bytes())
    }

    /// Unpadded base64url, as tdlib exports `ee` secrets.
    pub fn to_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.to_bytes())
    }

    /// `tg://proxy?...` deep link with the hex form.
    pub fn tg_link(&self, server: &str, port: u16) -> String {
        format!(
            "tg://proxy?server={server}&port={port}&secret={}",
            self.to_hex()
        )
    }

    /// `https://t.me/proxy?...` link; `ee` secrets in base64url as tdlib writes them.
    pub fn tme_link(&self, server: &str, port: u16) -> String {
        let s = match self.kind {
            SecretKind::Ee(_) => self.to_base64url(),
            _ => self.to_hex(),
        };
        format!("https://t.me/proxy?server={server}&port={port}&secret={s}")
    }
}

/// A parsed proxy link: where to connect and with which secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyLink {
    pub server: String,
    pub port: u16,
    pub secret: ProxySecret,
}

/// Why a link was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("not a tg://proxy or t.me/proxy link")]
    Scheme,
    #[error("link lacks the `{0}` parameter")]
    Missing(&'static str),
    #[error("link port is not a number in 1..=65535")]
    Port,
    #[error("link secret: {0}")]
    Secret(#[from] SecretError),
}

impl ProxyLink {
    /// Parses `tg://proxy?`, `tg:proxy?`, and `http(s)://t.me|telegram.me|telegram.dog/proxy?` links.
    pub fn parse(link: &str) -> Result<Self, LinkError> {
        let link = link.trim();
        let query = ["tg://proxy?", "tg:proxy?"]
            .iter()
            .find_map(|p| link.strip_prefix(p))
            .or_else(|| {
                let rest = link
                    .strip_prefix("https://")
                    .or_else(|| link.strip_prefix("http://"))
                    .unwrap_or(link);
                ["t.me/proxy?", "telegram.me/proxy?", "telegram.dog/proxy?"]
                    .iter()
                    .find_map(|p| rest.strip_prefix(p))
            })
            .ok_or(LinkError::Scheme)?;
        let (mut server, mut port, mut secret) = (None, None, None);
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "server" => server = Some(v),
                "port" => port = Some(v),
                "secret" => secret = Some(v),
                _ => {}
            }
        }
        let server = server
            .filter(|s| !s.is_empty())
            .ok_or(LinkError::Missing("server"))?;
        let port: u16 = port
            .ok_or(LinkError::Missing("port"))?
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or(LinkError::Port)?;
        // base64 padding may arrive percent-encoded.
        let secret = secret
            .ok_or(LinkError::Missing("secret"))?
            .replace("%3D", "=");
        Ok(Self {
            server: server.to_owned(),
            port,
            secret: ProxySecret::parse(&secret)?,
        })
    }
}

fn decode_b64(s: &str) -> Result<Vec<u8>, SecretError> {
    let trimmed = s.trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE.decode(s))
        .map_err(|_| SecretError::Encoding)
}

/// Checks an `ee` domain: 1..=182 bytes of a DNS host name (letters, digits, `-`, `.`).
pub fn validate_domain(d: &str) -> Result<(), SecretError> {
    let ok = !d.is_empty()
        && d.len() <= MAX_DOMAIN_LEN
        && d.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
        && !d.starts_with('.')
        && !d.contains("..");
    if ok {
        Ok(())
    } else {
        Err(SecretError::Domain)
    }
}

/// Parses a bare 16-byte key (32 hex digits); any `dd`/`ee` form is accepted too and reduced to its key.
pub fn parse_key(s: &str) -> Result<Key16, SecretError> {
    Ok(ProxySecret::parse(s)?.key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn vectors_12_1() {
        let plain = ProxySecret::parse(KEY).unwrap();
        assert_eq!(plain.kind, SecretKind::Plain);
        let dd = ProxySecret {
            key: plain.key.clone(),
            kind: SecretKind::Dd,
        };
        assert_eq!(dd.to_hex(), "dd00112233445566778899aabbccddeeff");
        assert_eq!(dd.to_base64url(), "3QARIjNEVWZ3iJmqu8zd7v8");
        let ee = ProxySecret {
            key: plain.key.clone(),
            kind: SecretKind::Ee("www.example.com".into()),
        };
        assert_eq!(
            ee.to_hex(),
            "ee00112233445566778899aabbccddeeff7777772e6578616d706c652e636f6d"
        );
        assert_eq!(
            ee.to_base64url(),
            "7gARIjNEVWZ3iJmqu8zd7v93d3cuZXhhbXBsZS5jb20"
        );
        assert_eq!(
            ee.tg_link("proxy.example.net", 443),
            "tg://proxy?server=proxy.example.net&port=443&secret=ee00112233445566778899aabbccddeeff7777772e6578616d706c652e636f6d"
        );
        assert_eq!(
            ee.tme_link("proxy.example.net", 443),
            "https://t.me/proxy?server=proxy.example.net&port=443&secret=7gARIjNEVWZ3iJmqu8zd7v93d3cuZXhhbXBsZS5jb20"
        );
        for s in [
            "ee00112233445566778899aabbccddeeff7777772e6578616d706c652e636f6d",
            "7gARIjNEVWZ3iJmqu8zd7v93d3cuZXhhbXBsZS5jb20",
            "7gARIjNEVWZ3iJmqu8zd7v93d3cuZXhhbXBsZS5jb20=",
        ] {
            assert_eq!(ProxySecret::parse(s).unwrap(), ee);
        }
        assert_eq!(ProxySecret::parse("3QARIjNEVWZ3iJmqu8zd7v8").unwrap(), dd);
    }

    #[test]
    fn base64_plain_secret_that_looks_like_hex() {
        // Found by the fuzzer: this key's base64url form is 22 hex digits.
        let k = ProxySecret::parse("d34d34d34d34d34d34d34d34d34d34d0").unwrap();
        assert_eq!(k.to_base64url(), "000000000000000000000A");
        assert_eq!(ProxySecret::parse(&k.to_base64url()).unwrap(), k);
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert_eq!(ProxySecret::parse("0011"), Err(SecretError::Shape));
        assert_eq!(ProxySecret::parse("!!"), Err(SecretError::Encoding));
        assert_eq!(
            ProxySecret::parse("aa00112233445566778899aabbccddeeff"),
            Err(SecretError::Shape)
        );
        assert_eq!(
            ProxySecret::from_bytes(&[&[0xee][..], &[0; 16], b"a b"].concat()),
            Err(SecretError::Domain)
        );
    }

    #[test]
    fn links_round_trip() {
        let l = ProxyLink::parse(
            "https://t.me/proxy?server=1.2.3.4&port=443&secret=7gARIjNEVWZ3iJmqu8zd7v93d3cuZXhhbXBsZS5jb20",
        )
        .unwrap();
        assert_eq!((l.server.as_str(), l.port), ("1.2.3.4", 443));
        assert_eq!(l.secret.kind, SecretKind::Ee("www.example.com".into()));
        assert!(ProxyLink::parse(
            "tg:proxy?server=h&port=1&secret=00112233445566778899aabbccddeeff"
        )
        .is_ok());
        assert_eq!(
            ProxyLink::parse("tg://proxy?server=h&port=0&secret=x"),
            Err(LinkError::Port)
        );
        assert_eq!(
            ProxyLink::parse("tg://socks?server=h"),
            Err(LinkError::Scheme)
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,120}") {
            let _ = ProxySecret::parse(&s);
            let _ = ProxyLink::parse(&s);
        }

        #[test]
        fn from_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = ProxySecret::from_bytes(&b);
        }

        #[test]
        fn round_trip_all_forms(k in any::<[u8; 16]>(), form in 0u8..3, dom in "[a-z]{1,20}\\.[a-z]{2,5}") {
            let kind = match form { 0 => SecretKind::Plain, 1 => SecretKind::Dd, _ => SecretKind::Ee(dom) };
            let s = ProxySecret { key: Key16::new(k), kind };
            prop_assert_eq!(&ProxySecret::parse(&s.to_hex()).unwrap(), &s);
            prop_assert_eq!(&ProxySecret::parse(&s.to_base64url()).unwrap(), &s);
            let l = ProxyLink::parse(&s.tme_link("example.org", 8443)).unwrap();
            prop_assert_eq!(l.secret, s);
        }
    }
}
