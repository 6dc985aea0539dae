//! Middle-proxy (ME) mode, sans-I/O (PROTOCOL §7).
//!
//! In ME mode the proxy multiplexes its clients over a few long-lived,
//! AES-256-CBC encrypted RPC links to Telegram's middle-ends; this is what
//! carries the promotion (ad) tag. The pieces, in the order a link uses them:
//!
//! * [`frame`]: RPC framing (length, seq_no, CRC32/CRC32C, filler words);
//! * [`handshake`]: RPC_NONCE and RPC_HANDSHAKE, with the official checks;
//! * [`kdf`]: the session keys from nonces, addresses and the proxy-secret;
//! * [`link`]: the encrypted send and receive halves of a link;
//! * [`msg`]: RPC_PROXY_REQ (with the ad tag) and the ME's answers;
//! * [`reframe`]: answers and quick-ack tokens in the client's transport;
//! * [`conf`]: the `proxy-multi.conf` file.
//!
//! Nothing here touches sockets or the clock: timestamps and random bytes are
//! passed in. Every parser has a property test and a fuzz target.

pub mod conf;
pub mod frame;
pub mod handshake;
pub mod kdf;
pub mod link;
pub mod msg;
pub mod reframe;

pub use conf::{ConfError, MeAddr, MeHost, ProxyMultiConf};
pub use frame::{Checksum, FrameError, RpcReader, RpcWriter};
pub use handshake::{HandshakeError, HandshakeMsg, Nonce, ProcessId};
pub use kdf::{derive, KdfError, KdfInput, MeKeys};
pub use link::{MeRx, MeTx};
pub use msg::{MeMsg, MsgError, ProxyReq};

/// `RPC_NONCE`
pub const RPC_NONCE: u32 = 0x7acb_87aa;
/// `RPC_HANDSHAKE`
pub const RPC_HANDSHAKE: u32 = 0x7682_eef5;
/// `RPC_HANDSHAKE_ERROR`
pub const RPC_HANDSHAKE_ERROR: u32 = 0x6a27_beda;
/// `RPC_PROXY_REQ` (proxy → ME)
pub const RPC_PROXY_REQ: u32 = 0x36ce_f1ee;
/// `RPC_PROXY_ANS` (ME → proxy)
pub const RPC_PROXY_ANS: u32 = 0x4403_da0d;
/// `RPC_CLOSE_CONN` (proxy → ME: "this client went away")
pub const RPC_CLOSE_CONN: u32 = 0x1fcf_425d;
/// `RPC_CLOSE_EXT` (ME → proxy: "close this client")
pub const RPC_CLOSE_EXT: u32 = 0x5eb6_34a2;
/// `RPC_SIMPLE_ACK` (ME → proxy)
pub const RPC_SIMPLE_ACK: u32 = 0x3bac_409b;
/// `RPC_PING`
pub const RPC_PING: u32 = 0x5730_a2df;
/// `RPC_PONG`
pub const RPC_PONG: u32 = 0x8430_eaa7;
/// `TL_PROXY_TAG`: the ad-tag entry of a PROXY_REQ extra block.
pub const TL_PROXY_TAG: u32 = 0xdb1e_26ae;
