//! The WEB proxy's HTTP routes on the own site: the bridge page and the
//! session API. A request that is not exactly one of them, or that does not
//! authenticate, is handed back untouched (its body unread) for the site to
//! answer as it answers any path.

use super::{Handoff, Room, Tokens};
use crate::web::content::{full, Body};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use mtgate_proto::webproxy::{self, Kind};

/// The largest session-create body (a HELLO frame is 9 bytes).
const MAX_CREATE_BODY: usize = 64;

/// What the room made of a request.
pub enum Routed {
    Answer(Response<Body>),
    /// Not ours (or not authenticated): the site answers it.
    Site(Request<Incoming>),
    /// The same for a request whose body was read: the site answers its
    /// head (without the body or the bearer).
    Bodiless(hyper::http::request::Parts),
}

/// The host the request names (`Host` or `:authority`, port dropped, lowercase).
fn host_of(req: &Request<Incoming>) -> Option<String> {
    let h = req.uri().host().map(str::to_owned).or_else(|| {
        req.headers()
            .get(hyper::header::HOST)?
            .to_str()
            .ok()
            .map(|h| h.rsplit_once(':').map_or(h, |(n, _)| n).to_owned())
    })?;
    Some(h.to_ascii_lowercase())
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    let v = h.get(hyper::header::AUTHORIZATION)?.to_str().ok()?;
    let t = v.strip_prefix("Bearer ")?;
    webproxy::is_token_shaped(t).then_some(t)
}

/// `Origin` may be absent (headless clients send none); when present it
/// must be the site itself (`https://HOST`, or with the port of a
/// deployment that is not on 443).
fn origin_ok(h: &HeaderMap, host: &str) -> bool {
    let Some(v) = h.get(hyper::header::ORIGIN) else {
        return true;
    };
    let Some(rest) = v
        .to_str()
        .ok()
        .and_then(|o| o.strip_prefix("https://"))
        .and_then(|o| o.strip_prefix(host))
    else {
        return false;
    };
    rest.is_empty()
        || rest
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn octet_stream(h: &HeaderMap) -> bool {
    h.get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/octet-stream")
}

/// Routes one request for `room` from `client`.
pub async fn route(
    room: &Room,
    stats: &std::sync::Arc<super::Stats>,
    tokens: &std::sync::Arc<Tokens>,
    handoff: Option<&Handoff>,
    req: Request<Incoming>,
    client: std::net::SocketAddr,
) -> Routed {
    let Some(host) = host_of(&req).filter(|h| room.hosts.contains(h)) else {
        return Routed::Site(req);
    };
    let base = room
        .cfg
        .path
        .as_deref()
        .map_or_else(|| "/".to_owned(), |p| format!("/{p}/"));
    let path = req.uri().path().to_owned();
    let Some(rest) = path.strip_prefix(&base) else {
        return Routed::Site(req);
    };
    match (req.method(), rest) {
        (&Method::GET, "") => bridge(room, tokens, req, &host),
        (&Method::POST, "api/v1/session") => create(room, stats, tokens, req, &host).await,
        (&Method::DELETE, "api/v1/session") => delete(tokens, req, &host),
        (&Method::POST, "api/v1/up" | "api/v1/down")
            if matches!(
                room.cfg.carrier,
                super::Carrier::Https | super::Carrier::HttpsLanes
            ) =>
        {
            match handoff {
                Some(h) => https(room, stats, tokens, h, req, &host, client).await,
                None => Routed::Site(req),
            }
        }
        (&Method::GET, "api/v1/ws")
            if matches!(
                room.cfg.carrier,
                super::Carrier::WebSocket | super::Carrier::WebSocketLanes
            ) =>
        {
            match handoff {
                Some(h) => websocket(room, stats, tokens, h, req, &host, client),
                None => Routed::Site(req),
            }
        }
        _ => Routed::Site(req),
    }
}

/// `GET /?bridge=<capability>`, exactly: the bridge page.
fn bridge(room: &Room, tokens: &Tokens, req: Request<Incoming>, host: &str) -> Routed {
    let cred = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("bridge="))
        .filter(|c| webproxy::is_token_shaped(c))
        .and_then(|c| room.registry.find(c))
        .filter(|c| c.host == host)
        .cloned();
    let Some(cred) = cred else {
        return Routed::Site(req);
    };
    let boot = tokens.bootstrap(cred);
    Routed::Answer(super::page::bridge_page(room, host, &boot))
}

/// `POST /api/v1/session`: a HELLO opens a session; a WELCOME answers.
async fn create(
    room: &Room,
    stats: &super::Stats,
    tokens: &Tokens,
    req: Request<Incoming>,
    host: &str,
) -> Routed {
    let h = req.headers();
    let ok = origin_ok(h, host) && octet_stream(h) && bearer(h).is_some();
    let declared = h
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if !ok || declared.is_some_and(|n| n > MAX_CREATE_BODY) {
        return Routed::Site(req);
    }
    let boot = bearer(h).unwrap_or_default().to_owned();
    // The bearer must be a live bootstrap before the body is read.
    if !tokens.is_bootstrap(&boot) {
        return Routed::Site(req);
    }
    use http_body_util::BodyExt;
    // A body that is not one HELLO: the site answers what it was shown of
    // the request (its head, without the body or the bearer).
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_CREATE_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return Routed::Bodiless(parts),
    };
    let hello = webproxy::decode_frames(&body)
        .ok()
        .is_some_and(|f| f.len() == 1 && f[0].kind == Kind::Hello);
    if !hello {
        return Routed::Bodiless(parts);
    }
    match tokens.open_session(&boot, room.cfg.max_sessions) {
        Ok((session, _)) => {
            stats
                .sessions_opened
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut welcome = Vec::with_capacity(8);
            webproxy::encode(Kind::Welcome, 0, &[], &mut welcome);
            let mut r = full(StatusCode::OK, "application/octet-stream", welcome, false);
            let hd = r.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&session) {
                hd.insert("x-session-token", v);
            }
            hd.insert("x-down-cursor", HeaderValue::from_static("0"));
            hd.insert(
                "x-carrier-mode",
                HeaderValue::from_static(room.cfg.carrier.label()),
            );
            hd.insert(
                hyper::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
            Routed::Answer(r)
        }
        Err(super::tokens::Refusal::Full) => {
            stats
                .full
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut r = crate::web::content::error_page(StatusCode::SERVICE_UNAVAILABLE, false);
            r.headers_mut()
                .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
            Routed::Answer(r)
        }
        Err(super::tokens::Refusal::Unknown) => Routed::Answer(crate::web::content::error_page(
            StatusCode::NOT_FOUND,
            false,
        )),
    }
}

/// `DELETE /api/v1/session`: ends a session (idempotent for a known one).
fn delete(tokens: &Tokens, req: Request<Incoming>, host: &str) -> Routed {
    let h = req.headers();
    let session = bearer(h).filter(|_| origin_ok(h, host)).map(str::to_owned);
    match session.filter(|s| tokens.session(s).is_some()) {
        Some(s) => {
            tokens.close_session(&s);
            let mut r = full(StatusCode::NO_CONTENT, "text/plain", "", false);
            r.headers_mut().remove(hyper::header::CONTENT_TYPE);
            Routed::Answer(r)
        }
        None => Routed::Site(req),
    }
}

/// A stream id as the lanes subprotocol writes it: canonical decimal, 1..2^24-1.
fn lane_id(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 8 || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse()
        .ok()
        .filter(|n| (1..=webproxy::MAX_STREAM).contains(n))
}

/// The session token (and, for a lane, the stream id) a subprotocol names,
/// for the carrier the room uses.
fn subprotocol(v: &str, lanes: bool) -> Option<(String, Option<u32>)> {
    if lanes {
        let rest = v.strip_prefix("tproxy-lane-v1.")?;
        let (token, id) = rest.split_once('.')?;
        webproxy::is_token_shaped(token).then_some(())?;
        Some((token.to_owned(), Some(lane_id(id)?)))
    } else {
        let token = v.strip_prefix("tproxy-v1.")?;
        webproxy::is_token_shaped(token).then(|| (token.to_owned(), None))
    }
}

/// `GET /api/v1/ws`: the session's WebSocket (`tproxy-v1.<session>`; losing
/// it ends the session) or one lane's (`tproxy-lane-v1.<session>.<id>`;
/// losing it ends that stream only).
#[allow(clippy::too_many_arguments)]
fn websocket(
    room: &Room,
    stats: &std::sync::Arc<super::Stats>,
    tokens: &std::sync::Arc<Tokens>,
    handoff: &Handoff,
    mut req: Request<Incoming>,
    host: &str,
    client: std::net::SocketAddr,
) -> Routed {
    let h = req.headers();
    let lanes = room.cfg.carrier == super::Carrier::WebSocketLanes;
    let asked = h
        .get(hyper::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let named = asked.as_deref().and_then(|v| subprotocol(v, lanes));
    let lane = named.as_ref().and_then(|(_, l)| *l);
    let token = named.map(|(t, _)| t);
    let upgrade = h
        .get(hyper::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && h.get(hyper::header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes() == b"13");
    let key = h.get(hyper::header::SEC_WEBSOCKET_KEY).cloned();
    let entry = token.as_deref().and_then(|t| tokens.session(t));
    let (Some(token), Some(entry), Some(key), true, true) =
        (token, entry, key, upgrade, origin_ok(h, host))
    else {
        return Routed::Site(req);
    };
    // A lane id is used once; the session's one WebSocket likewise.
    let claimed = match lane {
        Some(id) => entry.lanes.claim(id, room.cfg.max_streams),
        None => entry.lanes.claim(0, 1),
    };
    if !claimed {
        return Routed::Site(req);
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (tokens, sink, pairs) = (tokens.clone(), handoff.sink.clone(), handoff.pairs.clone());
    let stats = stats.clone();
    let max_streams = room.cfg.max_streams;
    let proto = asked.unwrap_or_default();
    tokio::spawn(async move {
        let lanes = entry.lanes.clone();
        if let Ok(up) = on_upgrade.await {
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                hyper_util::rt::TokioIo::new(up),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            let setup = super::mux::Setup {
                stats,
                max_streams,
                client,
                credential: entry.credential.clone(),
                lane,
                pairs,
                sink,
            };
            super::carrier_ws::run(ws, setup).await;
        }
        lanes.release();
        if lane.is_none() {
            tokens.close_session(&token);
        }
    });
    use http_body_util::BodyExt;
    let mut r = Response::new(
        http_body_util::Empty::new()
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hd = r.headers_mut();
    hd.insert(
        hyper::header::UPGRADE,
        HeaderValue::from_static("websocket"),
    );
    hd.insert(
        hyper::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        hd.insert(hyper::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Ok(v) = HeaderValue::from_str(&proto) {
        hd.insert(hyper::header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    Routed::Answer(r)
}

/// The most bytes one uplink body may hold (a 2 MiB batch and its headers).
const MAX_UP_BODY: usize = (2 << 20) + 64 * 1024;

/// `POST /api/v1/up` and `POST /api/v1/down` of the `https` carrier.
#[allow(clippy::too_many_arguments)]
async fn https(
    room: &Room,
    stats: &std::sync::Arc<super::Stats>,
    tokens: &std::sync::Arc<Tokens>,
    handoff: &Handoff,
    req: Request<Incoming>,
    host: &str,
    client: std::net::SocketAddr,
) -> Routed {
    use super::carrier_https::{DownAnswer, HttpsState, UpAnswer};
    let h = req.headers();
    let number = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let up = req.uri().path().ends_with("/up");
    let n = if up {
        number("x-up-seq").filter(|_| octet_stream(h))
    } else {
        number("x-down-cursor")
    };
    let entry = bearer(h)
        .filter(|_| origin_ok(h, host))
        .and_then(|t| tokens.session(t));
    let (Some(n), Some(entry)) = (n, entry) else {
        return Routed::Site(req);
    };
    let setup = |lane: Option<u32>, max_streams: usize| super::mux::Setup {
        stats: stats.clone(),
        max_streams,
        client,
        credential: entry.credential.clone(),
        lane,
        pairs: handoff.pairs.clone(),
        sink: handoff.sink.clone(),
    };
    // `https-lanes`: the lane's own state (lane 0 carries session control only).
    let lane = if room.cfg.carrier == super::Carrier::HttpsLanes {
        let Some(id) = h
            .get("x-lane-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| if v == "0" { Some(0) } else { lane_id(v) })
        else {
            return Routed::Site(req);
        };
        Some(id)
    } else {
        None
    };
    let state = match lane {
        None => entry
            .https
            .get_or_init(|| std::sync::Arc::new(HttpsState::new(setup(None, room.cfg.max_streams))))
            .clone(),
        Some(id) => {
            use super::carrier_https::{Lane, LANE_OPEN_WAIT};
            let table = entry.https_lanes.clone();
            let mut found = table.get(id);
            if matches!(found, Lane::Unknown) && !up {
                // A poll may come before its lane's OPEN: wait a little for it.
                let t0 = std::time::Instant::now();
                while matches!(found, Lane::Unknown) && t0.elapsed() < LANE_OPEN_WAIT {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    found = table.get(id);
                }
            }
            match found {
                Lane::Open(s) => {
                    if !up && id != 0 && s.lane_closed().await {
                        table.close(id);
                        return Routed::Answer(lane_closed(n));
                    }
                    s
                }
                Lane::Closed if up => {
                    // Late frames for a closed lane are harmless: acknowledged.
                    return Routed::Answer(acked(n));
                }
                Lane::Closed => return Routed::Answer(lane_closed(n)),
                Lane::Unknown if up => {
                    let max = if id == 0 { 1 } else { room.cfg.max_streams };
                    if table.len() > max || !entry.lanes.claim(id, room.cfg.max_streams) {
                        return Routed::Site(req);
                    }
                    // Lane 0 opens no stream; any other lane exactly its own.
                    let s = if id == 0 {
                        setup(None, 0)
                    } else {
                        setup(Some(id), 1)
                    };
                    table.open(id, s)
                }
                Lane::Unknown => return Routed::Site(req),
            }
        }
    };
    entry.lanes.busy();
    let answer = if up {
        use http_body_util::BodyExt;
        match http_body_util::Limited::new(req.into_body(), MAX_UP_BODY)
            .collect()
            .await
        {
            Ok(b) => match state.up(n, &b.to_bytes()).await {
                UpAnswer::Ack(seq) => acked(seq),
                UpAnswer::Busy => retry_later(),
                UpAnswer::Refused => {
                    if let Some(id) = lane {
                        entry.https_lanes.close(id);
                    }
                    crate::web::content::error_page(StatusCode::NOT_FOUND, false)
                }
            },
            Err(_) => crate::web::content::error_page(StatusCode::NOT_FOUND, false),
        }
    } else {
        match state.down(n).await {
            DownAnswer::Batch { body, cursor } => {
                let mut r = full(StatusCode::OK, "application/octet-stream", body, false);
                if let Ok(v) = HeaderValue::from_str(&cursor.to_string()) {
                    r.headers_mut().insert("x-down-cursor", v);
                }
                r
            }
            DownAnswer::Empty { cursor } => {
                let mut r = full(StatusCode::NO_CONTENT, "text/plain", "", false);
                r.headers_mut().remove(hyper::header::CONTENT_TYPE);
                r.headers_mut().remove(hyper::header::CONTENT_LENGTH);
                if let Ok(v) = HeaderValue::from_str(&cursor.to_string()) {
                    r.headers_mut().insert("x-down-cursor", v);
                }
                r
            }
            DownAnswer::Refused => crate::web::content::error_page(StatusCode::NOT_FOUND, false),
        }
    };
    entry.lanes.release();
    let mut answer = answer;
    answer.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    Routed::Answer(answer)
}

/// `204` acknowledging uplink body `seq`.
fn acked(seq: u64) -> Response<Body> {
    let mut r = full(StatusCode::NO_CONTENT, "text/plain", "", false);
    r.headers_mut().remove(hyper::header::CONTENT_TYPE);
    r.headers_mut().remove(hyper::header::CONTENT_LENGTH);
    if let Ok(v) = HeaderValue::from_str(&seq.to_string()) {
        r.headers_mut().insert("x-up-ack", v);
    }
    r
}

/// The empty answer of a drained, closed lane.
fn lane_closed(cursor: u64) -> Response<Body> {
    let mut r = full(StatusCode::OK, "application/octet-stream", "", false);
    r.headers_mut()
        .insert("x-lane-closed", HeaderValue::from_static("1"));
    if let Ok(v) = HeaderValue::from_str(&cursor.to_string()) {
        r.headers_mut().insert("x-down-cursor", v);
    }
    r
}

fn retry_later() -> Response<Body> {
    let mut r = crate::web::content::error_page(StatusCode::SERVICE_UNAVAILABLE, false);
    r.headers_mut()
        .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let h = |o: Option<&str>| {
            let mut m = HeaderMap::new();
            if let Some(o) = o {
                m.insert(hyper::header::ORIGIN, HeaderValue::from_str(o).unwrap());
            }
            origin_ok(&m, "a.test")
        };
        assert!(h(None));
        assert!(h(Some("https://a.test")));
        assert!(h(Some("https://a.test:8443")));
        for bad in [
            "http://a.test",
            "https://a.test.evil",
            "https://b.test",
            "https://a.test:",
            "https://a.test:x",
            "null",
        ] {
            assert!(!h(Some(bad)), "{bad}");
        }
    }

    #[test]
    fn subprotocols_name_a_session_and_a_lane() {
        let t = "MHLEY5PmW1GWqJkSrlmJpvJUiLhBH_QKy6yKg8a0JPk";
        assert_eq!(
            subprotocol(&format!("tproxy-v1.{t}"), false),
            Some((t.into(), None))
        );
        assert_eq!(subprotocol(&format!("tproxy-v1.{t}"), true), None);
        assert_eq!(
            subprotocol(&format!("tproxy-lane-v1.{t}.7"), true),
            Some((t.into(), Some(7)))
        );
        for bad in ["0", "07", "16777216", "", "1a", "-1", "123456789"] {
            assert_eq!(
                subprotocol(&format!("tproxy-lane-v1.{t}.{bad}"), true),
                None,
                "{bad}"
            );
        }
        assert_eq!(lane_id("16777215"), Some(16_777_215));
        assert_eq!(subprotocol("tproxy-v1.short", false), None);
    }
}
