//! One ready ME connection multiplexing many clients (PROTOCOL §7.8, §7.9).
//!
//! [`MeConn`] is shared by the connection's task and the clients bound to
//! it. Clients put RPC_PROXY_REQ bodies on its bounded outbound queue; the
//! writer batches, pads, encrypts and writes them. The reader decrypts frames
//! and routes each answer to its client's bounded queue by 64-bit conn id;
//! it answers RPC_PING with RPC_PONG, honours RPC_CLOSE_EXT, and replies
//! RPC_CLOSE_CONN to answers for unknown ids. When the connection ends, every
//! client bound to it is closed (its queue is dropped).
//!
//! Message buffers (request bodies up, answers down) are recycled through a
//! small bounded free list per connection ([`MeConn::take_buf`],
//! [`MeConn::give_buf`]), so a steady stream of packets allocates nothing.

use mtgate_proto::me::msg::{self, MeMsg};
use mtgate_proto::me::{FrameError, MeRx, MeTx};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Answers queued toward one client before it is closed as too slow.
pub const CLIENT_QUEUE: usize = 512;
/// Bytes queued toward one client before it is closed (the official proxy's 32 MiB).
pub const CLIENT_QUEUE_BYTES: usize = 32 << 20;
/// Bytes framed per write toward the ME.
const WRITE_BATCH: usize = 256 << 10;
/// Message buffers kept for reuse per connection.
const FREE_BUFS: usize = 64;
/// Largest buffer capacity kept for reuse (bigger ones are freed): at most
/// `FREE_BUFS * FREE_BUF_CAP` (1 MiB) idle per connection.
const FREE_BUF_CAP: usize = 16 << 10;

/// Something for the ME.
#[derive(Debug)]
pub enum Up {
    /// A whole RPC_PROXY_REQ body.
    Req(Vec<u8>),
    CloseConn(u64),
    Pong(u64),
    Ping(u64),
}

/// Something for one client.
#[derive(Debug)]
pub enum Down {
    /// An RPC_PROXY_ANS payload.
    Data(Vec<u8>),
    /// An RPC_SIMPLE_ACK confirm value.
    Ack(u32),
}

struct ClientEntry {
    tx: mpsc::Sender<Down>,
    queued: Arc<AtomicUsize>,
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnEnd {
    #[error("ME closed the connection")]
    Eof,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Frame(#[from] FrameError),
    #[error("ME sent RPC_HANDSHAKE_ERROR {0}")]
    Refused(i32),
    #[error("no RPC_PONG for our pings")]
    PingTimeout,
    #[error("shutting down")]
    Shutdown,
}

/// The shared half of one ready ME connection.
pub struct MeConn {
    pub peer: SocketAddr,
    out: mpsc::Sender<Up>,
    clients: Mutex<HashMap<u64, ClientEntry>>,
    alive: AtomicBool,
    max_clients: usize,
    /// Spare message buffers (empty, capacity at most [`FREE_BUF_CAP`]).
    free: Mutex<Vec<Vec<u8>>>,
}

/// A client bound to an ME connection: its conn id and its answer queue.
/// Dropping it unbinds the client and tells the ME (RPC_CLOSE_CONN).
pub struct Bound {
    pub conn: Arc<MeConn>,
    pub conn_id: u64,
    pub down: mpsc::Receiver<Down>,
    pub queued: Arc<AtomicUsize>,
}

impl Drop for Bound {
    fn drop(&mut self) {
        if self.conn.unbind(self.conn_id) && self.conn.is_alive() {
            self.conn.send_soon(Up::CloseConn(self.conn_id));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MeConn {
    /// A connection whose outbound queue holds `queue` messages.
    pub fn new(
        peer: SocketAddr,
        queue: usize,
        max_clients: usize,
    ) -> (Arc<Self>, mpsc::Receiver<Up>) {
        let (out, rx) = mpsc::channel(queue);
        let c = Arc::new(Self {
            peer,
            out,
            clients: Mutex::new(HashMap::new()),
            alive: AtomicBool::new(true),
            max_clients,
            free: Mutex::new(Vec::with_capacity(FREE_BUFS)),
        });
        (c, rx)
    }

    /// An empty buffer for one message: a recycled one when there is one.
    pub fn take_buf(&self) -> Vec<u8> {
        lock(&self.free).pop().unwrap_or_default()
    }

    /// Returns a message buffer for reuse (kept only while the list has room
    /// and the buffer is not large).
    pub fn give_buf(&self, mut v: Vec<u8>) {
        if v.capacity() == 0 || v.capacity() > FREE_BUF_CAP {
            return;
        }
        v.clear();
        let mut free = lock(&self.free);
        if free.len() < FREE_BUFS {
            free.push(v);
        }
    }

    /// Buffers on the free list now (tests).
    pub fn spare_bufs(&self) -> usize {
        lock(&self.free).len()
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Relaxed)
    }

    /// Clients bound now.
    pub fn clients(&self) -> usize {
        lock(&self.clients).len()
    }

    /// Binds a client under `conn_id`; `None` when dead, full, or the id is taken.
    pub fn bind(self: &Arc<Self>, conn_id: u64) -> Option<Bound> {
        let mut map = lock(&self.clients);
        if !self.is_alive() || map.len() >= self.max_clients || map.contains_key(&conn_id) {
            return None;
        }
        let (tx, down) = mpsc::channel(CLIENT_QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        map.insert(
            conn_id,
            ClientEntry {
                tx,
                queued: queued.clone(),
            },
        );
        Some(Bound {
            conn: self.clone(),
            conn_id,
            down,
            queued,
        })
    }

    /// Removes a client; true if it was still bound.
    fn unbind(&self, conn_id: u64) -> bool {
        lock(&self.clients).remove(&conn_id).is_some()
    }

    /// Queues a message toward the ME, waiting while the queue is full.
    pub async fn send(&self, m: Up) -> Result<(), ()> {
        self.out.send(m).await.map_err(|_| ())
    }

    /// Queues a small control message without waiting (from a non-async context).
    fn send_soon(&self, m: Up) {
        if let Err(mpsc::error::TrySendError::Full(m)) = self.out.try_send(m) {
            let out = self.out.clone();
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move {
                    let _ = out.send(m).await;
                });
            }
        }
    }

    /// Routes one answer; false if the id is unknown (or was just dropped as too slow).
    fn deliver(&self, conn_id: u64, d: Down) -> bool {
        let mut map = lock(&self.clients);
        let Some(e) = map.get(&conn_id) else {
            return false;
        };
        let size = match &d {
            Down::Data(v) => v.len(),
            Down::Ack(_) => 4,
        };
        let before = e.queued.fetch_add(size, Relaxed);
        if before + size > CLIENT_QUEUE_BYTES || e.tx.try_send(d).is_err() {
            // Too slow (or already gone): close it rather than stall every other client.
            map.remove(&conn_id);
            return false;
        }
        true
    }

    /// Marks the connection dead and closes every bound client.
    fn shut(&self) {
        self.alive.store(false, Relaxed);
        lock(&self.clients).clear();
    }
}

/// Runs a ready connection until it ends; closes its clients then.
pub async fn run(
    conn: Arc<MeConn>,
    stream: TcpStream,
    tx: MeTx,
    rx: MeRx,
    up: mpsc::Receiver<Up>,
    ping_interval: Option<Duration>,
    stop: impl std::future::Future<Output = ()>,
) -> ConnEnd {
    let (rd, wr) = stream.into_split();
    let pongs = AtomicUsize::new(0);
    let end = tokio::select! {
        e = read_loop(&conn, rd, rx, &pongs) => e,
        e = write_loop(&conn, wr, tx, up) => e,
        e = ping_loop(&conn, ping_interval, &pongs) => e,
        _ = stop => ConnEnd::Shutdown,
    };
    conn.shut();
    end
}

async fn read_loop(
    conn: &MeConn,
    mut rd: OwnedReadHalf,
    mut rx: MeRx,
    pongs: &AtomicUsize,
) -> ConnEnd {
    loop {
        loop {
            let (conn_id, reply) = match rx.next_frame() {
                Err(e) => return e.into(),
                Ok(None) => break,
                Ok(Some((_, body))) => match MeMsg::parse(body) {
                    Ok(MeMsg::ProxyAns { conn_id, data, .. }) => {
                        let mut buf = if data.len() <= FREE_BUF_CAP {
                            conn.take_buf()
                        } else {
                            Vec::new()
                        };
                        buf.extend_from_slice(data);
                        (conn_id, !conn.deliver(conn_id, Down::Data(buf)))
                    }
                    Ok(MeMsg::SimpleAck { conn_id, confirm }) => {
                        (conn_id, !conn.deliver(conn_id, Down::Ack(confirm)))
                    }
                    Ok(MeMsg::CloseExt { conn_id }) => {
                        // Close that client; the official proxy sends nothing back.
                        conn.unbind(conn_id);
                        continue;
                    }
                    Ok(MeMsg::Ping { id }) => {
                        if conn.send(Up::Pong(id)).await.is_err() {
                            return ConnEnd::Eof;
                        }
                        continue;
                    }
                    Ok(MeMsg::Pong { .. }) => {
                        pongs.fetch_add(1, Relaxed);
                        continue;
                    }
                    Ok(MeMsg::HandshakeError { code }) => return ConnEnd::Refused(code),
                    Ok(other) => {
                        tracing::debug!(me = %conn.peer, msg = ?other, "ignoring ME message");
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(me = %conn.peer, error = %e, "ignoring malformed ME message");
                        continue;
                    }
                },
            };
            if reply && conn.send(Up::CloseConn(conn_id)).await.is_err() {
                return ConnEnd::Eof;
            }
        }
        let room = rx.spare(64 << 10);
        match rd.read(room).await {
            Ok(0) => return ConnEnd::Eof,
            Ok(n) => rx.commit(n),
            Err(e) => return e.into(),
        }
    }
}

async fn write_loop(
    conn: &MeConn,
    mut wr: OwnedWriteHalf,
    mut tx: MeTx,
    mut up: mpsc::Receiver<Up>,
) -> ConnEnd {
    loop {
        let Some(first) = up.recv().await else {
            return ConnEnd::Shutdown;
        };
        let mut next = Some(first);
        while let Some(m) = next.take() {
            let r = match &m {
                Up::Req(body) => tx.push(&[body]),
                Up::CloseConn(id) => tx.push(&[&msg::close_conn(*id)]),
                Up::Pong(id) => tx.push(&[&msg::pong(*id)]),
                Up::Ping(id) => tx.push(&[&msg::ping(*id)]),
            };
            if let Err(e) = r {
                // Only a malformed request body (a bug): drop it, keep the link.
                tracing::debug!(error = %e, "dropping an unframeable ME message");
            }
            if let Up::Req(body) = m {
                conn.give_buf(body);
            }
            if tx.pending() < WRITE_BATCH {
                next = up.try_recv().ok();
            }
        }
        let sealed = tx.seal();
        if let Err(e) = wr.write_all(sealed).await {
            return e.into();
        }
        let n = sealed.len();
        tx.consume(n);
    }
}

/// Our own optional liveness probe: RPC_PING every interval; the link is
/// dropped when two intervals pass without any RPC_PONG.
async fn ping_loop(conn: &MeConn, every: Option<Duration>, pongs: &AtomicUsize) -> ConnEnd {
    let Some(every) = every else {
        return std::future::pending().await;
    };
    let mut id: u64 = 0;
    let mut unanswered = 0u32;
    let mut seen = pongs.load(Relaxed);
    loop {
        tokio::time::sleep(every).await;
        let now = pongs.load(Relaxed);
        if now != seen {
            unanswered = 0;
            seen = now;
        } else if id > 0 {
            unanswered += 1;
            if unanswered >= 2 {
                return ConnEnd::PingTimeout;
            }
        }
        id += 1;
        if conn.send(Up::Ping(id)).await.is_err() {
            return ConnEnd::Eof;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_list_is_bounded_and_reuses_buffers() {
        let (c, _rx) = MeConn::new(SocketAddr::from(([127, 0, 0, 1], 1)), 8, 8);
        let mut b = c.take_buf();
        b.extend_from_slice(&[7; 100]);
        let ptr = b.as_ptr();
        c.give_buf(b);
        assert_eq!(c.spare_bufs(), 1);
        let again = c.take_buf();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), ptr, "the same allocation came back");
        // Large and empty-capacity buffers are not kept.
        c.give_buf(Vec::with_capacity(FREE_BUF_CAP + 1));
        c.give_buf(Vec::new());
        assert_eq!(c.spare_bufs(), 0);
        for _ in 0..FREE_BUFS + 10 {
            c.give_buf(Vec::with_capacity(64));
        }
        assert_eq!(c.spare_bufs(), FREE_BUFS);
    }
}
