//! The two tasks of a link: the writer (frames into records, records
//! into writes, keepalive, rekeying) and the reader (records opened, each
//! frame handed to its stream without waiting on any).

use super::super::config::Rekey;
use super::{Inbound, Inner, OnOpen, Opening, Stream, IDLE, KEEPALIVE, MAX_CREDIT, WRITE_BATCH};
use mtgate_proto::link::frame::{self, Frame, Reason, INITIAL_WINDOW};
use mtgate_proto::link::record::{Kind, Opener, Sealer, MAX_PLAINTEXT, MAX_RECORD};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

pub(super) async fn writer<W: AsyncWrite + Unpin>(
    inner: &Inner,
    mut wr: W,
    mut sealer: Sealer,
    mut rx: mpsc::Receiver<Vec<u8>>,
    rekey: Rekey,
) -> Result<(), String> {
    let mut closed = inner.closed.subscribe();
    let mut body: Vec<u8> = Vec::with_capacity(MAX_PLAINTEXT);
    let mut wire: Vec<u8> = Vec::with_capacity(WRITE_BATCH + MAX_RECORD);
    let mut pending: Option<Vec<u8>> = None;
    let mut keyed = Instant::now();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    let ping = |v: &mut Vec<u8>| {
        Frame::Ping {
            stream: 0,
            value: 0,
        }
        .encode(v)
    };
    loop {
        let first = match pending.take() {
            Some(f) => f,
            None => tokio::select! {
                f = rx.recv() => match f {
                    Some(f) => f,
                    None => return Ok(()),
                },
                _ = tick.tick() => {
                    let mut v = Vec::new();
                    ping(&mut v);
                    v
                }
                _ = closed.changed() => return Ok(()),
            },
        };
        wire.clear();
        body.clear();
        body.extend_from_slice(&first);
        // Gather what else is queued: frames into records, records into
        // one write.
        loop {
            let next = rx.try_recv().ok();
            let fits = next
                .as_ref()
                .is_some_and(|f| body.len() + f.len() < MAX_PLAINTEXT);
            if fits {
                if let Some(f) = next {
                    body.extend_from_slice(&f);
                }
                continue;
            }
            sealer
                .seal(Kind::Frames, &body, &mut wire)
                .map_err(|e| e.to_string())?;
            body.clear();
            match next {
                Some(f) if wire.len() < WRITE_BATCH => body.extend_from_slice(&f),
                Some(f) => {
                    pending = Some(f);
                    break;
                }
                None => break,
            }
        }
        if sealer.bytes_since_rekey() >= rekey.bytes || keyed.elapsed() >= rekey.interval {
            sealer.rekey(&mut wire).map_err(|e| e.to_string())?;
            keyed = Instant::now();
            inner.rekeyed("out");
        }
        wr.write_all(&wire)
            .await
            .map_err(|e| format!("write: {e}"))?;
        inner.stats.add_wire_out(wire.len());
    }
}

pub(super) async fn reader<R: AsyncRead + Unpin>(
    inner: &Arc<Inner>,
    mut rd: R,
    mut opener: Opener,
    on_open: Option<Arc<dyn OnOpen>>,
) -> Result<(), String> {
    let mut buf = vec![0u8; 2 * MAX_RECORD];
    let (mut start, mut end) = (0usize, 0usize);
    let mut closed = inner.closed.subscribe();
    loop {
        loop {
            match opener.open(&mut buf[start..end]) {
                Ok(Some(o)) => {
                    if o.kind == Kind::Frames {
                        let body = &buf[start + o.body.start..start + o.body.end];
                        dispatch(inner, body, on_open.as_ref())?;
                    } else {
                        inner.rekeyed("in");
                    }
                    start += o.consumed;
                }
                Ok(None) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        if start == end {
            (start, end) = (0, 0);
        } else if buf.len() - end < MAX_RECORD {
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
        }
        let n = tokio::select! {
            r = tokio::time::timeout(IDLE, rd.read(&mut buf[end..])) => match r {
                Err(_) => return Err(format!("silent for {IDLE:?}")),
                Ok(Err(e)) => return Err(format!("read: {e}")),
                Ok(Ok(0)) => return Err("closed by the peer".into()),
                Ok(Ok(n)) => n,
            },
            _ = closed.changed() => return Ok(()),
        };
        inner.stats.add_wire_in(n);
        end += n;
    }
}

/// Hands each frame of a record to its stream.
fn dispatch(
    inner: &Arc<Inner>,
    body: &[u8],
    on_open: Option<&Arc<dyn OnOpen>>,
) -> Result<(), String> {
    for f in frame::frames(body) {
        let f = f.map_err(|e| e.to_string())?;
        match f {
            Frame::Open { stream, .. } | Frame::Client { stream, .. } => {
                let Some(on_open) = on_open else {
                    return Err("the exit opened a stream".into());
                };
                let what = match f {
                    Frame::Client { addr, .. } => Opening::Client(addr),
                    Frame::Open { dc, .. } => Opening::Dc(dc),
                    _ => continue,
                };
                match inner.register(stream) {
                    Ok((slot, rx)) => on_open.open(
                        Stream {
                            id: stream,
                            slot,
                            rx: Some(rx),
                            inner: inner.clone(),
                        },
                        what,
                    ),
                    Err(reason) => inner.send_now(Frame::Reset { stream, reason }),
                }
            }
            Frame::Opened { stream } => {
                if let Some(s) = inner.slot(stream) {
                    let _ = s.tx.send(Inbound::Opened);
                }
            }
            Frame::Data { stream, bytes } => {
                let Some(s) = inner.slot(stream) else {
                    continue;
                };
                let held = s.outstanding.fetch_add(bytes.len(), Relaxed) + bytes.len();
                if held > INITIAL_WINDOW as usize {
                    inner.stats.violation();
                    let _ = s.tx.send(Inbound::Reset(Reason::Protocol));
                    inner.send_now(Frame::Reset {
                        stream,
                        reason: Reason::Protocol,
                    });
                    inner.remove(stream);
                    continue;
                }
                let _ = s.tx.send(Inbound::Data(bytes.to_vec()));
            }
            Frame::Window { stream, credit } => {
                if let Some(s) = inner.slot(stream) {
                    let c = credit as usize;
                    if s.credit.available_permits() + c > MAX_CREDIT {
                        return Err(format!("stream {stream}: credit past {MAX_CREDIT}"));
                    }
                    s.credit.add_permits(c);
                }
            }
            Frame::Fin { stream } => {
                if let Some(s) = inner.slot(stream) {
                    let _ = s.tx.send(Inbound::Fin);
                }
            }
            Frame::Reset { stream, reason } => {
                if let Some(s) = inner.slot(stream) {
                    let _ = s.tx.send(Inbound::Reset(reason));
                    s.credit.close();
                }
            }
            Frame::Ping { value, .. } => inner.send_now(Frame::Pong { stream: 0, value }),
            Frame::Pong { .. } => {}
        }
    }
    Ok(())
}
