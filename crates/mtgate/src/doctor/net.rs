//! The doctor's socket checks: binding the listeners, probing each DC address
//! (TCP, our obfuscated2 header, `req_pq_multi` → `resPQ`) and each middle proxy.

use super::Check;
use crate::config::Config;
use crate::me::files::MeFiles;
use crate::net::connect::{Connector, ErrorClass};
use crate::upstream::{self, DialError};
use mtgate_proto::obfs2::{DcIndex, ProtoTag};
use mtgate_proto::probe::{self, ProbeError};
use mtgate_proto::transport::{self, Decoded};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest answer frame read from a DC during the probe (a resPQ is ~84 bytes).
const MAX_ANSWER: usize = 4096;

/// Binds each client listener and the admin address, then drops them.
pub fn binds(cfg: &Config) -> Vec<Check> {
    let mut v: Vec<Check> = cfg
        .listen
        .iter()
        .map(|a| bind_one(*a, "server.listen"))
        .collect();
    if let Some(a) = cfg.admin_listen {
        v.push(bind_one(a, "admin.listen"));
    }
    v
}

fn bind_one(addr: SocketAddr, key: &str) -> Check {
    let name = format!("bind {addr}");
    let res = crate::server::bind(addr).or_else(|e| {
        // `run` falls back to IPv4 on the same port where IPv6 is missing.
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            crate::server::bind(SocketAddr::from(([0, 0, 0, 0], addr.port()))).map_err(|_| e)
        } else {
            Err(e)
        }
    });
    match res {
        Ok(l) => {
            let got = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            Check::ok(name, format!("{key}: can be bound ({got})"))
        }
        Err(e) => Check::fail(
            name,
            format!("{key}: cannot bind: {e}"),
            bind_fix(e.kind(), addr, key),
        ),
    }
}

/// The fix for a bind error of `kind` on `addr` (configured under `key`).
fn bind_fix(kind: std::io::ErrorKind, addr: SocketAddr, key: &str) -> String {
    match kind {
        std::io::ErrorKind::AddrInUse => format!(
            "another process listens on {addr} (is mtgate already running? `ss -ltnp 'sport = :{}'`); stop it or change {key}",
            addr.port()
        ),
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => format!(
            "ports below 1024 need privileges: grant CAP_NET_BIND_SERVICE (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE; or `setcap cap_net_bind_service=+ep $(which mtgate)`), or use a port >= 1024 in {key}"
        ),
        std::io::ErrorKind::AddrNotAvailable => format!(
            "{} is not an address of this host; use one of its addresses (or 0.0.0.0 / [::]) in {key}",
            addr.ip()
        ),
        _ => format!("check {key} and the host's network configuration"),
    }
}

/// What the DC probes found.
pub struct DcResults {
    pub checks: Vec<Check>,
    /// `(server clock from the resPQ message id, local clock then)`, Unix seconds.
    pub server_times: Vec<(i64, i64)>,
}

/// Why a DC address did not prove itself a DC.
#[derive(Debug, thiserror::Error)]
pub enum DcProbeError {
    #[error("TCP connect: {0}")]
    Connect(std::io::Error),
    #[error("TCP connect timed out")]
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

fn unix_now() -> (u64, u32) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.subsec_nanos())
}

/// One DC address: TCP, our own obfuscated2 header (the code `run` uses),
/// then `req_pq_multi` in the intermediate transport the header announced.
/// Returns the round-trip time and the server's clock.
pub async fn probe_dc(
    connector: &Connector,
    addr: SocketAddr,
    dc: u16,
    timeout: Duration,
) -> Result<(Duration, u64), DcProbeError> {
    let started = Instant::now();
    let tag = ProtoTag::Intermediate;
    let dc_index = DcIndex(i16::try_from(dc).unwrap_or(i16::MAX));
    let side = upstream::dial(connector, addr, tag, dc_index)
        .await
        .map_err(|e| match e {
            DialError::Connect(e) if e.class == ErrorClass::Timeout => DcProbeError::ConnectTimeout,
            DialError::Connect(e) => DcProbeError::Connect(std::io::Error::other(e.detail)),
            DialError::Send(e) => DcProbeError::Send(e),
        })?;
    let left = timeout.saturating_sub(started.elapsed());
    tokio::time::timeout(left, exchange(side, tag))
        .await
        .map_err(|_| DcProbeError::NoAnswer)?
        .map(|server_time| (started.elapsed(), server_time))
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

fn dc_fix(e: &DcProbeError, addr: SocketAddr, dc: u16) -> String {
    match e {
        DcProbeError::Connect(io)
            if addr.is_ipv6() && io.kind() == std::io::ErrorKind::NetworkUnreachable =>
        {
            format!("this host has no IPv6 route; enable IPv6, or leave IPv6 out of [dcs] {dc}")
        }
        DcProbeError::Connect(_) | DcProbeError::ConnectTimeout => format!(
            "no TCP to {addr}: check the outbound firewall and routing (TCP port {}), or set [dcs] {dc} to reachable addresses",
            addr.port()
        ),
        DcProbeError::NoAnswer | DcProbeError::Closed | DcProbeError::Send(_) | DcProbeError::Read(_) => format!(
            "{addr} accepts TCP but does not answer the MTProto handshake: it is not a Telegram DC, or something on the path interferes; check [dcs] {dc}"
        ),
        DcProbeError::Frame(_) | DcProbeError::Answer(_) => format!(
            "{addr} answered, but not like a Telegram DC; check [dcs] {dc}"
        ),
    }
}

/// Probes every address of every DC in the table, all at once.
pub async fn dcs(cfg: &Config, timeout: Duration) -> DcResults {
    let mut set = tokio::task::JoinSet::new();
    let mut order = Vec::new();
    // The way `run` reaches DCs (through the SOCKS5 chain, if any).
    let connector = Connector::through(cfg.socks5.clone(), timeout);
    for (dc, addrs) in cfg.dcs.entries() {
        for &addr in addrs {
            let i = order.len();
            order.push((dc, addr));
            let connector = connector.clone();
            set.spawn(async move { (i, probe_dc(&connector, addr, dc, timeout).await) });
        }
    }
    let mut results: Vec<Option<Result<(Duration, u64), DcProbeError>>> =
        order.iter().map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        if let Ok((i, res)) = r {
            results[i] = Some(res);
        }
    }
    let local = unix_now().0 as i64;
    let mut server_times = Vec::new();
    let mut checks = Vec::new();
    for (i, (dc, addr)) in order.iter().enumerate() {
        let any_ok = order
            .iter()
            .zip(&results)
            .any(|((d, _), r)| d == dc && matches!(r, Some(Ok(_))));
        let name = format!("dc {dc} {addr}");
        match &results[i] {
            Some(Ok((rtt, t))) => {
                server_times.push((*t as i64, local));
                checks.push(Check::ok(
                    name,
                    format!(
                        "TCP + obfuscated2 + req_pq_multi → resPQ in {}",
                        super::ms(*rtt)
                    ),
                ));
            }
            Some(Err(e)) => {
                let fix = dc_fix(e, *addr, *dc);
                checks.push(if any_ok {
                    Check::warn(name, format!("{e} (another address of DC {dc} works)"), fix)
                } else {
                    Check::fail(name, format!("{e}; no address of DC {dc} works"), fix)
                });
            }
            None => checks.push(Check::fail(
                name,
                "the probe task failed",
                "run again; report a bug if it persists",
            )),
        }
    }
    DcResults {
        checks,
        server_times,
    }
}

/// `[me]` enabled: the Telegram files load (not saved anywhere by the doctor).
pub fn me_files(cfg: &Config) -> (Check, Option<MeFiles>) {
    match crate::me::files::load(&cfg.me, &cfg.state_dir, false) {
        Ok(f) => {
            let n = f.all_addrs().len();
            let detail = format!(
                "proxy-secret ({} bytes) and proxy-multi.conf: {} DC(s), {n} middle proxy address(es)",
                f.secret.len(),
                f.clusters.len()
            );
            (Check::ok("me files", detail), Some(f))
        }
        Err(e) if cfg.me.fetch.is_some() => (
            Check::warn(
                "me files",
                format!("{e} (not fetched yet; `run` fetches them over HTTPS at start)"),
                "start mtgate once (or check that core.telegram.org is reachable over HTTPS)",
            ),
            None,
        ),
        Err(e) => (
            Check::fail(
                "me files",
                e.to_string(),
                "download https://core.telegram.org/getProxySecret and getProxyConfig to the paths in [me] (or set `fetch = true`)",
            ),
            None,
        ),
    }
}

/// Each middle proxy: the RPC nonce and handshake, as the ME pool opens them.
pub async fn me_links(cfg: &Config, files: Option<&MeFiles>, timeout: Duration) -> Vec<Check> {
    let Some(files) = files else {
        return Vec::new();
    };
    let addrs = files.all_addrs();
    let start_time = unix_now().0 as u32;
    let pid = (std::process::id() & 0xffff) as u16;
    let probes = addrs.iter().map(|a| async move {
        let p = crate::me::conn::LinkParams {
            secret: &files.secret,
            nat_ip: cfg.me.nat_ip,
            public_host: cfg.public_host.as_deref(),
            offer_crc32c: cfg.me.crc32c,
            timeout,
            pid,
            start_time,
        };
        let t = Instant::now();
        crate::me::conn::open(a, &p).await.map(|_link| t.elapsed())
    });
    let results = futures_join_all(probes).await;
    let any_ok = results.iter().any(Result::is_ok);
    addrs
        .iter()
        .zip(results)
        .map(|(a, r)| {
            let name = format!("me {a}");
            match r {
                Ok(rtt) => Check::ok(name, format!("RPC handshake in {}", super::ms(rtt))),
                Err(e) => {
                    let fix = "check outbound TCP to the middle proxies, [me] nat_ip (this server's public IPv4 behind NAT), the proxy-secret and the clock".to_string();
                    if any_ok {
                        Check::warn(name, format!("{e} (other middle proxies work)"), fix)
                    } else {
                        Check::fail(name, format!("{e}; no middle proxy works"), fix)
                    }
                }
            }
        })
        .collect()
}

/// Awaits every future concurrently, keeping their order (no extra dependency).
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in pinned.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match std::future::Future::poll(f.as_mut(), cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;

    #[test]
    fn bind_fixes() {
        let low: SocketAddr = "0.0.0.0:443".parse().unwrap();
        let high: SocketAddr = "0.0.0.0:8443".parse().unwrap();
        assert!(bind_fix(ErrorKind::PermissionDenied, low, "server.listen")
            .contains("CAP_NET_BIND_SERVICE"));
        assert!(
            !bind_fix(ErrorKind::PermissionDenied, high, "server.listen")
                .contains("CAP_NET_BIND_SERVICE")
        );
        assert!(bind_fix(ErrorKind::AddrInUse, high, "admin.listen")
            .starts_with("another process listens on 0.0.0.0:8443"));
        assert!(bind_fix(ErrorKind::AddrNotAvailable, high, "server.listen")
            .contains("not an address of this host"));
    }

    #[tokio::test]
    async fn a_non_dc_answer_is_refused() {
        // A peer that speaks obfuscated2 like a DC but answers something other
        // than a resPQ (here: a req_pq_multi) is not a DC.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut header = [0u8; 64];
            if s.read_exact(&mut header).await.is_err() {
                return;
            }
            let Some((tag, dc, mut c)) = mtgate_proto::obfs2::parse_dc_side_header(&header) else {
                return;
            };
            assert_eq!((tag, dc.0), (ProtoTag::Intermediate, 2));
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).await;
            let mut out = Vec::new();
            let msg = probe::req_pq_multi(probe::msg_id_at(1, 0, 0, 1), &[7; 16]);
            transport::encode_frame(tag, &msg, &[], &mut out).unwrap();
            c.enc.apply(&mut out);
            let _ = s.write_all(&out).await;
            let _ = s.read(&mut buf).await;
        });
        let e = probe_dc(
            &Connector::direct(Duration::from_secs(5)),
            addr,
            2,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                e,
                DcProbeError::Answer(ProbeError::NotResPq(probe::REQ_PQ_MULTI))
            ),
            "{e}"
        );
        assert!(dc_fix(&e, addr, 2).contains("not like a Telegram DC"));
    }
}
