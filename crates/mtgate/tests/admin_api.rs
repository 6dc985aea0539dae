//! The admin API's tokens, roles and sessions (issue 13, first step) on the
//! real binary over real sockets: `admin.token` is a superuser; tokens made
//! through the API carry roles, expiries and source networks, are kept only
//! as hashes and survive a restart; a role that does not reach an endpoint
//! is refused and nothing changes; bad JSON, unknown fields and oversized
//! bodies get a clear 4xx; repeated failures from one address get 429.

mod common;

use common::admin_http::call;
use common::MtgateProcess;
use mtgate_testkit::conf::{dcs_table, users_tables, TLS_NO_FRONTING};
use serde_json::Value;
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

const ALICE: &str = "00112233445566778899aabbccddeeff";
const CONFIG_TOKEN: &str = "config-superuser-token-0123456789";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start(dir: &std::path::Path, admin: u16) -> MtgateProcess {
    let path = dir.join("mtgate.toml");
    let dc: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\npublic_host = \"127.0.0.1\"\nstate_dir = \"{}\"\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{CONFIG_TOKEN}\"\n{TLS_NO_FRONTING}{}{}\
             [policy.reputation]\nthreshold = 10.0\n",
            dir.display(),
            dcs_table(&[dc]),
            users_tables(&[("alice", ALICE)], &["dd"])
        ),
    )
    .unwrap();
    MtgateProcess::spawn(&path, dir, Stdio::null())
}

fn create(port: u16, by: &str, body: &str) -> (u16, Value) {
    call(port, "POST", "/api/v1/tokens", Some(by), body)
}

fn token_of(v: &Value) -> String {
    v["token"].as_str().expect("a token").to_owned()
}

#[test]
fn tokens_roles_and_sessions_over_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut p = start(dir.path(), port);
    let whoami = |t: Option<&str>| call(port, "GET", "/api/v1/whoami", t, "");

    // admin.token is a superuser; no or a wrong bearer is refused.
    let (s, me) = whoami(Some(CONFIG_TOKEN));
    assert_eq!(
        (s, me["role"].as_str(), me["token_id"].as_str()),
        (200, Some("superuser"), Some("config"))
    );
    assert_eq!(whoami(None).0, 401);
    assert_eq!(whoami(Some("mtga_not-a-token")).0, 401);

    // Tokens with roles.
    let (s, ops) = create(port, CONFIG_TOKEN, r#"{"name":"ops","role":"admin"}"#);
    assert_eq!(s, 201, "{ops}");
    let ops = token_of(&ops);
    let (_, viewer) = create(
        port,
        CONFIG_TOKEN,
        r#"{"name":"viewer","role":"read_only"}"#,
    );
    let viewer = token_of(&viewer);
    let (_, short) = create(
        port,
        CONFIG_TOKEN,
        r#"{"name":"short","role":"standard","expires_in":2}"#,
    );
    let short = token_of(&short);
    let (_, fenced) = create(
        port,
        CONFIG_TOKEN,
        r#"{"name":"fenced","role":"admin","from":["10.0.0.0/8"]}"#,
    );
    let fenced = token_of(&fenced);
    assert_eq!(whoami(Some(&ops)).1["role"], "admin");
    assert_eq!(whoami(Some(&viewer)).1["role"], "read_only");
    let (s, list) = call(port, "GET", "/api/v1/tokens", Some(CONFIG_TOKEN), "");
    assert_eq!(s, 200);
    let list = list.as_array().unwrap().clone();
    assert_eq!(list.len(), 4);
    assert!(list
        .iter()
        .all(|t| t.get("token").is_none() && t.get("hash").is_none()));
    let store = std::fs::read_to_string(dir.path().join("admin-tokens.json")).unwrap();
    for t in [&ops, &viewer, &short, &fenced] {
        assert!(!store.contains(&t[5..]), "only hashes are stored");
    }

    // Users and stats: read_only reads them without links; links from standard up.
    let (s, users) = call(port, "GET", "/api/v1/users", Some(&viewer), "");
    assert_eq!(s, 200, "{users}");
    assert_eq!(users[0]["name"], "alice");
    assert_eq!(users[0]["modes"], serde_json::json!(["dd"]));
    assert!(users[0].get("links").is_none(), "no secrets for read_only");
    let (_, alice) = call(port, "GET", "/api/v1/users/alice", Some(&ops), "");
    let link = alice["links"][0].as_str().unwrap();
    assert!(
        link.starts_with("tg://proxy?server=127.0.0.1&port=")
            && link.contains(&format!("secret=dd{ALICE}")),
        "{link}"
    );
    assert_eq!(
        call(port, "GET", "/api/v1/users/nobody", Some(&ops), "").0,
        404
    );
    let (s, stats) = call(port, "GET", "/api/v1/stats", Some(&viewer), "");
    assert_eq!((s, stats["users"].as_u64()), (200, Some(1)));
    let (_, parked) = create(port, CONFIG_TOKEN, r#"{"name":"parked","role":"none"}"#);
    let parked = token_of(&parked);
    assert_eq!(whoami(Some(&parked)).1["role"], "none");
    assert_eq!(call(port, "GET", "/api/v1/users", Some(&parked), "").0, 403);
    assert_eq!(call(port, "GET", "/api/v1/stats", Some(&parked), "").0, 403);

    // The OpenAPI document: served as kept in docs/, and every operation in
    // it answers with one of its documented statuses.
    let (s, doc) = call(port, "GET", "/api/v1/openapi.json", Some(&viewer), "");
    assert_eq!(s, 200);
    let kept: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(doc, kept);
    let mut checked = 0;
    for (path, ops_) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops_.as_object().unwrap() {
            let concrete = path
                .replace("{id}", "no-such-id")
                .replace("{name}", "alice");
            let (s, v) = call(
                port,
                &method.to_uppercase(),
                &concrete,
                Some(CONFIG_TOKEN),
                "",
            );
            assert!(
                op["responses"].get(s.to_string()).is_some(),
                "{method} {path}: {s} {v} is not documented"
            );
            checked += 1;
        }
    }
    assert!(checked >= 11, "{checked}");

    // Roles that do not reach: refused, nothing changed.
    assert_eq!(
        call(port, "GET", "/api/v1/tokens", Some(&viewer), "").0,
        403
    );
    assert_eq!(
        create(port, &ops, r#"{"name":"x","role":"superuser"}"#).0,
        403
    );
    assert_eq!(
        call(port, "DELETE", "/api/v1/tokens/config", Some(&viewer), "").0,
        403
    );
    let reload = |t: &str| call(port, "POST", "/reload", Some(t), "").0;
    assert_eq!(reload(&viewer), 403);
    assert_eq!(reload(&ops), 200);
    // Bad requests: a clear 400 / 413, nothing created.
    for bad in [
        "{",
        "[1,2]",
        r#"{"name":"y","role":"emperor"}"#,
        r#"{"name":"y","role":"admin","colour":"red"}"#,
        r#"{"name":"y","role":"admin","from":["not-a-net"]}"#,
        r#"{"name":"","role":"admin"}"#,
        r#"{"name":"ops","role":"admin"}"#,
    ] {
        let (s, v) = create(port, CONFIG_TOKEN, bad);
        assert!(matches!(s, 400 | 409), "{bad}: {s} {v}");
        assert!(v["error"].is_string(), "{bad}: {v}");
    }
    let big = format!(r#"{{"name":"{}","role":"admin"}}"#, "z".repeat(70 * 1024));
    assert_eq!(create(port, CONFIG_TOKEN, &big).0, 413);
    assert_eq!(call(port, "GET", "/api/v1/nope", Some(&viewer), "").0, 404);
    assert_eq!(
        call(port, "PUT", "/api/v1/tokens", Some(CONFIG_TOKEN), "").0,
        405
    );
    let (_, list) = call(port, "GET", "/api/v1/tokens", Some(CONFIG_TOKEN), "");
    assert_eq!(list.as_array().unwrap().len(), 5, "with parked");

    // Sign in with a token: a session of the same role, until signed out.
    let (s, login) = call(port, "POST", "/api/v1/login", Some(&viewer), "");
    assert_eq!(s, 200);
    let session = login["session"].as_str().unwrap().to_owned();
    let (_, me) = whoami(Some(&session));
    assert_eq!(
        (me["role"].as_str(), me["session"].as_bool()),
        (Some("read_only"), Some(true))
    );
    assert_eq!(
        call(port, "POST", "/api/v1/logout", Some(&session), "").0,
        200
    );
    assert_eq!(whoami(Some(&session)).0, 401);

    // Expiry, source networks, revocation.
    assert_eq!(whoami(Some(&fenced)).0, 401, "not from 10/8");
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(whoami(Some(&short)).0, 401, "expired");
    let ops_id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ops")
        .and_then(|t| t["id"].as_str())
        .unwrap()
        .to_owned();
    let (_, ops_session) = call(port, "POST", "/api/v1/login", Some(&ops), "");
    let ops_session = ops_session["session"].as_str().unwrap().to_owned();
    assert_eq!(
        call(
            port,
            "DELETE",
            &format!("/api/v1/tokens/{ops_id}"),
            Some(CONFIG_TOKEN),
            ""
        )
        .0,
        200
    );
    assert_eq!(whoami(Some(&ops)).0, 401, "revoked");
    assert_eq!(
        whoami(Some(&ops_session)).0,
        401,
        "its sessions end with it"
    );

    // A security event from the client port: one failed handshake reaches
    // the (lowered) reputation threshold and blocks the source.
    {
        let mut c = std::net::TcpStream::connect(p.addr).unwrap();
        c.write_all(&[0x17u8; 64]).unwrap();
        let _ = c.read(&mut [0u8; 16]);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(dir.path().join("audit.log"))
        .unwrap()
        .contains("\"source.block\"")
    {
        assert!(std::time::Instant::now() < deadline, "the block is audited");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Every action is in the audit trail, refusals included, and the chain
    // verifies; an edited line is found.
    let trail = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let entries: Vec<Value> = trail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |action: &str, result: &str| {
        entries
            .iter()
            .filter(|e| e["action"] == action && e["result"].as_str().unwrap().starts_with(result))
            .count()
    };
    assert_eq!(count("token.create", "ok"), 5);
    assert!(
        count("token.create", "refused") >= 2,
        "the viewer's and the ops' attempts"
    );
    assert_eq!(count("token.revoke", "ok"), 1);
    assert_eq!(
        count("login", "ok"),
        3,
        "viewer, ops and the document's check"
    );
    assert_eq!(count("logout", "ok"), 1);
    assert!(count("login.failed", "refused") >= 5);
    assert_eq!(
        count("config.reload", "ok"),
        3,
        "the document's check (/reload, /api/v1/config/reload) and ops"
    );
    let block = entries
        .iter()
        .find(|e| e["action"] == "source.block")
        .unwrap();
    assert_eq!(block["target"], "127.0.0.1");
    assert_eq!(block["after"]["reason"], "reputation");
    let create = entries
        .iter()
        .find(|e| e["action"] == "token.create")
        .unwrap();
    assert_eq!(create["actor"]["token_id"], "config");
    assert_eq!(create["actor"]["role"], "superuser");
    assert_eq!(create["from"], "127.0.0.1");
    assert_eq!(create["after"]["role"], "admin");
    for t in [&ops, &viewer, &short, &fenced, &session] {
        assert!(!trail.contains(&t[5..]), "no token in the trail");
    }
    let verify = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mtgate"))
            .args(["audit", "verify", "--state-dir"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let ok = verify();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("audit trail intact"));

    // A restart keeps the tokens (and carries the trail on).
    drop(p);
    let edited = trail.replacen("\"role\":\"admin\"", "\"role\":\"read_only\"", 1);
    std::fs::write(dir.path().join("audit.log"), &edited).unwrap();
    let bad = verify();
    assert!(!bad.status.success(), "an edited entry is found");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("was changed"));
    std::fs::write(dir.path().join("audit.log"), &trail).unwrap();
    p = start(dir.path(), port);
    assert_eq!(whoami(Some(&viewer)).1["role"], "read_only");

    // Failed attempts from one address: limited (even a good token, a while).
    let mut limited = false;
    for _ in 0..12 {
        if whoami(Some("mtga_wrong")).0 == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "failures are limited per address");
    assert_eq!(whoami(Some(&viewer)).0, 429);
    drop(p);
    let after = verify();
    assert!(
        after.status.success(),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
}
