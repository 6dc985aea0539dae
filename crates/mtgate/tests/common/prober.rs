//! The prober's side of the stealth tests: many kinds of probe a censor
//! sends, each sent to the website directly and through mtgate, and the
//! differences found (bytes, FIN/RST/open, timing).

use super::*;
use mtgate_crypto::Key16;
use mtgate_proto::faketls::build_client_hello;
use mtgate_proto::obfs2::{build_header, DcIndex, ProtoTag};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// nginx's `client_header_timeout` and `keepalive_timeout` in this test.
pub const SITE_IDLE: Duration = Duration::from_secs(1);
pub const LIMIT: Duration = Duration::from_millis(4000);
pub const TOLERANCE: Duration = Duration::from_millis(400);
/// Bytes a TLS record's length may differ between two answers of the same
/// site: nginx's ECDSA signatures (DER) vary by a few bytes per handshake.
pub const SHAPE_SLACK: usize = 6;
/// Probes in flight at once (all from one address; well within the
/// per-source fronting budget, as one careful prober would be).
pub const PARALLEL: usize = 4;

#[derive(Clone, Copy, Debug)]
pub enum Cmp {
    /// Byte for byte, but for an HTTP `Date` header (nginx answers garbage
    /// with a 400 page that carries one).
    Exact,
    /// HTTP: exact but for the `Date` header, which may tick between the two.
    Http,
    /// TLS: record types and lengths (the content is random per connection).
    Tls,
}

#[derive(Clone)]
pub struct Probe {
    pub name: &'static str,
    pub chunks: Vec<Vec<u8>>,
    pub gap: Duration,
    pub half_close: bool,
    pub cmp: Cmp,
}

pub fn p(name: &'static str, chunks: Vec<Vec<u8>>, half_close: bool, cmp: Cmp) -> Probe {
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
pub fn rustls_hello(name: &str) -> Vec<u8> {
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

pub fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    mtgate_crypto::fill_random(&mut v);
    v[0] = 0x42; // never a TLS record type
    v
}

/// Sixteen kinds of probe, fresh random bytes each call.
pub fn kinds() -> Vec<Probe> {
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
pub fn strip_date(b: &[u8]) -> Vec<u8> {
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
pub async fn compare(
    site: SocketAddr,
    proxy: SocketAddr,
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
            } else if !shapes_match(&a, &b, SHAPE_SLACK) {
                Err(format!("{name}: record shapes differ: {a:?} vs {b:?}"))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Runs `probes` from `source`, `PARALLEL` at a time; every difference.
pub async fn run(
    site: SocketAddr,
    proxy: SocketAddr,
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
pub fn series(n: usize) -> Vec<Probe> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.extend(kinds());
    }
    out.truncate(n);
    out
}

/// Kinds that end at once: each half-closes after its bytes, so the site
/// answers (or closes) without waiting for a timeout. For long runs.
pub fn quick_kinds() -> Vec<Probe> {
    kinds()
        .into_iter()
        .filter(|p| p.gap == Duration::from_millis(10) && p.chunks.len() == 1)
        .map(|mut p| {
            p.half_close = true;
            p
        })
        .collect()
}

/// `n` quick probes cycling through [`quick_kinds`].
pub fn quick_series(n: usize) -> Vec<Probe> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.extend(quick_kinds());
    }
    out.truncate(n);
    out
}
