//! The bounded per-source table: connection rate (GCRA), concurrent
//! connections, handshake failures per window, reputation and blocks.
//!
//! A source is an IPv4 address or an IPv6 prefix of `policy.rate.ipv6_prefix`
//! bits (IPv4-mapped IPv6 counts as IPv4). The table is split into
//! [`SHARDS`] mutex-guarded shards picked by a keyed (SipHash) hash, each an
//! `IndexMap` allocated once at its share of `policy.tracking.max_tracked` and
//! never grown: a flood of spoofed sources cannot raise memory.
//!
//! * **Rate**: GCRA per source. `burst` new connections may arrive at once,
//!   then one per `1/rate` seconds; a refusal does not consume a slot.
//! * **Reputation**: offences ([`Offence`]) add their configured weight; the
//!   score halves every `half_life` (computed lazily on touch). Reaching the
//!   threshold blocks the source for `block_time × multiplier^(n-1)` (capped
//!   at `block_time_max`) for its n-th block, and resets the score. The repeat
//!   count is forgotten once a source stayed unblocked for `block_time_max`.
//! * **Eviction**: inserting into a full shard samples [`SAMPLES`] random
//!   entries (Redis-style approximated LRU) and evicts the least useful:
//!   sources with active connections or an active block are protected (if the
//!   sample holds only those, a bounded probe of [`PROBE`] neighbours looks for
//!   another), then sources that were blocked before are kept over those never
//!   blocked, then the lowest score, then the oldest touch goes first.
//!
//! Memory: [`ENTRY_BYTES`] (64) per entry (16-byte key + 48-byte state), plus
//! the map's 8-byte stored hash and its index (8 + 1 bytes a bucket, 1.1 to
//! 2.3 buckets per entry at its steady size): about 96 bytes per tracked
//! source (measured: 50 000 sources in 4.8 MB), stated by
//! [`memory_bytes`](IpTable::memory_bytes) and allocated up front, index
//! included (see `prewarmed`): nothing on the connection path allocates.

use crate::config::policy::ReputationConfig;
pub use crate::config::policy::{ConnLimits, IpTableConfig};
use crate::policy::clock::SharedClock;
use indexmap::IndexMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

/// Shards of the table (each its own lock).
pub const SHARDS: usize = 16;
/// Random entries looked at per eviction.
pub const SAMPLES: usize = 8;
/// Neighbours probed when the random sample holds only protected entries.
pub const PROBE: usize = 64;
/// Bytes of one entry: key plus state (without the map's own overhead).
pub const ENTRY_BYTES: usize = std::mem::size_of::<Key>() + std::mem::size_of::<Entry>();

/// Why a new connection is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVerdict {
    /// Blocked by reputation until this wall-clock time (Unix ms).
    Blocked { until_wall_ms: i64 },
    /// Over the new-connection rate.
    RateLimited,
    /// Over the concurrent-connection cap.
    TooManyConnections,
    /// Over the handshake failures allowed in the window.
    TooManyFailures,
}

/// Something a source did wrong; each has a weight in `[policy.reputation]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offence {
    /// Also counts toward `max_handshake_failures`.
    FailedHandshake,
    Replay,
    RateLimited,
    Flood,
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpTableStats {
    /// Sources in the table.
    pub tracked: usize,
    /// Sources blocked now.
    pub active_blocks: usize,
    /// Entries evicted to make room, ever.
    pub evictions: u64,
    /// Blocks imposed, ever.
    pub blocks_total: u64,
    /// Valid handshakes from sources refused or marked suspect since their
    /// previous valid handshake: the per-source limits' false positives.
    pub collateral: u64,
    /// Connections admitted as suspect (scope `unauthenticated`), ever.
    pub suspects: u64,
}

/// A source: IPv4 as `::ffff:a.b.c.d`, IPv6 masked to the prefix (never in
/// `::ffff:0:0/96`, as those are IPv4). Two `u64`s keep the alignment at 8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key(u64, u64);

impl Key {
    /// The source key of `ip` with IPv6 sources masked to `ipv6_prefix` bits.
    pub fn of(ip: IpAddr, ipv6_prefix: u8) -> Key {
        match ip.to_canonical() {
            IpAddr::V4(a) => Key(0, 0xffff_0000_0000 | u64::from(u32::from(a))),
            IpAddr::V6(a) => {
                let bits = u32::from(ipv6_prefix.min(128));
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                let v = u128::from(a) & mask;
                Key((v >> 64) as u64, v as u64)
            }
        }
    }

    /// The address this key stands for (IPv6: the prefix's first address).
    pub fn addr(self) -> IpAddr {
        if self.0 == 0 && self.1 >> 32 == 0xffff {
            IpAddr::V4(Ipv4Addr::from(self.1 as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(
                (u128::from(self.0) << 64) | u128::from(self.1),
            ))
        }
    }
}

/// One source's state: 48 bytes. Times are monotonic milliseconds (GCRA: µs);
/// 0 means "never".
#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    /// GCRA theoretical arrival time.
    tat_us: u64,
    /// When `score` was last brought up to date (also the recency for eviction).
    touched_ms: u64,
    /// End of the current or last block.
    blocked_until_ms: u64,
    /// Start of the handshake-failure window.
    window_start_ms: u64,
    score: f32,
    active: u32,
    failures: u16,
    blocks: u16,
    /// Refused, or admitted as suspect, since its last valid handshake (a
    /// later valid handshake counts as a collateral refusal).
    flagged: bool,
}

impl Entry {
    fn decayed(&self, now: u64, half_life_ms: u64) -> f64 {
        if self.score <= 0.0 {
            return 0.0;
        }
        let dt = now.saturating_sub(self.touched_ms) as f64;
        f64::from(self.score) * (-dt / half_life_ms.max(1) as f64).exp2()
    }

    fn touch(&mut self, now: u64, half_life_ms: u64) {
        if now > self.touched_ms {
            self.score = self.decayed(now, half_life_ms) as f32;
            self.touched_ms = now;
        }
    }

    fn protected(&self, now: u64) -> bool {
        self.active > 0 || self.blocked_until_ms > now
    }

    /// Eviction rank: lower goes first.
    fn rank(&self, now: u64, half_life_ms: u64) -> (bool, bool, u32, u64) {
        (
            self.protected(now),
            self.blocks > 0,
            (self.decayed(now, half_life_ms) as f32).to_bits(),
            self.touched_ms,
        )
    }

    /// Adds an offence's weight; `true` when that starts a block.
    fn offend(&mut self, weight: f64, now: u64, rep: &ReputationConfig) -> bool {
        if self.blocked_until_ms > now {
            return false;
        }
        let half_life = ms(rep.half_life);
        self.touch(now, half_life);
        let score = f64::from(self.score) + weight;
        if score < rep.threshold {
            self.score = score as f32;
            return false;
        }
        let max = ms(rep.block_time_max);
        if self.blocks > 0 && now >= self.blocked_until_ms.saturating_add(max) {
            self.blocks = 0;
        }
        self.blocks = self.blocks.saturating_add(1);
        let factor = rep
            .block_multiplier
            .powi(i32::from(self.blocks) - 1)
            .min(1e12);
        let dur = ((ms(rep.block_time) as f64 * factor) as u64).min(max);
        self.blocked_until_ms = now.saturating_add(dur.max(1));
        self.score = 0.0;
        true
    }
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

struct Shard {
    map: IndexMap<Key, Entry, RandomState>,
    cap: usize,
    rng: u64,
    cfg: IpTableConfig,
}

impl Shard {
    fn next_rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The entry of `key`, inserted (evicting one if full) if absent.
    fn slot(&mut self, key: Key, now: u64, evictions: &AtomicU64) -> &mut Entry {
        let half_life = ms(self.cfg.reputation.half_life);
        let i = match self.map.get_index_of(&key) {
            Some(i) => i,
            None => {
                if self.map.len() >= self.cap && self.evict_one(now) {
                    evictions.fetch_add(1, Relaxed);
                }
                let fresh = Entry {
                    touched_ms: now,
                    ..Entry::default()
                };
                self.map.insert_full(key, fresh).0
            }
        };
        let e = &mut self.map[i];
        e.touch(now, half_life);
        e
    }

    /// Evicts the least useful of a random sample; `false` when empty.
    fn evict_one(&mut self, now: u64) -> bool {
        let n = self.map.len();
        if n == 0 {
            return false;
        }
        let half_life = ms(self.cfg.reputation.half_life);
        let mut best: Option<(usize, (bool, bool, u32, u64))> = None;
        for _ in 0..SAMPLES {
            let i = (self.next_rand() % n as u64) as usize;
            let r = self.map[i].rank(now, half_life);
            if best.is_none_or(|(_, b)| r < b) {
                best = Some((i, r));
            }
        }
        if best.is_some_and(|(_, r)| r.0) {
            let start = (self.next_rand() % n as u64) as usize;
            for j in 0..PROBE.min(n) {
                let i = (start + j) % n;
                let r = self.map[i].rank(now, half_life);
                if !r.0 {
                    best = Some((i, r));
                    break;
                }
            }
        }
        match best {
            Some((i, _)) => self.map.swap_remove_index(i).is_some(),
            None => false,
        }
    }
}

/// The per-source table. All methods take `&self` and may be called from any thread.
pub struct IpTable {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    clock: SharedClock,
    ipv6_prefix: AtomicU8,
    evictions: AtomicU64,
    blocks_total: AtomicU64,
    collateral: AtomicU64,
    suspects: AtomicU64,
    /// Blocks started and not yet taken by [`IpTable::take_blocks`] (the
    /// audit trail's feed), at most [`BLOCK_LOG`]; past it only counted.
    block_log: Mutex<(Vec<BlockStarted>, u64)>,
}

/// A reputation block that began: the source and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockStarted {
    pub source: IpAddr,
    pub for_ms: u64,
}

/// Blocks kept for [`IpTable::take_blocks`] between two takes.
pub const BLOCK_LOG: usize = 256;

impl std::fmt::Debug for IpTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpTable")
            .field("capacity", &self.capacity())
            .finish()
    }
}

/// A map for `cap` entries whose hash index already has its steady size.
///
/// Under churn (evict one, insert one) hashbrown's tombstones make a full
/// index double once (it rehashes in place only below half load). Running
/// that churn on placeholder keys here, then clearing (which keeps both
/// allocations), moves the one growth out of `on_connect`.
fn prewarmed(cap: usize) -> IndexMap<Key, Entry, RandomState> {
    let mut map = IndexMap::with_capacity_and_hasher(cap, RandomState::new());
    for i in 0..cap as u64 {
        map.insert(Key(u64::MAX, i), Entry::default());
    }
    for i in cap as u64..cap as u64 * 4 {
        map.swap_remove_index((i % cap as u64) as usize);
        map.insert(Key(u64::MAX, i), Entry::default());
    }
    map.clear();
    map
}

fn shard_cap(cfg: &IpTableConfig) -> usize {
    (cfg.tracking.max_tracked / SHARDS).max(1)
}

impl IpTable {
    /// An empty table; every shard's memory is allocated here, once.
    pub fn new(cfg: &IpTableConfig, clock: SharedClock) -> Self {
        let hasher = RandomState::new();
        let cap = shard_cap(cfg);
        let shards = (0..SHARDS)
            .map(|i| {
                Mutex::new(Shard {
                    map: prewarmed(cap),
                    cap,
                    rng: hasher.hash_one(i) | 1,
                    cfg: *cfg,
                })
            })
            .collect();
        Self {
            shards,
            hasher,
            clock,
            ipv6_prefix: AtomicU8::new(cfg.rate.ipv6_prefix),
            evictions: AtomicU64::new(0),
            blocks_total: AtomicU64::new(0),
            collateral: AtomicU64::new(0),
            suspects: AtomicU64::new(0),
            block_log: Mutex::new((Vec::new(), 0)),
        }
    }

    fn log_block(&self, ip: IpAddr, for_ms: u64) {
        self.blocks_total.fetch_add(1, Relaxed);
        let mut l = self.block_log.lock().unwrap_or_else(|p| p.into_inner());
        if l.0.len() < BLOCK_LOG {
            l.0.push(BlockStarted {
                source: ip.to_canonical(),
                for_ms,
            });
        } else {
            l.1 += 1;
        }
    }

    /// The blocks that began since the last take, and how many more began
    /// past [`BLOCK_LOG`] (counted only).
    pub fn take_blocks(&self) -> (Vec<BlockStarted>, u64) {
        let mut l = self.block_log.lock().unwrap_or_else(|p| p.into_inner());
        (std::mem::take(&mut l.0), std::mem::take(&mut l.1))
    }

    /// Applies a new configuration, keeping the state. A smaller
    /// `max_tracked` evicts down to it; a larger one allocates the difference.
    /// When `ipv6_prefix` changes, IPv6 sources tracked under the old length
    /// age out, and their active-connection counts are dropped (their
    /// disconnects would land on the new keys and never bring them to 0).
    pub fn reconfigure(&self, cfg: &IpTableConfig) {
        let cap = shard_cap(cfg);
        let now = self.clock.mono_ms();
        let old_prefix = self.ipv6_prefix.swap(cfg.rate.ipv6_prefix, Relaxed);
        for s in self.shards.iter() {
            let mut s = lock(s);
            s.cfg = *cfg;
            if old_prefix != cfg.rate.ipv6_prefix {
                for (k, e) in s.map.iter_mut() {
                    if k.addr().is_ipv6() {
                        e.active = 0;
                    }
                }
            }
            while s.map.len() > cap {
                if s.evict_one(now) {
                    self.evictions.fetch_add(1, Relaxed);
                }
            }
            if cap < s.cap {
                s.map.shrink_to(cap);
            } else if cap > s.map.capacity() {
                let extra = cap - s.map.len();
                s.map.reserve_exact(extra);
            }
            s.cap = cap;
        }
    }

    /// Sources the table holds at most.
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|s| lock(s).cap).sum()
    }

    /// The heap the table holds: the entries and the hash index at its
    /// steady size (both allocated by [`new`](Self::new)), and the shards.
    pub fn memory_bytes(&self) -> usize {
        let shards = SHARDS * std::mem::size_of::<Mutex<Shard>>();
        shards
            + self
                .shards
                .iter()
                .map(|s| {
                    let c = lock(s).map.capacity();
                    let buckets = (c * 8).div_ceil(7).next_power_of_two();
                    c * (8 + ENTRY_BYTES) + 2 * buckets * (8 + 1) + 16
                })
                .sum::<usize>()
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, Shard> {
        let h = self.hasher.hash_one(key);
        lock(&self.shards[(h >> 60) as usize % SHARDS])
    }

    fn key_of(&self, ip: IpAddr) -> Key {
        Key::of(ip, self.ipv6_prefix.load(Relaxed))
    }

    fn wall_of(&self, mono_ms: u64, now_mono: u64) -> i64 {
        let wall = self.clock.wall_ms();
        wall.saturating_add(mono_ms as i64 - now_mono as i64)
    }

    /// A new connection from `ip` under `limits`. On `Ok` it counts as
    /// active until [`on_disconnect`](Self::on_disconnect). Rate and
    /// concurrency refusals also count as a `rate_limited` offence.
    pub fn on_connect(&self, ip: IpAddr, limits: &ConnLimits) -> Result<(), IpVerdict> {
        let now = self.clock.mono_ms();
        let key = self.key_of(ip);
        let mut s = self.shard(&key);
        let cfg = s.cfg;
        let e = s.slot(key, now, &self.evictions);
        if e.blocked_until_ms > now {
            e.flagged = true;
            let until = e.blocked_until_ms;
            drop(s);
            return Err(IpVerdict::Blocked {
                until_wall_ms: self.wall_of(until, now),
            });
        }
        let window = ms(cfg.rate.failure_window);
        if now.saturating_sub(e.window_start_ms) < window
            && u32::from(e.failures) >= cfg.rate.max_handshake_failures
        {
            e.flagged = true;
            return Err(IpVerdict::TooManyFailures);
        }
        let verdict = if e.active >= limits.max_concurrent {
            IpVerdict::TooManyConnections
        } else {
            let t = (1e6 / limits.rate_per_sec.max(1e-6)).clamp(1.0, 1e15) as u64;
            let now_us = now.saturating_mul(1000);
            let next = e.tat_us.max(now_us).saturating_add(t);
            if next - now_us <= t.saturating_mul(u64::from(limits.burst.max(1))) {
                e.tat_us = next;
                e.active = e.active.saturating_add(1);
                return Ok(());
            }
            IpVerdict::RateLimited
        };
        e.flagged = true;
        if e.offend(cfg.reputation.rate_limited, now, &cfg.reputation) {
            let for_ms = e.blocked_until_ms.saturating_sub(now);
            drop(s);
            self.log_block(ip, for_ms);
        }
        Err(verdict)
    }

    /// Counts a connection from `ip` as active without any check: for a
    /// connection let in although [`on_connect`](Self::on_connect) refused it
    /// (a policy in monitor mode), so that its
    /// [`on_disconnect`](Self::on_disconnect) balances.
    pub fn admit(&self, ip: IpAddr) {
        let now = self.clock.mono_ms();
        let key = self.key_of(ip);
        let mut s = self.shard(&key);
        let e = s.slot(key, now, &self.evictions);
        e.active = e.active.saturating_add(1);
    }

    /// A connection accepted by [`on_connect`](Self::on_connect) (or
    /// [`admit`](Self::admit)) ended.
    pub fn on_disconnect(&self, ip: IpAddr) {
        let key = self.key_of(ip);
        let mut s = self.shard(&key);
        if let Some(e) = s.map.get_mut(&key) {
            e.active = e.active.saturating_sub(1);
        }
    }

    /// Records an offence by `ip`.
    pub fn on_offence(&self, ip: IpAddr, offence: Offence) {
        let now = self.clock.mono_ms();
        let key = self.key_of(ip);
        let mut s = self.shard(&key);
        let cfg = s.cfg;
        let rep = &cfg.reputation;
        let e = s.slot(key, now, &self.evictions);
        let weight = match offence {
            Offence::FailedHandshake => {
                let window = ms(cfg.rate.failure_window);
                if now.saturating_sub(e.window_start_ms) >= window || e.window_start_ms == 0 {
                    e.window_start_ms = now;
                    e.failures = 0;
                }
                e.failures = e.failures.saturating_add(1);
                rep.failed_handshake
            }
            Offence::Replay => rep.replay,
            Offence::RateLimited => rep.rate_limited,
            Offence::Flood => rep.flood,
        };
        if e.offend(weight, now, rep) {
            let for_ms = e.blocked_until_ms.saturating_sub(now);
            drop(s);
            self.log_block(ip, for_ms);
        }
    }

    /// The current (decayed) score of `ip`'s source; 0 when untracked.
    pub fn score(&self, ip: IpAddr) -> f64 {
        let now = self.clock.mono_ms();
        let key = self.key_of(ip);
        let s = self.shard(&key);
        let hl = ms(s.cfg.reputation.half_life);
        s.map.get(&key).map_or(0.0, |e| e.decayed(now, hl))
    }

    /// When `ip`'s source's block ends (Unix ms), if it is blocked now.
    pub fn blocked_until(&self, ip: IpAddr) -> Option<i64> {
        let now = self.clock.mono_ms();
        let key = self.key_of(ip);
        let s = self.shard(&key);
        let until = s.map.get(&key).map(|e| e.blocked_until_ms)?;
        drop(s);
        (until > now).then(|| self.wall_of(until, now))
    }

    /// Active connections counted for `ip`'s source (`None` when untracked).
    pub fn active(&self, ip: IpAddr) -> Option<u32> {
        let key = self.key_of(ip);
        let s = self.shard(&key);
        s.map.get(&key).map(|e| e.active)
    }

    /// Counters. Counting active blocks visits every entry (for metrics scrapes).
    pub fn stats(&self) -> IpTableStats {
        let now = self.clock.mono_ms();
        let mut st = IpTableStats {
            evictions: self.evictions.load(Relaxed),
            blocks_total: self.blocks_total.load(Relaxed),
            collateral: self.collateral.load(Relaxed),
            suspects: self.suspects.load(Relaxed),
            ..IpTableStats::default()
        };
        for s in self.shards.iter() {
            let s = lock(s);
            st.tracked += s.map.len();
            st.active_blocks += s.map.values().filter(|e| e.blocked_until_ms > now).count();
        }
        st
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

mod blocks;
mod pending;
pub use pending::Pending;
mod snapshot;
pub use snapshot::{IpSnapEntry, IpSnapshot};

#[cfg(test)]
mod tests;
