//! The site's connections: TLS (rustls, ALPN `h2` and `http/1.1`), then
//! hyper's HTTP/1.1 or HTTP/2 server; a plain HTTP request on the TLS port
//! gets the 400 answer web servers give it. Timeouts are a web server's:
//! the TLS handshake and each request head within [`HEAD_TIMEOUT`].

use super::certs::CertStore;
use super::content::{error_page, full, Body};
use super::Site;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// The TLS handshake and every request head must arrive within this (a web
/// server's client header timeout).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections served at once; past it new ones wait in the backlog.
const MAX_CONNECTIONS: usize = 4096;

/// The TLS acceptor over the site's certificate store.
pub fn acceptor(certs: Arc<CertStore>) -> Result<tokio_rustls::TlsAcceptor, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    // `acme-tls/1` last: only an ACME server offers it (TLS-ALPN-01).
    cfg.alpn_protocols = vec![
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
        super::certs::ACME_TLS_ALPN.to_vec(),
    ];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

pub async fn accept_loop(site: Arc<Site>, listener: TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "site accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let site = site.clone();
        tokio::spawn(async move {
            connection(&site, stream, peer).await;
            drop(permit);
        });
    }
}

/// The PROXY protocol v2 signature and the v1 opening.
const V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_SIG: &[u8] = b"PROXY ";

/// The client a connection is for: a loopback hop (mtgate fronting to its
/// own site) announces it with a PROXY protocol header, which is read and
/// taken off; anyone else is the client.
async fn client_of(stream: &mut TcpStream, peer: SocketAddr) -> Option<SocketAddr> {
    if !peer.ip().is_loopback() {
        return Some(peer);
    }
    let mut head = [0u8; 12];
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut head))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        let seen = &head[..n];
        let v2 = seen.len() >= V2_SIG.len() && seen.starts_with(V2_SIG);
        let v1 = seen.len() >= V1_SIG.len() && seen.starts_with(V1_SIG);
        if v1 || v2 {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            return match crate::net::proxy_protocol::read_header(stream, left).await {
                Ok(Some(client)) => Some(client),
                Ok(None) => Some(peer),
                Err(_) => None,
            };
        }
        let maybe = V2_SIG.starts_with(&seen[..n.min(V2_SIG.len())])
            || V1_SIG.starts_with(&seen[..n.min(V1_SIG.len())]);
        if !maybe || n >= V2_SIG.len() {
            return Some(peer);
        }
        // A prefix of a signature so far: wait for more.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Whether the first byte starts a plain HTTP request (a method's letter).
fn plain_http(first: u8) -> bool {
    first.is_ascii_uppercase()
}

async fn connection(site: &Arc<Site>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let Some(client) = client_of(&mut stream, peer).await else {
        return;
    };
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(HEAD_TIMEOUT, stream.peek(&mut first)).await;
    let Ok(Ok(1)) = peeked else {
        return;
    };
    if plain_http(first[0]) {
        serve_http1(site, TokioIo::new(stream), true, client).await;
        return;
    }
    let tls = match tokio::time::timeout(HEAD_TIMEOUT, site.tls.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        _ => return,
    };
    let alpn = tls.get_ref().1.alpn_protocol();
    if alpn == Some(super::certs::ACME_TLS_ALPN) {
        // TLS-ALPN-01: the handshake was the answer.
        return;
    }
    let h2 = alpn == Some(b"h2");
    let io = TokioIo::new(tls);
    if h2 {
        // `https-lanes` parks a long poll per stream and sends its uplink
        // beside it on the one connection: room for both on every stream
        // the session may open (otherwise hyper's 200).
        let streams = site
            .live
            .load()
            .webproxy
            .as_ref()
            .filter(|w| w.cfg.carrier == super::webproxy::Carrier::HttpsLanes)
            .map_or(200, |w| {
                2 * u32::try_from(w.cfg.max_streams).unwrap_or(4096) + 8
            });
        let svc = service(site, false, client);
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .max_concurrent_streams(streams)
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(60)))
            .serve_connection(io, svc)
            .await;
    } else {
        serve_http1(site, io, false, client).await;
    }
}

async fn serve_http1<I>(site: &Arc<Site>, io: I, plain: bool, client: SocketAddr)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = service(site, plain, client);
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        // A client that half-closes after its request still gets the answer,
        // as from nginx (and whatever the timing of its FIN).
        .half_close(true)
        .max_buf_size(64 * 1024)
        .keep_alive(!plain)
        .serve_connection(io, svc)
        .with_upgrades()
        .await;
}

/// The request handler: the site's content, or (`plain`) the answer to a
/// plain HTTP request sent to the TLS port.
fn service(
    site: &Arc<Site>,
    plain: bool,
    client: SocketAddr,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send,
> + Clone {
    let site = site.clone();
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let site = site.clone();
        async move {
            let live = site.live.load_full();
            let head = req.method() == hyper::Method::HEAD;
            let req = match (&live.webproxy, plain) {
                (Some(room), false) => {
                    use super::webproxy::routes::{route, Routed};
                    match route(
                        room,
                        &site.wp_stats,
                        &site.wp_tokens,
                        site.handoff.get(),
                        req,
                        client,
                    )
                    .await
                    {
                        Routed::Answer(r) => return Ok(r),
                        Routed::Site(req) => Ok(req),
                        Routed::Bodiless(parts) => Err(parts),
                    }
                }
                _ => Ok(req),
            };
            let mut r = match req {
                _ if plain => plain_http_answer(head),
                Ok(req) => live.content.answer(req, client).await,
                Err(parts) => live.content.answer_bodiless(parts, client).await,
            };
            if let Some(h) = &live.server_header {
                r.headers_mut().insert(hyper::header::SERVER, h.clone());
            }
            Ok(r)
        }
    })
}

/// The plain HTTP listener of `[site.acme] http_listen`: HTTP-01 answers,
/// and a redirect to HTTPS for everything else (what a site on port 80 does).
pub async fn http_loop(site: Arc<Site>, listener: TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS / 4));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let site = site.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let site = site.clone();
                async move { Ok::<_, std::convert::Infallible>(http_answer(&site, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .half_close(true)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            drop(permit);
        });
    }
}

/// One request on the plain HTTP listener.
fn http_answer(site: &Site, req: &Request<Incoming>) -> Response<Body> {
    let head = req.method() == hyper::Method::HEAD;
    let path = req.uri().path();
    if let Some(token) = path.strip_prefix("/.well-known/acme-challenge/") {
        return match site.http_token(token) {
            Some(answer) => full(hyper::StatusCode::OK, "text/plain", answer, head),
            None => error_page(hyper::StatusCode::NOT_FOUND, head),
        };
    }
    let live = site.live.load();
    let asked = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| {
            h.rsplit_once(':')
                .map_or(h, |(n, _)| n)
                .to_ascii_lowercase()
        });
    let host = asked
        .filter(|h| live.hosts.contains(h))
        .or_else(|| live.hosts.first().cloned())
        .unwrap_or_default();
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut r = error_page(hyper::StatusCode::MOVED_PERMANENTLY, head);
    if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("https://{host}{pq}")) {
        r.headers_mut().insert(hyper::header::LOCATION, v);
    }
    r
}

/// What web servers answer to plain HTTP on their TLS port.
fn plain_http_answer(head: bool) -> Response<Body> {
    let mut r = error_page(hyper::StatusCode::BAD_REQUEST, head);
    r.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_http_is_told_apart_from_tls() {
        assert!(super::plain_http(b'G'));
        assert!(super::plain_http(b'P'));
        assert!(!super::plain_http(0x16));
        assert!(!super::plain_http(0x00));
    }
}
