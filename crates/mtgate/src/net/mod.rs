//! Networking rooms (DESIGN §6): how connections come in and how upstreams
//! are reached, each behind a narrow interface.
//!
//! * [`proxy_protocol`]: the PROXY protocol (v1 text, v2 binary) from trusted
//!   front ends (HAProxy, cloud load balancers): the header is read before
//!   admission and the client address it carries is what the policy, the
//!   logs and ME requests see ([`crate::peer::PeerSource::ProxyProtocol`]).
//!
//! Still to come here (issue 14): the inbound WebSocket transport, upstream
//! connectors (TCP, SOCKS5, WebSocket) with balancing, health and pooling.

pub mod proxy_protocol;
