//! The real binary in tests: a config file whose every address is on
//! loopback (DCs, mask host, ports), and valid FakeTLS clients that check an
//! echo round trip through the fake DC.

use super::key;
use super::nginx::Nginx;
use super::prober::SITE_IDLE;
use super::{free_port, MtgateProcess, DOMAIN, KEY_HEX};
use mtgate_testkit::client::{ClientMode, ObfsClient};
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The real binary on its default configuration, with a real nginx as the
/// mask site, an echo fake DC and the admin listener on a free port.
pub struct Stack {
    pub proc: MtgateProcess,
    pub admin: SocketAddr,
    pub site: SocketAddr,
    _site: Nginx,
    _dc: FakeDc,
    _dir: tempfile::TempDir,
}

impl Stack {
    pub async fn start() -> Stack {
        let site = Nginx::start(DOMAIN, SITE_IDLE);
        let dc = FakeDc::start("127.0.0.1:0".parse().expect("addr"), FakeDcMode::Echo)
            .await
            .expect("fake dc");
        let dir = tempfile::tempdir().expect("dir");
        let admin = free_port();
        let cfg = write_config(dir.path(), dc.local_addr(), site.addr, Some(admin), "", "");
        let proc = MtgateProcess::spawn(&cfg, dir.path(), std::process::Stdio::null());
        Stack {
            proc,
            admin,
            site: site.addr,
            _site: site,
            _dc: dc,
            _dir: dir,
        }
    }
}

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
    let dcs = mtgate_testkit::conf::dcs_table(&[dc]);
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
             [users.alice]\nsecret = \"{KEY_HEX}\"\n{dcs}{tables}",
            dir.join("state").display()
        ),
    )
    .expect("write config");
    path
}

/// A valid FakeTLS client through `addr` that has done one echo round trip
/// (a message unique to `who`) with the fake DC.
pub async fn tls_echo(addr: SocketAddr, who: usize) -> anyhow::Result<ObfsClient> {
    let mode = ClientMode::FakeTls {
        domain: DOMAIN.to_string(),
    };
    let mut c = ObfsClient::connect(addr, &key(), mode, 2).await?;
    echo(&mut c, who as u64).await?;
    Ok(c)
}

/// One echo round trip on `c` (a message unique to `n`), within 5 s.
pub async fn echo(c: &mut ObfsClient, n: u64) -> anyhow::Result<()> {
    let msg = format!("client {n:06} ").repeat(4);
    c.echo_round_trip(msg.as_bytes(), Duration::from_secs(5))
        .await
}
