//! `--link`: the proxy-to-proxy link (issue 15) as four more subjects, one
//! per cipher: `dd` clients connect to a bridge mtgate whose DC addresses
//! are dead; it carries them over a link (plain TCP carriage, the exit
//! pinned to that one cipher) to an exit mtgate in front of the echo DC.
//! The CPU figures are the bridge's; the exit spends about as much again.

use super::{Env, Proxy};
use mtgate_proto::link::handshake::{ExitKey, Token};
use mtgate_proto::link::negotiate::Cipher;

fn b64(bytes: &[u8; 32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Env {
    /// An exit (DC 2: the echo DC) and a bridge linked to it with `cipher`
    /// only; both processes, the bridge's the one clients connect to.
    pub(super) fn start_link_pair(
        &self,
        cipher: Cipher,
        workers: usize,
    ) -> anyhow::Result<(Proxy, Proxy)> {
        let key = ExitKey::generate();
        let token = Token::generate();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let c = cipher.name();
        let exit = self.spawn_mtgate(
            &format!("exit-{c}"),
            workers,
            "",
            "websocket",
            &self.dc.to_string(),
            &format!(
                "[link.exit]\nlisten = \"127.0.0.1:{port}\"\nkey = \"{}\"\n\
                 tokens = {{ bench = \"{}\" }}\nciphers = [\"{c}\"]\n",
                b64(key.secret()),
                b64(token.bytes())
            ),
        )?;
        let bridge = self.spawn_mtgate(
            &format!("bridge-{c}"),
            workers,
            "",
            "websocket",
            "127.0.0.1:1",
            &format!(
                "[link.bridge]\nexit = \"127.0.0.1:{port}\"\nexit_key = \"{}\"\n\
                 token = \"{}\"\nciphers = [\"{c}\"]\n",
                b64(&key.public()),
                b64(token.bytes())
            ),
        )?;
        Ok((exit, bridge))
    }
}
