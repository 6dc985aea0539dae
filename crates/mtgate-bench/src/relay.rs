//! The reference: a minimal, efficient plain TCP relay (`mtgate-bench relay`).
//!
//! It is what mtgate does minus the cryptography: accept, connect to one fixed
//! upstream, set `TCP_NODELAY` on both, and copy each direction with
//! `read` + `write_all` through a 64 KiB buffer, forwarding half-close. It runs
//! as its own process on a tokio multi-thread runtime with the same number of
//! worker threads as mtgate, so its CPU is read from `/proc` exactly the same
//! way. It prints `LISTENING <addr>` once bound and runs until killed.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};

const BUF: usize = 64 * 1024;

/// Runs the relay until killed.
pub fn run(listen: SocketAddr, upstream: SocketAddr, workers: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let l = TcpListener::bind(listen).await?;
        println!("LISTENING {}", l.local_addr()?);
        loop {
            match l.accept().await {
                Ok((c, _)) => {
                    tokio::spawn(serve(c, upstream));
                }
                // Out of descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    })
}

async fn serve(mut c: TcpStream, upstream: SocketAddr) {
    let Ok(mut u) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = c.set_nodelay(true);
    let _ = u.set_nodelay(true);
    let (mut cr, mut cw) = c.split();
    let (mut ur, mut uw) = u.split();
    let _ = tokio::join!(pump(&mut cr, &mut uw), pump(&mut ur, &mut cw));
}

async fn pump(r: &mut ReadHalf<'_>, w: &mut WriteHalf<'_>) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        w.write_all(&buf[..n]).await?;
    }
}
