//! `mtgate-bench`: measures mtgate against a plain TCP relay on loopback, in
//! one run, and reports the performance targets as ratios.
//!
//! ```text
//! mtgate-bench [--smoke] [--json FILE] [--mtgate PATH] [--workers N] ...
//! mtgate-bench --target HOST:PORT --secret SECRET [--target-pid PID] --dc-listen ADDR
//! ```
//!
//! It starts its own peers (an echoing fake DC and a mask-site sink, see
//! [`dc`]), the reference relay (this binary's hidden `relay` subcommand, see
//! [`relay`]) and mtgate (`mtgate run --config FILE`, see [`suite`]), runs the
//! load ([`load`]) with clients speaking the real protocol ([`client`]), reads
//! CPU and memory of the proxy processes from `/proc` ([`procs`]) and prints a
//! table plus, with `--json`, a JSON document ([`report`]).
//!
//! Missed targets are measurements: the exit status is non-zero only when the
//! harness could not measure something (a process did not start, a test
//! produced no number, the global time limit ran out).

mod client;
mod dc;
mod load;
mod matrix;
mod procs;
mod relay;
mod report;
mod suite;
mod targets;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "mtgate-bench",
    version,
    about = "Loopback benchmark: mtgate vs a plain TCP relay"
)]
pub struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Quick run for CI: tiny sizes, a few seconds; the numbers mean little.
    #[arg(long)]
    smoke: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The mtgate binary (default: `mtgate` next to this binary).
    #[arg(long)]
    mtgate: Option<PathBuf>,
    /// Worker threads of the proxies under test (mtgate and the relay).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Threads of the load generator (clients, echo DC and mask sink together).
    #[arg(long, default_value_t = 1)]
    loadgen_threads: usize,
    /// Run mtgate with `tls.fronting = false` (no mask-site connection per client).
    #[arg(long)]
    no_fronting: bool,
    /// Run mtgate with `[shared] redis = URL` (state shared across nodes:
    /// each handshake is checked against the shared replay window).
    #[arg(long, value_name = "URL")]
    shared_redis: Option<String>,
    /// Run mtgate with its own site (`[site] hosts` = the FakeTLS domain, a
    /// self-signed certificate): fronting goes to the own site.
    #[arg(long)]
    site: bool,
    /// With `--site`: Telegram's WEB proxy type on the site, and four more
    /// subjects: `dd` clients through each carrier (`websocket` on the main
    /// mtgate; `websocket-lanes`, `https`, `https-lanes` on an mtgate each).
    #[arg(long)]
    webproxy: bool,
    /// The proxy-to-proxy link: four more subjects, `dd` clients through a
    /// bridge and an exit mtgate, one pair per cipher.
    #[arg(long)]
    link: bool,
    /// Only these parts (comma list of aes, idle, leak, bulk, latency, handshake, scaling).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Concurrent connections for bulk throughput.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 16, 256])]
    conns: Vec<usize>,
    /// Rounds of the bulk, latency and handshake matrix; each cell reports the
    /// median round (default 3; smoke 1).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds of each bulk measurement window (default 2; smoke 1).
    #[arg(long)]
    bulk_secs: Option<f64>,
    /// Seconds of each handshake and latency measurement (default 2; smoke 1).
    #[arg(long)]
    secs: Option<f64>,
    /// Idle authenticated connections for the memory test (default 10000; smoke 200).
    #[arg(long)]
    idle_conns: Option<usize>,
    /// Keep the idle connections open this many seconds after measuring (to
    /// inspect the proxy, e.g. /proc/PID/smaps).
    #[arg(long, default_value_t = 0.0)]
    idle_hold: f64,
    /// Payload bytes (MiB) all bulk connections together may have in flight
    /// (split evenly, 256 KiB to 2 MiB each unless this is larger); raise it
    /// on a many-core machine so the window does not cap throughput.
    #[arg(long, default_value_t = 8)]
    bulk_window_mib: u64,
    /// Connections of the scaling test's bulk transfer.
    #[arg(long, default_value_t = 16)]
    scaling_conns: usize,
    /// Concurrent clients in the handshake test.
    #[arg(long, default_value_t = 16)]
    handshake_concurrency: usize,
    /// Measure an already-running proxy at HOST:PORT instead of starting mtgate.
    #[arg(long, requires = "secret")]
    target: Option<String>,
    /// The client secret for `--target` (32 hex digits, or a dd/ee form).
    #[arg(long)]
    secret: Option<String>,
    /// The pid of the `--target` proxy, for its CPU and memory.
    #[arg(long)]
    target_pid: Option<u32>,
    /// Where the echo DC listens (the `--target` proxy must send this DC index there).
    #[arg(long, default_value = "127.0.0.1:0")]
    dc_listen: SocketAddr,
    /// DC index the clients ask for.
    #[arg(long, default_value_t = 2, allow_negative_numbers = true)]
    dc: i16,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The reference plain TCP relay (started by the bench itself).
    #[command(hide = true)]
    Relay {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Cmd::Relay {
        listen,
        upstream,
        workers,
    }) = args.cmd
    {
        return match relay::run(listen, upstream, workers) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("relay: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // Everything is bounded: past this, the harness itself has failed.
    let limit = Duration::from_secs(if args.smoke { 240 } else { 900 });
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("mtgate-bench: global time limit of {limit:?} exceeded; aborting");
        std::process::exit(3);
    });
    let rt = if args.loadgen_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.loadgen_threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mtgate-bench: cannot build the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The suite runs inside block_on, i.e. on this thread: children spawned
    // there get PR_SET_PDEATHSIG tied to a thread that lives until the end.
    let report = match rt.block_on(suite::run(&args)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mtgate-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let write = || -> anyhow::Result<()> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
            Ok(())
        };
        if let Err(e) = write() {
            eprintln!("mtgate-bench: writing {}: {e:#}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("mtgate-bench: JSON written to {}", path.display());
    }
    // Drop the runtime without waiting for lingering connection tasks.
    rt.shutdown_timeout(Duration::from_secs(1));
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
