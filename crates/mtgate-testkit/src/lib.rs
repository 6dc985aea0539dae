//! mtgate-testkit: fake Telegram peers and scripted clients for mtgate's tests
//! and benchmarks. Never on the product path.
//!
//! * [`fake_dc`]: [`FakeDc`], a Telegram-DC look-alike on loopback (obfuscated2
//!   without a secret; answers the first auth-key exchange steps, or echoes);
//! * [`client`]: [`ObfsClient`], a scripted client speaking plain obfuscated2 or
//!   FakeTLS to a proxy (or, without a secret, straight to a DC);
//! * [`mtproto`]: the few unencrypted MTProto messages both of them need;
//! * [`mmdb`]: [`write_mmdb`], a tiny MaxMind DB writer for geo tests;
//! * [`socks5`]: [`socks5::Socks5Server`], a SOCKS5 proxy (optionally with a
//!   password) that records its targets;
//! * [`ws_front`]: [`ws_front::WsFront`], a `ws://` endpoint in front of a
//!   fake DC, like Telegram's `apiws`;
//! * [`conf`]: pieces of loopback-only mtgate config files;
//! * [`alloc`]: [`alloc::Counting`], a counting global allocator for memory
//!   and allocation tests.
//!
//! All cryptography goes through `mtgate-crypto` and all codecs through
//! `mtgate-proto`; this crate names no crypto library itself. The binary
//! `mtgate-fake-dc` runs a [`FakeDc`] as a process (see `src/bin/fake_dc.rs`).

pub mod alloc;
pub mod client;
pub mod conf;
pub mod fake_dc;
pub mod mmdb;
pub mod mtproto;
pub mod socks5;
pub mod webproxy;
pub mod ws_front;

pub use client::{ClientMode, ClientOptions, ObfsClient};
pub use fake_dc::{FakeDc, FakeDcConfig, FakeDcMode, FakeDcStats};
pub use mmdb::write_mmdb;
pub use mtproto::{DhParamsOk, ReqDhParams, ResPq};
