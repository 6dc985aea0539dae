//! One client connection from accept to close: drive the handshake machine
//! under a deadline, open the upstream, run the relay, and emit events. Exactly
//! one [`CloseReason`] ends every session.

use crate::events::{CloseReason, Event};
use crate::relay::{self, ClientSide, Traffic};
use crate::runtime::Runtime;
use crate::upstream::{self, UpstreamError};
use mtgate_proto::{Handshake, Outcome};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Serves one accepted client connection.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    rt: Arc<Runtime>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let id = rt.next_conn_id();
    let started = Instant::now();
    rt.telemetry.emit(Event::Opened { id, peer });
    let _ = stream.set_nodelay(true);
    let traffic = Traffic::default();
    let mut user_name: Option<usize> = None;
    let reason = run(stream, id, &rt, &traffic, &mut user_name, shutdown).await;
    let user = user_name.map(|u| rt.users[u].name.as_str());
    rt.telemetry.emit(Event::Closed {
        id,
        user,
        reason,
        up: traffic.up.load(Relaxed),
        down: traffic.down.load(Relaxed),
        lasted: started.elapsed(),
    });
}

async fn run(
    mut stream: TcpStream,
    id: u64,
    rt: &Arc<Runtime>,
    traffic: &Traffic,
    user_out: &mut Option<usize>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> CloseReason {
    let deadline = tokio::time::Instant::now() + rt.config.handshake_timeout;
    let mut hs = Handshake::new();
    let mut buf = [0u8; 4096];
    let accepted = loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => {
                return reject_path(&mut stream, &hs, rt, id, CloseReason::HandshakeTimeout).await
            }
            Ok(Ok(0)) => return CloseReason::HandshakeEof,
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return CloseReason::ClientError,
        };
        let outcome = {
            let mut replay = rt.replay.lock().unwrap_or_else(|p| p.into_inner());
            hs.feed(
                &buf[..n],
                unix_now(),
                &rt.handshake,
                &mut replay,
                &mut mtgate_crypto::fill_random,
            )
        };
        match outcome {
            Outcome::NeedMore => {}
            Outcome::Respond(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return CloseReason::ClientError;
                }
            }
            Outcome::Reject(r) => {
                return reject_path(&mut stream, &hs, rt, id, CloseReason::Rejected(r)).await
            }
            Outcome::Accepted(a) => break a,
        }
    };
    *user_out = Some(accepted.user);
    rt.telemetry.emit(Event::Authenticated {
        id,
        user: &rt.users[accepted.user].name,
        mode: accepted.mode,
        dc: accepted.dc.0,
    });
    let mut on_fail = |dc: u16, e: &str| {
        rt.telemetry
            .emit(Event::UpstreamFailed { id, dc, error: e })
    };
    let connected = match upstream::connect_direct(
        &rt.config.dcs,
        accepted.dc,
        accepted.tag,
        rt.config.prefer,
        rt.config.connect_timeout,
        &mut on_fail,
    )
    .await
    {
        Ok(c) => c,
        Err(UpstreamError::UnknownDc(_)) => return CloseReason::UnknownDc,
        Err(UpstreamError::Unreachable { .. }) => return CloseReason::UpstreamConnectFailed,
    };
    rt.telemetry.emit(Event::UpstreamConnected {
        id,
        dc: connected.dc,
        addr: connected.addr,
        took: connected.took,
    });
    let a = *accepted;
    let client = ClientSide {
        stream,
        ciphers: a.ciphers,
        tls: a.tls,
        early: a.early,
    };
    relay::run(
        client,
        connected.side,
        rt.config.idle_timeout,
        traffic,
        shutdown,
    )
    .await
}

/// Not a valid client: front it to the mask host if one is configured, else close silently.
async fn reject_path(
    stream: &mut TcpStream,
    hs: &Handshake,
    rt: &Arc<Runtime>,
    id: u64,
    reason: CloseReason,
) -> CloseReason {
    if let (Some(mask), CloseReason::Rejected(r)) = (&rt.config.mask_host, reason) {
        rt.telemetry.emit(Event::Fronted { id, reason: r });
        crate::mask::splice(stream, hs.received(), mask, rt.config.connect_timeout).await;
    }
    reason
}
