//! The Telegram DC address table for direct mode (PROTOCOL §5.2) and the rule
//! that maps a client's DC index to addresses.
//!
//! Rule: a DC index `n` or `-n` (media) uses the entry of DC `n`; `0` and any
//! index without an entry (test DCs `10000+n` included, unless configured)
//! follow [`UnknownDcRule`]: fall back to a configured DC (default 2) or close.

use crate::net::target::Target;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// What to do with a DC index that has no entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownDcRule {
    Fallback(u16),
    Close,
}

/// DC number → its group of targets (addresses of both families, SOCKS5
/// ways, its WebSocket endpoint; the balancer orders them per connection).
#[derive(Clone, Debug)]
pub struct DcTable {
    entries: BTreeMap<u16, Vec<Target>>,
    pub unknown: UnknownDcRule,
}

const PROD: [(u16, [u8; 4], [u16; 8]); 6] = [
    (
        1,
        [149, 154, 175, 50],
        [0x2001, 0xb28, 0xf23d, 0xf001, 0, 0, 0, 0xa],
    ),
    (
        2,
        [149, 154, 167, 51],
        [0x2001, 0x67c, 0x4e8, 0xf002, 0, 0, 0, 0xa],
    ),
    (
        3,
        [149, 154, 175, 100],
        [0x2001, 0xb28, 0xf23d, 0xf003, 0, 0, 0, 0xa],
    ),
    (
        4,
        [149, 154, 167, 91],
        [0x2001, 0x67c, 0x4e8, 0xf004, 0, 0, 0, 0xa],
    ),
    (
        5,
        [149, 154, 171, 5],
        [0x2001, 0xb28, 0xf23f, 0xf005, 0, 0, 0, 0xa],
    ),
    (
        203,
        [91, 105, 192, 100],
        [0x2a0a, 0xf280, 0x203, 0xa, 0x5000, 0, 0, 0x100],
    ),
];

impl DcTable {
    /// Telegram's production DCs 1–5 and CDN DC 203, IPv4 and IPv6, port 443.
    pub fn telegram_defaults(unknown: UnknownDcRule) -> Self {
        let mut entries = BTreeMap::new();
        for (id, v4, v6) in PROD {
            let [a, b, c, d, e, f, g, h] = v6;
            entries.insert(
                id,
                vec![
                    Target::Addr(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(v4)), 443)),
                    Target::Addr(SocketAddr::new(
                        IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
                        443,
                    )),
                ],
            );
        }
        Self { entries, unknown }
    }

    /// Replaces the targets of DC `id`.
    pub fn set(&mut self, id: u16, targets: Vec<Target>) {
        self.entries.insert(id, targets);
    }

    /// Every DC number and its targets, in DC order.
    pub fn entries(&self) -> impl Iterator<Item = (u16, &[Target])> {
        self.entries.iter().map(|(id, a)| (*id, a.as_slice()))
    }

    pub fn has(&self, id: u16) -> bool {
        self.entries.contains_key(&id)
    }

    /// The DC number and targets for a client's signed DC index, or `None` to close.
    pub fn resolve(&self, dc: i16) -> Option<(u16, &[Target])> {
        let n = dc.unsigned_abs();
        if let Some(a) = self.entries.get(&n).filter(|_| n != 0) {
            return Some((n, a));
        }
        match self.unknown {
            UnknownDcRule::Fallback(f) => self.entries.get(&f).map(|a| (f, a.as_slice())),
            UnknownDcRule::Close => None,
        }
    }
}

/// Checks a `host:port` string (host name, IPv4, or `[IPv6]`).
pub fn check_host_port(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}`: want host:port"))?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("`{s}`: bad port"))?;
    mtgate_proto::secret::validate_domain(host).map_err(|_| format!("`{s}`: bad host"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_and_unknown_dcs() {
        let mut t = DcTable::telegram_defaults(UnknownDcRule::Fallback(2));
        let lo = Target::Addr("127.0.0.1:9".parse().unwrap());
        t.set(4, vec![lo.clone()]);
        assert_eq!(t.resolve(4), Some((4, &[lo.clone()][..])));
        assert_eq!(t.resolve(-4), Some((4, &[lo][..])));
        assert_eq!(t.resolve(203).unwrap().0, 203);
        assert_eq!(t.resolve(0).unwrap().0, 2);
        assert_eq!(t.resolve(10002).unwrap().0, 2);
        assert_eq!(t.resolve(i16::MIN).unwrap().0, 2);
        let t = DcTable::telegram_defaults(UnknownDcRule::Close);
        assert_eq!(t.resolve(77), None);
        assert_eq!(t.resolve(2).unwrap().1.len(), 2);
    }

    #[test]
    fn host_port() {
        assert!(check_host_port("example.com:443").is_ok());
        assert!(check_host_port("[::1]:8443").is_ok());
        assert!(check_host_port("example.com").is_err());
        assert!(check_host_port("exa mple.com:1").is_err());
        assert!(check_host_port("a.com:0").is_err());
    }
}
