//! `mtgate-fake-dc`: runs [`mtgate_testkit::FakeDc`] as a process, for tests
//! that drive real clients (tests/realclients) or a separately started proxy.
//!
//! ```text
//! mtgate-fake-dc [--listen ADDR]... [--echo]
//! ```
//!
//! * `--listen ADDR` (repeatable; default `127.0.0.1:0`): where to listen; port 0
//!   picks a free port.
//! * `--echo`: echo mode instead of answering `req_pq_multi`/`req_DH_params`.
//!
//! Once every listener is bound it prints one `LISTENING <ip:port>` line per
//! listener on stdout (flushed), logs connection events on stderr, and runs
//! until killed.

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use mtgate_testkit::{FakeDc, FakeDcConfig, FakeDcMode};

const USAGE: &str = "usage: mtgate-fake-dc [--listen ADDR]... [--echo]";

fn parse_args(args: impl Iterator<Item = String>) -> anyhow::Result<(Vec<SocketAddr>, FakeDcMode)> {
    let mut listen = Vec::new();
    let mut mode = FakeDcMode::Mtproto;
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        let value = |v: Option<String>| v.with_context(|| format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--listen" => {
                let v = value(args.next())?;
                listen.push(
                    v.parse()
                        .with_context(|| format!("bad --listen address {v:?}"))?,
                );
            }
            s if s.starts_with("--listen=") => {
                let v = &s["--listen=".len()..];
                listen.push(
                    v.parse()
                        .with_context(|| format!("bad --listen address {v:?}"))?,
                );
            }
            "--echo" => mode = FakeDcMode::Echo,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if listen.is_empty() {
        listen.push(SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    Ok((listen, mode))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (listen, mode) = parse_args(std::env::args().skip(1))?;
    let mut dcs = Vec::with_capacity(listen.len());
    for addr in listen {
        let cfg = FakeDcConfig {
            mode,
            log: true,
            ..FakeDcConfig::default()
        };
        dcs.push(FakeDc::start_with(addr, cfg).await?);
    }
    let mut out = std::io::stdout().lock();
    for dc in &dcs {
        writeln!(out, "LISTENING {}", dc.local_addr())?;
    }
    out.flush()?;
    drop(out);
    std::future::pending::<()>().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> impl Iterator<Item = String> {
        v.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn parses_arguments() {
        let (l, m) = parse_args(args(&[])).unwrap();
        assert_eq!(l, vec!["127.0.0.1:0".parse().unwrap()]);
        assert_eq!(m, FakeDcMode::Mtproto);
        let (l, m) = parse_args(args(&[
            "--listen",
            "[::1]:5",
            "--echo",
            "--listen=127.0.0.1:7",
        ]))
        .unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(m, FakeDcMode::Echo);
        assert!(parse_args(args(&["--listen"])).is_err());
        assert!(parse_args(args(&["--listen", "nope"])).is_err());
        assert!(parse_args(args(&["--bogus"])).is_err());
    }
}
