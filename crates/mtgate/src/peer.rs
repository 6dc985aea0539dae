//! Who a connection is from, as the policy and the fronting budget count it.
//!
//! A connection usually comes straight from its client: the socket's peer
//! address is the client. Behind a trusted front end (a PROXY-protocol load
//! balancer, a bridge node over the proxy link: issues 14 and 15) the socket's
//! peer is the front end and the real client address arrives in-band. Then
//! the client address is what every per-source limit, reputation, ACL and geo
//! rule sees, and the front end's own address is never counted or blocked
//! for its clients' behaviour: a crowd behind one front end is a crowd.
//!
//! [`PeerSource`] is the seam: a listener's way of learning the client
//! address, run in the session's setup before admission: the socket itself,
//! or the PROXY protocol from trusted front ends (`crate::net::proxy_protocol`);
//! the proxy link (issue 15) adds its own.

use crate::net::proxy_protocol::{read_header, ProxyProtocolConfig};
use std::net::{IpAddr, SocketAddr};

/// A connection's client, and the trusted front end it came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The client: what the policy counts.
    pub client: SocketAddr,
    /// The socket's peer when it is a trusted front end (never counted).
    pub front: Option<SocketAddr>,
}

impl Peer {
    /// A client connected straight to mtgate.
    pub fn direct(addr: SocketAddr) -> Self {
        Self {
            client: addr,
            front: None,
        }
    }

    /// A client that a trusted front end at `front` vouches for.
    pub fn via(front: SocketAddr, client: SocketAddr) -> Self {
        Self {
            client,
            front: Some(front),
        }
    }

    /// The address the policy and the fronting budget count.
    pub fn source_ip(&self) -> IpAddr {
        self.client.ip()
    }
}

/// How a listener learns its clients' addresses.
#[derive(Clone, Debug, Default)]
pub enum PeerSource {
    /// The socket's peer address is the client.
    #[default]
    Socket,
    /// Trusted front ends send a PROXY protocol header first; everyone else
    /// is a direct client.
    ProxyProtocol(std::sync::Arc<ProxyProtocolConfig>),
}

/// Why a connection's client could not be identified.
#[derive(Debug, thiserror::Error)]
pub enum IdentifyError {
    /// A trusted front end sent no valid header (in time).
    #[error("front end {front}: {error}")]
    Header {
        front: SocketAddr,
        error: crate::net::proxy_protocol::HeaderError,
    },
}

impl PeerSource {
    /// The source `config` asks for.
    pub fn from_config(config: &ProxyProtocolConfig) -> Self {
        if config.enabled() {
            Self::ProxyProtocol(std::sync::Arc::new(config.clone()))
        } else {
            Self::Socket
        }
    }

    /// The peer of `stream`, whose socket peer is `transport`. A variant that
    /// reads a header from the front end does it here, before admission, and
    /// takes exactly the header's bytes.
    pub async fn identify<S: tokio::io::AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        transport: SocketAddr,
    ) -> Result<Peer, IdentifyError> {
        match self {
            Self::Socket => Ok(Peer::direct(transport)),
            Self::ProxyProtocol(cfg) if cfg.trusts(transport.ip()) => {
                match read_header(stream, cfg.header_timeout).await {
                    Ok(Some(client)) => Ok(Peer::via(transport, client)),
                    // The front end's own connection (LOCAL, UNKNOWN).
                    Ok(None) => Ok(Peer::direct(transport)),
                    Err(error) => Err(IdentifyError::Header {
                        front: transport,
                        error,
                    }),
                }
            }
            Self::ProxyProtocol(_) => Ok(Peer::direct(transport)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    #[test]
    fn a_front_end_is_never_the_source() {
        let front: SocketAddr = "198.51.100.7:40000".parse().expect("addr");
        let client: SocketAddr = "203.0.113.9:51000".parse().expect("addr");
        let p = Peer::via(front, client);
        assert_eq!(p.source_ip(), client.ip());
        assert_eq!(p.front, Some(front));
        assert_eq!(Peer::direct(client).source_ip(), client.ip());
    }

    #[tokio::test]
    async fn the_socket_source_takes_the_socket_peer() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let _c = TcpStream::connect(addr).await.expect("connect");
        let (mut s, transport) = l.accept().await.expect("accept");
        let p = PeerSource::Socket
            .identify(&mut s, transport)
            .await
            .expect("identify");
        assert_eq!(p, Peer::direct(transport));
    }
}
