//! A SOCKS5 proxy on loopback for tests (RFC 1928 CONNECT, RFC 1929
//! username/password): it records what it was asked to reach and relays.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a [`Socks5Server`] saw.
#[derive(Debug, Default, Clone)]
pub struct Socks5Stats {
    /// Connections accepted.
    pub accepted: usize,
    /// Targets asked for (`host:port` as the client wrote it), in order.
    pub targets: Vec<String>,
    /// Clients refused for wrong or missing credentials.
    pub auth_failures: usize,
}

/// A running SOCKS5 proxy; stops when dropped.
pub struct Socks5Server {
    addr: SocketAddr,
    stats: Arc<Mutex<Socks5Stats>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Socks5Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Socks5Server {
    /// Starts on 127.0.0.1:0; `auth`: the only accepted user and password.
    pub async fn start(auth: Option<(&str, &str)>) -> anyhow::Result<Self> {
        Self::start_at("127.0.0.1:0".parse()?, auth).await
    }

    /// [`Socks5Server::start`] on `addr` (a proxy back where one died).
    pub async fn start_at(addr: SocketAddr, auth: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let l = TcpListener::bind(addr).await?;
        let addr = l.local_addr()?;
        let stats = Arc::new(Mutex::new(Socks5Stats::default()));
        let auth = auth.map(|(u, p)| (u.to_owned(), p.to_owned()));
        let st = stats.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                if let Ok(mut g) = st.lock() {
                    g.accepted += 1;
                }
                let (st, auth) = (st.clone(), auth.clone());
                tokio::spawn(async move {
                    let _ = serve(s, auth, st).await;
                });
            }
        });
        Ok(Self { addr, stats, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> Socks5Stats {
        self.stats.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

async fn serve(
    mut s: TcpStream,
    auth: Option<(String, String)>,
    stats: Arc<Mutex<Socks5Stats>>,
) -> anyhow::Result<()> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await?;
    anyhow::ensure!(head[0] == 5, "not SOCKS5");
    let mut methods = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut methods).await?;
    let want = if auth.is_some() { 2 } else { 0 };
    if !methods.contains(&want) {
        s.write_all(&[5, 0xff]).await?;
        if let Ok(mut g) = stats.lock() {
            g.auth_failures += 1;
        }
        return Ok(());
    }
    s.write_all(&[5, want]).await?;
    if let Some((user, pass)) = &auth {
        let mut v = [0u8; 2];
        s.read_exact(&mut v).await?;
        let mut u = vec![0u8; usize::from(v[1])];
        s.read_exact(&mut u).await?;
        let mut pl = [0u8; 1];
        s.read_exact(&mut pl).await?;
        let mut p = vec![0u8; usize::from(pl[0])];
        s.read_exact(&mut p).await?;
        if u != user.as_bytes() || p != pass.as_bytes() {
            s.write_all(&[1, 1]).await?;
            if let Ok(mut g) = stats.lock() {
                g.auth_failures += 1;
            }
            return Ok(());
        }
        s.write_all(&[1, 0]).await?;
    }
    let mut req = [0u8; 4];
    s.read_exact(&mut req).await?;
    anyhow::ensure!(req[0] == 5 && req[1] == 1, "only CONNECT");
    let target = match req[3] {
        1 => {
            let mut a = [0u8; 6];
            s.read_exact(&mut a).await?;
            SocketAddr::from(([a[0], a[1], a[2], a[3]], u16::from_be_bytes([a[4], a[5]])))
                .to_string()
        }
        4 => {
            let mut a = [0u8; 18];
            s.read_exact(&mut a).await?;
            let ip: [u8; 16] = a[..16].try_into()?;
            SocketAddr::from((ip, u16::from_be_bytes([a[16], a[17]]))).to_string()
        }
        3 => {
            let mut n = [0u8; 1];
            s.read_exact(&mut n).await?;
            let mut name = vec![0u8; usize::from(n[0]) + 2];
            s.read_exact(&mut name).await?;
            let port = u16::from_be_bytes([name[name.len() - 2], name[name.len() - 1]]);
            name.truncate(name.len() - 2);
            format!("{}:{port}", String::from_utf8(name)?)
        }
        _ => anyhow::bail!("address type"),
    };
    if let Ok(mut g) = stats.lock() {
        g.targets.push(target.clone());
    }
    let mut up = match TcpStream::connect(target.as_str()).await {
        Ok(u) => u,
        Err(_) => {
            // 5: connection refused.
            s.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
            return Ok(());
        }
    };
    s.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0]).await?;
    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
    Ok(())
}
