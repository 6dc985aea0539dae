//! Issue 18: a censor probes mtgate from one address, long enough to pass
//! every failure, reputation and rate threshold of the **default**
//! configuration, and compares each answer with the website mtgate fronts,
//! a real nginx on loopback. Every probe must look the same through mtgate
//! as from nginx directly: the bytes (TLS record shapes where a handshake's
//! content is random; HTTP with the `Date` header set aside), how the
//! connection ends (FIN, RST, still open) and when.
//!
//! Only the mask host, the DCs and the listen address differ from the
//! defaults (tests never reach the internet); the per-source limits are the
//! shipped ones, so the later probes are refused by the policy, and a refusal
//! must look like the site too. A valid FakeTLS hello replayed from the same
//! and from another address gets the website as well.

mod common;

use common::nginx::Nginx;
use common::*;
use mtgate::policy::PolicyReason;
use mtgate_crypto::Key16;
use mtgate_proto::faketls::build_client_hello;
use mtgate_proto::obfs2::{build_header, DcIndex, ProtoTag};
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// nginx's `client_header_timeout` and `keepalive_timeout` in this test.
const SITE_IDLE: Duration = Duration::from_secs(1);
const LIMIT: Duration = Duration::from_millis(4000);
const TOLERANCE: Duration = Duration::from_millis(400);
/// Probes in flight at once (all from one address; well within the
/// per-source fronting budget, as one careful prober would be).
const PARALLEL: usize = 4;

fn key() -> Key16 {
    Key16::new(hex::decode(KEY_HEX).unwrap().try_into().unwrap())
}

#[derive(Clone, Copy, Debug)]
enum Cmp {
    /// Byte for byte, but for an HTTP `Date` header (nginx answers garbage
    /// with a 400 page that carries one).
    Exact,
    /// HTTP: exact but for the `Date` header, which may tick between the two.
    Http,
    /// TLS: record types and lengths (the content is random per connection).
    Tls,
}

#[derive(Clone)]
struct Probe {
    name: &'static str,
    chunks: Vec<Vec<u8>>,
    gap: Duration,
    half_close: bool,
    cmp: Cmp,
}

fn p(name: &'static str, chunks: Vec<Vec<u8>>, half_close: bool, cmp: Cmp) -> Probe {
    Probe {
        name,
        chunks,
        gap: Duration::from_millis(10),
        half_close,
        cmp,
    }
}

/// The ClientHello of a real TLS client (rustls) for `name`: an IP address
/// sends no SNI at all.
fn rustls_hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), server).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("hello");
    }
    out
}

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    mtgate_crypto::fill_random(&mut v);
    v[0] = 0x42; // never a TLS record type
    v
}

/// Sixteen kinds of probe, fresh random bytes each call.
fn kinds() -> Vec<Probe> {
    let now = unix_now();
    let wrong = Key16::new([0x77; 16]);
    let mut r = [0u8; 64];
    mtgate_crypto::fill_random(&mut r);
    let mut obfs = [0u8; 64];
    mtgate_crypto::fill_random(&mut obfs);
    obfs[0] = 0x55;
    obfs[4] = 1;
    let (right_obfs, _) = build_header(&obfs, ProtoTag::Padded, DcIndex(2), Some(&key()));
    let (wrong_obfs, _) = build_header(&obfs, ProtoTag::Padded, DcIndex(2), Some(&wrong));
    let get = b"GET / HTTP/1.1\r\nHost: mask.test\r\n\r\n".to_vec();
    vec![
        p("empty", vec![], false, Cmp::Exact),
        p("empty, half-closed", vec![], true, Cmp::Exact),
        p("random 1 byte", vec![random(1)], false, Cmp::Exact),
        p("random 64 bytes", vec![random(64)], false, Cmp::Exact),
        p("random 2000 bytes", vec![random(2000)], false, Cmp::Exact),
        p("http get", vec![get.clone()], false, Cmp::Http),
        p("http get, half-closed", vec![get], true, Cmp::Http),
        p(
            "tls header then garbage",
            vec![vec![0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]],
            false,
            Cmp::Exact,
        ),
        p(
            "trickle",
            vec![vec![0x16], vec![0x03], vec![0x01], vec![0x02]],
            false,
            Cmp::Exact,
        ),
        p(
            "faketls hello, wrong secret",
            vec![build_client_hello(&wrong, DOMAIN, now, &r, 517)],
            false,
            Cmp::Tls,
        ),
        p(
            "faketls hello, old timestamp",
            vec![build_client_hello(&key(), DOMAIN, now - 3600, &r, 1800)],
            false,
            Cmp::Tls,
        ),
        p(
            "truncated hello",
            vec![build_client_hello(&wrong, DOMAIN, now, &r, 1800)[..300].to_vec()],
            false,
            Cmp::Exact,
        ),
        p(
            "tls hello, site's sni (rustls)",
            vec![rustls_hello(DOMAIN)],
            false,
            Cmp::Tls,
        ),
        p(
            "tls hello, other sni (rustls)",
            vec![rustls_hello("other.example")],
            false,
            Cmp::Tls,
        ),
        p(
            "tls hello, no sni (rustls)",
            vec![rustls_hello("127.0.0.1")],
            false,
            Cmp::Tls,
        ),
        p(
            "obfuscated2, wrong secret",
            vec![wrong_obfs.to_vec()],
            false,
            Cmp::Exact,
        ),
        p(
            "obfuscated2, right secret (mode off)",
            vec![right_obfs.to_vec()],
            false,
            Cmp::Exact,
        ),
    ]
}

/// `b` without its HTTP `Date:` header lines (byte-exact otherwise).
fn strip_date(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut rest = b;
    while let Some(i) = rest
        .windows(8)
        .position(|w| w.eq_ignore_ascii_case(b"\r\ndate: "))
    {
        out.extend_from_slice(&rest[..i]);
        let after = &rest[i + 2..];
        rest = match after.windows(2).position(|w| w == b"\r\n") {
            Some(j) => &after[j..],
            None => &[],
        };
    }
    out.extend_from_slice(rest);
    out
}

/// Sends `probe` to nginx directly and through mtgate from `source`; the
/// differences found, if any.
async fn compare(
    site: std::net::SocketAddr,
    proxy: std::net::SocketAddr,
    source: IpAddr,
    probe: &Probe,
) -> Result<(), String> {
    let (direct, fronted) = tokio::join!(
        probe_from(
            None,
            site,
            &probe.chunks,
            probe.gap,
            probe.half_close,
            LIMIT
        ),
        probe_from(
            Some(source),
            proxy,
            &probe.chunks,
            probe.gap,
            probe.half_close,
            LIMIT
        )
    );
    let name = probe.name;
    if direct.end != fronted.end {
        return Err(format!(
            "{name}: end differs: nginx {:?} after {:?}, mtgate {:?} after {:?} ({} vs {} bytes)",
            direct.end,
            direct.after,
            fronted.end,
            fronted.after,
            direct.bytes.len(),
            fronted.bytes.len()
        ));
    }
    let dt = direct.after.abs_diff(fronted.after);
    if dt >= TOLERANCE {
        return Err(format!(
            "{name}: timing differs by {dt:?}: nginx {:?}, mtgate {:?}",
            direct.after, fronted.after
        ));
    }
    match probe.cmp {
        Cmp::Exact if strip_date(&direct.bytes) != strip_date(&fronted.bytes) => Err(format!(
            "{name}: bytes differ ({} vs {})",
            direct.bytes.len(),
            fronted.bytes.len()
        )),
        Cmp::Http if strip_date(&direct.bytes) != strip_date(&fronted.bytes) => Err(format!(
            "{name}: http answers differ:\n{}\n---\n{}",
            String::from_utf8_lossy(&direct.bytes),
            String::from_utf8_lossy(&fronted.bytes)
        )),
        Cmp::Http if direct.bytes.is_empty() => Err(format!("{name}: nginx said nothing")),
        Cmp::Tls => {
            let (a, b) = (record_shape(&direct.bytes), record_shape(&fronted.bytes));
            if direct.bytes.is_empty() {
                Err(format!("{name}: nginx said nothing to a hello"))
            } else if !shapes_match(&a, &b, 2) {
                Err(format!("{name}: record shapes differ: {a:?} vs {b:?}"))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Runs `probes` from `source`, `PARALLEL` at a time; every difference.
async fn run(
    site: std::net::SocketAddr,
    proxy: std::net::SocketAddr,
    source: IpAddr,
    probes: &[Probe],
) -> Vec<String> {
    let mut errors = Vec::new();
    for group in probes.chunks(PARALLEL) {
        let mut set = tokio::task::JoinSet::new();
        for probe in group {
            let probe = probe.clone();
            set.spawn(async move { compare(site, proxy, source, &probe).await });
        }
        while let Some(r) = set.join_next().await {
            if let Err(e) = r.expect("probe task") {
                errors.push(e);
            }
        }
    }
    errors
}

/// `n` probes cycling through every kind.
fn series(n: usize) -> Vec<Probe> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.extend(kinds());
    }
    out.truncate(n);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prober_past_every_threshold_still_sees_the_website() {
    let site = Nginx::start(DOMAIN, SITE_IDLE);
    // Defaults everywhere but where bytes may go: the mask host and the DCs
    // (a closed loopback port). `handshake_timeout` is set to its default, as
    // the test harness otherwise shortens it.
    let proxy = Proxy::start_full(
        "127.0.0.1:0",
        "handshake_timeout = \"10s\"\n",
        &format!(
            "[tls]\ndomains = [\"{DOMAIN}\"]\nmask_host = \"{}\"\n[users.alice]\nsecret = \"{KEY_HEX}\"\n",
            site.addr
        ),
        &["127.0.0.1:1".parse().expect("addr")],
    )
    .await;
    let prober: IpAddr = "127.0.0.1".parse().expect("ip");
    let other: IpAddr = "127.0.0.3".parse().expect("ip");

    // The replay case: a valid FakeTLS hello is served once, then replayed
    // from the same address and from another one: both get the website.
    let valid = build_client_hello(&key(), DOMAIN, unix_now(), &[7; 64], 1800);
    let first = probe_from(
        Some(other),
        proxy.addr,
        std::slice::from_ref(&valid),
        Duration::ZERO,
        false,
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(
        record_shape(&first.bytes)[..2],
        [(0x16, 122), (0x14, 1)],
        "the first use is served by mtgate"
    );
    let replay = p("replayed valid hello", vec![valid], false, Cmp::Tls);
    let mut errors = run(site.addr, proxy.addr, other, std::slice::from_ref(&replay)).await;
    errors.extend(run(site.addr, proxy.addr, prober, std::slice::from_ref(&replay)).await);
    assert_eq!(
        proxy.counters.rejected(mtgate_proto::RejectReason::Replay),
        2
    );

    // 64 probes of every kind in a row from one address: the failures pass
    // the failure and reputation thresholds on the way, and every later probe
    // is refused by the policy.
    errors.extend(run(site.addr, proxy.addr, prober, &series(64)).await);
    let refused_prober = proxy.counters.policy_refused.load(Relaxed);

    // The rate limit (default burst 200): a source is checked against it only
    // while not blocked, so it is passed by connections that arrive faster
    // than their failures are counted: 300 at once from a fresh address, each
    // (half a second later) a garbage line that nginx answers with a 400. More than the per-source
    // fronting budget are open at once here, so some are held (silent, then
    // a FIN when the client closes); none is reset, and every answer is
    // nginx's own.
    let flooder: IpAddr = "127.0.0.2".parse().expect("ip");
    let garbage = b"\x01\x02 not http\r\n\r\n".to_vec();
    let reference = probe(
        site.addr,
        std::slice::from_ref(&garbage),
        Duration::ZERO,
        true,
        LIMIT,
    )
    .await;
    assert!(!reference.bytes.is_empty(), "nginx answers garbage");
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let addr = proxy.addr;
        let g = garbage.clone();
        burst.spawn(async move {
            // Connect at once, speak half a second later: every connection is
            // counted against the rate before any of them fails.
            let chunks = [Vec::new(), g];
            probe_from(
                Some(flooder),
                addr,
                &chunks,
                Duration::from_millis(500),
                true,
                LIMIT,
            )
            .await
        });
    }
    let (mut answered, mut held) = (0, 0);
    while let Some(r) = burst.join_next().await {
        let seen = r.expect("burst task");
        assert_eq!(
            seen.end,
            End::Fin,
            "a burst connection ended {:?}",
            seen.end
        );
        if seen.bytes.is_empty() {
            held += 1;
        } else {
            assert_eq!(strip_date(&seen.bytes), strip_date(&reference.bytes));
            answered += 1;
        }
    }
    eprintln!("burst: {answered} answered by nginx through mtgate, {held} held");
    assert!(
        proxy.counters.refused(PolicyReason::RateLimited) > 0,
        "the burst passed the rate limit"
    );
    let t0 = std::time::Instant::now();
    while proxy.runtime.mask_budget.stats().open > 0 && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The flooding source, probed one connection at a time, sees the website.
    let refused_mid = proxy.counters.policy_refused.load(Relaxed);
    errors.extend(run(site.addr, proxy.addr, flooder, &series(32)).await);
    let refused_late = proxy.counters.policy_refused.load(Relaxed) - refused_mid;

    let c = &proxy.counters;
    let by = |r| c.refused(r);
    eprintln!(
        "refusals: rate {} failures {} reputation {} (prober {refused_prober}, \
         flooder's last 32 probes {refused_late}); fronted {}; mask budget {:?}",
        by(PolicyReason::RateLimited),
        by(PolicyReason::TooManyFailures),
        by(PolicyReason::ReputationBlocked),
        c.fronted.load(Relaxed),
        proxy.runtime.mask_budget.stats()
    );
    assert!(
        errors.is_empty(),
        "{} of 98 probes told mtgate from nginx:\n{}",
        errors.len(),
        errors.join("\n")
    );
    assert!(
        refused_prober >= 40,
        "failures alone got the prober refused: {refused_prober}"
    );
    assert!(
        by(PolicyReason::TooManyFailures) + by(PolicyReason::ReputationBlocked) > 0,
        "the failure or reputation threshold was passed"
    );
    assert!(
        refused_late >= 30,
        "the flooder's probes came from a refused source: {refused_late}"
    );
    // (The first valid hello was answered but never followed by an inner
    // header, so no connection authenticated at all.)
    assert_eq!(c.authenticated.load(Relaxed), 0, "no probe was served");
}
