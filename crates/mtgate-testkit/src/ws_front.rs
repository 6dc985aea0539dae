//! A `ws://` WebSocket endpoint in front of a TCP service (a fake DC), as
//! Telegram's `apiws` endpoints are in front of DCs: each upgrade on `path`
//! (with `Sec-WebSocket-Protocol: binary` echoed) is carried to `upstream`
//! as raw bytes, binary messages both ways.

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// A running endpoint; stops when dropped.
pub struct WsFront {
    addr: SocketAddr,
    upgrades: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsFront {
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        path: &str,
    ) -> anyhow::Result<Self> {
        let l = TcpListener::bind(listen).await?;
        let addr = l.local_addr()?;
        let upgrades = Arc::new(AtomicU64::new(0));
        let (count, path) = (upgrades.clone(), path.to_owned());
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (count, path) = (count.clone(), path.clone());
                tokio::spawn(async move {
                    let _ = serve(s, upstream, &path, &count).await;
                });
            }
        });
        Ok(Self {
            addr,
            upgrades,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Upgrades accepted so far.
    pub fn upgrades(&self) -> u64 {
        self.upgrades.load(Relaxed)
    }
}

async fn serve(
    s: TcpStream,
    upstream: SocketAddr,
    path: &str,
    count: &AtomicU64,
) -> anyhow::Result<()> {
    // tungstenite's callback type: its error is an HTTP response.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            let mut e = ErrorResponse::new(Some("not found".into()));
            *e.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
            return Err(e);
        }
        resp.headers_mut()
            .insert("Sec-WebSocket-Protocol", "binary".parse().expect("header"));
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async(s, check).await?;
    count.fetch_add(1, Relaxed);
    let tcp = TcpStream::connect(upstream).await?;
    let (mut sink, mut stream) = ws.split();
    let (mut rd, mut wr) = tcp.into_split();
    let up = async move {
        while let Some(Ok(m)) = stream.next().await {
            if let Message::Binary(b) = m {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0
                || sink
                    .send(Message::Binary(buf[..n].to_vec().into()))
                    .await
                    .is_err()
            {
                break;
            }
        }
        let _ = sink.close().await;
    };
    tokio::select! { _ = up => {}, _ = down => {} }
    Ok(())
}
