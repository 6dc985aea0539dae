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

impl HttpsState {
    /// A lane whose stream is over and whose last frames went out (never
    /// while a poll is in progress on it).
    pub async fn lane_closed(&self) -> bool {
        let mut mux = self.mux.lock().await;
        mux.reap();
        match self.down.try_lock() {
            Ok(d) => mux.lane_done() && d.outbox.is_empty(),
            Err(_) => false,
        }
    }
}

/// The `https-lanes` carrier's lanes of one session: one [`HttpsState`]
/// per stream (its own seq, cursor and replay), closed ids remembered.
#[derive(Debug, Default)]
pub struct LaneTable {
    lanes: Mutex<std::collections::HashMap<u32, std::sync::Arc<HttpsState>>>,
    closed: Mutex<std::collections::VecDeque<u32>>,
}

/// Where a lane stands.
pub enum Lane {
    Open(std::sync::Arc<HttpsState>),
    /// Closed (and drained): `X-Lane-Closed: 1`.
    Closed,
    /// Never opened.
    Unknown,
}

/// How long a downlink poll waits for its lane's OPEN to arrive.
pub const LANE_OPEN_WAIT: Duration = Duration::from_secs(5);

impl LaneTable {
    pub fn get(&self, id: u32) -> Lane {
        if let Some(s) = self
            .lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Lane::Open(s.clone());
        }
        if self
            .closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
        {
            Lane::Closed
        } else {
            Lane::Unknown
        }
    }

    /// A new lane's state (its first body must open its stream).
    pub fn open(&self, id: u32, setup: Setup) -> std::sync::Arc<HttpsState> {
        let s = std::sync::Arc::new(HttpsState::new(setup));
        self.lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, s.clone());
        s
    }

    /// Lane `id` is over: forgotten, its id kept (late frames are harmless).
    pub fn close(&self, id: u32) {
        self.lanes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let mut c = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        if c.len() == 4096 {
            c.pop_front();
        }
        c.push_back(id);
    }

    /// Lanes open now.
    pub fn len(&self) -> usize {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
