//! The proxy-to-proxy link (issue 15), sans I/O: what a bridge node and an
//! exit node say to agree on a cipher ([`negotiate`]). The handshake, the
//! record codec and the multiplexer come in the next steps.

pub mod negotiate;
