//! `proxy-multi.conf` (PROTOCOL §7.2): which middle-ends serve which DC.
//!
//! The official grammar: `#` comments to end of line, free whitespace, every
//! statement ends with `;`. Statements: `proxy_for <dc> <host>:<port>;`,
//! `default <dc>;`, `proxy <host>:<port>;` (cluster 0), `timeout <ms>;`,
//! `min_connections <n>;`, `max_connections <n>;`. The lines of one cluster
//! must be consecutive. Hosts are IPv4, `[IPv6]` or host names. Everything is
//! bounded: file size, statements, addresses.

use std::net::{IpAddr, Ipv6Addr};

/// Largest file accepted.
pub const MAX_CONF_BYTES: usize = 1 << 20;
/// Most addresses in one file.
pub const MAX_ADDRESSES: usize = 4096;

/// Why a file was refused (1-based statement line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfError {
    #[error("file of {0} bytes is too large")]
    TooLarge(usize),
    #[error("line {line}: {what}")]
    Syntax { line: usize, what: &'static str },
    #[error("line {line}: cluster {dc} appears again after another cluster")]
    Intermixed { line: usize, dc: i16 },
    #[error("more than {MAX_ADDRESSES} addresses")]
    TooManyAddresses,
    #[error("no proxy_for or proxy statement")]
    Empty,
}

/// A middle-end host as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MeHost {
    Ip(IpAddr),
    /// A DNS name (resolved by the service).
    Name(String),
}

/// One middle-end address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeAddr {
    pub host: MeHost,
    pub port: u16,
}

impl std::fmt::Display for MeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            MeHost::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]:{}", self.port),
            MeHost::Ip(ip) => write!(f, "{ip}:{}", self.port),
            MeHost::Name(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

/// The addresses serving one (signed) DC index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub dc: i16,
    pub addrs: Vec<MeAddr>,
}

/// A parsed `proxy-multi.conf`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyMultiConf {
    /// Cluster for DC indexes that have none.
    pub default_dc: Option<i16>,
    pub clusters: Vec<Cluster>,
    pub timeout_ms: Option<u32>,
    pub min_connections: Option<u32>,
    pub max_connections: Option<u32>,
}

impl ProxyMultiConf {
    /// The addresses for `dc`: its own cluster, else the default cluster.
    pub fn addrs_for(&self, dc: i16) -> Option<&[MeAddr]> {
        let find = |d: i16| self.clusters.iter().find(|c| c.dc == d);
        find(dc)
            .or_else(|| self.default_dc.and_then(find))
            .map(|c| c.addrs.as_slice())
    }

    /// Every distinct address, in file order.
    pub fn all_addrs(&self) -> Vec<MeAddr> {
        let mut v: Vec<MeAddr> = Vec::new();
        for a in self.clusters.iter().flat_map(|c| &c.addrs) {
            if !v.contains(a) {
                v.push(a.clone());
            }
        }
        v
    }

    /// Parses the file text.
    pub fn parse(text: &str) -> Result<Self, ConfError> {
        if text.len() > MAX_CONF_BYTES {
            return Err(ConfError::TooLarge(text.len()));
        }
        let mut conf = ProxyMultiConf::default();
        let mut naddrs = 0usize;
        for (line, words) in statements(text)? {
            let err = |what| ConfError::Syntax { line, what };
            let int = |w: &str, lo: i64, hi: i64, what| {
                w.parse::<i64>()
                    .ok()
                    .filter(|v| (lo..=hi).contains(v))
                    .ok_or(err(what))
            };
            let (dc, addr) = match words.as_slice() {
                ["proxy_for", dc, addr] => (
                    int(dc, i16::MIN.into(), i16::MAX.into(), "bad DC index")? as i16,
                    *addr,
                ),
                ["proxy", addr] => (0, *addr),
                ["default", dc] => {
                    conf.default_dc =
                        Some(int(dc, i16::MIN.into(), i16::MAX.into(), "bad DC index")? as i16);
                    continue;
                }
                ["timeout", ms] => {
                    conf.timeout_ms =
                        Some(int(ms, 10, 30_000, "timeout must be 10..30000")? as u32);
                    continue;
                }
                ["min_connections", n] => {
                    conf.min_connections = Some(int(n, 1, 1000, "bad connection count")? as u32);
                    continue;
                }
                ["max_connections", n] => {
                    conf.max_connections = Some(int(n, 1, 1000, "bad connection count")? as u32);
                    continue;
                }
                _ => return Err(err("unknown or malformed statement")),
            };
            let addr = parse_addr(addr).ok_or(err("bad host:port"))?;
            naddrs += 1;
            if naddrs > MAX_ADDRESSES {
                return Err(ConfError::TooManyAddresses);
            }
            if let Some(c) = conf.clusters.last_mut().filter(|c| c.dc == dc) {
                c.addrs.push(addr);
            } else if conf.clusters.iter().any(|c| c.dc == dc) {
                return Err(ConfError::Intermixed { line, dc });
            } else {
                conf.clusters.push(Cluster {
                    dc,
                    addrs: vec![addr],
                });
            }
        }
        if conf.clusters.is_empty() {
            return Err(ConfError::Empty);
        }
        Ok(conf)
    }
}

/// Splits the text into `;`-terminated statements of whitespace-separated
/// words, dropping comments; each with the line it starts on.
fn statements(text: &str) -> Result<Vec<(usize, Vec<&str>)>, ConfError> {
    let mut out = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    let mut start_line = 1;
    for (i, raw) in text.lines().enumerate() {
        let code = raw.split('#').next().unwrap_or("");
        let mut rest = code;
        while let Some(pos) = rest.find(';') {
            let (before, after) = rest.split_at(pos);
            if cur.is_empty() {
                start_line = i + 1;
            }
            cur.extend(before.split_whitespace());
            if cur.is_empty() {
                return Err(ConfError::Syntax {
                    line: i + 1,
                    what: "empty statement",
                });
            }
            out.push((start_line, std::mem::take(&mut cur)));
            rest = &after[1..];
        }
        if cur.is_empty() && !rest.trim().is_empty() {
            start_line = i + 1;
        }
        cur.extend(rest.split_whitespace());
        if cur.len() > 8 {
            return Err(ConfError::Syntax {
                line: start_line,
                what: "statement too long",
            });
        }
    }
    if !cur.is_empty() {
        return Err(ConfError::Syntax {
            line: start_line,
            what: "missing `;`",
        });
    }
    Ok(out)
}

fn parse_addr(s: &str) -> Option<MeAddr> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = if let Some(inner) = host.strip_prefix('[') {
        MeHost::Ip(IpAddr::V6(
            inner.strip_suffix(']')?.parse::<Ipv6Addr>().ok()?,
        ))
    } else if let Ok(v4) = host.parse::<std::net::Ipv4Addr>() {
        MeHost::Ip(IpAddr::V4(v4))
    } else {
        let ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            });
        if !ok || host.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
            return None;
        }
        MeHost::Name(host.to_ascii_lowercase())
    };
    Some(MeAddr { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SNAPSHOT: &str = "# force_probability 10 10
default 2;
proxy_for 1 149.154.175.50:8888;
proxy_for -1 149.154.175.50:8888;
proxy_for 2 149.154.161.144:8888;
proxy_for -2 149.154.161.184:8888;
proxy_for 203 91.105.192.110:443;
proxy_for -203 91.105.192.110:443;
proxy_for 4 91.108.4.212:8888;
proxy_for 4 91.108.4.213:8888;   # same cluster, next line
proxy_for 5 91.108.56.152:8888;
";

    #[test]
    fn telegram_snapshot() {
        let c = ProxyMultiConf::parse(SNAPSHOT).unwrap();
        assert_eq!(c.default_dc, Some(2));
        assert_eq!(c.clusters.len(), 8);
        assert_eq!(c.addrs_for(4).unwrap().len(), 2);
        assert_eq!(
            c.addrs_for(-203).unwrap()[0].to_string(),
            "91.105.192.110:443"
        );
        assert_eq!(
            c.addrs_for(99),
            c.addrs_for(2),
            "unknown DCs use the default"
        );
        assert_eq!(c.all_addrs().len(), 7, "shared addresses count once");
    }

    #[test]
    fn v6_names_and_options() {
        let c = ProxyMultiConf::parse(
            "min_connections 1; max_connections 1;\ntimeout 500;\nproxy_for 2 [2001:067c:04e8:f002:0000:0000:0000:000d]:80;\n\
             proxy_for 3\n  me.example.org:8888 ;proxy 10.0.0.1:1;",
        )
        .unwrap();
        assert_eq!(
            (c.min_connections, c.max_connections, c.timeout_ms),
            (Some(1), Some(1), Some(500))
        );
        assert_eq!(
            c.clusters[0].addrs[0].to_string(),
            "[2001:67c:4e8:f002::d]:80"
        );
        assert_eq!(
            c.clusters[1].addrs[0].host,
            MeHost::Name("me.example.org".into())
        );
        assert_eq!(c.clusters[2].dc, 0);
        assert_eq!(c.addrs_for(7), None);
    }

    #[test]
    fn refusals_name_the_line() {
        let cases = [
            (
                "proxy_for 1 1.2.3.4:1;\nproxy_for 2 1.2.3.4:1;\nproxy_for 1 1.2.3.5:1;",
                ConfError::Intermixed { line: 3, dc: 1 },
            ),
            (
                "proxy_for 1 1.2.3.4:1",
                ConfError::Syntax {
                    line: 1,
                    what: "missing `;`",
                },
            ),
            (
                "\nproxy_for 99999 1.2.3.4:1;",
                ConfError::Syntax {
                    line: 2,
                    what: "bad DC index",
                },
            ),
            (
                "proxy_for 1 1.2.3.4:0;",
                ConfError::Syntax {
                    line: 1,
                    what: "bad host:port",
                },
            ),
            (
                "proxy_for 1 [::1:1;",
                ConfError::Syntax {
                    line: 1,
                    what: "bad host:port",
                },
            ),
            (
                "proxy_for 1 999.1.1.1:5;",
                ConfError::Syntax {
                    line: 1,
                    what: "bad host:port",
                },
            ),
            (
                "frobnicate 1;",
                ConfError::Syntax {
                    line: 1,
                    what: "unknown or malformed statement",
                },
            ),
            (
                "timeout 5; proxy 1.1.1.1:1;",
                ConfError::Syntax {
                    line: 1,
                    what: "timeout must be 10..30000",
                },
            ),
            (
                ";",
                ConfError::Syntax {
                    line: 1,
                    what: "empty statement",
                },
            ),
            ("default 2; # nothing else", ConfError::Empty),
        ];
        for (text, want) in cases {
            assert_eq!(ProxyMultiConf::parse(text), Err(want), "{text}");
        }
        let big = "proxy_for 1 1.2.3.4:1;\n".repeat(MAX_ADDRESSES + 1);
        assert_eq!(
            ProxyMultiConf::parse(&big),
            Err(ConfError::TooManyAddresses)
        );
        assert!(matches!(
            ProxyMultiConf::parse(&" ".repeat(MAX_CONF_BYTES + 1)),
            Err(ConfError::TooLarge(_))
        ));
    }

    proptest! {
        #[test]
        fn parser_never_panics(s in "[ -~\\n]{0,200}") {
            let _ = ProxyMultiConf::parse(&s);
        }

        #[test]
        fn generated_files_parse(entries in proptest::collection::vec((-5i16..5, any::<[u8; 4]>(), 1u16..), 1..20)) {
            let mut text = String::from("default 2;\n");
            let mut sorted = entries.clone();
            sorted.sort_by_key(|e| e.0);
            for (dc, ip, port) in &sorted {
                text.push_str(&format!("proxy_for {dc} {}:{port};\n", std::net::Ipv4Addr::from(*ip)));
            }
            let c = ProxyMultiConf::parse(&text).unwrap();
            prop_assert_eq!(c.clusters.iter().map(|c| c.addrs.len()).sum::<usize>(), entries.len());
        }
    }
}
