//! The file-descriptor limit and the connection cap it allows.
//!
//! At start `mtgate run` raises its soft `RLIMIT_NOFILE` to the hard limit
//! (capped at the kernel's `fs.nr_open`), then caps the connections it
//! accepts at what that limit can carry: [`FDS_PER_CLIENT`] descriptors a
//! client after [`FDS_BASE`] for listeners, the admin port, ME links, epoll
//! and files. A client holds its own socket and one more: its mask
//! connection while it is handshaking or fronted, or its DC connection once
//! authenticated; the session drops the mask link before it dials the DC, so
//! never both. At the cap the accept loop pauses, so a connection over it
//! waits in the kernel's queue and never gets a ServerHello that a missing
//! descriptor would then cut off.

/// Descriptors a client holds at most (its socket, and a mask or a DC connection).
pub const FDS_PER_CLIENT: u64 = 2;
/// Listeners, admin, ME links, epoll, logs.
pub const FDS_BASE: u64 = 64;

/// The limit after [`raise`]: soft and hard (`u64::MAX`: unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoFile {
    pub soft: u64,
    pub hard: u64,
}

#[allow(clippy::unnecessary_cast)]
fn infinity() -> u64 {
    #[cfg(unix)]
    {
        libc::RLIM_INFINITY as u64
    }
    #[cfg(not(unix))]
    {
        u64::MAX
    }
}

/// The soft and hard limits now; `None` where they cannot be read.
#[allow(clippy::unnecessary_cast)]
pub fn read() -> Option<NoFile> {
    #[cfg(unix)]
    {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes into `r`, a valid, exclusively borrowed
        // rlimit on our stack; RLIMIT_NOFILE is a valid resource.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
        let norm = |v: u64| if v == infinity() { u64::MAX } else { v };
        (rc == 0).then_some(NoFile {
            soft: norm(r.rlim_cur as u64),
            hard: norm(r.rlim_max as u64),
        })
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Raises the soft limit to the hard one (at most `fs.nr_open`); the limits
/// in force afterwards (unchanged if raising failed).
#[allow(clippy::unnecessary_cast)]
pub fn raise() -> Option<NoFile> {
    let now = read()?;
    #[cfg(unix)]
    {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(1 << 20);
        let target = now.hard.min(nr_open);
        if target > now.soft {
            let r = libc::rlimit {
                rlim_cur: target as libc::rlim_t,
                rlim_max: if now.hard == u64::MAX {
                    infinity() as libc::rlim_t
                } else {
                    now.hard as libc::rlim_t
                },
            };
            // SAFETY: setrlimit only reads `r`, a valid rlimit on our stack;
            // RLIMIT_NOFILE is a valid resource. Raising the soft limit up to
            // the hard one needs no privilege; on failure nothing changes.
            let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
            if rc != 0 {
                return Some(now);
            }
        }
    }
    read()
}

/// The connections a soft limit of `soft` descriptors can carry.
pub fn cap_for(soft: u64) -> u64 {
    soft.saturating_sub(FDS_BASE) / FDS_PER_CLIENT
}

/// The effective connection cap: `server.max_connections`, lowered to what
/// the descriptor limit carries (at least 1).
pub fn effective(max_connections: usize, limit: Option<NoFile>) -> usize {
    match limit {
        Some(l) => max_connections
            .min(usize::try_from(cap_for(l.soft)).unwrap_or(usize::MAX))
            .max(1),
        None => max_connections,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_follows_the_limit() {
        assert_eq!(cap_for(20_000), 9968);
        assert_eq!(cap_for(512), 224);
        assert_eq!(cap_for(10), 0);
        let l = |soft| Some(NoFile { soft, hard: soft });
        assert_eq!(effective(65_536, l(20_000)), 9968);
        assert_eq!(effective(100, l(20_000)), 100);
        assert_eq!(effective(65_536, l(10)), 1);
        assert_eq!(effective(65_536, l(u64::MAX)), 65_536);
        assert_eq!(effective(65_536, None), 65_536);
    }

    #[test]
    fn raising_never_lowers() {
        let before = read().expect("readable on unix");
        let after = raise().expect("readable");
        assert!(after.soft >= before.soft);
        assert_eq!(after.hard, before.hard);
    }
}
