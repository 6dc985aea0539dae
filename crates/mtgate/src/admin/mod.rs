//! The admin listener: a small HTTP/1.1 server (hyper), separate from the
//! client port and on loopback by default (`[admin] listen`).
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | Prometheus / OpenMetrics text ([`metrics::Metrics`]) |
//! | `/health/live` | 200 while the process serves HTTP at all |
//! | `/health/startup` | 200 once every client listener is bound ([`Health::mark_started`]), else 503 |
//! | `/health/ready` | 200 when started and not draining, else 503 |
//!
//! | `POST /reload` | reload the config (a bearer with the `admin` role, `admin.token` included; 403 without any token) |
//! | `/api/v1/…` | the admin API ([`api`]: JSON, bearer tokens with roles) |
//! | `/console` | the web console ([`console`]: HTML over the same commands) |
//!
//! Otherwise only `GET` and `HEAD` are answered (405); unknown paths get 404.
//! Connections are capped in all and per address ([`conns`]: the oldest
//! makes room for the newest, so health checks always get in) and must send
//! each request head within [`HEADER_TIMEOUT`]. The admin server never
//! touches client traffic. With `[admin] tls_cert`/`tls_key` it speaks
//! HTTPS only; over plain HTTP, credentials are taken only from loopback
//! ([`tls`]).
//! [`slot::AdminSlot`] keeps it alive across a takeover.

pub mod api;
mod api_cmds;
pub mod conns;
pub mod console;
mod console_html;
pub use conns::{MAX_CONNS, PER_SOURCE};
pub mod front_metrics;
pub mod link_metrics;
pub mod me_metrics;
pub mod metrics;
#[cfg(unix)]
pub mod notify;
pub mod shared_metrics;
pub mod site_metrics;
pub mod slot;
pub mod tls;

use crate::config::AdminToken;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub use metrics::{Metrics, MetricsSink};

/// How long a client may take to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The default admin address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9090";

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The process's lifecycle as the health endpoints report it.
#[derive(Debug, Default)]
pub struct Health {
    started: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    /// Every client listener is bound: startup and readiness pass from now on.
    pub fn mark_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }
    /// [`Health::mark_started`], and tells systemd (`READY=1`, for `Type=notify`).
    pub fn mark_started_and_notify(&self) {
        self.mark_started();
        #[cfg(unix)]
        notify::notify("READY=1");
    }
    /// [`Health::mark_draining`], and tells systemd (`STOPPING=1`).
    pub fn mark_draining_and_notify(&self) {
        self.mark_draining();
        #[cfg(unix)]
        notify::notify("STOPPING=1");
    }
    /// Shutdown began: readiness fails from now on (liveness still passes).
    pub fn mark_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
    pub fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }
    pub fn ready(&self) -> bool {
        self.started() && !self.draining.load(Ordering::SeqCst)
    }
}

/// Runs a reload; `Ok` carries the summary, `Err` the reason it was refused.
pub type ReloadFn = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// What the admin server reads: the metrics and the lifecycle, and what it may
/// trigger (a reload, with a bearer token).
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub health: Health,
    reload: std::sync::OnceLock<(Option<AdminToken>, ReloadFn)>,
    control: std::sync::OnceLock<Arc<crate::control::Control>>,
    tls: std::sync::OnceLock<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl AdminState {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            health: Health::default(),
            reload: std::sync::OnceLock::new(),
            control: std::sync::OnceLock::new(),
            tls: std::sync::OnceLock::new(),
        })
    }

    /// Serves HTTPS only, with `acceptor` (`[admin] tls_cert`/`tls_key`).
    pub fn set_tls(&self, acceptor: tokio_rustls::TlsAcceptor) {
        let _ = self.tls.set(acceptor);
    }

    /// Enables the admin API (`/api/v1/…`) over `control`.
    pub fn set_control(&self, control: Arc<crate::control::Control>) {
        let _ = self.control.set(control);
    }

    pub fn control(&self) -> Option<&Arc<crate::control::Control>> {
        self.control.get()
    }

    /// Enables `POST /reload` (only with a token; without one it answers 403).
    pub fn set_reload(&self, token: Option<AdminToken>, f: ReloadFn) {
        let _ = self.reload.set((token, f));
    }

    fn post_reload<B>(&self, req: &Request<B>, peer: std::net::IpAddr) -> Response<Full<Bytes>> {
        let Some((token, f)) = self.reload.get() else {
            return text(StatusCode::NOT_FOUND, "not found\n");
        };
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match self.control.get() {
            // The token store: any token with the admin role (admin.token is a superuser).
            Some(c) => {
                if token.is_none() && c.tokens.list().is_empty() {
                    return text(
                        StatusCode::FORBIDDEN,
                        "reload over HTTP is disabled: set admin.token or create a token\n",
                    );
                }
                match c.authenticate(given, peer) {
                    Ok(p) if p.role >= crate::control::Role::Admin => {}
                    Ok(_) => return text(StatusCode::FORBIDDEN, "this needs the admin role\n"),
                    Err(crate::control::AuthError::Limited) => {
                        return text(StatusCode::TOO_MANY_REQUESTS, "too many failed attempts\n")
                    }
                    Err(crate::control::AuthError::Refused) => {
                        return text(StatusCode::UNAUTHORIZED, "bad or missing bearer token\n")
                    }
                }
            }
            None => {
                let Some(token) = token else {
                    return text(
                        StatusCode::FORBIDDEN,
                        "reload over HTTP is disabled: set admin.token\n",
                    );
                };
                if !token.matches(given.unwrap_or("")) {
                    return text(StatusCode::UNAUTHORIZED, "bad or missing bearer token\n");
                }
            }
        }
        match f() {
            Ok(summary) => reply(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                format!("reloaded: {summary}\n"),
            ),
            Err(e) => reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                "text/plain; charset=utf-8",
                format!("refused, running configuration kept: {e}\n"),
            ),
        }
    }
}

/// A running admin server; dropping it (or [`AdminServer::stop`]) stops accepting.
pub struct AdminServer {
    pub local_addr: SocketAddr,
    listener: Arc<TcpListener>,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` and serves in the background.
    pub async fn start(addr: SocketAddr, state: Arc<AdminState>) -> std::io::Result<Self> {
        Self::serve(TcpListener::bind(addr).await?, state)
    }

    /// Serves on a listening socket this process already holds (one handed
    /// over by the process it replaces). Call inside the runtime.
    pub fn from_std(
        listener: std::net::TcpListener,
        state: Arc<AdminState>,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Self::serve(TcpListener::from_std(listener)?, state)
    }

    fn serve(listener: TcpListener, state: Arc<AdminState>) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let listener = Arc::new(listener);
        let task = tokio::spawn(accept_loop(listener.clone(), state));
        Ok(Self {
            local_addr,
            listener,
            task,
        })
    }

    /// A duplicate (close-on-exec) of the listening socket, to hand to a new
    /// process on takeover.
    #[cfg(unix)]
    pub fn dup_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        let dup = socket2::SockRef::from(self.listener.as_ref()).try_clone()?;
        Ok(std::os::fd::OwnedFd::from(dup))
    }

    /// Stops accepting (connections in progress finish on their own).
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: Arc<TcpListener>, state: Arc<AdminState>) {
    let conns = conns::Conns::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Always let the newest in: the oldest (of this source, or overall)
        // makes room, so health checks answer whatever holds the port.
        let mut slot = conns.admit(peer.ip());
        let state = state.clone();
        tokio::spawn(async move {
            let served = async {
                match state.tls.get().cloned() {
                    None => serve_conn(stream, peer, state, false).await,
                    Some(acceptor) => {
                        let tls = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream));
                        match tls.await {
                            Ok(Ok(s)) => serve_conn(s, peer, state, true).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "admin TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "admin TLS handshake timed out"),
                        }
                    }
                }
            };
            tokio::select! {
                () = served => {}
                _ = slot.evicted() => {
                    tracing::debug!(%peer, "admin connection closed to make room");
                }
            }
        });
    }
}

/// Serves one admin connection from `peer` (`secure`: over TLS) until it
/// ends: the accept loop's, for any stream.
pub async fn serve_conn<S>(stream: S, peer: SocketAddr, state: Arc<AdminState>, secure: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let state = state.clone();
        async move {
            if tls::refused(&req, peer.ip(), secure) {
                return Ok::<_, Infallible>(reply(
                    StatusCode::FORBIDDEN,
                    "application/json",
                    tls::REFUSAL,
                ));
            }
            if req.uri().path().starts_with("/api/") {
                if let Some(c) = state.control.get() {
                    return Ok::<_, Infallible>(api::handle(c, req, peer.ip()).await);
                }
            }
            let path = req.uri().path();
            if path == "/console" || path.starts_with("/console/") {
                if let Some(c) = state.control.get() {
                    return Ok::<_, Infallible>(console::handle(c, req, peer.ip()).await);
                }
            }
            Ok::<_, Infallible>(handle_from(&state, &req, peer.ip()))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), svc);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "admin connection ended with an error");
    }
}

fn reply(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body)
}

fn check(ok: bool, yes: &'static str, no: &'static str) -> Response<Full<Bytes>> {
    if ok {
        text(StatusCode::OK, yes)
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, no)
    }
}

/// Answers one request (routing on the path only; the query is ignored).
pub fn handle<B>(state: &AdminState, req: &Request<B>) -> Response<Full<Bytes>> {
    handle_from(state, req, std::net::IpAddr::from([127, 0, 0, 1]))
}

/// [`handle`] for a request from `peer`.
pub fn handle_from<B>(
    state: &AdminState,
    req: &Request<B>,
    peer: std::net::IpAddr,
) -> Response<Full<Bytes>> {
    if req.method() == Method::POST && req.uri().path() == "/reload" {
        return state.post_reload(req, peer);
    }
    if (req.method() != Method::GET && req.method() != Method::HEAD)
        || (req.uri().path() == "/reload" && state.reload.get().is_some())
    {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        let allow = if req.uri().path() == "/reload" {
            "POST"
        } else {
            "GET, HEAD"
        };
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static(allow),
        );
        return r;
    }
    let h = &state.health;
    match req.uri().path() {
        "/metrics" => match state.metrics.encode() {
            Ok(body) => reply(StatusCode::OK, OPENMETRICS, body),
            Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
        },
        "/health/live" => text(StatusCode::OK, "live\n"),
        "/health/startup" => check(h.started(), "started\n", "starting\n"),
        "/health/ready" => check(
            h.ready(),
            "ready\n",
            if h.started() {
                "draining\n"
            } else {
                "starting\n"
            },
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
