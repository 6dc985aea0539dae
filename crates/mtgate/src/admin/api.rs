//! The admin API's HTTP front end (`/api/v1/…`, JSON): parse, call one
//! control command ([`crate::control`]), render its result. Every request
//! but the unauthenticated ones needs `Authorization: Bearer <token or
//! session>`; failures are limited per address (`429`). Bodies are capped
//! at [`MAX_BODY`] and must be JSON objects; a refusal changes nothing.
//!
//! | method and path | role | what |
//! |---|---|---|
//! | `GET /api/v1/whoami` | any | the caller's token id, name, role |
//! | `POST /api/v1/login` | any (a token) | a session token with a short expiry |
//! | `POST /api/v1/logout` | any (a session) | ends that session |
//! | `GET /api/v1/tokens` | superuser | the tokens (never the tokens themselves) |
//! | `POST /api/v1/tokens` | superuser | `{name, role, expires_in?, from?}` → the new token, once |
//! | `DELETE /api/v1/tokens/{id}` | superuser | revokes it and ends its sessions |
//! | `GET /api/v1/users`, `GET /api/v1/users/{name}` | read_only (links: standard) | users, usage, links |
//! | `POST /api/v1/users` | standard | `{name, secret?, modes?, limits?}` → the new user and its links |
//! | `PATCH /api/v1/users/{name}` | standard | `{modes?, limits?, enabled?}` (a user of the API, not the config file) |
//! | `DELETE /api/v1/users/{name}` | standard | deletes it; its sessions are drained |
//! | `GET /api/v1/users/{name}/secrets` | standard | its secrets: id, window, state, links |
//! | `POST /api/v1/users/{name}/secrets` | standard | `{secret?, not_before?, not_after?}` adds one |
//! | `POST /api/v1/users/{name}/rotate` | standard | `{grace?, starts_in?}` (seconds): a new secret, the others run out |
//! | `DELETE /api/v1/users/{name}/secrets/{id}` | standard | revokes it at once |
//! | `GET /api/v1/users/{name}/quota` | read_only | usage toward its quotas |
//! | `POST /api/v1/users/{name}/quota/reset` | standard | `{period_only?}` resets the usage |
//! | `GET /api/v1/config` | admin | the config file (secrets redacted), listeners, last reload |
//! | `POST /api/v1/config/reload` | admin | reloads it; the summary, or why not (`400`) |
//! | `GET /api/v1/rules` | admin | the ACL rules: the config file's and those made here |
//! | `POST /api/v1/rules` | admin | `{net, level, expires_in?, note?}` makes one |
//! | `DELETE /api/v1/rules/{id}` | admin | removes one made here |
//! | `GET /api/v1/blocks` | admin | sources the reputation blocks now |
//! | `DELETE /api/v1/blocks/{ip}` | admin | lifts one |
//! | `GET /api/v1/audit?n=50` | read_only | the newest audit entries (at most 1000), newest last |
//! | `GET /api/v1/stats` | read_only | the proxy's counters |
//! | `GET /api/v1/openapi.json` | any | this API's OpenAPI document |

use super::api_cmds::{
    add_rule, add_secret, create_user, reset_quota, rotate, rule_json, secret_json, time_json,
    update_user, user_json,
};
use crate::control::tokens::NewToken;
use crate::control::{AuthError, Control, ControlError, Principal, Role};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::IpAddr;

/// A refusal made before the command (boxed: it is large and rare).
pub(super) type Reply = Box<Response<Full<Bytes>>>;

/// The largest request body taken.
pub const MAX_BODY: usize = 64 * 1024;

pub(super) fn answer(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    r
}

pub(super) fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response<Full<Bytes>> {
    answer(status, &json!({ "error": msg.to_string() }))
}

pub(super) fn refused(e: &ControlError) -> Response<Full<Bytes>> {
    let status = match e {
        ControlError::Forbidden { .. } | ControlError::Refused(_) => StatusCode::FORBIDDEN,
        ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Exists(_) | ControlError::Conflict(_) => StatusCode::CONFLICT,
        ControlError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e)
}

fn bearer<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// A request body as a JSON object (an empty body is `{}`).
pub(super) async fn json_body(body: Incoming) -> Result<serde_json::Map<String, Value>, Reply> {
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(Box::new(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is limited to {MAX_BODY} bytes"),
            )))
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ))),
        Err(e) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("bad JSON: {e}"),
        ))),
    }
}

/// Typed fields of a body: unknown fields are refused, so a typo is not
/// silently ignored.
pub(super) fn fields<T: for<'de> Deserialize<'de>>(
    m: serde_json::Map<String, Value>,
) -> Result<T, Reply> {
    serde_json::from_value(Value::Object(m))
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, format!("bad request: {e}"))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    role: String,
    /// Seconds from now.
    expires_in: Option<u64>,
    #[serde(default)]
    from: Vec<String>,
}

/// The API's OpenAPI document (kept in docs/openapi.json).
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

fn principal_json(p: &Principal) -> Value {
    json!({
        "token_id": p.token_id,
        "name": p.name,
        "role": p.role.name(),
        "session": p.session,
    })
}

fn token_json(r: &crate::control::tokens::TokenRecord) -> Value {
    json!({
        "id": r.id,
        "name": r.name,
        "role": r.role.name(),
        "created": r.created,
        "expires": r.expires,
        "from": r.from.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

/// Answers one `/api/…` request from `peer`.
pub async fn handle(
    control: &Control,
    req: Request<Incoming>,
    peer: IpAddr,
) -> Response<Full<Bytes>> {
    let p = match control.authenticate(bearer(&req), peer) {
        Ok(p) => p,
        Err(AuthError::Limited) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed attempts from this address; try later",
            );
            r.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from(crate::control::auth::FAILURE_WINDOW),
            );
            return r;
        }
        Err(AuthError::Refused) => {
            let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    };
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return error(StatusCode::NOT_FOUND, "no such endpoint");
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match (&method, parts.as_slice()) {
        (&Method::GET, ["whoami"]) => answer(StatusCode::OK, &principal_json(&p)),
        (&Method::POST, ["login"]) => match control.sign_in(&p) {
            Ok((session, expires)) => answer(
                StatusCode::OK,
                &json!({ "session": session, "expires": expires, "role": p.role.name() }),
            ),
            Err(e) => refused(&e),
        },
        (&Method::POST, ["logout"]) => match control.sign_out(&p, bearer(&req).unwrap_or("")) {
            Ok(()) => answer(StatusCode::OK, &json!({ "signed_out": true })),
            Err(e) => refused(&e),
        },
        (&Method::GET, ["tokens"]) => match control.list_tokens(&p) {
            Ok(list) => answer(
                StatusCode::OK,
                &Value::Array(list.iter().map(token_json).collect()),
            ),
            Err(e) => refused(&e),
        },
        (&Method::POST, ["tokens"]) => {
            // The role is checked before the body is read.
            if p.role < Role::Superuser {
                return refused(&control.deny(&p, "token.create", Role::Superuser));
            }
            let body = match json_body(req.into_body()).await {
                Ok(b) => b,
                Err(r) => return *r,
            };
            let c: CreateToken = match fields(body) {
                Ok(c) => c,
                Err(r) => return *r,
            };
            let Some(role) = Role::parse(&c.role) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "role: none, read_only, standard, admin or superuser",
                );
            };
            let mut from = Vec::new();
            for f in &c.from {
                match crate::policy::acl::parse_net(f) {
                    Some(n) => from.push(n),
                    None => {
                        return error(StatusCode::BAD_REQUEST, format!("from: bad network {f:?}"))
                    }
                }
            }
            let expires = match c.expires_in {
                Some(0) => return error(StatusCode::BAD_REQUEST, "expires_in: at least 1"),
                Some(s) => Some(crate::control::now().saturating_add(s)),
                None => None,
            };
            let new = NewToken {
                name: c.name,
                role: Some(role),
                expires,
                from,
            };
            match control.create_token(&p, new) {
                Ok((rec, token)) => {
                    let mut v = token_json(&rec);
                    v["token"] = Value::String(token);
                    answer(StatusCode::CREATED, &v)
                }
                Err(e) => refused(&e),
            }
        }
        (&Method::GET, ["users"]) => match control.users(&p) {
            Ok(list) => answer(
                StatusCode::OK,
                &Value::Array(list.iter().map(user_json).collect()),
            ),
            Err(e) => refused(&e),
        },
        (&Method::GET, ["users", name]) => match control.user(&p, name) {
            Ok(u) => answer(StatusCode::OK, &user_json(&u)),
            Err(e) => refused(&e),
        },
        (&Method::POST, ["users"]) => create_user(control, &p, req.into_body()).await,
        (&Method::PATCH, ["users", name]) => {
            let name = (*name).to_owned();
            update_user(control, &p, &name, req.into_body()).await
        }
        (&Method::DELETE, ["users", name]) => match control.delete_user(&p, name) {
            Ok(()) => answer(StatusCode::OK, &json!({ "deleted": name })),
            Err(e) => refused(&e),
        },
        (&Method::GET, ["users", name, "secrets"]) => match control.secrets(&p, name) {
            Ok(list) => answer(
                StatusCode::OK,
                &Value::Array(list.iter().map(secret_json).collect()),
            ),
            Err(e) => refused(&e),
        },
        (&Method::POST, ["users", name, "secrets"]) => {
            let name = (*name).to_owned();
            add_secret(control, &p, &name, req.into_body()).await
        }
        (&Method::POST, ["users", name, "rotate"]) => {
            let name = (*name).to_owned();
            rotate(control, &p, &name, req.into_body()).await
        }
        (&Method::DELETE, ["users", name, "secrets", id]) => {
            match control.revoke_secret(&p, name, id) {
                Ok(()) => answer(StatusCode::OK, &json!({ "revoked": id })),
                Err(e) => refused(&e),
            }
        }
        (&Method::GET, ["users", name, "quota"]) => match control.quota(&p, name) {
            Ok(v) => answer(StatusCode::OK, &v),
            Err(e) => refused(&e),
        },
        (&Method::POST, ["users", name, "quota", "reset"]) => {
            let name = (*name).to_owned();
            reset_quota(control, &p, &name, req.into_body()).await
        }
        (&Method::GET, ["config"]) => match control.config(&p) {
            Ok(v) => answer(StatusCode::OK, &v),
            Err(e) => refused(&e),
        },
        (&Method::POST, ["config", "reload"]) => match control.reload(&p) {
            Ok(summary) => answer(StatusCode::OK, &json!({ "ok": true, "summary": summary })),
            Err(e) => refused(&e),
        },
        (&Method::GET, ["rules"]) => match control.rules(&p) {
            Ok(list) => answer(
                StatusCode::OK,
                &Value::Array(list.iter().map(rule_json).collect()),
            ),
            Err(e) => refused(&e),
        },
        (&Method::POST, ["rules"]) => add_rule(control, &p, req.into_body()).await,
        (&Method::DELETE, ["rules", id]) => match control.remove_rule(&p, id) {
            Ok(()) => answer(StatusCode::OK, &json!({ "removed": id })),
            Err(e) => refused(&e),
        },
        (&Method::GET, ["blocks"]) => match control.blocks(&p) {
            Ok(list) => answer(
                StatusCode::OK,
                &Value::Array(
                    list.iter()
                        .map(|(ip, until_ms)| {
                            json!({
                                "source": ip.to_string(),
                                "until": time_json(u64::try_from(*until_ms / 1000).ok()),
                            })
                        })
                        .collect(),
                ),
            ),
            Err(e) => refused(&e),
        },
        (&Method::DELETE, ["blocks", ip]) => match control.unblock(&p, ip) {
            Ok(()) => answer(StatusCode::OK, &json!({ "unblocked": ip })),
            Err(e) => refused(&e),
        },
        (&Method::GET, ["audit"]) => {
            let n = req.uri().query().map_or(Some(50), |q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "n")
                    .map_or(Some(50), |(_, v)| v.parse::<usize>().ok())
            });
            match n.filter(|n| (1..=1000).contains(n)) {
                None => error(StatusCode::BAD_REQUEST, "n: 1..1000"),
                Some(n) => match control.recent_audit(&p, n) {
                    Ok(list) => answer(StatusCode::OK, &Value::Array(list)),
                    Err(e) => refused(&e),
                },
            }
        }
        (&Method::GET, ["stats"]) => match control.stats(&p) {
            Ok(v) => answer(StatusCode::OK, &v),
            Err(e) => refused(&e),
        },
        (&Method::GET, ["openapi.json"]) => answer(
            StatusCode::OK,
            &serde_json::from_str(OPENAPI).unwrap_or(Value::Null),
        ),
        (&Method::DELETE, ["tokens", id]) => match control.revoke_token(&p, id) {
            Ok(rec) => answer(StatusCode::OK, &token_json(&rec)),
            Err(e) => refused(&e),
        },
        (_, route) => match allowed(route) {
            Some(allow) => {
                let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here");
                r.headers_mut().insert(
                    hyper::header::ALLOW,
                    hyper::header::HeaderValue::from_static(allow),
                );
                r
            }
            None => error(StatusCode::NOT_FOUND, "no such endpoint"),
        },
    }
}

/// The methods a route takes (`Allow` of a `405`), or `None`: no such route.
fn allowed(route: &[&str]) -> Option<&'static str> {
    Some(match route {
        ["whoami" | "stats" | "openapi.json" | "blocks" | "config" | "audit"] => "GET",
        ["config", "reload"] => "POST",
        ["rules"] => "GET, POST",
        ["rules", _] | ["blocks", _] => "DELETE",
        ["users"] => "GET, POST",
        ["users", _] => "GET, PATCH, DELETE",
        ["users", _, "secrets"] => "GET, POST",
        ["users", _, "rotate"] | ["users", _, "quota", "reset"] => "POST",
        ["users", _, "quota"] => "GET",
        ["users", _, "secrets", _] => "DELETE",
        ["login" | "logout"] => "POST",
        ["tokens"] => "GET, POST",
        ["tokens", _] => "DELETE",
        _ => return None,
    })
}
