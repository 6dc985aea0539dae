//! A DC's targets: the ways to one DC that its group balances among.
//!
//! A `[dcs]` entry names a DC's group: plain addresses (reached through the
//! default connector: directly, or through `upstream.socks5`), addresses
//! through a named SOCKS5 chain (`[upstream.chains]`), and the DC's
//! WebSocket endpoint (`[upstream.websocket]`), in any mix. The balancer
//! orders them for each connection and keeps a circuit breaker for each;
//! `upstream` opens the kind each one names. Later kinds (a proxy link) are
//! one more variant here and one more arm in `upstream`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// One way to a DC.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// A DC address through the default connector.
    Addr(SocketAddr),
    /// A DC address through the named chain of `[upstream.chains]`
    /// (`direct`: no proxy, whatever `upstream.socks5` says).
    Via { addr: SocketAddr, chain: Arc<str> },
    /// DC `dc`'s WebSocket endpoint (the client's media flag picks the
    /// media host name).
    WebSocket { dc: u16 },
    /// DC `dc` through the proxy-to-proxy link's exit (`[link.bridge]`):
    /// the exit dials the DC from its own table.
    Link { dc: u16 },
}

impl Target {
    /// The DC address, for the kinds that dial one.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Addr(a) | Self::Via { addr: a, .. } => Some(*a),
            Self::WebSocket { .. } | Self::Link { .. } => None,
        }
    }

    /// A short word for the kind (logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Addr(_) => "tcp",
            Self::Via { .. } => "socks5",
            Self::WebSocket { .. } => "websocket",
            Self::Link { .. } => "link",
        }
    }
}

impl From<SocketAddr> for Target {
    fn from(a: SocketAddr) -> Self {
        Self::Addr(a)
    }
}

/// The metric label and log form: `149.154.167.51:443`,
/// `149.154.167.51:443 via eu`, `websocket dc 2`.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(a) => write!(f, "{a}"),
            Self::Via { addr, chain } => write!(f, "{addr} via {chain}"),
            Self::WebSocket { dc } => write!(f, "websocket dc {dc}"),
            Self::Link { dc } => write!(f, "link dc {dc}"),
        }
    }
}

/// The chain name that means "no proxy".
pub const DIRECT: &str = "direct";

/// One `[dcs]` entry, checked: the target and its weight, if given.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub target: Target,
    pub weight: Option<u32>,
}

/// Reads one `[dcs]` entry of DC `dc`: `"ip:port"`, `"websocket"`, or a
/// table `{ addr = "ip:port", via = "NAME", weight = N }` /
/// `{ websocket = true, weight = N }`. `chain` says whether a chain name is
/// configured. An error says what is wrong (the caller adds the key).
pub fn parse_entry(
    v: &toml::Value,
    dc: u16,
    chain: &dyn Fn(&str) -> Option<Arc<str>>,
) -> Result<Entry, String> {
    let addr = |s: &str| {
        s.parse::<SocketAddr>()
            .map_err(|_| format!("`{s}` is not an ip:port address"))
    };
    match v {
        toml::Value::String(s) if s == "websocket" => Ok(Entry {
            target: Target::WebSocket { dc },
            weight: None,
        }),
        toml::Value::String(s) => Ok(Entry {
            target: Target::Addr(addr(s)?),
            weight: None,
        }),
        toml::Value::Table(t) => {
            for k in t.keys() {
                if !["addr", "via", "websocket", "weight"].contains(&k.as_str()) {
                    return Err(format!(
                        "unknown key `{k}` (use addr, via, websocket, weight)"
                    ));
                }
            }
            let weight = match t.get("weight") {
                None => None,
                Some(toml::Value::Integer(w)) if (1..=1000).contains(w) => u32::try_from(*w).ok(),
                Some(_) => return Err("a weight is 1..1000".into()),
            };
            let text = |k: &str| match t.get(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(format!("`{k}` must be a string")),
            };
            let target = match (t.get("websocket"), text("addr")?, text("via")?) {
                (Some(toml::Value::Boolean(true)), None, None) => Target::WebSocket { dc },
                (Some(_), _, _) => {
                    return Err("use `websocket = true` alone, or `addr` (with `via`)".into())
                }
                (None, Some(a), None) => Target::Addr(addr(a)?),
                (None, Some(a), Some(name)) => Target::Via {
                    addr: addr(a)?,
                    chain: chain(name).ok_or_else(|| {
                        format!(
                            "`via = \"{name}\"`: no such chain in [upstream.chains] (or `direct`)"
                        )
                    })?,
                },
                (None, None, _) => return Err("an entry needs `addr` or `websocket = true`".into()),
            };
            Ok(Entry { target, weight })
        }
        _ => Err("an entry is \"ip:port\", \"websocket\" or a table".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Entry, String> {
        let v: toml::Table = toml::from_str(&format!("e = {s}")).expect("toml");
        let chain = |n: &str| (n == "eu" || n == DIRECT).then(|| Arc::from(n));
        parse_entry(&v["e"], 2, &chain)
    }

    #[test]
    fn entries_of_every_kind() {
        let a: SocketAddr = "1.2.3.4:443".parse().unwrap();
        assert_eq!(parse("\"1.2.3.4:443\"").unwrap().target, Target::Addr(a));
        assert_eq!(
            parse("\"websocket\"").unwrap().target,
            Target::WebSocket { dc: 2 }
        );
        let e = parse("{ addr = \"1.2.3.4:443\", via = \"eu\", weight = 3 }").unwrap();
        assert_eq!(
            e.target,
            Target::Via {
                addr: a,
                chain: "eu".into()
            }
        );
        assert_eq!(e.weight, Some(3));
        assert_eq!(e.target.to_string(), "1.2.3.4:443 via eu");
        let w = parse("{ websocket = true, weight = 2 }").unwrap();
        assert_eq!(w.target.to_string(), "websocket dc 2");
        assert_eq!(w.weight, Some(2));
        assert_eq!(
            parse("{ addr = \"[::1]:443\" }").unwrap().target.kind(),
            "tcp"
        );
    }

    #[test]
    fn bad_entries_say_why() {
        for (s, want) in [
            ("\"1.2.3.4\"", "not an ip:port"),
            ("{ addr = \"1.2.3.4:1\", via = \"us\" }", "no such chain"),
            ("{ addr = \"1.2.3.4:1\", weight = 0 }", "1..1000"),
            ("{ addr = \"1.2.3.4:1\", weight = 5000 }", "1..1000"),
            ("{ websocket = true, addr = \"1.2.3.4:1\" }", "alone"),
            ("{ websocket = false }", "alone"),
            ("{ via = \"eu\" }", "needs `addr`"),
            ("{ addr = 5 }", "must be a string"),
            ("{ host = \"x\" }", "unknown key"),
            ("7", "an entry is"),
        ] {
            let e = parse(s).expect_err(s);
            assert!(e.contains(want), "{s}: {e}");
        }
    }
}
