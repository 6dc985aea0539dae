//! The `websocket` carriers: one WebSocket per session
//! (`GET /api/v1/ws`, subprotocol `tproxy-v1.<session>`) or one per stream
//! (`websocket-lanes`, `tproxy-lane-v1.<session>.<id>`), each binary
//! message a batch of whole frames for the session's [`Mux`].

use super::mux::{Mux, Outbox, Setup};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The largest message sent toward the app (a batch of ready frames).
const BATCH: usize = 256 * 1024;

/// Runs one carrier WebSocket until either side ends it: the session's
/// (every stream) or a lane's (its stream only; it must begin with OPEN).
/// Reading and writing go on at once: the app's frames (its WINDOW grants
/// among them) keep being taken in while a batch toward it waits for the
/// socket, so neither side can stall the other with full buffers.
pub async fn run<S>(ws: WebSocketStream<S>, setup: Setup)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let (mut mux, mut outbox): (Mux, Outbox) = Mux::new(setup);
    let write = async move {
        while let Some(batch) = outbox.batch(BATCH).await {
            if tx.send(Message::Binary(batch.into())).await.is_err() {
                return;
            }
        }
        let _ = tx.close().await;
    };
    let read = async move {
        loop {
            tokio::select! {
                msg = rx.next() => {
                    let Some(Ok(msg)) = msg else { break };
                    let body = match msg {
                        Message::Binary(b) => b,
                        Message::Ping(_) | Message::Pong(_) => continue,
                        // Text or a close: the carrier ends.
                        _ => break,
                    };
                    if !mux.input(&body).await {
                        break;
                    }
                }
                () = mux.stream_ended() => {}
            }
            mux.reap();
            if mux.lane_done() {
                break;
            }
        }
        // The mux goes: its streams end, and once their last frames are
        // out the writer closes the WebSocket.
    };
    tokio::pin!(write);
    tokio::select! {
        () = &mut write => {}
        () = read => {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), write).await;
        }
    }
}
