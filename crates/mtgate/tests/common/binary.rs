//! The real binary in tests: a config file whose every address is on
//! loopback (DCs, mask host, ports), and valid FakeTLS clients that check an
//! echo round trip through the fake DC.

use super::{DOMAIN, KEY_HEX};
use mtgate_crypto::Key16;
use mtgate_testkit::client::{ClientMode, ObfsClient};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Writes `dir/mtgate.toml`: listen 127.0.0.1:0, state in `dir/state`, the
/// admin listener at `admin` (`None`: off), user alice (`ee`), every DC at
/// `dc`, fronting to `mask`. `tls_keys` go into `[tls]`; `tables` are
/// appended whole (e.g. `[policy.acl]` …).
pub fn write_config(
    dir: &Path,
    dc: SocketAddr,
    mask: SocketAddr,
    admin: Option<SocketAddr>,
    tls_keys: &str,
    tables: &str,
) -> PathBuf {
    let dcs: String = [1, 2, 3, 4, 5, 203]
        .iter()
        .map(|n| format!("{n} = [\"{dc}\"]\n"))
        .collect();
    let admin = match admin {
        Some(a) => format!("listen = \"{a}\""),
        None => "enabled = false".into(),
    };
    let path = dir.join("mtgate.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\npublic_host = \"127.0.0.1\"\nstate_dir = \"{}\"\n\
             [admin]\n{admin}\n\
             [tls]\ndomains = [\"{DOMAIN}\"]\nmask_host = \"{mask}\"\n{tls_keys}\
             [users.alice]\nsecret = \"{KEY_HEX}\"\n[dcs]\n{dcs}{tables}",
            dir.join("state").display()
        ),
    )
    .expect("write config");
    path
}

/// Alice's key.
pub fn key() -> Key16 {
    Key16::new(
        hex::decode(KEY_HEX)
            .expect("hex")
            .try_into()
            .expect("16 bytes"),
    )
}

/// A valid FakeTLS client through `addr` that has done one echo round trip
/// (a message unique to `who`) with the fake DC.
pub async fn tls_echo(addr: SocketAddr, who: usize) -> anyhow::Result<ObfsClient> {
    let mode = ClientMode::FakeTls {
        domain: DOMAIN.to_string(),
    };
    let mut c = ObfsClient::connect(addr, &key(), mode, 2).await?;
    let msg = format!("client {who:06} ").repeat(4);
    c.send_raw(msg.as_bytes()).await?;
    let got = c.recv_exact(msg.len()).await?;
    anyhow::ensure!(got == msg.as_bytes(), "echo differs");
    Ok(c)
}
