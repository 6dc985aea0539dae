//! Networking rooms (DESIGN §6): how connections come in and how upstreams
//! are reached, each behind a narrow interface.
//!
//! * [`balance`]: the order in which a DC's targets are tried (failover,
//!   weighted round-robin, least connections, client hash) and a circuit
//!   breaker per target, fed by every connect and by active checks.
//! * [`websocket`]: the WebSocket inbound transport (Telegram Web's framing),
//!   with a web server's answer for anything else.
//! * [`warm`]: connections to DC targets opened ahead, checked before use.
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
//! * [`ws_upstream`]: DC connections through Telegram's WebSocket endpoints.
//!
//! * [`target`]: a DC's group of targets of mixed kinds (addresses, addresses
//!   through a named SOCKS5 chain, the WebSocket endpoint), balanced as one.

pub mod balance;
pub mod connect;
pub mod inbound;
pub mod proxy_protocol;
pub mod target;
pub mod warm;
pub mod websocket;
pub mod ws_upstream;
