//! What the own site serves: a static directory (tower-http `ServeDir`:
//! index files, content types, conditional and range requests), a reverse
//! proxy to a local HTTP server, or a small neutral page. Every answer is a
//! web server's: a 404 page for what is not there, 405 for methods a static
//! site does not take, 502 when the upstream is down.

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{header, Request, Response, StatusCode};
use std::path::PathBuf;
use tower::ServiceExt;

/// The error type of every body the site sends.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
/// A response body of any of the site's sources.
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// Where the pages come from (`[site] dir`, `upstream`, or neither).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Dir(PathBuf),
    /// `http://host:port` of a local server; paths and queries pass as they are.
    Upstream(hyper::Uri),
    /// The built-in page.
    Default,
}

/// The default page: neutral, the kind a fresh server shows.
const DEFAULT_PAGE: &str = "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>Welcome</title>\n<style>body{max-width:40em;margin:4em auto;font-family:sans-serif;color:#333}</style>\n</head>\n<body>\n<h1>Welcome</h1>\n<p>This site is under construction. Please check back later.</p>\n</body>\n</html>\n";

fn page(status: StatusCode) -> String {
    let reason = status.canonical_reason().unwrap_or("");
    format!(
        "<html>\r\n<head><title>{} {reason}</title></head>\r\n<body>\r\n<center><h1>{} {reason}</h1></center>\r\n</body>\r\n</html>\r\n",
        status.as_u16(),
        status.as_u16()
    )
}

/// A whole answer of `status` with a body of type `kind` (none for HEAD).
pub fn full(status: StatusCode, kind: &str, body: impl Into<Bytes>, head: bool) -> Response<Body> {
    let body: Bytes = body.into();
    let len = body.len();
    let body = if head { Bytes::new() } else { body };
    let mut r = Response::new(Full::new(body).map_err(|e| match e {}).boxed_unsync());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_str(kind)
            .unwrap_or(header::HeaderValue::from_static("text/html")),
    );
    h.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    r
}

/// An error page of `status`.
pub fn error_page(status: StatusCode, head: bool) -> Response<Body> {
    full(status, "text/html", page(status), head)
}

/// Serves the site's sources; cheap to clone.
#[derive(Clone)]
pub struct Content {
    source: Source,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Incoming,
    >,
    /// For requests shown without their body.
    bare: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Empty<Bytes>,
    >,
}

/// `parts` with an empty body and without the credentials.
fn bodiless(parts: hyper::http::request::Parts) -> Request<Empty<Bytes>> {
    let mut req = Request::from_parts(parts, Empty::new());
    let h = req.headers_mut();
    h.remove(header::AUTHORIZATION);
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::TRANSFER_ENCODING);
    req
}

impl Content {
    pub fn new(source: Source) -> Self {
        fn client<B>(
        ) -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, B>
        where
            B: hyper::body::Body + Send + 'static,
            B::Data: Send,
        {
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(std::time::Duration::from_secs(30))
                .build_http()
        }
        Self {
            source,
            client: client(),
            bare: client(),
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The answer to one request from `client`.
    pub async fn answer(
        &self,
        req: Request<Incoming>,
        client: std::net::SocketAddr,
    ) -> Response<Body> {
        match &self.source {
            Source::Upstream(base) => proxy(&self.client, base, req, client).await,
            _ => self.local(req).await,
        }
    }

    /// The answer to a request whose body was already read: its head alone,
    /// without credentials (what the site says to that method and path).
    pub async fn answer_bodiless(
        &self,
        parts: hyper::http::request::Parts,
        client: std::net::SocketAddr,
    ) -> Response<Body> {
        let req = bodiless(parts);
        match &self.source {
            Source::Upstream(base) => proxy(&self.bare, base, req, client).await,
            _ => self.local(req).await,
        }
    }

    /// The directory's or the built-in pages.
    async fn local<B: Send + 'static>(&self, req: Request<B>) -> Response<Body> {
        let head = req.method() == hyper::Method::HEAD;
        match &self.source {
            Source::Default => match (req.method().as_str(), req.uri().path()) {
                ("GET" | "HEAD", "/" | "/index.html") => {
                    full(StatusCode::OK, "text/html", DEFAULT_PAGE, head)
                }
                ("GET" | "HEAD", _) => error_page(StatusCode::NOT_FOUND, head),
                _ => error_page(StatusCode::METHOD_NOT_ALLOWED, head),
            },
            Source::Dir(dir) => {
                let serve =
                    tower_http::services::ServeDir::new(dir).append_index_html_on_directories(true);
                let r = match serve.oneshot(req).await {
                    Ok(r) => r,
                    Err(e) => match e {},
                };
                if r.status() == StatusCode::NOT_FOUND {
                    return self.not_found(dir, head).await;
                }
                r.map(|b| b.map_err(|e| Box::new(e) as BodyError).boxed_unsync())
            }
            Source::Upstream(_) => error_page(StatusCode::BAD_GATEWAY, head),
        }
    }

    /// The directory's `404.html`, else the built-in 404 page.
    async fn not_found(&self, dir: &std::path::Path, head: bool) -> Response<Body> {
        match tokio::fs::read(dir.join("404.html")).await {
            Ok(b) => full(StatusCode::NOT_FOUND, "text/html", b, head),
            Err(_) => error_page(StatusCode::NOT_FOUND, head),
        }
    }
}

/// `req` passed to the upstream at `base` through `via`.
async fn proxy<B>(
    via: &hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, B>,
    base: &hyper::Uri,
    mut req: Request<B>,
    client: std::net::SocketAddr,
) -> Response<Body>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BodyError>,
{
    {
        let head = req.method() == hyper::Method::HEAD;
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let Ok(uri) = format!(
            "{}://{}{pq}",
            base.scheme_str().unwrap_or("http"),
            base.authority().map(|a| a.as_str()).unwrap_or("127.0.0.1")
        )
        .parse::<hyper::Uri>() else {
            return error_page(StatusCode::BAD_REQUEST, head);
        };
        *req.uri_mut() = uri;
        // HTTP/2 from the browser, HTTP/1.1 to the upstream.
        *req.version_mut() = hyper::Version::HTTP_11;
        let h = req.headers_mut();
        h.insert(
            "x-forwarded-proto",
            header::HeaderValue::from_static("https"),
        );
        // The client as mtgate saw it (a header the client sent is replaced).
        if let Ok(v) = header::HeaderValue::from_str(&client.ip().to_string()) {
            h.insert("x-forwarded-for", v);
        }
        match via.request(req).await {
            Ok(r) => r.map(|b| b.map_err(|e| Box::new(e) as BodyError).boxed_unsync()),
            Err(e) => {
                tracing::debug!(error = %e, "site upstream unreachable");
                error_page(StatusCode::BAD_GATEWAY, head)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_pages_look_like_a_web_servers() {
        let p = page(StatusCode::NOT_FOUND);
        assert!(p.contains("<title>404 Not Found</title>"));
        let r = error_page(StatusCode::METHOD_NOT_ALLOWED, true);
        assert_eq!(r.status(), 405);
        assert_eq!(
            r.headers()[header::CONTENT_LENGTH],
            page(StatusCode::METHOD_NOT_ALLOWED).len().to_string()
        );
    }
}
