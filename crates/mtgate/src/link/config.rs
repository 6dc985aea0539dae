//! `[link.exit]` and `[link.bridge]`: this node as the exit of a link, or
//! as a bridge whose direct-mode DC connections all go through one.

use mtgate_proto::link::handshake::{ExitKey, Token};
use mtgate_proto::link::negotiate::{self, Cipher, Offer};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use zeroize::Zeroizing;

/// `[link]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLink {
    pub exit: Option<RawExit>,
    pub bridge: Option<RawBridge>,
}

/// `[link.exit]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExit {
    /// Where bridges connect (`ip:port`).
    pub listen: String,
    /// The static secret key, base64 (`mtgate link keygen`), or a file
    /// holding it.
    pub key: Option<String>,
    pub key_file: Option<String>,
    /// Bridge name → its link token (base64, 32 bytes).
    pub tokens: BTreeMap<String, String>,
    /// Ciphers in this exit's order (default: AES-GCM first on a CPU with
    /// AES instructions, ChaCha20 first without).
    pub ciphers: Option<Vec<String>>,
    #[serde(default, flatten)]
    pub keys: RawRekey,
    /// Sessions one link may carry at once (default 4096).
    pub max_streams: Option<usize>,
    /// `tcp` (default), `tls` or `websocket`.
    pub carriage: Option<super::carriage::Kind>,
    /// The certificate chain and key (PEM) of `tls`, and of `websocket`
    /// served as `wss` (without them, plain `ws` behind a CDN).
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// The WebSocket path (default `/link`).
    pub path: Option<String>,
}

/// `[link.bridge]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBridge {
    /// The exit's link address (`ip:port`).
    pub exit: String,
    /// The exit's static public key, base64: pinned.
    pub exit_key: String,
    /// This bridge's link token, base64 (or `token_file`).
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub ciphers: Option<Vec<String>>,
    /// Link connections kept to the exit (default 2).
    pub connections: Option<usize>,
    #[serde(default, flatten)]
    pub keys: RawRekey,
    /// `tcp` (default), `tls` or `websocket`.
    pub carriage: Option<super::carriage::Kind>,
    /// The TLS server name and HTTP host (default: the exit's address).
    pub server_name: Option<String>,
    /// The WebSocket path (default `/link`).
    pub path: Option<String>,
    /// WebSocket over TLS (default true).
    pub tls: Option<bool>,
    /// Trust roots besides the web PKI's (an exit with its own CA).
    pub ca_file: Option<String>,
    /// `dc` (default: this node runs the sessions, the exit dials the DCs)
    /// or `forward` (clients' raw connections go to the exit, which runs
    /// their sessions: users, ME mode and the promotion tag live there).
    pub mode: Option<String>,
}

/// When a direction moves to its next key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRekey {
    /// After this many bytes (default 1 GiB).
    pub rekey_bytes: Option<u64>,
    /// After this long (default 1 h).
    #[serde(default, with = "humantime_serde")]
    pub rekey_interval: Option<Duration>,
}

/// When a direction rekeys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rekey {
    pub bytes: u64,
    pub interval: Duration,
}

impl Default for Rekey {
    fn default() -> Self {
        Self {
            bytes: 1 << 30,
            interval: Duration::from_secs(3600),
        }
    }
}

/// The checked `[link]`.
#[derive(Clone, Debug, Default)]
pub struct LinkConfig {
    pub exit: Option<ExitConfig>,
    pub bridge: Option<BridgeConfig>,
}

/// The checked `[link.exit]`.
#[derive(Clone, Debug)]
pub struct ExitConfig {
    pub listen: SocketAddr,
    pub key: ExitKey,
    /// (bridge name, token), in the order they are tried.
    pub tokens: Vec<(String, Token)>,
    pub offer: Offer,
    pub rekey: Rekey,
    pub max_streams: usize,
    pub carriage: super::carriage::Acceptor,
}

/// The checked `[link.bridge]`.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// `host:port` (a name is resolved at each dial).
    pub exit: String,
    pub exit_key: [u8; 32],
    pub token: Token,
    pub offer: Offer,
    pub connections: usize,
    pub rekey: Rekey,
    pub carriage: super::carriage::Dialer,
    /// `mode = "forward"`.
    pub forward: bool,
}

impl PartialEq for BridgeConfig {
    fn eq(&self, o: &Self) -> bool {
        self.exit == o.exit
            && self.exit_key == o.exit_key
            && self.token == o.token
            && self.offer == o.offer
            && self.connections == o.connections
            && self.rekey == o.rekey
            && self.carriage == o.carriage
            && self.forward == o.forward
    }
}

type Bad = (String, String);

fn bad(key: &str, msg: impl Into<String>) -> Bad {
    (format!("link.{key}"), msg.into())
}

/// 32 bytes from base64 (standard or URL-safe, padded or not).
pub fn key32(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    use base64::Engine as _;
    let t = text.trim();
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    for e in engines {
        if let Ok(v) = e.decode(t) {
            let v = Zeroizing::new(v);
            if v.len() == 32 {
                let mut out = Zeroizing::new([0u8; 32]);
                out.copy_from_slice(&v);
                return Some(out);
            }
        }
    }
    None
}

/// The standard base64 form of 32 bytes.
pub fn b64(bytes: &[u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn inline_or_file(
    key: &str,
    inline: Option<String>,
    file: Option<String>,
) -> Result<Zeroizing<[u8; 32]>, Bad> {
    let (text, from) = match (inline, file) {
        (Some(t), None) => (Zeroizing::new(t), key.to_owned()),
        (None, Some(f)) => {
            let t = std::fs::read_to_string(&f)
                .map_err(|e| bad(&format!("{key}_file"), format!("{f}: {e}")))?;
            (Zeroizing::new(t), format!("{key}_file"))
        }
        (Some(_), Some(_)) => return Err(bad(key, format!("give {key} or {key}_file, not both"))),
        (None, None) => return Err(bad(key, format!("{key} or {key}_file is required"))),
    };
    key32(&text).ok_or_else(|| bad(&from, "32 bytes in base64 (mtgate link keygen)"))
}

fn offer(key: &str, names: Option<Vec<String>>) -> Result<Offer, Bad> {
    let ciphers = match names {
        None => negotiate::preferred(hw_aes()),
        Some(n) => n
            .iter()
            .map(|s| {
                Cipher::parse(s).ok_or_else(|| {
                    bad(
                        key,
                        format!("`{s}`: use aes-256-gcm, aes-128-gcm, chacha20-poly1305, xchacha20-poly1305"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    Offer::new(ciphers).map_err(|e| bad(key, e.to_string()))
}

fn rekey(side: &str, r: RawRekey) -> Result<Rekey, Bad> {
    let d = Rekey::default();
    let out = Rekey {
        bytes: r.rekey_bytes.unwrap_or(d.bytes),
        interval: r.rekey_interval.unwrap_or(d.interval),
    };
    if !(1 << 20..=1 << 40).contains(&out.bytes) {
        return Err(bad(&format!("{side}.rekey_bytes"), "1 MiB to 1 TiB"));
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&out.interval) {
        return Err(bad(&format!("{side}.rekey_interval"), "1s to 24h"));
    }
    Ok(out)
}

fn web_path(key: &str, p: Option<String>) -> Result<String, Bad> {
    let p = p.unwrap_or_else(|| super::carriage::DEFAULT_PATH.into());
    if !p.starts_with('/') || p.len() > 256 || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad(key, "an absolute path without spaces"));
    }
    Ok(p)
}

/// Whether this CPU has AES instructions (the default order follows).
pub fn hw_aes() -> bool {
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64")))]
    {
        false
    }
}

impl LinkConfig {
    /// Checks `[link]`; an error names the key.
    pub fn from_raw(raw: RawLink) -> Result<Self, Bad> {
        let exit = raw.exit.map(ExitConfig::from_raw).transpose()?;
        let bridge = raw.bridge.map(BridgeConfig::from_raw).transpose()?;
        Ok(Self { exit, bridge })
    }
}

impl ExitConfig {
    fn from_raw(r: RawExit) -> Result<Self, Bad> {
        let listen = r.listen.parse().map_err(|_| {
            bad(
                "exit.listen",
                format!("`{}` is not an ip:port address", r.listen),
            )
        })?;
        let key = ExitKey::from_secret(inline_or_file("exit.key", r.key, r.key_file)?);
        if r.tokens.is_empty() || r.tokens.len() > 64 {
            return Err(bad("exit.tokens", "1 to 64 bridges: name = \"token\""));
        }
        let mut tokens = Vec::new();
        for (name, t) in r.tokens {
            let ok = (1..=32).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(bad(
                    &format!("exit.tokens.{name}"),
                    "a bridge's name is 1..32 letters, digits, - or _",
                ));
            }
            let bytes = key32(&t).ok_or_else(|| {
                bad(
                    &format!("exit.tokens.{name}"),
                    "32 bytes in base64 (mtgate link token)",
                )
            })?;
            let token = Token::new(*bytes);
            if tokens.iter().any(|(_, x)| *x == token) {
                return Err(bad(
                    &format!("exit.tokens.{name}"),
                    "the same token as another bridge",
                ));
            }
            tokens.push((name, token));
        }
        let max_streams = r.max_streams.unwrap_or(4096);
        if !(1..=65_536).contains(&max_streams) {
            return Err(bad("exit.max_streams", "1 to 65536"));
        }
        let kind = r.carriage.unwrap_or_default();
        let files = match (r.tls_cert, r.tls_key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((c.into(), k.into())),
            _ => return Err(bad("exit.tls_cert", "give both tls_cert and tls_key")),
        };
        let path = web_path("exit.path", r.path)?;
        let carriage = super::carriage::Acceptor::new(kind, path, files)
            .map_err(|e| bad("exit.carriage", e))?;
        Ok(Self {
            listen,
            key,
            tokens,
            offer: offer("exit.ciphers", r.ciphers)?,
            rekey: rekey("exit", r.keys)?,
            max_streams,
            carriage,
        })
    }
}

impl BridgeConfig {
    fn from_raw(r: RawBridge) -> Result<Self, Bad> {
        crate::dc::check_host_port(&r.exit).map_err(|e| bad("bridge.exit", e))?;
        let exit = r.exit;
        let host = match exit.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
            None => exit.clone(),
        };
        let exit_key = *key32(&r.exit_key).ok_or_else(|| {
            bad(
                "bridge.exit_key",
                "the exit's public key: 32 bytes in base64",
            )
        })?;
        let token = Token::new(*inline_or_file("bridge.token", r.token, r.token_file)?);
        let connections = r.connections.unwrap_or(2);
        if !(1..=16).contains(&connections) {
            return Err(bad("bridge.connections", "1 to 16"));
        }
        let kind = r.carriage.unwrap_or_default();
        let ca = match r.ca_file {
            None => Vec::new(),
            Some(f) => {
                use rustls::pki_types::pem::PemObject;
                let pem =
                    std::fs::read(&f).map_err(|e| bad("bridge.ca_file", format!("{f}: {e}")))?;
                let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
                    .filter_map(Result::ok)
                    .collect();
                if certs.is_empty() {
                    return Err(bad("bridge.ca_file", format!("{f}: no certificate in it")));
                }
                certs
            }
        };
        let carriage = super::carriage::Dialer::new(
            kind,
            r.server_name.unwrap_or(host),
            web_path("bridge.path", r.path)?,
            r.tls.unwrap_or(true),
            &ca,
        )
        .map_err(|e| bad("bridge.carriage", e))?;
        let forward = match r.mode.as_deref() {
            None | Some("dc") => false,
            Some("forward") => true,
            Some(o) => return Err(bad("bridge.mode", format!("`{o}`: use dc or forward"))),
        };
        Ok(Self {
            exit,
            exit_key,
            token,
            offer: offer("bridge.ciphers", r.ciphers)?,
            connections,
            rekey: rekey("bridge", r.keys)?,
            carriage,
            forward,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LinkConfig, Bad> {
        LinkConfig::from_raw(toml::from_str(text).map_err(|e| ("toml".into(), e.to_string()))?)
    }

    #[test]
    fn a_whole_exit_and_bridge_parse_and_bad_keys_are_named() {
        let k = b64(&[1; 32]);
        let t = b64(&[2; 32]);
        let ok = parse(&format!(
            "[exit]\nlisten = \"127.0.0.1:9\"\nkey = \"{k}\"\ntokens = {{ msk = \"{t}\" }}\n\
             ciphers = [\"chacha20-poly1305\"]\nrekey_bytes = 1048576\n\
             [bridge]\nexit = \"127.0.0.1:9\"\nexit_key = \"{k}\"\ntoken = \"{t}\"\n"
        ))
        .unwrap();
        let e = ok.exit.unwrap();
        assert_eq!(e.tokens[0].0, "msk");
        assert_eq!(e.offer.ciphers(), &[Cipher::ChaCha20Poly1305]);
        assert_eq!(e.rekey.bytes, 1 << 20);
        assert_eq!(ok.bridge.unwrap().connections, 2);
        for (text, key) in [
            (format!("[exit]\nlisten = \"x\"\nkey = \"{k}\"\ntokens = {{ a = \"{t}\" }}"), "link.exit.listen"),
            (format!("[exit]\nlisten = \"127.0.0.1:9\"\nkey = \"short\"\ntokens = {{ a = \"{t}\" }}"), "link.exit.key"),
            (format!("[exit]\nlisten = \"127.0.0.1:9\"\nkey = \"{k}\"\ntokens = {{}}"), "link.exit.tokens"),
            (format!("[exit]\nlisten = \"127.0.0.1:9\"\nkey = \"{k}\"\ntokens = {{ a = \"{t}\", b = \"{t}\" }}"), "link.exit.tokens.b"),
            (format!("[exit]\nlisten = \"127.0.0.1:9\"\nkey = \"{k}\"\ntokens = {{ a = \"{t}\" }}\nciphers = [\"rc4\"]"), "link.exit.ciphers"),
            (format!("[bridge]\nexit = \"127.0.0.1:9\"\nexit_key = \"{k}\""), "link.bridge.token"),
            (format!("[exit]\nlisten = \"127.0.0.1:9\"\nkey = \"{k}\"\ntokens = {{ a = \"{t}\" }}\ncarriage = \"tls\""), "link.exit.carriage"),
            (format!("[exit]\nlisten = \"127.0.0.1:9\"\nkey = \"{k}\"\ntokens = {{ a = \"{t}\" }}\ntls_cert = \"/x\""), "link.exit.tls_cert"),
            (format!("[exit]\nlisten = \"127.0.0.1:9\"\nkey = \"{k}\"\ntokens = {{ a = \"{t}\" }}\ncarriage = \"websocket\"\npath = \"nope\""), "link.exit.path"),
            (format!("[bridge]\nexit = \"nohost\"\nexit_key = \"{k}\"\ntoken = \"{t}\""), "link.bridge.exit"),
            (format!("[bridge]\nexit = \"127.0.0.1:9\"\nexit_key = \"{k}\"\ntoken = \"{t}\"\nca_file = \"/nonexistent\""), "link.bridge.ca_file"),
            (format!("[bridge]\nexit = \"127.0.0.1:9\"\nexit_key = \"{k}\"\ntoken = \"{t}\"\nrekey_interval = \"0s\""), "link.bridge.rekey_interval"),
            (format!("[bridge]\nexit = \"127.0.0.1:9\"\nexit_key = \"{k}\"\ntoken = \"{t}\"\nconnections = 0"), "link.bridge.connections"),
        ] {
            assert_eq!(parse(&text).unwrap_err().0, key, "{text}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let k = b64(&[1; 32]);
        let t = b64(&[2; 32]);
        let c = parse(&format!(
            "[exit]\nlisten = \"127.0.0.1:9\"\nkey = \"{k}\"\ntokens = {{ msk = \"{t}\" }}\n"
        ))
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("0101") && !shown.contains("0202"),
            "{shown}"
        );
    }
}
