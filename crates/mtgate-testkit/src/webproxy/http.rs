//! The HTTP side of the `https` carriers: one kept-alive HTTP/1.1
//! connection per direction (`https`), or one HTTP/2 connection that every
//! lane's requests share (`https-lanes`, as the spec asks of the edge).

use super::Site;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper::{HeaderMap, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Mutex;

enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// An answer: status, headers, body.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// A header as a number.
    pub fn number(&self, name: &str) -> Option<u64> {
        self.headers.get(name)?.to_str().ok()?.parse().ok()
    }
}

/// A connection to the site, opened again when it breaks.
pub struct Http {
    site: Site,
    h2: bool,
    conn: Mutex<Option<Conn>>,
}

impl Http {
    pub fn new(site: Site, h2: bool) -> Self {
        Self {
            site,
            h2,
            conn: Mutex::new(None),
        }
    }

    async fn open(&self) -> anyhow::Result<Conn> {
        let alpn: &[u8] = if self.h2 { b"h2" } else { b"http/1.1" };
        let io = TokioIo::new(self.site.tls_alpn(alpn).await?);
        Ok(if self.h2 {
            let (send, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Conn::H2(send)
        } else {
            let (send, conn) = http1::handshake(io).await?;
            tokio::spawn(conn);
            Conn::H1(send)
        })
    }

    /// `POST path` with the WEB proxy API's headers and `extra`.
    pub async fn post(
        &self,
        path: &str,
        token: &str,
        extra: &[(&str, String)],
        body: Vec<u8>,
    ) -> anyhow::Result<Answer> {
        let host = &self.site.host;
        let mut req = Request::post(format!("https://{host}{path}"))
            .header("authorization", format!("Bearer {token}"))
            .header("origin", format!("https://{host}"))
            .header("content-type", "application/octet-stream");
        if !self.h2 {
            req = req.header("host", host.as_str());
        }
        for (k, v) in extra {
            req = req.header(*k, v.as_str());
        }
        let req = req.body(Full::new(Bytes::from(body)))?;
        // HTTP/1.1 takes one request at a time, so the lock is held through
        // the answer's body; HTTP/2's sender is cloned out and the lock let go.
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            *guard = Some(self.open().await?);
        }
        let h2 = match guard.as_ref() {
            Some(Conn::H2(s)) => Some(s.clone()),
            _ => None,
        };
        let res = if let Some(mut s) = h2 {
            drop(guard);
            let sent = match s.ready().await {
                Ok(()) => s.send_request(req).await,
                Err(e) => Err(e),
            };
            if sent.is_err() {
                *self.conn.lock().await = None;
            }
            return Self::answer(sent?).await;
        } else if let Some(Conn::H1(s)) = guard.as_mut() {
            let sent = match s.ready().await {
                Ok(()) => s.send_request(req).await,
                Err(e) => Err(e),
            };
            if sent.is_err() {
                *guard = None;
            }
            sent?
        } else {
            anyhow::bail!("no connection")
        };
        let answer = Self::answer(res).await;
        if answer.is_err() {
            *guard = None;
        }
        answer
    }

    async fn answer(res: hyper::Response<hyper::body::Incoming>) -> anyhow::Result<Answer> {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}
