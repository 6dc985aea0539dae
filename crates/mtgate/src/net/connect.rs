//! Upstream connectors: how mtgate opens a byte stream to an upstream
//! address (a DC in direct mode).
//!
//! [`Connector`] is the seam: the session and `mtgate doctor` ask it for a
//! connected stream to a target and get one, or a [`ConnectError`] whose
//! [`ErrorClass`] drives metrics, logs and whether another target is tried.
//! Today a connector is plain TCP or TCP through a chain of SOCKS5 proxies
//! (`[upstream] socks5`); both yield a `TcpStream`, so the relay is the same
//! for each. Middle-end links (ME mode) always connect directly: their keys
//! are bound to both ends' addresses, which a SOCKS hop would change.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use zeroize::Zeroizing;

/// What kind of failure an upstream connect met (the `class` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The target (or a hop) refused the connection.
    Refused,
    /// No answer within the connect timeout.
    Timeout,
    /// Reset or closed during the set-up.
    Reset,
    /// No route: a network or host unreachable (locally or as a hop said).
    Unreachable,
    /// A hop's name did not resolve.
    Dns,
    /// TLS to the upstream failed (WebSocket upstreams).
    Tls,
    /// A hop spoke its protocol wrongly, refused our credentials or the request.
    Protocol,
    /// Out of something here: ports, descriptors, buffers.
    Local,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 8] = [
        Self::Refused,
        Self::Timeout,
        Self::Reset,
        Self::Unreachable,
        Self::Dns,
        Self::Tls,
        Self::Protocol,
        Self::Local,
    ];

    /// The metric label and log word.
    pub fn label(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Unreachable => "unreachable",
            Self::Dns => "dns",
            Self::Tls => "tls",
            Self::Protocol => "protocol",
            Self::Local => "local",
        }
    }

    /// The class of an I/O error met while connecting.
    pub fn of_io(e: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => Self::Refused,
            K::TimedOut => Self::Timeout,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                Self::Reset
            }
            K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
                if matches!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL)) {
                    Self::Local
                } else {
                    Self::Unreachable
                }
            }
            _ => match e.raw_os_error() {
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => Self::Local,
                Some(libc::EHOSTUNREACH | libc::ENETUNREACH) => Self::Unreachable,
                _ => Self::Reset,
            },
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Why an upstream could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("{class}: {detail}")]
pub struct ConnectError {
    pub class: ErrorClass,
    pub detail: String,
}

impl ConnectError {
    fn io(what: impl fmt::Display, e: &std::io::Error) -> Self {
        Self {
            class: ErrorClass::of_io(e),
            detail: format!("{what}: {e}"),
        }
    }

    fn socks(hop: &Socks5Hop, e: tokio_socks::Error) -> Self {
        use tokio_socks::Error as E;
        let class = match &e {
            E::Io(io) => ErrorClass::of_io(io),
            E::ConnectionRefused => ErrorClass::Refused,
            E::NetworkUnreachable | E::HostUnreachable | E::TtlExpired => ErrorClass::Unreachable,
            _ => ErrorClass::Protocol,
        };
        Self {
            class,
            detail: format!("SOCKS5 proxy {}: {e}", hop.addr),
        }
    }
}

/// One SOCKS5 proxy of a chain: its address and optional credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Socks5Hop {
    /// `host:port` (a name is resolved by the previous hop, or locally for
    /// the first).
    pub addr: String,
    /// Username and password (RFC 1929), kept out of logs and zeroed on drop.
    pub auth: Option<(Zeroizing<String>, Zeroizing<String>)>,
}

impl fmt::Debug for Socks5Hop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socks5Hop")
            .field("addr", &self.addr)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Socks5Hop {
    /// Parses `socks5://[user:pass@]host:port` (the scheme may be left out).
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s.strip_prefix("socks5://").unwrap_or(s);
        if rest.contains("://") {
            return Err("only socks5:// proxies are supported".into());
        }
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((cred, hp)) => {
                let (u, p) = cred
                    .split_once(':')
                    .ok_or("credentials are user:password")?;
                if u.is_empty() || u.len() > 255 || p.is_empty() || p.len() > 255 {
                    return Err("user and password are 1..255 bytes each".into());
                }
                (
                    Some((Zeroizing::new(u.to_owned()), Zeroizing::new(p.to_owned()))),
                    hp,
                )
            }
            None => (None, rest),
        };
        crate::dc::check_host_port(hostport)?;
        Ok(Self {
            addr: hostport.to_owned(),
            auth,
        })
    }
}

/// Opens connections to upstream addresses: directly, or through a chain
/// of SOCKS5 proxies. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Connector {
    hops: Arc<[Socks5Hop]>,
    timeout: Duration,
}

impl Connector {
    /// Plain TCP with a connect timeout.
    pub fn direct(timeout: Duration) -> Self {
        Self::through(Vec::new(), timeout)
    }

    /// Through `hops` in order (none: plain TCP); `timeout` bounds the whole
    /// set-up of one connection, every hop included.
    pub fn through(hops: Vec<Socks5Hop>, timeout: Duration) -> Self {
        Self {
            hops: hops.into(),
            timeout,
        }
    }

    /// The SOCKS5 chain (empty: direct).
    pub fn hops(&self) -> &[Socks5Hop] {
        &self.hops
    }

    /// A connected stream to `target`, ready for the upstream's protocol.
    pub async fn connect(&self, target: SocketAddr) -> Result<TcpStream, ConnectError> {
        match tokio::time::timeout(self.timeout, self.open(target)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError {
                class: ErrorClass::Timeout,
                detail: format!("no connection to {target} within {:?}", self.timeout),
            }),
        }
    }

    async fn open(&self, target: SocketAddr) -> Result<TcpStream, ConnectError> {
        if self.hops.is_empty() {
            return TcpStream::connect(target)
                .await
                .map_err(|e| ConnectError::io(target, &e));
        }
        // The chain's futures are large and only some deployments use them:
        // boxed, so a direct connect's future stays small.
        Box::pin(self.through_chain(target)).await
    }

    async fn through_chain(&self, target: SocketAddr) -> Result<TcpStream, ConnectError> {
        let Some(first) = self.hops.first() else {
            return Err(ConnectError {
                class: ErrorClass::Local,
                detail: "no SOCKS5 proxy configured".into(),
            });
        };
        let first_addrs: Vec<SocketAddr> = tokio::net::lookup_host(first.addr.as_str())
            .await
            .map_err(|e| ConnectError {
                class: ErrorClass::Dns,
                detail: format!("SOCKS5 proxy {}: {e}", first.addr),
            })?
            .collect();
        let mut last = None;
        let mut connected = None;
        for a in first_addrs {
            match TcpStream::connect(a).await {
                Ok(s) => {
                    connected = Some(s);
                    break;
                }
                Err(e) => last = Some(ConnectError::io(format!("SOCKS5 proxy {}", first.addr), &e)),
            }
        }
        let Some(mut stream) = connected else {
            return Err(last.unwrap_or(ConnectError {
                class: ErrorClass::Dns,
                detail: format!("SOCKS5 proxy {}: no address", first.addr),
            }));
        };
        for (i, hop) in self.hops.iter().enumerate() {
            let next = self.hops.get(i + 1).map(|h| h.addr.as_str());
            stream = match next {
                Some(name) => socks_connect(stream, hop, name).await?,
                None => socks_connect(stream, hop, target).await?,
            };
        }
        Ok(stream)
    }
}

/// The named chains of `[upstream.chains]`, each a [`Connector`], with
/// `direct` (no proxy) always there: the ways a `via` target of a DC group
/// names. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Chains(Arc<std::collections::BTreeMap<Arc<str>, Connector>>);

impl Chains {
    /// A connector for each chain, every one bounded by `timeout`.
    pub fn build(
        chains: &std::collections::BTreeMap<Arc<str>, Vec<Socks5Hop>>,
        timeout: Duration,
    ) -> Self {
        let mut m: std::collections::BTreeMap<Arc<str>, Connector> = chains
            .iter()
            .map(|(name, hops)| (name.clone(), Connector::through(hops.clone(), timeout)))
            .collect();
        m.insert(
            crate::net::target::DIRECT.into(),
            Connector::direct(timeout),
        );
        Self(Arc::new(m))
    }

    /// The chain named `name`.
    pub fn get(&self, name: &str) -> Option<&Connector> {
        self.0.get(name)
    }
}

/// Asks `hop` (at the other end of `stream`) to connect to `target`.
async fn socks_connect<'t, T: tokio_socks::IntoTargetAddr<'t>>(
    stream: TcpStream,
    hop: &Socks5Hop,
    target: T,
) -> Result<TcpStream, ConnectError> {
    use tokio_socks::tcp::Socks5Stream;
    let r = match &hop.auth {
        Some((u, p)) => Socks5Stream::connect_with_password_and_socket(stream, target, u, p).await,
        None => Socks5Stream::connect_with_socket(stream, target).await,
    };
    r.map(Socks5Stream::into_inner)
        .map_err(|e| ConnectError::socks(hop, e))
}

#[cfg(test)]
mod tests;
