//! The bridge page: our own HTML, one inline script bearing a nonce, no
//! external resource, the response headers the protocol asks for. The
//! script's settings (bootstrap token, origin, batch limit, carrier) are
//! embedded as JSON; the carrier code between the page and mtgate is this
//! room's own (`bridge.js`, built into the binary).

use super::Room;
use crate::web::content::{full, Body};
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};

/// The page's script (both app boundaries and the carriers).
const SCRIPT: &str = include_str!("bridge.js");

/// The largest carrier body the page sends (2 MiB, the desktop WebView cap).
const BATCH_LIMIT: usize = 2 << 20;

pub fn bridge_page(room: &Room, host: &str, bootstrap: &str) -> Response<Body> {
    let mut n = [0u8; 18];
    mtgate_crypto::fill_random(&mut n);
    let nonce = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, n);
    let base = room
        .cfg
        .path
        .as_deref()
        .map_or_else(|| "/".to_owned(), |p| format!("/{p}/"));
    let settings = serde_json::json!({
        "v": 1,
        "bootstrap": bootstrap,
        "origin": format!("https://{host}"),
        "base": base,
        "carrier": room.cfg.carrier.label(),
        "batch": BATCH_LIMIT,
    });
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title></title></head><body>\n\
         <script nonce=\"{nonce}\">\nconst TPROXY = {settings};\n{SCRIPT}\n</script>\n</body></html>\n"
    );
    let mut r = full(StatusCode::OK, "text/html; charset=utf-8", html, false);
    let h = r.headers_mut();
    h.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; connect-src 'self' wss://{host}; \
         frame-ancestors http://127.0.0.1:*; sandbox allow-same-origin allow-scripts"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert("content-security-policy", v);
    }
    r
}
