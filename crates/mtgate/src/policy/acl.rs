//! IP access control: CIDR rules (IPv4 and IPv6) with a [`Level`] each and an
//! optional [`TimeWindow`], from the configuration and from FireHOL-style list
//! files ([`parse_list`]).
//!
//! [`Acl::lookup`] walks a prefix trie (the `prefix-trie` crate, one per
//! family): of the rules that contain the address, the most specific prefix
//! whose time window is open at that instant wins. Several rules on the same
//! prefix are ranked: a rule with a window before one without (the window is
//! the more specific statement), then in configuration order (inline rules,
//! then files in order). IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as a
//! dual-stack listener reports IPv4 peers) are looked up as IPv4, and mapped
//! prefixes in rules (`::ffff:10.0.0.0/104`) are stored as IPv4.
//!
//! Windows are read in the configured time zone. A window whose hours wrap
//! midnight (`22:00-06:00`) belongs to the day it starts on: with
//! `days = ["fri"]` it is open Friday 22:00 to Saturday 06:00.

use crate::config::policy::AclConfig;
use crate::policy::error::PolicyError;
use chrono::{Datelike, Timelike};
use chrono_tz::Tz;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What an address may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// The `[policy.rate]` caps.
    Full,
    /// The tighter `[policy.limited]` caps (connections and bandwidth).
    Limited,
    /// Refused.
    Blocked,
}

impl Level {
    /// `full`, `limited` or `blocked` (as written in the config).
    pub fn name(self) -> &'static str {
        match self {
            Level::Full => "full",
            Level::Limited => "limited",
            Level::Blocked => "blocked",
        }
    }

    /// `full`, `limited` or `blocked`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "full" | "allow" => Some(Level::Full),
            "limited" => Some(Level::Limited),
            "blocked" | "block" | "deny" => Some(Level::Blocked),
            _ => None,
        }
    }
}

/// When a rule is in force: some days of the week and a span of hours (local time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimeWindow {
    /// Bit `d` set: open on weekday `d` (0 = Monday).
    days: u8,
    /// Minutes after local midnight, `start` inclusive, `end` exclusive.
    start: u16,
    end: u16,
}

const ALL_DAYS: u8 = 0x7f;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl TimeWindow {
    /// From `days = ["mon", ...]` (default: every day) and `hours = "HH:MM-HH:MM"`
    /// (default: all day). The message names what is wrong.
    pub fn parse(days: Option<&[String]>, hours: Option<&str>) -> Result<Self, String> {
        let days = match days {
            None => ALL_DAYS,
            Some([]) => return Err("days: at least one day is required".into()),
            Some(list) => {
                let mut bits = 0u8;
                for d in list {
                    let l = d.trim().to_ascii_lowercase();
                    let bit = match l.as_str() {
                        "weekdays" => 0x1f,
                        "weekend" => 0x60,
                        _ => {
                            let i = (0..7)
                                .find(|&i| l == DAY_NAMES[i] || l == full_day_name(i))
                                .ok_or_else(|| {
                                    format!("days: `{d}` is not a day (mon, tue, ... sun)")
                                })?;
                            1u8 << i
                        }
                    };
                    bits |= bit;
                }
                bits
            }
        };
        let (start, end) = match hours {
            None => (0, 24 * 60),
            Some(h) => {
                let err = || format!("hours: `{h}` is not HH:MM-HH:MM");
                let (a, b) = h.trim().split_once('-').ok_or_else(err)?;
                let start = hhmm(a.trim()).filter(|&m| m < 24 * 60).ok_or_else(err)?;
                let end = hhmm(b.trim()).ok_or_else(err)?;
                if start == end || (start == 0 && end == 0) {
                    return Err(format!("hours: `{h}` is an empty span"));
                }
                (start, end)
            }
        };
        Ok(Self { days, start, end })
    }

    /// Whether the window is open on weekday `day` (0 = Monday) at `minute` after midnight.
    pub fn is_open(&self, day: u8, minute: u16) -> bool {
        let on = |d: u8| self.days & (1 << (d % 7)) != 0;
        if self.start < self.end {
            on(day) && (self.start..self.end).contains(&minute)
        } else {
            // Wraps midnight: the evening of `day`, or the morning after `day - 1`.
            (on(day) && minute >= self.start) || (on((day + 6) % 7) && minute < self.end)
        }
    }

    /// Whether the window is open at Unix milliseconds `wall_ms` in `tz`.
    pub fn is_open_at(&self, tz: Tz, wall_ms: i64) -> bool {
        local_time(tz, wall_ms).is_some_and(|(d, m)| self.is_open(d, m))
    }
}

fn full_day_name(i: usize) -> &'static str {
    [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ][i]
}

/// `HH:MM` (00:00..24:00) as minutes.
fn hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return None;
    }
    Some(h * 60 + m)
}

/// Weekday (0 = Monday) and minute of the day at `wall_ms` in `tz`.
pub fn local_time(tz: Tz, wall_ms: i64) -> Option<(u8, u16)> {
    let t = chrono::DateTime::from_timestamp_millis(wall_ms)?.with_timezone(&tz);
    Some((
        t.weekday().num_days_from_monday() as u8,
        (t.hour() * 60 + t.minute()) as u16,
    ))
}

/// `::ffff:a.b.c.d` as `a.b.c.d`; anything else unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// An address (`/32` or `/128`) or a CIDR; host bits are cleared and
/// IPv4-mapped IPv6 prefixes of at least /96 become IPv4.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let net = if s.contains('/') {
        s.parse::<IpNet>().ok()?.trunc()
    } else {
        IpNet::from(s.parse::<IpAddr>().ok()?)
    };
    Some(canonical_net(net))
}

fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net {
        if let (Some(v4), true) = (n.addr().to_ipv4_mapped(), n.prefix_len() >= 96) {
            if let Ok(n4) = Ipv4Net::new(v4, n.prefix_len() - 96) {
                return IpNet::V4(n4);
            }
        }
    }
    net
}

/// The most entries one list file may hold; further lines count as skipped.
pub const MAX_LIST_ENTRIES: usize = 4_000_000;
/// The largest list file read.
pub const MAX_LIST_BYTES: u64 = 128 << 20;

/// Parses a FireHOL-style list: one address or CIDR a line; `#` (and `;`)
/// start a comment, blank lines are ignored, a bare address means /32 or /128.
/// Returns the networks and how many non-blank lines were not understood
/// (or were over [`MAX_LIST_ENTRIES`]).
pub fn parse_list(text: &str) -> (Vec<IpNet>, usize) {
    let mut nets = Vec::new();
    let mut skipped = 0usize;
    for line in text.lines() {
        let body = line.split(['#', ';']).next().unwrap_or("").trim();
        if body.is_empty() {
            continue;
        }
        match parse_net(body) {
            Some(n) if nets.len() < MAX_LIST_ENTRIES => nets.push(n),
            _ => skipped += 1,
        }
    }
    (nets, skipped)
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    level: Level,
    window: Option<TimeWindow>,
    /// Out of force after this (Unix ms).
    until_ms: Option<i64>,
}

/// A file's identity at build time, to notice changes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    len: u64,
    mtime: Option<SystemTime>,
}

impl FileStamp {
    fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(Self {
            path: path.to_owned(),
            len: m.len(),
            mtime: m.modified().ok(),
        })
    }
}

/// The compiled access list.
#[derive(Debug)]
pub struct Acl {
    v4: PrefixMap<Ipv4Net, Vec<Entry>>,
    v6: PrefixMap<Ipv6Net, Vec<Entry>>,
    default: Level,
    tz: Tz,
    files: Vec<FileStamp>,
    skipped: Vec<(PathBuf, usize)>,
    entries: usize,
}

impl Acl {
    /// Compiles the rules and reads the list files (a missing or unreadable
    /// file is an error naming it; bad lines are skipped and counted).
    pub fn build(cfg: &AclConfig) -> Result<Acl, PolicyError> {
        let mut acl = Acl {
            v4: PrefixMap::new(),
            v6: PrefixMap::new(),
            default: cfg.default,
            tz: cfg.timezone,
            files: Vec::with_capacity(cfg.files.len()),
            skipped: Vec::new(),
            entries: 0,
        };
        for r in &cfg.rules {
            acl.insert(r.net, r.level, r.window, r.until_ms);
        }
        for f in &cfg.files {
            let read_err = |source| PolicyError::Read {
                path: f.path.clone(),
                source,
            };
            let stamp = FileStamp::of(&f.path).map_err(read_err)?;
            if stamp.len > MAX_LIST_BYTES {
                return Err(PolicyError::TooLarge {
                    path: f.path.clone(),
                    len: stamp.len,
                    max: MAX_LIST_BYTES,
                });
            }
            let bytes = std::fs::read(&f.path).map_err(read_err)?;
            let text = String::from_utf8_lossy(&bytes);
            let (nets, skipped) = parse_list(&text);
            for n in nets {
                acl.insert(n, f.level, f.window, None);
            }
            acl.skipped.push((f.path.clone(), skipped));
            acl.files.push(stamp);
        }
        Ok(acl)
    }

    fn insert(
        &mut self,
        net: IpNet,
        level: Level,
        window: Option<TimeWindow>,
        until_ms: Option<i64>,
    ) {
        let list = match canonical_net(net) {
            IpNet::V4(n) => self.v4.entry(n).or_default(),
            IpNet::V6(n) => self.v6.entry(n).or_default(),
        };
        if list
            .iter()
            .any(|e| e.level == level && e.window == window && e.until_ms == until_ms)
        {
            return;
        }
        let e = Entry {
            level,
            window,
            until_ms,
        };
        // Conditional entries (a window or an end) rank before unconditional
        // ones, each in config order.
        let conditional = |e: &Entry| e.window.is_some() || e.until_ms.is_some();
        if conditional(&e) {
            let at = list.iter().take_while(|e| conditional(e)).count();
            list.insert(at, e);
        } else {
            list.push(e);
        }
        self.entries += 1;
    }

    /// The level of the most specific rule containing `ip` whose window is
    /// open at `wall_ms` (Unix ms); `None` when no rule applies.
    pub fn lookup(&self, ip: IpAddr, wall_ms: i64) -> Option<Level> {
        let mut local: Option<Option<(u8, u16)>> = None;
        let mut pick = |entries: &Vec<Entry>| {
            entries.iter().find_map(|e| match e.window {
                _ if e.until_ms.is_some_and(|u| wall_ms > u) => None,
                None => Some(e.level),
                Some(w) => {
                    let lt = *local.get_or_insert_with(|| local_time(self.tz, wall_ms));
                    lt.filter(|&(d, m)| w.is_open(d, m)).map(|_| e.level)
                }
            })
        };
        let mut found = None;
        match canonical(ip) {
            IpAddr::V4(a) => {
                for (_, entries) in self.v4.cover(&Ipv4Net::from(a)) {
                    if let Some(l) = pick(entries) {
                        found = Some(l);
                    }
                }
            }
            IpAddr::V6(a) => {
                for (_, entries) in self.v6.cover(&Ipv6Net::from(a)) {
                    if let Some(l) = pick(entries) {
                        found = Some(l);
                    }
                }
            }
        }
        found
    }

    /// [`lookup`](Self::lookup), or the configured default.
    pub fn level(&self, ip: IpAddr, wall_ms: i64) -> Level {
        self.lookup(ip, wall_ms).unwrap_or(self.default)
    }

    /// The level of an address no rule matches.
    pub fn default_level(&self) -> Level {
        self.default
    }

    /// Whether a list file changed (length or modification time), or cannot
    /// be read, since [`build`](Self::build).
    pub fn files_changed(&self) -> bool {
        self.files
            .iter()
            .any(|s| FileStamp::of(&s.path).map_or(true, |now| now != *s))
    }

    /// A fresh [`Acl`] from `cfg` if a list file changed (see
    /// [`files_changed`](Self::files_changed)), else `None`. On error the
    /// caller keeps using `self`.
    pub fn rebuild_if_changed(&self, cfg: &AclConfig) -> Result<Option<Acl>, PolicyError> {
        if !self.files_changed() {
            return Ok(None);
        }
        Acl::build(cfg).map(Some)
    }

    /// Lines of each list file that were not understood (or over the cap).
    pub fn skipped_lines(&self) -> &[(PathBuf, usize)] {
        &self.skipped
    }

    /// All skipped lines together.
    pub fn skipped_total(&self) -> usize {
        self.skipped.iter().map(|(_, n)| n).sum()
    }

    /// Distinct (prefix, level, window) entries compiled.
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

#[cfg(test)]
mod tests;
