//! Inbound transports: how client connections come in.
//!
//! A listener yields an [`Inbound`]: the stream and what the transport knows
//! about it ([`Meta`]: the transport peer, the configured address of the
//! listener it came in on, the transport kind). The session takes that, so
//! a new way in (WebSocket, issue 14) is one more listener kind and one
//! more [`Transport`], not a branch in the session. Plain TCP is
//! [`TcpInbound`]; who the *client* is (behind a trusted front end) is
//! decided later, by `crate::peer`, from this metadata and the stream.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// The transport a connection came over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Plain TCP: the obfuscated2 or FakeTLS stream straight on the socket.
    Tcp,
    /// WebSocket binary messages carrying the same stream (`crate::net::websocket`).
    WebSocket,
    /// A stream of Telegram's WEB proxy type (`crate::web::webproxy`).
    WebProxy,
    /// A client's raw connection a forwarding bridge handed over a link
    /// (`crate::link`): the same bytes as on its TCP socket.
    Link,
}

impl Transport {
    /// The log word and metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::WebSocket => "websocket",
            Self::WebProxy => "webproxy",
            Self::Link => "link",
        }
    }

    /// Whether a connection that is not ours can be handed to the mask site
    /// byte for byte (a raw TCP stream, or one forwarded over a link).
    pub fn can_front(self) -> bool {
        matches!(self, Self::Tcp | Self::Link)
    }
}

/// What the transport knows about a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// The transport's peer (a front end's address, behind one).
    pub peer: SocketAddr,
    /// The configured address of the listener it came in on (its name).
    pub listener: SocketAddr,
    pub transport: Transport,
    /// The client's address, when the transport itself learned it (a
    /// trusted CDN's `X-Forwarded-For`, the own site's fronting hop). Only
    /// the address: it keeps this per-connection struct small.
    pub vouched: Option<std::net::IpAddr>,
    /// The user and mode the transport already proved (a WEB proxy
    /// session's capability): the handshake accepts only that user, in
    /// that mode, whatever its raw-TCP modes say.
    pub pin: Option<Pin>,
}

/// A user the transport authenticated, and the obfuscated2 form it speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin {
    /// The index in the runtime's users.
    pub user: u32,
    /// `dd` (padded intermediate) rather than the plain secret's tags.
    pub dd: bool,
}

/// An accepted connection: its stream and metadata.
#[derive(Debug)]
pub struct Inbound<S = TcpStream> {
    pub stream: S,
    pub meta: Meta,
}

/// A TCP listener serving one configured address.
#[derive(Clone, Debug)]
pub struct TcpInbound {
    listener: Arc<TcpListener>,
    configured: SocketAddr,
}

impl TcpInbound {
    /// Serves `listener`, known in configuration as `configured`.
    pub fn new(listener: Arc<TcpListener>, configured: SocketAddr) -> Self {
        Self {
            listener,
            configured,
        }
    }

    /// The next connection. Cancel-safe: a connection is either returned or
    /// stays in the kernel's queue.
    pub async fn accept(&self) -> std::io::Result<Inbound> {
        let (stream, peer) = self.listener.accept().await?;
        Ok(Inbound {
            stream,
            meta: Meta {
                peer,
                listener: self.configured,
                transport: Transport::Tcp,
                vouched: None,
                pin: None,
            },
        })
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tcp_listener_yields_the_stream_and_its_metadata() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let local = l.local_addr().expect("addr");
        let configured: SocketAddr = "[::]:443".parse().expect("addr");
        let inbound = TcpInbound::new(Arc::new(l), configured);
        let c = TcpStream::connect(local).await.expect("connect");
        let got = inbound.accept().await.expect("accept");
        assert_eq!(got.meta.peer, c.local_addr().expect("addr"));
        assert_eq!(got.meta.listener, configured);
        assert_eq!(got.meta.transport, Transport::Tcp);
        assert_eq!(got.stream.peer_addr().expect("peer"), got.meta.peer);
        assert_eq!(Transport::Tcp.label(), "tcp");
    }
}
