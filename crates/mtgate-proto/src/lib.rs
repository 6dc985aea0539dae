//! mtgate-proto: the pure, sans-I/O heart of the proxy.
//!
//! Nothing in this crate touches sockets, tokio or the clock: time and
//! randomness are passed in, bytes go in and decisions come out. Every parser
//! of untrusted bytes here has a property test and a `cargo fuzz` target.
//!
//! * [`secret`]: secret forms (plain, `dd`, `ee`+domain; hex and base64url) and links;
//! * [`obfs2`]: the obfuscated2 header, client side (checked against every user's
//!   secret) and DC side (the proxy's own header);
//! * [`transport`]: abridged, intermediate and padded-intermediate framing;
//! * [`faketls`]: ClientHello check, ServerHello build, TLS record layer;
//! * [`key`]: a user's secret as the handshake uses it (in memory, or kept in
//!   an HSM behind [`key::SecretOps`]);
//! * [`link`]: the proxy-to-proxy link (its cipher negotiation so far);
//! * [`replay`]: a bounded replay cache;
//! * [`probe`]: `req_pq_multi` → `resPQ`, the unencrypted MTProto that proves a DC answers;
//! * [`handshake`]: the server handshake state machine that ties them together;
//! * [`webproxy`]: Telegram's WEB proxy type: the bridge capability, the
//!   carrier frame format, base paths and link secrets.

pub mod faketls;
pub mod handshake;
pub mod key;
pub mod link;
pub mod me;
pub mod obfs2;
pub mod probe;
pub mod replay;
pub mod secret;
pub mod transport;
pub mod webproxy;

pub use handshake::{Accepted, ClientMode, Handshake, HandshakeConfig, Outcome, RejectReason};
pub use obfs2::{DcIndex, ProtoTag};
pub use secret::{ProxySecret, SecretError, SecretKind};
