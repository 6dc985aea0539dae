//! Any of the four carriers bridged to a local TCP port: every accepted
//! connection is one stream (OPEN, DATA both ways, CLOSE when it ends),
//! with the protocol's flow control kept from the client's side — our
//! uplink waits for the relay's credit, and the relay's DATA is granted
//! back (WINDOW) only once it was written to the local socket, so a local
//! reader that stops reading stops the relay. The bridge counts what it
//! sees of the relay (DATA past the credit it was given, the most bytes in
//! flight on one stream) and can inject the faults the spec recovers from:
//! a lost long poll (polled again with the old cursor, the replay compared
//! byte for byte), an uplink body sent twice under one seq, and a
//! WebSocket dropped without a close.

use super::http::Http;
use super::Site;
use futures_util::{SinkExt, StreamExt};
use mtgate_proto::webproxy::{self, Kind, INITIAL_WINDOW};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio_tungstenite::tungstenite::Message;

/// The four carriers of the WEB proxy type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    WebSocket,
    WebSocketLanes,
    Https,
    HttpsLanes,
}

impl Carrier {
    pub const ALL: [Carrier; 4] = [
        Carrier::WebSocket,
        Carrier::WebSocketLanes,
        Carrier::Https,
        Carrier::HttpsLanes,
    ];

    /// The name of the configuration and of `X-Carrier-Mode`.
    pub fn name(self) -> &'static str {
        match self {
            Carrier::WebSocket => "websocket",
            Carrier::WebSocketLanes => "websocket-lanes",
            Carrier::Https => "https",
            Carrier::HttpsLanes => "https-lanes",
        }
    }
}

/// Faults to inject (0: never).
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Throw away every n-th downlink batch and poll again with the old cursor.
    pub lose_poll_every: u64,
    /// Send every n-th uplink body a second time under the same seq.
    pub repeat_up_every: u64,
}

/// What the bridge saw.
#[derive(Debug, Default)]
pub struct BridgeStats {
    pub streams: AtomicU64,
    /// Streams the relay closed (CLOSE from the relay).
    pub closed_by_relay: AtomicU64,
    /// The most relay bytes one stream had in flight (not yet granted back).
    pub max_in_flight: AtomicU64,
    /// Relay DATA past the credit the bridge had given: a protocol breach.
    pub over_credit: AtomicU64,
    pub polls_lost: AtomicU64,
    /// Lost polls whose replay was byte-identical.
    pub replays_identical: AtomicU64,
    /// Uplink bodies sent twice and acknowledged twice.
    pub ups_repeated: AtomicU64,
    /// Carrier connections that ended (a session's, or a lane's).
    pub carriers_ended: AtomicU64,
}

/// A running bridge; dropping it stops accepting.
pub struct Bridge {
    pub addr: SocketAddr,
    pub stats: Arc<BridgeStats>,
    drop_tx: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Bridge {
    /// Drops the carrier's WebSockets without a close (the session's, or
    /// every lane's).
    pub fn drop_carrier(&self) {
        let _ = self.drop_tx.send(true);
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `carrier` of session `token` on `site`, bridged to a new local port.
pub async fn bridge(
    site: Site,
    token: String,
    carrier: Carrier,
    faults: Faults,
) -> anyhow::Result<Bridge> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let stats = Arc::new(BridgeStats::default());
    let (drop_tx, drop_rx) = watch::channel(false);
    let c = Ctx {
        site,
        token,
        stats: stats.clone(),
        faults,
        drop_rx,
    };
    let task = match carrier {
        Carrier::WebSocket => {
            let ws = c.site.websocket(&format!("tproxy-v1.{}", c.token)).await?;
            tokio::spawn(async move { c.session_ws(ws, l).await })
        }
        Carrier::WebSocketLanes => tokio::spawn(async move { c.lanes(l, false).await }),
        Carrier::Https => tokio::spawn(async move { c.session_https(l).await }),
        Carrier::HttpsLanes => tokio::spawn(async move { c.lanes(l, true).await }),
    };
    Ok(Bridge {
        addr,
        stats,
        drop_tx,
        task,
    })
}

/// The relay's credit for one stream's uplink.
#[derive(Default)]
struct Credit {
    n: AtomicI64,
    changed: Notify,
}

/// One local connection's stream.
struct Local {
    /// The relay's DATA toward the local socket.
    to_app: mpsc::UnboundedSender<Vec<u8>>,
    credit: Arc<Credit>,
    /// Relay bytes not yet written to the local socket.
    in_flight: Arc<AtomicI64>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Local {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

type Table = Arc<Mutex<HashMap<u32, Local>>>;
type Up = mpsc::UnboundedSender<Vec<u8>>;

fn frame(kind: Kind, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    webproxy::encode(kind, id, payload, &mut f);
    f
}

/// Starts stream `id` over `sock`: its OPEN goes up first.
fn start(id: u32, sock: TcpStream, up: &Up, stats: &Arc<BridgeStats>) -> Local {
    let _ = sock.set_nodelay(true);
    let _ = up.send(frame(Kind::Open, id, &[]));
    stats.streams.fetch_add(1, Relaxed);
    let (mut rd, mut wr) = sock.into_split();
    let credit = Arc::new(Credit::default());
    credit.n.store(i64::from(INITIAL_WINDOW), Relaxed);
    let reader = {
        let (credit, up) = (credit.clone(), up.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let have = credit.n.load(Relaxed);
                if have <= 0 {
                    let n = credit.changed.notified();
                    tokio::pin!(n);
                    n.as_mut().enable();
                    if credit.n.load(Relaxed) <= 0 {
                        n.await;
                    }
                    continue;
                }
                let want = usize::try_from(have).unwrap_or(0).min(buf.len());
                let n = match rd.read(&mut buf[..want]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                credit.n.fetch_sub(n as i64, Relaxed);
                if up.send(frame(Kind::Data, id, &buf[..n])).is_err() {
                    return;
                }
            }
            let _ = up.send(frame(Kind::Close, id, &[]));
        })
    };
    let (to_app, mut from_relay) = mpsc::unbounded_channel::<Vec<u8>>();
    let in_flight = Arc::new(AtomicI64::new(0));
    {
        let (in_flight, up) = (in_flight.clone(), up.clone());
        tokio::spawn(async move {
            while let Some(chunk) = from_relay.recv().await {
                if wr.write_all(&chunk).await.is_err() {
                    return;
                }
                let n = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
                in_flight.fetch_sub(i64::from(n), Relaxed);
                let _ = up.send(frame(Kind::Window, id, &n.to_be_bytes()));
            }
        });
    }
    Local {
        to_app,
        credit,
        in_flight,
        reader,
    }
}

/// Takes one body from the relay. `false`: malformed.
fn deliver(table: &Table, body: &[u8], up: &Up, stats: &BridgeStats) -> bool {
    let Ok(frames) = webproxy::decode_frames(body) else {
        return false;
    };
    let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
    for f in frames {
        match f.kind {
            Kind::Data => {
                let Some(l) = t.get(&f.stream) else { continue };
                let n = f.payload.len() as i64;
                let now = l.in_flight.fetch_add(n, Relaxed) + n;
                stats.max_in_flight.fetch_max(now as u64, Relaxed);
                if now > i64::from(INITIAL_WINDOW) {
                    stats.over_credit.fetch_add(1, Relaxed);
                }
                let _ = l.to_app.send(f.payload.to_vec());
            }
            Kind::Window => {
                if let (Some(l), Some(d)) = (t.get(&f.stream), f.window_delta()) {
                    l.credit.n.fetch_add(i64::from(d), Relaxed);
                    l.credit.changed.notify_one();
                }
            }
            Kind::Close if t.remove(&f.stream).is_some() => {
                stats.closed_by_relay.fetch_add(1, Relaxed);
            }
            Kind::Ping => {
                let _ = up.send(frame(Kind::Pong, 0, f.payload));
            }
            _ => {}
        }
    }
    true
}

/// Forgets streams whose local side ended (their CLOSE went up).
fn reap(table: &Table) {
    table
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|_, l| !l.reader.is_finished());
}

/// Ready frames, at least one (waiting for it), up to about `limit` bytes.
async fn batch(rx: &mut mpsc::UnboundedReceiver<Vec<u8>>, limit: usize) -> Option<Vec<u8>> {
    let mut b = rx.recv().await?;
    while b.len() < limit {
        match rx.try_recv() {
            Ok(more) => b.extend_from_slice(&more),
            Err(_) => break,
        }
    }
    Some(b)
}

struct Ctx {
    site: Site,
    token: String,
    stats: Arc<BridgeStats>,
    faults: Faults,
    drop_rx: watch::Receiver<bool>,
}

impl Ctx {
    /// `websocket`: every stream over the session's one WebSocket.
    async fn session_ws(self, ws: super::Ws, l: TcpListener) {
        let (up, up_rx) = mpsc::unbounded_channel();
        let table = Table::default();
        self.ws_loop(ws, Some(&l), &table, up, up_rx, 1).await;
    }

    /// One WebSocket's loop: the local streams' frames up (a writer of its
    /// own, so reading never waits for a write), the relay's down; `accept`
    /// takes new streams (the session's WebSocket only). A lane's ends with
    /// its stream.
    async fn ws_loop(
        &self,
        ws: super::Ws,
        accept: Option<&TcpListener>,
        table: &Table,
        up: Up,
        mut up_rx: mpsc::UnboundedReceiver<Vec<u8>>,
        mut next: u32,
    ) {
        let (mut tx, mut rx) = ws.split();
        let mut writer = tokio::spawn(async move {
            while let Some(b) = batch(&mut up_rx, 256 * 1024).await {
                if tx.send(Message::Binary(b.into())).await.is_err() {
                    return;
                }
            }
            let _ = tx.close().await;
        });
        let mut dropped = self.drop_rx.clone();
        let lane = accept.is_none();
        loop {
            tokio::select! {
                acc = async { accept?.accept().await.ok() }, if accept.is_some() => {
                    let Some((s, _)) = acc else { break };
                    let local = start(next, s, &up, &self.stats);
                    table.lock().unwrap_or_else(|p| p.into_inner()).insert(next, local);
                    next += 1;
                }
                msg = rx.next() => {
                    let Some(Ok(msg)) = msg else { break };
                    match msg {
                        Message::Binary(b) => if !deliver(table, &b, &up, &self.stats) { break },
                        Message::Ping(_) | Message::Pong(_) => {}
                        _ => break,
                    }
                }
                _ = &mut writer => break,
                _ = async { let _ = dropped.wait_for(|d| *d).await; } => {
                    // Dropped, not closed: the TCP connection just goes.
                    writer.abort();
                    self.stats.carriers_ended.fetch_add(1, Relaxed);
                    table.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    return;
                }
            }
            reap(table);
            if lane && table.lock().map_or(true, |t| t.is_empty()) {
                break;
            }
        }
        // The streams go, and with them the uplink's senders: the writer
        // sends what is left and closes.
        table.lock().unwrap_or_else(|p| p.into_inner()).clear();
        drop(up);
        if !writer.is_finished() {
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut writer).await;
        }
        writer.abort();
        self.stats.carriers_ended.fetch_add(1, Relaxed);
    }

    /// `websocket-lanes` and `https-lanes`: a carrier of its own per stream.
    async fn lanes(self, l: TcpListener, https: bool) {
        let me = Arc::new(self);
        // Every lane's requests share one HTTP/2 connection.
        let http = Arc::new(Http::new(me.site.clone(), true));
        let mut next = 1u32;
        while let Ok((s, _)) = l.accept().await {
            let id = next;
            next += 1;
            let (me, http) = (me.clone(), http.clone());
            tokio::spawn(async move {
                let (up, up_rx) = mpsc::unbounded_channel();
                let table = Table::default();
                let local = start(id, s, &up, &me.stats);
                table
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, local);
                if https {
                    me.https_carrier(&http, Some(id), &table, up, up_rx).await;
                } else {
                    let proto = format!("tproxy-lane-v1.{}.{id}", me.token);
                    match me.site.websocket(&proto).await {
                        Ok(ws) => me.ws_loop(ws, None, &table, up, up_rx, id).await,
                        Err(_) => {
                            me.stats.carriers_ended.fetch_add(1, Relaxed);
                        }
                    }
                }
            });
        }
    }

    /// `https`: every stream over one uplink and one downlink connection.
    async fn session_https(self, l: TcpListener) {
        let me = Arc::new(self);
        let (up, up_rx) = mpsc::unbounded_channel();
        let table = Table::default();
        let accept = {
            let (table, up, stats) = (table.clone(), up.clone(), me.stats.clone());
            tokio::spawn(async move {
                let mut next = 1u32;
                while let Ok((s, _)) = l.accept().await {
                    let local = start(next, s, &up, &stats);
                    table
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(next, local);
                    next += 1;
                }
            })
        };
        let http = Http::new(me.site.clone(), false);
        me.https_carrier(&http, None, &table, up, up_rx).await;
        accept.abort();
    }

    /// The uplink and downlink of one `https` session or lane, until the
    /// relay ends it (`404`, or `X-Lane-Closed: 1`).
    async fn https_carrier(
        &self,
        http: &Http,
        lane: Option<u32>,
        table: &Table,
        up: Up,
        mut up_rx: mpsc::UnboundedReceiver<Vec<u8>>,
    ) {
        let lane_hdr = lane.map(|id| ("x-lane-id", id.to_string()));
        // The downlink of the `https` session has a connection of its own
        // (HTTP/1.1); lanes share the HTTP/2 one.
        let own;
        let down_http = if lane.is_some() {
            http
        } else {
            own = Http::new(self.site.clone(), false);
            &own
        };
        let uplink = async {
            let mut seq = 1u64;
            while let Some(body) = batch(&mut up_rx, 2 << 20).await {
                let mut hdrs = vec![("x-up-seq", seq.to_string())];
                hdrs.extend(lane_hdr.clone());
                let times = if self.faults.repeat_up_every > 0
                    && seq.is_multiple_of(self.faults.repeat_up_every)
                {
                    2
                } else {
                    1
                };
                for time in 0..times {
                    loop {
                        let Ok(a) = http
                            .post("/api/v1/up", &self.token, &hdrs, body.clone())
                            .await
                        else {
                            return;
                        };
                        match a.status {
                            204 if a.number("x-up-ack") == Some(seq) => break,
                            503 => tokio::time::sleep(Duration::from_secs(1)).await,
                            _ => return,
                        }
                    }
                    if time == 1 {
                        self.stats.ups_repeated.fetch_add(1, Relaxed);
                    }
                }
                seq += 1;
            }
        };
        let downlink = async {
            let (mut cursor, mut polls) = (0u64, 0u64);
            loop {
                let mut hdrs = vec![("x-down-cursor", cursor.to_string())];
                hdrs.extend(lane_hdr.clone());
                let Ok(mut a) = down_http
                    .post("/api/v1/down", &self.token, &hdrs, Vec::new())
                    .await
                else {
                    return;
                };
                if a.headers.contains_key("x-lane-closed") || !matches!(a.status, 200 | 204) {
                    return;
                }
                if a.status == 200 {
                    polls += 1;
                    if self.faults.lose_poll_every > 0
                        && polls.is_multiple_of(self.faults.lose_poll_every)
                    {
                        // This batch is "lost": the old cursor again.
                        self.stats.polls_lost.fetch_add(1, Relaxed);
                        let Ok(again) = down_http
                            .post("/api/v1/down", &self.token, &hdrs, Vec::new())
                            .await
                        else {
                            return;
                        };
                        if again.status == 200
                            && again.body == a.body
                            && again.number("x-down-cursor") == a.number("x-down-cursor")
                        {
                            self.stats.replays_identical.fetch_add(1, Relaxed);
                        }
                        a = again;
                    }
                    if !deliver(table, &a.body, &up, &self.stats) {
                        return;
                    }
                }
                cursor = a.number("x-down-cursor").unwrap_or(cursor);
                reap(table);
            }
        };
        // The downlink ends the carrier; the uplink may finish first (a
        // lane whose stream closed still drains its last frames).
        tokio::pin!(uplink);
        let mut up_done = false;
        tokio::pin!(downlink);
        loop {
            tokio::select! {
                _ = &mut uplink, if !up_done => up_done = true,
                _ = &mut downlink => break,
            }
        }
        self.stats.carriers_ended.fetch_add(1, Relaxed);
        table.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
