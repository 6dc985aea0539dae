//! The web console (`/console/…` on the admin listener): server-rendered
//! HTML, no JavaScript. A thin front end over the same control-plane
//! commands as the API, so roles and the audit trail are the API's.
//!
//! Signing in takes a token and opens a sign-in session
//! ([`crate::control::auth`]), kept in an `HttpOnly`, `SameSite=Strict`
//! cookie scoped to `/console`; every form carries a CSRF token derived from
//! the session. Pages are sent with a content security policy that allows no
//! script at all. Every change answers with a redirect (`303`) back to the
//! page, carrying a one-line message.

use super::console_html as html;
use crate::control::{AuthError, Control, ControlError, Principal};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use std::collections::HashMap;
use std::net::IpAddr;

/// The session cookie.
const COOKIE_NAME: &str = "mtgate_console";

/// The largest form taken.
const MAX_FORM: usize = 16 * 1024;

/// The CSRF token of a session: the first 32 hex digits of its SHA-256.
pub(super) fn csrf_of(session: &str) -> String {
    hex::encode(&mtgate_crypto::sha256(&[b"mtgate console csrf", session.as_bytes()])[..16])
}

fn page(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

/// A `303` to `to` (with `msg` shown there), optionally setting a cookie.
fn back(to: &str, msg: &str, ok: bool, cookie: Option<String>) -> Response<Full<Bytes>> {
    let key = if ok { "msg" } else { "err" };
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair(key, msg)
        .finish();
    let mut r = page(StatusCode::SEE_OTHER, String::new());
    if let Ok(v) = HeaderValue::from_str(&format!("{to}?{q}")) {
        r.headers_mut().insert(LOCATION, v);
    }
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(SET_COOKIE, c);
    }
    r
}

/// The console's session in `Cookie` header values (untrusted, before
/// authentication): the first `mtgate_console=VALUE` pair.
pub fn session_from_cookies<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    values
        .into_iter()
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE_NAME)
        .map(|(_, v)| v)
}

fn session_cookie<B>(req: &Request<B>) -> Option<String> {
    session_from_cookies(
        req.headers()
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
    .map(str::to_owned)
}

async fn form(body: Incoming) -> Option<HashMap<String, String>> {
    let bytes = Limited::new(body, MAX_FORM)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some(form_urlencoded::parse(&bytes).into_owned().collect())
}

fn query(req: &Request<Incoming>) -> (Option<String>, Option<String>) {
    let q: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    (q.get("msg").cloned(), q.get("err").cloned())
}

/// Answers one `/console…` request from `peer`.
pub async fn handle(
    control: &Control,
    req: Request<Incoming>,
    peer: IpAddr,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let method = req.method().clone();
    if path == "/console/login" && method == Method::POST {
        return login(control, req.into_body(), peer).await;
    }
    let session = session_cookie(&req);
    let who = session
        .as_deref()
        .map(|s| control.authenticate(Some(s), peer));
    let (p, session) = match (who, session) {
        (Some(Ok(p)), Some(s)) => (p, s),
        (Some(Err(AuthError::Limited)), _) => {
            return page(
                StatusCode::TOO_MANY_REQUESTS,
                html::login(
                    None,
                    Some("too many failed attempts from this address; try later"),
                ),
            )
        }
        _ if method == Method::GET && (path == "/console" || path == "/console/login") => {
            let (msg, err) = query(&req);
            return page(StatusCode::OK, html::login(msg.as_deref(), err.as_deref()));
        }
        _ => return back("/console/login", "please sign in", false, None),
    };
    if method == Method::GET {
        let (msg, err) = query(&req);
        let flash = html::Flash {
            msg: msg.as_deref(),
            err: err.as_deref(),
        };
        let csrf = csrf_of(&session);
        return match path.strip_prefix("/console/users/") {
            Some(name) => match html::user_page(control, &p, name, &csrf, &flash) {
                Ok(body) => page(StatusCode::OK, body),
                Err(e) => page(StatusCode::NOT_FOUND, html::error_page(&e.to_string())),
            },
            None if path == "/console" => {
                page(StatusCode::OK, html::dashboard(control, &p, &csrf, &flash))
            }
            None => page(StatusCode::NOT_FOUND, html::error_page("no such page")),
        };
    }
    if method != Method::POST {
        return page(
            StatusCode::METHOD_NOT_ALLOWED,
            html::error_page("method not allowed"),
        );
    }
    let Some(f) = form(req.into_body()).await else {
        return back("/console", "the form is too large", false, None);
    };
    if f.get("csrf").map(String::as_str) != Some(csrf_of(&session).as_str()) {
        return page(
            StatusCode::FORBIDDEN,
            html::error_page("the form is stale or not from this console; reload the page"),
        );
    }
    act(control, &p, &session, &path, &f)
}

async fn login(control: &Control, body: Incoming, peer: IpAddr) -> Response<Full<Bytes>> {
    let token = form(body)
        .await
        .and_then(|f| f.get("token").cloned())
        .unwrap_or_default();
    match control.authenticate(Some(token.trim()), peer) {
        Ok(p) if !p.session => match control.sign_in(&p) {
            Ok((session, _)) => back(
                "/console",
                &format!("signed in as {} ({})", p.name, p.role.name()),
                true,
                Some(format!(
                    "{COOKIE_NAME}={session}; Path=/console; HttpOnly; SameSite=Strict"
                )),
            ),
            Err(e) => back("/console/login", &e.to_string(), false, None),
        },
        Ok(_) => back("/console/login", "sign in with a token", false, None),
        Err(AuthError::Limited) => back(
            "/console/login",
            "too many failed attempts from this address; try later",
            false,
            None,
        ),
        Err(AuthError::Refused) => back(
            "/console/login",
            "unknown, expired or out-of-network token",
            false,
            None,
        ),
    }
}

/// One change from a form, through the control plane's commands.
fn act(
    control: &Control,
    p: &Principal,
    session: &str,
    path: &str,
    f: &HashMap<String, String>,
) -> Response<Full<Bytes>> {
    let field = |k: &str| f.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
    let done = |to: &str, r: Result<String, ControlError>| match r {
        Ok(m) => back(to, &m, true, None),
        Err(e) => back(to, &e.to_string(), false, None),
    };
    let name = field("name");
    let user_page = format!("/console/users/{name}");
    match path {
        "/console/logout" => {
            let _ = control.sign_out(p, session);
            back(
                "/console/login",
                "signed out",
                true,
                Some(format!(
                    "{COOKIE_NAME}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0"
                )),
            )
        }
        "/console/users" => {
            let modes: Vec<String> = ["ee", "dd", "classic"]
                .into_iter()
                .filter(|m| f.contains_key(*m))
                .map(String::from)
                .collect();
            let new = crate::control::NewUser {
                name: name.clone(),
                modes: (!modes.is_empty()).then_some(modes),
                ..Default::default()
            };
            match control.create_user(p, new) {
                Ok(_) => back(&user_page, &format!("user {name} created"), true, None),
                Err(e) => back("/console", &e.to_string(), false, None),
            }
        }
        "/console/users/delete" => done(
            "/console",
            control
                .delete_user(p, &name)
                .map(|()| format!("user {name} deleted")),
        ),
        "/console/users/enable" | "/console/users/disable" => {
            let patch = crate::control::UserPatch {
                enabled: Some(path.ends_with("enable")),
                ..Default::default()
            };
            done(
                &user_page,
                control.update_user(p, &name, patch).map(|u| {
                    format!(
                        "user {name} {}",
                        if u.enabled { "enabled" } else { "disabled" }
                    )
                }),
            )
        }
        "/console/users/rotate" => {
            let grace = field("grace_hours").parse::<u64>().unwrap_or(168);
            done(
                &user_page,
                control
                    .rotate(p, &name, grace.saturating_mul(3600), 0)
                    .map(|s| {
                        format!(
                            "new secret {} in force; the others run out in {grace} h",
                            s.id
                        )
                    }),
            )
        }
        "/console/rules" => {
            let hours = field("expires_hours");
            let expires_in = match hours.as_str() {
                "" => None,
                h => match h.parse::<u64>() {
                    Ok(h) => Some(h.saturating_mul(3600)),
                    Err(_) => return back("/console", "expires: a number of hours", false, None),
                },
            };
            let new = crate::control::rules::NewRule {
                net: field("net"),
                level: field("level"),
                expires_in,
                note: field("note"),
            };
            done(
                "/console",
                control
                    .add_rule(p, new)
                    .map(|r| format!("rule {} added: {} {}", r.id, r.net, r.level.name())),
            )
        }
        "/console/rules/delete" => {
            let id = field("id");
            done(
                "/console",
                control
                    .remove_rule(p, &id)
                    .map(|()| format!("rule {id} removed")),
            )
        }
        "/console/blocks/delete" => {
            let ip = field("ip");
            done(
                "/console",
                control.unblock(p, &ip).map(|()| format!("{ip} unblocked")),
            )
        }
        _ => page(StatusCode::NOT_FOUND, html::error_page("no such action")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_session_is_found_among_other_cookies() {
        assert_eq!(
            session_from_cookies(["a=1; mtgate_console=mtgs_x; b=2"]),
            Some("mtgs_x")
        );
        assert_eq!(
            session_from_cookies(["a=1", " mtgate_console=s2"]),
            Some("s2")
        );
        assert_eq!(session_from_cookies(["mtgate_consolex=1; =; ;;"]), None);
    }

    proptest! {
        /// Any header values: no panic; a value found came from a pair named
        /// as the cookie and holds no separator.
        #[test]
        fn any_cookie_header_is_read_safely(values in proptest::collection::vec(".{0,80}", 0..4), token in "[a-z0-9_]{0,20}") {
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            if let Some(v) = session_from_cookies(refs.iter().copied()) {
                prop_assert!(!v.contains(';'));
                let pair = format!("{COOKIE_NAME}={v}");
                prop_assert!(values.iter().any(|h| h.contains(&pair)));
            }
            let planted = format!("x=y; {COOKIE_NAME}={token}");
            prop_assert_eq!(session_from_cookies([planted.as_str()]), Some(token.as_str()));
        }
    }
}
