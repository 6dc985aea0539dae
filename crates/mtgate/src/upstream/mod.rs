//! Upstream selection for direct mode: resolve the client's DC index through
//! the DC table to its group of targets, open them in the balancer's order
//! (each by its kind: an address through the default [`Connector`] or a
//! named chain, a WebSocket endpoint), and send the proxy's own obfuscated2
//! header. [`probe`] checks one target the same way (health checks, doctor).

use crate::config::IpPreference;
use crate::dc::DcTable;
use crate::net::balance::{Balancer, Change};
use crate::net::connect::{Chains, ConnectError, Connector, ErrorClass};
use crate::net::target::Target;
use crate::net::warm::WarmPool;
use crate::net::ws_upstream::{WsUpstream, WsUpstreamConfig};
use crate::relay::UpstreamSide;

pub mod probe;
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
    #[error("every target of DC {dc} failed; last error: {last}")]
    Unreachable { dc: u16, last: String },
}

/// A connected, header-sent upstream.
pub struct Connected {
    pub side: UpstreamSide,
    pub dc: u16,
    pub addr: SocketAddr,
    pub took: Duration,
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

/// A second look at a DC whose every target failed (`upstream.retries`,
/// `upstream.retry_backoff`): after a back-off the group is tried again,
/// in a fresh order, while the client's connect budget
/// (`upstream.connect_timeout`, from the first attempt) allows. Only ever
/// before a client byte was forwarded: a relayed connection is never
/// re-dialled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Extra passes over the group (0: none).
    pub passes: u8,
    /// The first back-off; each further one doubles, plus up to half again
    /// of random jitter so clients retrying at once spread out.
    pub backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            passes: 1,
            backoff: Duration::from_millis(100),
        }
    }
}

impl Retry {
    /// The wait before pass `n` (1-based), jitter included.
    fn wait(&self, n: u8) -> Duration {
        let base = self
            .backoff
            .saturating_mul(1u32 << u32::from(n.saturating_sub(1).min(8)));
        let mut r = [0u8; 2];
        mtgate_crypto::fill_random(&mut r);
        base + base.mul_f64(f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX) / 2.0)
    }
}

/// Where a direct connection goes and how: the connectors, the DC table,
/// the balancer, the family preference.
pub struct Route<'a> {
    /// The default way to a plain address (direct, or `upstream.socks5`).
    pub connector: &'a Connector,
    /// The named ways of `via` targets (`[upstream.chains]`, `direct`).
    pub chains: &'a Chains,
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
    /// Every DC through the link's exit, when this node is a bridge.
    pub link: Option<&'a std::sync::Arc<crate::link::Bridge>>,
    /// Bounds a WebSocket connect (TCP, TLS and the upgrade), and a
    /// client's whole connect when it comes to retry passes.
    pub connect_timeout: Duration,
    /// Passes over a group whose every target failed.
    pub retry: Retry,
}

/// Every target the table and `[upstream.websocket]` give each DC: its
/// group, and its WebSocket endpoint where `[upstream.websocket]` serves it
/// without the group naming it (`mode = only|fallback`). The balancer keeps
/// a breaker for each; the doctor and the active checks probe these. A
/// bridge (`through_link`) reaches every DC through its link instead: one
/// `Target::Link` a DC.
pub fn all_targets(
    table: &DcTable,
    ws: &WsUpstreamConfig,
    through_link: bool,
) -> Vec<(u16, Target)> {
    let mut v = Vec::new();
    for (dc, group) in table.entries() {
        if through_link {
            v.push((dc, Target::Link { dc }));
            continue;
        }
        v.extend(group.iter().map(|t| (dc, t.clone())));
        let endpoint = Target::WebSocket { dc };
        if ws.host(dc).is_some() && !group.contains(&endpoint) {
            v.push((dc, endpoint));
        }
    }
    v
}

/// The owned parts of a [`Route`] for one-off probes (`mtgate doctor`): the
/// configured ways, no balancing state, no warm connections.
pub struct Ways {
    connector: Connector,
    chains: Chains,
    table: DcTable,
    balancer: std::sync::Arc<Balancer>,
    warm: WarmPool,
    ws: Option<std::sync::Arc<WsUpstream>>,
    link: Option<std::sync::Arc<crate::link::Bridge>>,
    prefer: IpPreference,
    timeout: Duration,
}

impl Ways {
    /// The ways `cfg` configures, every connect bounded by `timeout`.
    pub fn new(cfg: &crate::config::Config, timeout: Duration) -> Self {
        Self {
            connector: Connector::through(cfg.socks5.clone(), timeout),
            chains: Chains::build(&cfg.chains, timeout),
            table: cfg.dcs.clone(),
            balancer: Balancer::new(Default::default(), []),
            warm: WarmPool::default(),
            ws: WsUpstream::new(&cfg.ws_upstream),
            // A bridge's probes go through its link (the doctor's own links).
            link: cfg
                .link
                .bridge
                .clone()
                .filter(|b| !b.forward)
                .map(|b| crate::link::Bridge::new(b, Default::default(), Default::default())),
            prefer: cfg.prefer,
            timeout,
        }
    }

    pub fn route(&self) -> Route<'_> {
        Route {
            connector: &self.connector,
            chains: &self.chains,
            table: &self.table,
            balancer: &self.balancer,
            prefer: self.prefer,
            warm: &self.warm,
            attempt_delay: Duration::ZERO,
            ws: self.ws.as_deref(),
            link: self.link.as_ref(),
            connect_timeout: self.timeout,
            retry: Retry {
                passes: 0,
                ..Retry::default()
            },
        }
    }
}

/// Dials the DC for `dc` and sends the obfuscated2 header with the client's
/// tag: its targets in the balancer's order for `client`, the next one only
/// after a failed connect (no client byte has been forwarded yet, so a retry
/// is safe). Every result feeds the target's circuit breaker; `events` hears
/// each failure and each ejection.
///
/// A DC whose group names no WebSocket target but has a host in
/// `[upstream.websocket]` follows that section's `mode`: its endpoint alone
/// (`only`) or after every other target failed (`fallback`).
pub async fn connect_direct(
    route: &Route<'_>,
    dc: DcIndex,
    tag: ProtoTag,
    client: IpAddr,
    events: &mut (dyn FnMut(Attempt<'_>) + Send),
) -> Result<Connected, UpstreamError> {
    let (id, targets) = route
        .table
        .resolve(dc.0)
        .ok_or(UpstreamError::UnknownDc(dc.0))?;
    let started = Instant::now();
    let listed = targets
        .iter()
        .any(|t| matches!(t, Target::WebSocket { .. }));
    let ws = route
        .ws
        .filter(|w| !listed && w.host(id, dc.0 < 0).is_some());
    let endpoint = [Target::WebSocket { dc: id }];
    let through_link = [Target::Link { dc: id }];
    let call = Call {
        route,
        id,
        dc,
        tag,
        client,
        started,
    };
    let mut pass = 0;
    loop {
        let r = match ws {
            // A bridge: the exit reaches the DC from its own table.
            _ if route.link.is_some() => call.try_group(&through_link, events).await,
            None => call.try_group(targets, events).await,
            Some(ws) if !ws.fallback_only() => call.try_group(&endpoint, events).await,
            Some(_) => match call.try_group(targets, events).await {
                Ok(c) => Ok(c),
                Err(_) => call.try_group(&endpoint, events).await,
            },
        };
        pass += 1;
        let wait = route.retry.wait(pass);
        let budget = route.connect_timeout.saturating_sub(started.elapsed());
        match r {
            Err(UpstreamError::Unreachable { .. })
                if pass <= route.retry.passes && wait < budget =>
            {
                tokio::time::sleep(wait).await;
            }
            r => return r,
        }
    }
}

/// One client's way to its DC.
struct Call<'r, 'a> {
    route: &'r Route<'a>,
    id: u16,
    dc: DcIndex,
    tag: ProtoTag,
    client: IpAddr,
    started: Instant,
}

impl Call<'_, '_> {
    /// Opens one target of whatever kind and sends the header; the address
    /// connected to comes back with the stream.
    async fn open(&self, t: &Target) -> Result<(UpstreamSide, SocketAddr), DialError> {
        let route = self.route;
        match t {
            Target::Addr(addr) => match warm(route, *addr, self.tag, self.dc).await {
                Some(side) => Ok((side, *addr)),
                None => dial(route.connector, *addr, self.tag, self.dc)
                    .await
                    .map(|s| (s, *addr)),
            },
            Target::Via { addr, chain } => {
                let c = route.chains.get(chain).ok_or_else(|| {
                    DialError::Connect(ConnectError {
                        class: ErrorClass::Local,
                        detail: format!("no chain `{chain}`"),
                    })
                })?;
                dial(c, *addr, self.tag, self.dc).await.map(|s| (s, *addr))
            }
            // TLS and the upgrade are large and rare: boxed, so the future
            // every connection allocates stays small.
            Target::WebSocket { dc } => Box::pin(ws_dial(route, *dc, self.dc, self.tag)).await,
            Target::Link { .. } => Box::pin(link_dial(route, self.dc, self.tag)).await,
        }
    }

    /// `targets` in the balancer's order, happy eyeballs.
    async fn try_group(
        &self,
        targets: &[Target],
        events: &mut (dyn FnMut(Attempt<'_>) + Send),
    ) -> Result<Connected, UpstreamError> {
        let (route, id) = (self.route, self.id);
        let mut last = String::from("no target");
        let mut pending = route
            .balancer
            .order(targets, route.prefer, self.client)
            .into_iter();
        let attempt = |t: Target| async move {
            let result = self.open(&t).await;
            (t, result)
        };
        // Happy eyeballs (RFC 8305): the next target starts when the current
        // ones failed or after `attempt_delay` without an answer, whichever
        // comes first; the first connection wins and the others are dropped.
        let mut running = FuturesUnordered::new();
        // Started and not yet answered (a handful at most).
        let mut open: Vec<Target> = Vec::new();
        loop {
            if running.is_empty() {
                match pending.next() {
                    Some(t) => {
                        open.push(t.clone());
                        running.push(attempt(t));
                    }
                    None => break,
                }
            }
            let stagger = !route.attempt_delay.is_zero() && pending.len() > 0;
            let next = tokio::select! {
                done = running.next() => done,
                _ = tokio::time::sleep(route.attempt_delay), if stagger => {
                    if let Some(t) = pending.next() {
                        open.push(t.clone());
                        running.push(attempt(t));
                    }
                    continue;
                }
            };
            let Some((target, result)) = next else {
                continue;
            };
            open.retain(|t| *t != target);
            let change = route.balancer.record(&target, result.is_ok());
            if let Change::Ejected(cooldown) = change {
                events(Attempt::Ejected {
                    target: &target,
                    cooldown,
                });
            }
            match result {
                Ok((mut side, addr)) => {
                    if change == Change::Restored {
                        events(Attempt::Restored { target: &target });
                    }
                    side.lease = route.balancer.lease_for_strategy(&target);
                    // Targets still silent while this one answered are slow or
                    // black-holed: a failure each for their breakers, so one that
                    // never answers is taken out instead of costing every client
                    // the attempt delay.
                    for slow in open {
                        if let Change::Ejected(cooldown) = route.balancer.record(&slow, false) {
                            events(Attempt::Ejected {
                                target: &slow,
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
                        took: self.started.elapsed(),
                    });
                }
                Err(e) => {
                    last = format!("{target}: {e}");
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
}

/// DC `id` through its WebSocket endpoint (the client's index `dc` says
/// whether the media name is wanted), with the header sent.
async fn ws_dial(
    route: &Route<'_>,
    id: u16,
    dc: DcIndex,
    tag: ProtoTag,
) -> Result<(UpstreamSide, SocketAddr), DialError> {
    let r = match route.ws {
        Some(ws) => ws.connect(id, dc.0 < 0, route.connect_timeout).await,
        None => None,
    };
    match r {
        Some(Ok((stream, addr))) => send_header(stream, tag, dc)
            .await
            .map(|s| (s, addr))
            .map_err(DialError::Send),
        Some(Err(e)) => Err(DialError::Connect(e)),
        None => Err(DialError::Connect(ConnectError {
            class: ErrorClass::Local,
            detail: format!("no WebSocket endpoint for DC {id}"),
        })),
    }
}

/// DC index `dc` through the link's exit, with the header sent through it.
async fn link_dial(
    route: &Route<'_>,
    dc: DcIndex,
    tag: ProtoTag,
) -> Result<(UpstreamSide, SocketAddr), DialError> {
    let Some(bridge) = route.link else {
        return Err(DialError::Connect(ConnectError {
            class: ErrorClass::Local,
            detail: "no link configured".into(),
        }));
    };
    let (stream, exit) = bridge
        .open(dc.0, route.connect_timeout)
        .await
        .map_err(DialError::Connect)?;
    send_header(stream, tag, dc)
        .await
        .map(|s| (s, exit))
        .map_err(DialError::Send)
}

/// A connection to DC index `dc` without the header, for the link's exit
/// (the bridge's session sends its own header through it): the DC's group
/// in the balancer's order, one target at a time, each result fed to its
/// breaker.
pub async fn connect_raw(
    route: &Route<'_>,
    dc: i16,
    client: IpAddr,
) -> Result<tokio::net::TcpStream, UpstreamError> {
    let (id, targets) = route
        .table
        .resolve(dc)
        .ok_or(UpstreamError::UnknownDc(dc))?;
    let mut last = String::from("no target");
    for t in route.balancer.order(targets, route.prefer, client) {
        let r = match &t {
            Target::Addr(a) => match route.warm.take(*a) {
                Some(s) => Ok(s),
                None => route.connector.connect(*a).await,
            },
            Target::Via { addr, chain } => match route.chains.get(chain) {
                Some(c) => c.connect(*addr).await,
                None => Err(ConnectError {
                    class: ErrorClass::Local,
                    detail: format!("no chain `{chain}`"),
                }),
            },
            Target::WebSocket { dc: n } => match route.ws {
                Some(ws) => match ws.connect(*n, dc < 0, route.connect_timeout).await {
                    Some(r) => r.map(|(s, _)| s),
                    None => Err(ConnectError {
                        class: ErrorClass::Local,
                        detail: format!("no WebSocket endpoint for DC {n}"),
                    }),
                },
                None => Err(ConnectError {
                    class: ErrorClass::Local,
                    detail: "no WebSocket upstream".into(),
                }),
            },
            Target::Link { .. } => Err(ConnectError {
                class: ErrorClass::Local,
                detail: "an exit does not chain to another link".into(),
            }),
        };
        route.balancer.record(&t, r.is_ok());
        match r {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = format!("{t}: {e}"),
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
        target: &'a Target,
        cooldown: Duration,
    },
    /// A target's trial connection succeeded: back in service.
    Restored { target: &'a Target },
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
        let chains = Chains::build(&Default::default(), Duration::from_secs(1));
        let route = Route {
            connector: &connector,
            chains: &chains,
            table: &table,
            balancer: &balancer,
            prefer: IpPreference::V4,
            warm: &warm,
            attempt_delay: Duration::from_millis(250),
            ws: None,
            link: None,
            connect_timeout: Duration::from_secs(1),
            retry: Retry::default(),
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

#[cfg(test)]
mod retry {
    use super::Retry;
    use std::time::Duration;

    #[test]
    fn back_off_doubles_with_bounded_jitter() {
        let r = Retry {
            passes: 3,
            backoff: Duration::from_millis(100),
        };
        for (n, base) in [(1u8, 100u64), (2, 200), (3, 400)] {
            for _ in 0..50 {
                let w = r.wait(n).as_millis() as u64;
                assert!((base..=base + base / 2).contains(&w), "pass {n}: {w} ms");
            }
        }
        // Far passes stay bounded.
        assert!(r.wait(200) <= Duration::from_millis(100 * 256 * 3 / 2));
    }
}
