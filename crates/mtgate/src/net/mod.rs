//! Networking rooms (DESIGN §6): how connections come in and how upstreams
//! are reached, each behind a narrow interface.
//!
//! * [`inbound`]: inbound transports: a listener yields the stream and its
//!   [`inbound::Meta`] (transport peer, listener, transport kind); plain TCP
//!   is [`inbound::TcpInbound`].
//! * [`proxy_protocol`]: the PROXY protocol (v1 text, v2 binary) from trusted
//!   front ends (HAProxy, cloud load balancers): the header is read before
//!   admission and the client address it carries is what the policy, the
//!   logs and ME requests see ([`crate::peer::PeerSource::ProxyProtocol`]).
//!
//! * [`connect`]: upstream connectors ([`connect::Connector`]): plain TCP or
//!   a chain of SOCKS5 proxies; every failure classified
//!   ([`connect::ErrorClass`]) for metrics and logs.
//!
//! Still to come here (issue 14): the inbound WebSocket transport, a
//! WebSocket upstream, balancing with health, pooling.

pub mod connect;
pub mod inbound;
pub mod proxy_protocol;
