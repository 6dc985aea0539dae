//! The admin API's commands on users, secrets and rules: their bodies as
//! typed fields and their answers as JSON (the routes are in [`super::api`]).

use super::api::{answer, error, fields, json_body, refused, Reply};
use crate::control::{Control, Principal, Role};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    name: String,
    secret: Option<String>,
    modes: Option<Vec<String>>,
    limits: Option<serde_json::Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchUser {
    modes: Option<Vec<String>>,
    limits: Option<serde_json::Map<String, Value>>,
    enabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddSecret {
    secret: Option<String>,
    not_before: Option<String>,
    not_after: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRule {
    net: String,
    level: String,
    expires_in: Option<u64>,
    #[serde(default)]
    note: String,
}

pub(super) fn rule_json(r: &crate::control::rules::RuleView) -> Value {
    json!({
        "id": r.id,
        "net": r.net,
        "level": r.level,
        "until": time_json(r.until),
        "note": r.note,
        "source": r.source.name(),
    })
}

pub(super) async fn add_rule(
    control: &Control,
    p: &Principal,
    body: Incoming,
) -> Response<Full<Bytes>> {
    let c: AddRule = match body_for(control, p, "rule.add", Role::Admin, body).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let new = crate::control::rules::NewRule {
        net: c.net,
        level: c.level,
        expires_in: c.expires_in,
        note: c.note,
    };
    match control.add_rule(p, new) {
        Ok(r) => answer(
            StatusCode::CREATED,
            &rule_json(&crate::control::rules::RuleView {
                id: Some(r.id),
                net: r.net,
                level: r.level,
                until: r.until,
                note: r.note,
                source: crate::control::view::Source::Api,
            }),
        ),
        Err(e) => refused(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    grace: Option<u64>,
    starts_in: Option<u64>,
}

/// Unix seconds of an RFC 3339 time in a body field.
fn time_field(field: &str, v: Option<&str>) -> Result<Option<u64>, Reply> {
    let Some(t) = v else { return Ok(None) };
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .and_then(|d| u64::try_from(d.timestamp()).ok())
        .map(Some)
        .ok_or_else(|| {
            Box::new(error(
                StatusCode::BAD_REQUEST,
                format!("{field}: {t:?} is not an RFC 3339 time such as \"2027-01-01T00:00:00Z\""),
            ))
        })
}

pub(super) fn time_json(t: Option<u64>) -> Value {
    t.and_then(crate::civil::rfc3339)
        .map_or(Value::Null, Value::String)
}

pub(super) fn secret_json(s: &crate::control::view::SecretView) -> Value {
    json!({
        "id": s.id,
        "not_before": time_json(s.not_before),
        "not_after": time_json(s.not_after),
        "state": s.state,
        "current": s.current,
        "links": s.links,
    })
}

pub(super) async fn add_secret(
    control: &Control,
    p: &Principal,
    name: &str,
    body: Incoming,
) -> Response<Full<Bytes>> {
    let c: AddSecret = match body_for(control, p, "user.secret.add", Role::Standard, body).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let window = time_field("not_before", c.not_before.as_deref())
        .and_then(|nb| Ok((nb, time_field("not_after", c.not_after.as_deref())?)));
    let (not_before, not_after) = match window {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let new = crate::control::NewSecret {
        secret: c.secret,
        not_before,
        not_after,
    };
    match control.add_secret(p, name, new) {
        Ok(s) => answer(StatusCode::CREATED, &secret_json(&s)),
        Err(e) => refused(&e),
    }
}

pub(super) async fn rotate(
    control: &Control,
    p: &Principal,
    name: &str,
    body: Incoming,
) -> Response<Full<Bytes>> {
    let c: Rotate = match body_for(control, p, "user.secret.rotate", Role::Standard, body).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let grace = c.grace.unwrap_or(crate::control::DEFAULT_GRACE);
    match control.rotate(p, name, grace, c.starts_in.unwrap_or(0)) {
        Ok(s) => answer(StatusCode::CREATED, &secret_json(&s)),
        Err(e) => refused(&e),
    }
}

/// The body of a command that needs `need`, read only once the role is
/// checked (a refusal is recorded as `action`).
async fn body_for<T: for<'de> Deserialize<'de>>(
    control: &Control,
    p: &Principal,
    action: &str,
    need: Role,
    body: Incoming,
) -> Result<T, Reply> {
    if p.role < need {
        return Err(Box::new(refused(&control.deny(p, action, need))));
    }
    fields(json_body(body).await?)
}

pub(super) async fn create_user(
    control: &Control,
    p: &Principal,
    body: Incoming,
) -> Response<Full<Bytes>> {
    let c: CreateUser = match body_for(control, p, "user.create", Role::Standard, body).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let new = crate::control::NewUser {
        name: c.name,
        secret: c.secret,
        modes: c.modes,
        limits: c.limits,
    };
    match control.create_user(p, new) {
        Ok(u) => answer(StatusCode::CREATED, &user_json(&u)),
        Err(e) => refused(&e),
    }
}

pub(super) async fn update_user(
    control: &Control,
    p: &Principal,
    name: &str,
    body: Incoming,
) -> Response<Full<Bytes>> {
    let c: PatchUser = match body_for(control, p, "user.update", Role::Standard, body).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let patch = crate::control::UserPatch {
        modes: c.modes,
        limits: c.limits,
        enabled: c.enabled,
    };
    match control.update_user(p, name, patch) {
        Ok(u) => answer(StatusCode::OK, &user_json(&u)),
        Err(e) => refused(&e),
    }
}

pub(super) fn user_json(u: &crate::control::view::UserView) -> Value {
    let mut v = json!({
        "name": u.name,
        "modes": u.modes,
        "source": u.source.name(),
        "enabled": u.enabled,
        "bytes_up": u.bytes_up,
        "bytes_down": u.bytes_down,
        "connections": u.connections,
    });
    if !u.links.is_empty() {
        v["links"] = json!(u.links);
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetQuota {
    #[serde(default)]
    period_only: bool,
}

pub(super) async fn reset_quota(
    control: &Control,
    p: &Principal,
    name: &str,
    body: Incoming,
) -> Response<Full<Bytes>> {
    let c: ResetQuota = match body_for(control, p, "quota.reset", Role::Standard, body).await {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match control.reset_quota(p, name, c.period_only) {
        Ok(v) => answer(StatusCode::OK, &v),
        Err(e) => refused(&e),
    }
}
