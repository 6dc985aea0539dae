//! The doctor's socket checks: binding the listeners, probing each DC address
//! (TCP, our obfuscated2 header, `req_pq_multi` → `resPQ`) and each middle proxy.

use super::Check;
use crate::config::Config;
use crate::me::files::MeFiles;
use crate::net::target::Target;
use crate::upstream::{self, probe::probe_target, probe::unix_now, probe::DcProbeError};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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

fn dc_fix(e: &DcProbeError, target: &Target, dc: u16) -> String {
    let addr = target;
    match e {
        DcProbeError::Connect(_) if matches!(target, Target::WebSocket { .. }) => format!(
            "no WebSocket connection to DC {dc}'s endpoint: check [upstream.websocket] (host, port, tls, resolve) and the way to it"
        ),
        DcProbeError::Connect(_) | DcProbeError::ConnectTimeout
            if matches!(target, Target::Link { .. }) =>
        {
            "no link to the exit: check [link.bridge] exit, exit_key and token (an exit that cannot read the hello fronts it, so a wrong key or token looks like a website), the carriage, and that the exit is up".to_string()
        }
        DcProbeError::Connect(_) if matches!(target, Target::Via { .. }) => format!(
            "no connection to {addr}: check the chain's SOCKS5 proxies in [upstream.chains] and that they may reach the DC"
        ),
        DcProbeError::Connect(io)
            if target.addr().is_some_and(|a| a.is_ipv6())
                && io.kind() == std::io::ErrorKind::NetworkUnreachable =>
        {
            format!("this host has no IPv6 route; enable IPv6, or leave IPv6 out of [dcs] {dc}")
        }
        DcProbeError::Connect(_) | DcProbeError::ConnectTimeout => format!(
            "no TCP to {addr}: check the outbound firewall and routing (TCP port {}), or set [dcs] {dc} to reachable addresses",
            target.addr().map_or(443, |a| a.port())
        ),
        DcProbeError::NoAnswer | DcProbeError::Closed | DcProbeError::Send(_) | DcProbeError::Read(_) => format!(
            "{addr} accepts TCP but does not answer the MTProto handshake: it is not a Telegram DC, or something on the path interferes; check [dcs] {dc}"
        ),
        DcProbeError::Frame(_) | DcProbeError::Answer(_) => format!(
            "{addr} answered, but not like a Telegram DC; check [dcs] {dc}"
        ),
    }
}

/// Probes every target of every DC in the table (each by its kind: an
/// address, a SOCKS5 chain, a WebSocket endpoint), all at once.
pub async fn dcs(cfg: &Config, timeout: Duration) -> DcResults {
    // The ways `run` reaches DCs (the SOCKS5 chains, the WebSocket endpoints).
    let ways = upstream::Ways::new(cfg, timeout);
    let route = ways.route();
    let order = upstream::all_targets(
        &cfg.dcs,
        &cfg.ws_upstream,
        crate::runtime::through_link(cfg),
    );
    let results: Vec<Option<Result<(Duration, u64), DcProbeError>>> =
        futures_util::future::join_all(
            order
                .iter()
                .map(|(dc, t)| probe_target(&route, t, *dc, timeout)),
        )
        .await
        .into_iter()
        .map(Some)
        .collect();
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
                        "{} + obfuscated2 + req_pq_multi → resPQ in {}",
                        addr.kind(),
                        super::ms(*rtt)
                    ),
                ));
            }
            Some(Err(e)) => {
                let fix = dc_fix(e, addr, *dc);
                checks.push(if any_ok {
                    Check::warn(name, format!("{e} (another target of DC {dc} works)"), fix)
                } else {
                    Check::fail(name, format!("{e}; no target of DC {dc} works"), fix)
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
    use mtgate_proto::obfs2::ProtoTag;
    use mtgate_proto::probe::{self, ProbeError};
    use mtgate_proto::transport;
    use std::io::ErrorKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn an_unreachable_ipv6_target_gets_the_ipv6_fix() {
        let v6 = Target::Addr("[2001:db8::1]:443".parse().unwrap());
        let e = DcProbeError::Connect(std::io::Error::new(
            ErrorKind::NetworkUnreachable,
            "[2001:db8::1]:443: Network is unreachable",
        ));
        assert!(dc_fix(&e, &v6, 2).contains("no IPv6 route"));
        let refused = DcProbeError::Connect(std::io::Error::new(ErrorKind::ConnectionRefused, "x"));
        assert!(dc_fix(&refused, &v6, 2).starts_with("no TCP to"));
    }

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
        let cfg = Config::from_toml("", &Default::default()).unwrap();
        let ways = upstream::Ways::new(&cfg, Duration::from_secs(5));
        let target = Target::Addr(addr);
        let e = probe_target(&ways.route(), &target, 2, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                DcProbeError::Answer(ProbeError::NotResPq(probe::REQ_PQ_MULTI))
            ),
            "{e}"
        );
        assert!(dc_fix(&e, &target, 2).contains("not like a Telegram DC"));
    }
}
