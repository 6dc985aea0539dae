//! Persistence hooks of the per-source table: [`IpSnapshot`] holds the
//! sources worth keeping across a restart (blocks, scores, repeat counts)
//! in wall-clock time, so they survive a new monotonic clock.

use super::{lock, ms, IpTable};
use std::net::IpAddr;

/// The persistent part of the table (blocks and reputation), in wall-clock time.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IpSnapshot {
    /// When the snapshot was taken (Unix ms).
    pub taken_wall_ms: i64,
    pub entries: Vec<IpSnapEntry>,
}

/// One source in an [`IpSnapshot`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IpSnapEntry {
    /// The IPv4 address, or the IPv6 prefix's first address.
    pub source: IpAddr,
    /// The score at `taken_wall_ms`.
    pub score: f32,
    /// The end of the last block (Unix ms), past or future.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_until_wall_ms: Option<i64>,
    /// Blocks counted toward the repeat multiplier.
    #[serde(default)]
    pub blocks: u16,
}

impl IpTable {
    /// Sources worth keeping across a restart: blocked now, a score of at
    /// least 1, or blocks still counted toward the repeat multiplier.
    pub fn export(&self) -> IpSnapshot {
        let now = self.clock.mono_ms();
        let wall = self.clock.wall_ms();
        let mut snap = IpSnapshot {
            taken_wall_ms: wall,
            entries: Vec::new(),
        };
        for s in self.shards.iter() {
            let s = lock(s);
            let hl = ms(s.cfg.reputation.half_life);
            let max = ms(s.cfg.reputation.block_time_max);
            for (k, e) in &s.map {
                let score = e.decayed(now, hl);
                let remembered = e.blocks > 0 && now < e.blocked_until_ms.saturating_add(max);
                if score < 1.0 && e.blocked_until_ms <= now && !remembered {
                    continue;
                }
                snap.entries.push(IpSnapEntry {
                    source: k.addr(),
                    score: score as f32,
                    blocked_until_wall_ms: (e.blocked_until_ms > 0)
                        .then(|| wall.saturating_add(e.blocked_until_ms as i64 - now as i64)),
                    blocks: e.blocks,
                });
            }
        }
        snap
    }

    /// Merges a snapshot in (the higher score, the later block, the larger
    /// repeat count win). Scores decay over the time since it was taken.
    pub fn import(&self, snap: IpSnapshot) {
        let now = self.clock.mono_ms();
        let wall = self.clock.wall_ms();
        let elapsed = wall.saturating_sub(snap.taken_wall_ms).max(0) as f64;
        let cap = self.capacity();
        for se in snap.entries.into_iter().take(cap) {
            let key = self.key_of(se.source);
            let mut s = self.shard(&key);
            let hl = ms(s.cfg.reputation.half_life).max(1) as f64;
            let score = if se.score.is_finite() && se.score > 0.0 {
                f64::from(se.score) * (-elapsed / hl).exp2()
            } else {
                0.0
            };
            let until = se.blocked_until_wall_ms.map(|u| {
                let m = now as i64 + u.saturating_sub(wall).clamp(-(now as i64), i64::MAX / 4);
                m.max(1) as u64
            });
            let e = s.slot(key, now, &self.evictions);
            e.score = e.score.max(score as f32);
            if let Some(u) = until {
                e.blocked_until_ms = e.blocked_until_ms.max(u);
            }
            e.blocks = e.blocks.max(se.blocks);
        }
    }
}
