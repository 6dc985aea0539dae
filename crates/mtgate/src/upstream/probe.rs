//! Is a target a DC? Open it the way a client's connection is opened, send
//! `req_pq_multi` in the intermediate transport the header announced, and
//! read a valid `resPQ`. The balancer's active checks put an ejected target
//! back with this; `mtgate doctor` probes every target with it.

use super::{dial, DialError, Route, Target};
use crate::net::connect::ErrorClass;
use mtgate_proto::obfs2::{DcIndex, ProtoTag};
use mtgate_proto::probe::{self, ProbeError};
use mtgate_proto::transport::{self, Decoded};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest answer frame read from a DC during the probe (a resPQ is ~84 bytes).
const MAX_ANSWER: usize = 4096;

/// Why a target did not prove itself a DC.
#[derive(Debug, thiserror::Error)]
pub enum DcProbeError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("sending the obfuscated2 header: {0}")]
    Send(std::io::Error),
    #[error("connection closed after the obfuscated2 header, no resPQ")]
    Closed,
    #[error("connected, but no resPQ within the timeout")]
    NoAnswer,
    #[error("reading the answer: {0}")]
    Read(std::io::Error),
    #[error("bad answer frame: {0}")]
    Frame(#[from] transport::FrameError),
    #[error("{0}")]
    Answer(#[from] ProbeError),
}

pub(crate) fn unix_now() -> (u64, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

async fn exchange(side: crate::relay::UpstreamSide, tag: ProtoTag) -> Result<u64, DcProbeError> {
    let crate::relay::UpstreamSide {
        mut stream,
        mut ciphers,
        ..
    } = side;
    let mut nonce = [0u8; 16];
    mtgate_crypto::fill_random(&mut nonce);
    let (secs, nanos) = unix_now();
    let msg = probe::req_pq_multi(probe::msg_id_at(secs, nanos, 0, 0), &nonce);
    let mut out = Vec::with_capacity(msg.len() + 4);
    transport::encode_frame(tag, &msg, &[], &mut out)?;
    ciphers.enc.apply(&mut out);
    stream.write_all(&out).await.map_err(DcProbeError::Send)?;
    let mut rx = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.map_err(DcProbeError::Read)?;
        if n == 0 {
            return Err(DcProbeError::Closed);
        }
        ciphers.dec.apply(&mut buf[..n]);
        rx.extend_from_slice(&buf[..n]);
        if let Decoded::Frame(f) = transport::decode(tag, &rx, MAX_ANSWER)? {
            let (msg_id, _) = probe::check_res_pq(&rx[f.start..f.end], &nonce)?;
            return Ok(probe::msg_id_time(msg_id));
        }
    }
}

/// Target `t` of DC `dc`, opened as a client's connection would open it
/// (its kind's way; no warm connection), within `timeout`. Returns the
/// round-trip time and the server's clock.
pub async fn probe_target(
    route: &Route<'_>,
    t: &Target,
    dc: u16,
    timeout: Duration,
) -> Result<(Duration, u64), DcProbeError> {
    let started = Instant::now();
    let tag = ProtoTag::Intermediate;
    let index = DcIndex(i16::try_from(dc).unwrap_or(i16::MAX));
    let opened = match t {
        Target::Addr(addr) => dial(route.connector, *addr, tag, index).await,
        Target::Via { addr, chain } => match route.chains.get(chain) {
            Some(c) => dial(c, *addr, tag, index).await,
            None => {
                return Err(DcProbeError::Connect(std::io::Error::other(
                    "no such chain",
                )))
            }
        },
        Target::WebSocket { dc } => Box::pin(super::ws_dial(route, *dc, index, tag))
            .await
            .map(|(side, _)| side),
        Target::Link { .. } => Box::pin(super::link_dial(route, index, tag))
            .await
            .map(|(side, _)| side),
    };
    let side = opened.map_err(dial_error)?;
    let left = timeout.saturating_sub(started.elapsed());
    tokio::time::timeout(left, exchange(side, tag))
        .await
        .map_err(|_| DcProbeError::NoAnswer)?
        .map(|server_time| (started.elapsed(), server_time))
}

fn dial_error(e: DialError) -> DcProbeError {
    match e {
        DialError::Connect(e) if e.class == ErrorClass::Timeout => DcProbeError::ConnectTimeout,
        // The class travels as the error's kind, so callers can tell an
        // unreachable network (no IPv6 route) from a refusal.
        DialError::Connect(e) => {
            let kind = match e.class {
                ErrorClass::Unreachable => std::io::ErrorKind::NetworkUnreachable,
                ErrorClass::Refused => std::io::ErrorKind::ConnectionRefused,
                ErrorClass::Reset => std::io::ErrorKind::ConnectionReset,
                _ => std::io::ErrorKind::Other,
            };
            DcProbeError::Connect(std::io::Error::new(kind, e.detail))
        }
        DialError::Send(e) => DcProbeError::Send(e),
    }
}
