//! The `https` carrier: HTTP long polling. Uplink `POST /api/v1/up` with
//! `X-Up-Seq: n` and a body of whole frames (`204`, `X-Up-Ack: n`; a
//! byte-identical retry of the last one is acknowledged again; `503
//! Retry-After: 1` while the previous body is still being taken in).
//! Downlink `POST /api/v1/down` with `X-Down-Cursor: c`: the next batch
//! (`200`, cursor `c+1`), the last batch again for the previous cursor, or
//! after the long poll `204` with the same cursor; a newer poll supersedes
//! a parked one, which answers `204`. The sequencing is
//! `mtgate_proto::webproxy::poll`; the streams are the session's [`Mux`].

use super::mux::{Mux, Outbox, Setup};
use mtgate_proto::webproxy::poll::{Down, Downlink, Up, Uplink};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

/// How long a downlink poll is parked before `204`.
pub const LONG_POLL: Duration = Duration::from_secs(25);
/// The largest downlink batch.
const BATCH: usize = 2 << 20;

struct DownState {
    link: Downlink,
    outbox: Outbox,
}

/// One session's `https` carrier state.
pub struct HttpsState {
    mux: tokio::sync::Mutex<Mux>,
    up: Mutex<Uplink>,
    down: tokio::sync::Mutex<DownState>,
    /// The newest poll's number; an older parked poll gives way.
    generation: AtomicU64,
    superseded: Notify,
}

impl std::fmt::Debug for HttpsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsState")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// The answer to an uplink body.
pub enum UpAnswer {
    Ack(u64),
    /// Busy with the previous body: `503 Retry-After: 1`.
    Busy,
    Refused,
}

/// The answer to a downlink poll.
pub enum DownAnswer {
    Batch {
        body: Vec<u8>,
        cursor: u64,
    },
    /// Nothing within the long poll (or superseded): `204`, the same cursor.
    Empty {
        cursor: u64,
    },
    Refused,
}

impl HttpsState {
    pub fn new(setup: Setup) -> Self {
        let (mux, outbox) = Mux::new(setup);
        Self {
            mux: tokio::sync::Mutex::new(mux),
            up: Mutex::new(Uplink::default()),
            down: tokio::sync::Mutex::new(DownState {
                link: Downlink::default(),
                outbox,
            }),
            generation: AtomicU64::new(0),
            superseded: Notify::new(),
        }
    }

    /// One uplink body under `seq`.
    pub async fn up(&self, seq: u64, body: &[u8]) -> UpAnswer {
        let Ok(mut mux) = self.mux.try_lock() else {
            return UpAnswer::Busy;
        };
        let digest = mtgate_crypto::sha256(&[body]);
        let verdict = self
            .up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .offer(seq, digest);
        match verdict {
            Up::Reack => UpAnswer::Ack(seq),
            Up::Refuse => UpAnswer::Refused,
            Up::Commit => {
                if mux.input(body).await {
                    mux.reap();
                    UpAnswer::Ack(seq)
                } else {
                    UpAnswer::Refused
                }
            }
        }
    }

    /// One downlink poll with `cursor`.
    pub async fn down(&self, cursor: u64) -> DownAnswer {
        let mine = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.superseded.notify_waiters();
        let mut d = self.down.lock().await;
        if self.generation.load(Ordering::Acquire) != mine {
            return DownAnswer::Empty { cursor };
        }
        match d.link.poll(cursor) {
            Down::Refuse => return DownAnswer::Refused,
            Down::Replay(b) => {
                return DownAnswer::Batch {
                    body: b.to_vec(),
                    cursor: cursor + 1,
                }
            }
            Down::Next => {}
        }
        let superseded = async {
            loop {
                let n = self.superseded.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                if self.generation.load(Ordering::Acquire) != mine {
                    return;
                }
                n.await;
            }
        };
        let got = tokio::select! {
            b = d.outbox.batch(BATCH) => b,
            _ = superseded => None,
            _ = tokio::time::sleep(LONG_POLL) => None,
        };
        match got {
            Some(body) => {
                let cursor = d.link.deliver(body.clone());
                DownAnswer::Batch { body, cursor }
            }
            None => DownAnswer::Empty { cursor },
        }
    }
}
