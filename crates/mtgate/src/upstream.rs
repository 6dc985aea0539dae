//! Upstream selection for direct mode: resolve the client's DC index through
//! the DC table, dial its addresses in the configured family order (falling
//! back to the other family) through the configured [`Connector`], and send
//! the proxy's own obfuscated2 header.

use crate::config::IpPreference;
use crate::dc::DcTable;
use crate::net::balance::{Balancer, Change};
use crate::net::connect::{ConnectError, Connector, ErrorClass};
use crate::net::warm::WarmPool;
use crate::net::ws_upstream::WsUpstream;
use crate::relay::UpstreamSide;
use futures_util::stream::{FuturesUnordered, StreamExt};
use mtgate_proto::obfs2::{self, DcIndex, ProtoTag, HEADER_LEN};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Why no upstream could be opened.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("DC index {0} has no entry and the rule is `close`")]
    UnknownDc(i16),
    #[error("every address of DC {dc} failed; last error: {last}")]
    Unreachable { dc: u16, last: String },
}

/// A connected, header-sent upstream.
pub struct Connected {
    pub side: UpstreamSide,
    pub dc: u16,
    pub addr: SocketAddr,
    pub took: Duration,
}

/// Orders addresses: preferred family first, original order within a family.
pub fn ordered(addrs: &[SocketAddr], prefer: IpPreference) -> Vec<SocketAddr> {
    let mut v = addrs.to_vec();
    v.sort_by_key(|a| match (prefer, a.is_ipv6()) {
        (IpPreference::V6, true) | (IpPreference::V4, false) => 0,
        _ => 1,
    });
    v
}

/// Why one address could not be dialled.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0}")]
    Connect(ConnectError),
    /// Connected, but the header could not be sent.
    #[error("{0}")]
    Send(std::io::Error),
}

impl DialError {
    /// The failure's class (metrics label, log word).
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Connect(e) => e.class,
            Self::Send(e) => ErrorClass::of_io(e),
        }
    }
}

/// Connects to one DC address through `connector` and sends the proxy's own
/// obfuscated2 header (PROTOCOL §5.1) announcing `tag`; the stream is then
/// ready for the transport `tag` names. `mtgate doctor` probes DCs with this.
pub async fn dial(
    connector: &Connector,
    addr: SocketAddr,
    tag: ProtoTag,
    dc: DcIndex,
) -> Result<UpstreamSide, DialError> {
    let stream = connector.connect(addr).await.map_err(DialError::Connect)?;
    send_header(stream, tag, dc).await.map_err(DialError::Send)
}

/// Sends the proxy's own obfuscated2 header on a connected `stream`.
async fn send_header(
    mut stream: tokio::net::TcpStream,
    tag: ProtoTag,
    dc: DcIndex,
) -> std::io::Result<UpstreamSide> {
    let _ = stream.set_nodelay(true);
    let mut random = [0u8; HEADER_LEN];
    loop {
        mtgate_crypto::fill_random(&mut random);
        if obfs2::is_valid_init(&random) {
            break;
        }
    }
    // The client's signed index is passed on (a DC ignores it; it keeps media visible).
    let (header, ciphers) = obfs2::build_dc_header(&random, tag, dc);
    stream.write_all(&header).await?;
    Ok(UpstreamSide {
        stream,
        ciphers,
        lease: None,
    })
}

/// A warm connection to `addr` from the pool with the header sent, if one
/// is ready and takes the header (one that does not is thrown away).
async fn warm(
    route: &Route<'_>,
    addr: SocketAddr,
    tag: ProtoTag,
    dc: DcIndex,
) -> Option<UpstreamSide> {
    let stream = route.warm.take(addr)?;
    send_header(stream, tag, dc).await.ok()
}

/// Where a direct connection goes and how: the connector, the DC table,
/// the balancer, the family preference.
pub struct Route<'a> {
    pub connector: &'a Connector,
    pub table: &'a DcTable,
    pub balancer: &'a Balancer,
    pub prefer: IpPreference,
    /// Connections opened ahead (`[upstream.pool]`).
    pub warm: &'a WarmPool,
    /// How long an attempt may go unanswered before the next target starts
    /// alongside it (`upstream.attempt_delay`; zero: one at a time).
    pub attempt_delay: Duration,
    /// DC connections through WebSocket endpoints, where configured.
    pub ws: Option<&'a WsUpstream>,
    /// Bounds a WebSocket connect (TCP, TLS and the upgrade).
    pub connect_timeout: Duration,
}

/// Dials the DC for `dc` and sends the obfuscated2 header with the client's
/// tag: its targets in the balancer's order for `client`, the next one only
/// after a failed connect (no client byte has been forwarded yet, so a retry
/// is safe). Every result feeds the target's circuit breaker; `events` hears
/// each failure and each ejection.
pub async fn connect_direct(
    route: &Route<'_>,
    dc: DcIndex,
    tag: ProtoTag,
    client: IpAddr,
    events: &mut (dyn FnMut(Attempt<'_>) + Send),
) -> Result<Connected, UpstreamError> {
    let (id, addrs) = route
        .table
        .resolve(dc.0)
        .ok_or(UpstreamError::UnknownDc(dc.0))?;
    let started = Instant::now();
    let ws = route.ws.filter(|w| w.host(id, dc.0 < 0).is_some());
    // The WebSocket way (TLS, the upgrade) is large and rare: boxed, so the
    // future every connection allocates stays small.
    match ws {
        None => via_tcp(route, id, addrs, dc, tag, client, started, events).await,
        Some(ws) if !ws.fallback_only() => {
            Box::pin(via_ws(ws, route, id, dc, tag, started, events)).await
        }
        // TCP first; the WebSocket endpoint when every address failed.
        Some(ws) => match via_tcp(route, id, addrs, dc, tag, client, started, events).await {
            Ok(c) => Ok(c),
            Err(_) => Box::pin(via_ws(ws, route, id, dc, tag, started, events)).await,
        },
    }
}

/// The DC through its WebSocket endpoint.
async fn via_ws(
    ws: &WsUpstream,
    route: &Route<'_>,
    id: u16,
    dc: DcIndex,
    tag: ProtoTag,
    started: Instant,
    events: &mut (dyn FnMut(Attempt<'_>) + Send),
) -> Result<Connected, UpstreamError> {
    let r = ws.connect(id, dc.0 < 0, route.connect_timeout).await;
    let failed = match r {
        Some(Ok((stream, addr))) => match send_header(stream, tag, dc).await {
            Ok(side) => {
                return Ok(Connected {
                    side,
                    dc: id,
                    addr,
                    took: started.elapsed(),
                })
            }
            Err(e) => DialError::Send(e),
        },
        Some(Err(e)) => DialError::Connect(e),
        None => return Err(UpstreamError::UnknownDc(dc.0)),
    };
    let last = failed.to_string();
    events(Attempt::Failed {
        dc: id,
        class: failed.class(),
        error: &last,
    });
    Err(UpstreamError::Unreachable { dc: id, last })
}

/// The DC over TCP: its addresses in the balancer's order, happy eyeballs.
#[allow(clippy::too_many_arguments)]
async fn via_tcp(
    route: &Route<'_>,
    id: u16,
    addrs: &[SocketAddr],
    dc: DcIndex,
    tag: ProtoTag,
    client: IpAddr,
    started: Instant,
    events: &mut (dyn FnMut(Attempt<'_>) + Send),
) -> Result<Connected, UpstreamError> {
    let mut last = String::from("no address");
    let mut pending = route
        .balancer
        .order(addrs, route.prefer, client)
        .into_iter();
    let attempt = |addr: SocketAddr| async move {
        let result = match warm(route, addr, tag, dc).await {
            Some(side) => Ok(side),
            None => dial(route.connector, addr, tag, dc).await,
        };
        (addr, result)
    };
    // Happy eyeballs (RFC 8305): the next target starts when the current
    // ones failed or after `attempt_delay` without an answer, whichever
    // comes first; the first connection wins and the others are dropped.
    let mut running = FuturesUnordered::new();
    // Started and not yet answered (a handful at most).
    let mut open: Vec<SocketAddr> = Vec::new();
    loop {
        if running.is_empty() {
            match pending.next() {
                Some(a) => {
                    open.push(a);
                    running.push(attempt(a));
                }
                None => break,
            }
        }
        let stagger = !route.attempt_delay.is_zero() && pending.len() > 0;
        let next = tokio::select! {
            done = running.next() => done,
            _ = tokio::time::sleep(route.attempt_delay), if stagger => {
                if let Some(a) = pending.next() {
                    open.push(a);
                    running.push(attempt(a));
                }
                continue;
            }
        };
        let Some((addr, result)) = next else {
            continue;
        };
        open.retain(|a| *a != addr);
        let change = route.balancer.record(addr, result.is_ok());
        if let Change::Ejected(cooldown) = change {
            events(Attempt::Ejected { addr, cooldown });
        }
        match result {
            Ok(mut side) => {
                if change == Change::Restored {
                    events(Attempt::Restored { addr });
                }
                side.lease = route.balancer.lease_for_strategy(addr);
                // Targets still silent while this one answered are slow or
                // black-holed: a failure each for their breakers, so one that
                // never answers is taken out instead of costing every client
                // the attempt delay.
                for slow in open {
                    if let Change::Ejected(cooldown) = route.balancer.record(slow, false) {
                        events(Attempt::Ejected {
                            addr: slow,
                            cooldown,
                        });
                    }
                    events(Attempt::Failed {
                        dc: id,
                        class: ErrorClass::Timeout,
                        error: &format!("{slow}: no answer while another target answered"),
                    });
                }
                return Ok(Connected {
                    side,
                    dc: id,
                    addr,
                    took: started.elapsed(),
                });
            }
            Err(e) => {
                last = format!("{addr}: {e}");
                events(Attempt::Failed {
                    dc: id,
                    class: e.class(),
                    error: &last,
                });
            }
        }
    }
    Err(UpstreamError::Unreachable { dc: id, last })
}

/// What happened on the way to a DC, for the session's events.
#[derive(Debug)]
pub enum Attempt<'a> {
    /// One target failed.
    Failed {
        dc: u16,
        class: ErrorClass,
        error: &'a str,
    },
    /// A target's breaker opened.
    Ejected {
        addr: SocketAddr,
        cooldown: Duration,
    },
    /// A target's trial connection succeeded: back in service.
    Restored { addr: SocketAddr },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_order() {
        let a: Vec<SocketAddr> = vec![
            "1.1.1.1:1".parse().unwrap(),
            "[::1]:1".parse().unwrap(),
            "2.2.2.2:1".parse().unwrap(),
        ];
        assert!(ordered(&a, IpPreference::V6)[0].is_ipv6());
        assert_eq!(ordered(&a, IpPreference::V4), vec![a[0], a[2], a[1]]);
    }
}

#[cfg(test)]
mod future_size {
    use super::*;

    /// The dial's future is allocated for every connection: the rare paths
    /// (WebSocket, TLS) are boxed inside it, so it stays small.
    #[test]
    fn the_connect_future_stays_small() {
        let connector = Connector::direct(Duration::from_secs(1));
        let table = DcTable::telegram_defaults(crate::dc::UnknownDcRule::Close);
        let balancer = Balancer::new(Default::default(), []);
        let warm = WarmPool::default();
        let route = Route {
            connector: &connector,
            table: &table,
            balancer: &balancer,
            prefer: IpPreference::V4,
            warm: &warm,
            attempt_delay: Duration::from_millis(250),
            ws: None,
            connect_timeout: Duration::from_secs(1),
        };
        let mut events = |_: Attempt<'_>| {};
        let f = connect_direct(
            &route,
            DcIndex(2),
            ProtoTag::Intermediate,
            IpAddr::from([127, 0, 0, 1]),
            &mut events,
        );
        let size = std::mem::size_of_val(&f);
        eprintln!("connect_direct future: {size} B");
        assert!(size <= 2048, "connect_direct future is {size} B");
        let d = dial(
            &connector,
            "127.0.0.1:1".parse().unwrap(),
            ProtoTag::Intermediate,
            DcIndex(2),
        );
        let size = std::mem::size_of_val(&d);
        eprintln!("dial future: {size} B");
        assert!(size <= 1024, "dial future is {size} B");
    }
}
