//! `mtgate-fake-dc`: runs [`mtgate_testkit::FakeDc`] as a process, for tests
//! that drive real clients (tests/realclients) or a separately started proxy.
//!
//! ```text
//! mtgate-fake-dc [--listen ADDR]... [--echo] [--ws-front ADDR]
//! ```
//!
//! * `--listen ADDR` (repeatable; default `127.0.0.1:0`): where to listen; port 0
//!   picks a free port.
//! * `--echo`: echo mode instead of answering `req_pq_multi`/`req_DH_params`.
//! * `--ws-front ADDR`: also a `ws://ADDR/apiws` endpoint in front of the
//!   first DC (Telegram's WebSocket way in); its address is printed first as
//!   `LISTENING-WS <ip:port>`.
//!
//! Once every listener is bound it prints one `LISTENING <ip:port>` line per
//! listener on stdout (flushed), logs connection events on stderr, and runs
//! until killed.

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use mtgate_testkit::{FakeDc, FakeDcConfig, FakeDcMode};

const USAGE: &str = "usage: mtgate-fake-dc [--listen ADDR]... [--echo] [--ws-front ADDR]";

type Args = (Vec<SocketAddr>, FakeDcMode, Option<SocketAddr>);

fn parse_args(args: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut listen = Vec::new();
    let mut mode = FakeDcMode::Mtproto;
    let mut ws = None;
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
            "--ws-front" => {
                let v = value(args.next())?;
                ws = Some(
                    v.parse()
                        .with_context(|| format!("bad --ws-front address {v:?}"))?,
                );
            }
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
    Ok((listen, mode, ws))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (listen, mode, ws) = parse_args(std::env::args().skip(1))?;
    let mut dcs = Vec::with_capacity(listen.len());
    for addr in listen {
        let cfg = FakeDcConfig {
            mode,
            log: true,
            ..FakeDcConfig::default()
        };
        dcs.push(FakeDc::start_with(addr, cfg).await?);
    }
    let front = match ws {
        Some(at) => {
            Some(mtgate_testkit::ws_front::WsFront::start(at, dcs[0].local_addr(), "/apiws").await?)
        }
        None => None,
    };
    let mut out = std::io::stdout().lock();
    if let Some(f) = &front {
        writeln!(out, "LISTENING-WS {}", f.addr())?;
    }
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
        let (l, m, ws) = parse_args(args(&[])).unwrap();
        assert_eq!(l, vec!["127.0.0.1:0".parse().unwrap()]);
        assert_eq!((m, ws), (FakeDcMode::Mtproto, None));
        let (l, m, ws) = parse_args(args(&[
            "--listen",
            "[::1]:5",
            "--echo",
            "--listen=127.0.0.1:7",
            "--ws-front",
            "127.0.0.1:0",
        ]))
        .unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(m, FakeDcMode::Echo);
        assert_eq!(ws, Some("127.0.0.1:0".parse().unwrap()));
        assert!(parse_args(args(&["--listen"])).is_err());
        assert!(parse_args(args(&["--listen", "nope"])).is_err());
        assert!(parse_args(args(&["--bogus"])).is_err());
    }
}
