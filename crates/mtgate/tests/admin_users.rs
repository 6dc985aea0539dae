//! Users managed through the admin API (issue 13) on the real binary over
//! real sockets: a `standard` token creates a user whose link connects
//! through the proxy to a fake DC at once; disabling it refuses new
//! connections and drains the open ones after the grace time; limits are
//! checked with the config file's code; config users are shown but not
//! changed; every change survives a restart and leaves an audit entry
//! without the secret; refusals change nothing.

mod common;

use common::admin_http::{api, spawn, token, ALICE, TOKEN};
use common::MtgateProcess;
use mtgate_proto::secret::ProxySecret;
use mtgate_testkit::client::{ClientMode, ObfsClient};
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn start(dir: &std::path::Path, admin: u16, dc: SocketAddr) -> MtgateProcess {
    spawn(
        dir,
        admin,
        dc,
        "drain_grace = \"500ms\"\ndefault_modes = [\"dd\"]",
        "",
    )
}

/// A fake DC and a proxy with the admin API in a directory of its own.
async fn setup() -> (FakeDc, tempfile::TempDir, u16, MtgateProcess) {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .expect("dc");
    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_port().port();
    let p = start(dir.path(), admin, dc.local_addr());
    (dc, dir, admin, p)
}

/// The secret of a user's first link.
fn secret_of(user: &Value) -> ProxySecret {
    let link = user["links"][0].as_str().expect("a link");
    let s = link.split("secret=").nth(1).expect("secret=");
    ProxySecret::parse(s.split('&').next().unwrap()).expect("a secret")
}

/// A client of `secret` that has done one round trip to the DC.
async fn connected(proxy: SocketAddr, secret: &ProxySecret) -> Option<ObfsClient> {
    let mode = ClientMode::from_secret(secret);
    let mut c = tokio::time::timeout(
        Duration::from_secs(5),
        ObfsClient::connect(proxy, &secret.key, mode, 2),
    )
    .await
    .ok()?
    .ok()?;
    tokio::time::timeout(Duration::from_secs(3), c.req_pq_multi())
        .await
        .ok()?
        .ok()?;
    Some(c)
}

/// Whether a connection of `secret` reaches the DC.
async fn serves(proxy: SocketAddr, secret: &ProxySecret) -> bool {
    connected(proxy, secret).await.is_some()
}

fn names(port: u16, token: &str) -> Vec<String> {
    let (s, list) = api(port, "GET", "/api/v1/users", token, Value::Null);
    assert_eq!(s, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_made_through_the_api_serve_at_once_and_survive_a_restart() {
    let (dc, dir, admin, mut p) = setup().await;

    let staff = token(admin, "standard");
    let viewer = token(admin, "read_only");

    // read_only may not create; nothing changes.
    let (s, _) = api(
        admin,
        "POST",
        "/api/v1/users",
        &viewer,
        json!({ "name": "bob" }),
    );
    assert_eq!(s, 403);
    assert_eq!(names(admin, &viewer), ["alice"]);

    // standard creates bob (random secret, default modes): he connects at once.
    let (s, bob) = api(
        admin,
        "POST",
        "/api/v1/users",
        &staff,
        json!({ "name": "bob", "limits": { "max_connections": 4 } }),
    );
    assert_eq!(s, 201, "{bob}");
    assert_eq!(
        (&bob["source"], &bob["enabled"], &bob["modes"]),
        (&json!("api"), &json!(true), &json!(["dd"]))
    );
    let bob_secret = secret_of(&bob);
    assert!(serves(p.addr, &bob_secret).await, "bob serves at once");
    let alice = ProxySecret::parse(&format!("dd{ALICE}")).unwrap();
    assert!(serves(p.addr, &alice).await, "alice unaffected");

    // Refused with a clear 4xx, nothing changed.
    let bad: [(Value, u16, &str); 6] = [
        (json!({ "name": "bob" }), 409, "already exists"),
        (json!({ "name": "alice" }), 409, "already exists"),
        (
            json!({ "name": "carol", "limits": { "quota": "ten" } }),
            400,
            "users.carol.limits.quota",
        ),
        (json!({ "name": "carol", "colour": "red" }), 400, "colour"),
        (
            json!({ "name": "carol", "secret": ALICE }),
            400,
            "share a secret",
        ),
        (json!({ "name": "no spaces" }), 400, "user names"),
    ];
    for (body, status, says) in bad {
        let (s, e) = api(admin, "POST", "/api/v1/users", &staff, body.clone());
        assert_eq!(s, status, "{body} → {e}");
        let msg = e["error"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{body}: {msg:?} should say {says:?}");
    }
    assert_eq!(names(admin, &viewer), ["alice", "bob"]);

    // Config users are shown, not changed.
    let (s, e) = api(
        admin,
        "PATCH",
        "/api/v1/users/alice",
        &staff,
        json!({ "enabled": false }),
    );
    assert_eq!(s, 409, "{e}");
    assert!(e["error"].as_str().unwrap().contains("config file"));
    assert_eq!(
        api(admin, "DELETE", "/api/v1/users/alice", &staff, Value::Null).0,
        409
    );
    assert_eq!(
        api(admin, "PATCH", "/api/v1/users/nobody", &staff, json!({})).0,
        404
    );

    // Disabling bob refuses new connections and drains the open one.
    let mut open = connected(p.addr, &bob_secret).await.expect("bob's session");
    let (s, b) = api(
        admin,
        "PATCH",
        "/api/v1/users/bob",
        &staff,
        json!({ "enabled": false }),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["enabled"], false);
    assert!(
        !serves(p.addr, &bob_secret).await,
        "a disabled user is refused"
    );
    let t0 = Instant::now();
    let ended = loop {
        let alive = matches!(
            tokio::time::timeout(Duration::from_secs(1), open.req_pq_multi()).await,
            Ok(Ok(_))
        );
        if !alive || t0.elapsed() > Duration::from_secs(8) {
            break !alive;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(ended, "the open session is drained after the grace time");

    // Enabled again, with a limit removed by null; a bad patch changes nothing.
    let (s, e) = api(
        admin,
        "PATCH",
        "/api/v1/users/bob",
        &staff,
        json!({ "limits": { "max_connections": -1 } }),
    );
    assert_eq!(s, 400, "{e}");
    let (s, b) = api(
        admin,
        "PATCH",
        "/api/v1/users/bob",
        &staff,
        json!({ "enabled": true, "modes": ["dd", "classic"], "limits": { "max_connections": null } }),
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["modes"], json!(["dd", "classic"]));
    assert!(serves(p.addr, &bob_secret).await, "enabled again");
    let stored: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("users.json")).unwrap()).unwrap();
    assert_eq!(stored["bob"]["limits"], json!({ "enabled": true }));

    // A restart keeps him.
    drop(p);
    p = start(dir.path(), admin, dc.local_addr());
    assert!(serves(p.addr, &bob_secret).await, "bob survives a restart");
    let (_, b) = api(admin, "GET", "/api/v1/users/bob", &staff, Value::Null);
    assert_eq!(b["source"], "api");

    // Deleted: refused from then on.
    let (s, _) = api(admin, "DELETE", "/api/v1/users/bob", &staff, Value::Null);
    assert_eq!(s, 200);
    assert!(
        !serves(p.addr, &bob_secret).await,
        "a deleted user is refused"
    );
    assert_eq!(
        api(admin, "GET", "/api/v1/users/bob", &staff, Value::Null).0,
        404
    );

    // Every change is in the audit trail, never with the secret; the chain holds.
    let trail = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let secret_hex = hex::encode(bob_secret.key.expose());
    assert!(!trail.contains(&secret_hex), "no secret in the audit trail");
    let entries: Vec<Value> = trail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |action: &str, result: &str| {
        entries
            .iter()
            .filter(|e| e["action"] == action && e["result"].as_str().unwrap().starts_with(result))
            .count()
    };
    assert_eq!(of("user.create", "ok"), 1);
    // The role refusal and the five refused by the control plane (an unknown
    // field never reaches it).
    assert_eq!(of("user.create", "refused"), 6, "refusals recorded");
    assert_eq!(of("user.update", "ok"), 2);
    assert_eq!(of("user.delete", "ok"), 1);
    let update = entries
        .iter()
        .find(|e| e["action"] == "user.update" && e["result"] == "ok")
        .unwrap();
    assert_eq!(update["before"]["limits"]["max_connections"], 4);
    assert_eq!(update["after"]["limits"]["enabled"], false);
    assert_eq!(update["actor"]["role"], "standard");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mtgate"))
        .args(["audit", "verify", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_rotated_added_and_revoked_through_the_api() {
    let (_dc, dir, admin, p) = setup().await;
    let viewer = token(admin, "read_only");
    let (s, carol) = api(
        admin,
        "POST",
        "/api/v1/users",
        TOKEN,
        json!({ "name": "carol" }),
    );
    assert_eq!(s, 201, "{carol}");
    let first = secret_of(&carol);
    assert!(serves(p.addr, &first).await);
    let secrets = |who: &str| {
        api(
            admin,
            "GET",
            "/api/v1/users/carol/secrets",
            who,
            Value::Null,
        )
    };
    assert_eq!(
        secrets(&viewer).0,
        403,
        "links hold secrets: standard and up"
    );
    let (s, list) = secrets(TOKEN);
    assert_eq!(s, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(
        (&list[0]["state"], &list[0]["current"]),
        (&json!("in_force"), &json!(true))
    );
    let first_id = list[0]["id"].as_str().unwrap().to_owned();

    // Rotate with a 3 s grace: the new secret serves now, the old one until the grace ends.
    let (s, second) = api(
        admin,
        "POST",
        "/api/v1/users/carol/rotate",
        TOKEN,
        json!({ "grace": 3 }),
    );
    assert_eq!(s, 201, "{second}");
    assert_eq!(second["current"], true);
    let second_key = secret_of(&second);
    let second_id = second["id"].as_str().unwrap().to_owned();
    assert!(serves(p.addr, &second_key).await, "the new secret at once");
    assert!(serves(p.addr, &first).await, "the old one in its grace");
    let (_, list) = secrets(TOKEN);
    let old = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == first_id.as_str())
        .unwrap();
    assert_eq!(old["current"], false);
    assert!(old["not_after"].is_string());
    let ends = chrono::DateTime::parse_from_rfc3339(old["not_after"].as_str().unwrap())
        .unwrap()
        .timestamp() as u64;
    while common::unix_now() as u64 <= ends {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !serves(p.addr, &first).await,
        "the old secret after its grace"
    );
    // Its end is a security event in the trail (looked for every 2 s); so is a token's.
    let (_, short) = api(
        admin,
        "POST",
        "/api/v1/tokens",
        TOKEN,
        json!({ "name": "short", "role": "read_only", "expires_in": 1 }),
    );
    let short_id = short["id"].as_str().unwrap().to_owned();
    let t0 = Instant::now();
    let expired = |action: &str, target: &str| {
        std::fs::read_to_string(dir.path().join("audit.log"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .any(|e| e["action"] == action && e["target"] == target)
    };
    while !(expired("secret.expired", "carol") && expired("token.expired", &short_id)) {
        assert!(t0.elapsed() < Duration::from_secs(8), "no expiry entries");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let trail = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let entry: Value = trail
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["action"] == "secret.expired")
        .unwrap();
    assert_eq!(entry["after"]["secret_id"], first_id.as_str(), "{entry}");
    assert!(serves(p.addr, &second_key).await);

    // An upcoming secret is listed as such and does not serve yet.
    let later = i64::from(common::unix_now()) + 3600;
    let (s, third) = api(
        admin,
        "POST",
        "/api/v1/users/carol/secrets",
        TOKEN,
        json!({ "not_before": chrono::DateTime::from_timestamp(later, 0).unwrap().to_rfc3339() }),
    );
    assert_eq!(s, 201, "{third}");
    assert_eq!(
        (&third["state"], &third["current"]),
        (&json!("upcoming"), &json!(false))
    );
    assert!(!serves(p.addr, &secret_of(&third)).await);
    let bad = api(
        admin,
        "POST",
        "/api/v1/users/carol/secrets",
        TOKEN,
        json!({ "not_before": "tomorrow" }),
    );
    assert_eq!(bad.0, 400, "{}", bad.1);

    // Revocation: unknown ids 404, config users 409, the last secret 409.
    let path = |id: &str| format!("/api/v1/users/carol/secrets/{id}");
    assert_eq!(
        api(admin, "DELETE", &path("00000000"), TOKEN, Value::Null).0,
        404
    );
    assert_eq!(
        api(
            admin,
            "POST",
            "/api/v1/users/alice/rotate",
            TOKEN,
            json!({})
        )
        .0,
        409
    );
    let third_id = third["id"].as_str().unwrap();
    for id in [first_id.as_str(), third_id] {
        let (s, e) = api(admin, "DELETE", &path(id), TOKEN, Value::Null);
        assert_eq!(s, 200, "{e}");
    }
    let (s, e) = api(admin, "DELETE", &path(&second_id), TOKEN, Value::Null);
    assert_eq!(s, 409, "{e}");
    assert!(serves(p.addr, &second_key).await, "the last secret stays");
    let (_, list) = secrets(TOKEN);
    assert_eq!(list.as_array().unwrap().len(), 1);

    let trail = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    for k in [&first, &second_key] {
        assert!(
            !trail.contains(&hex::encode(k.key.expose())),
            "no secret in the trail"
        );
    }
    let entries: Vec<Value> = trail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rotation = entries
        .iter()
        .find(|e| e["action"] == "user.secret.rotate" && e["result"] == "ok")
        .expect("the rotation is recorded");
    assert_eq!(rotation["after"]["secrets"][1]["id"], second_id.as_str());
    let revokes = entries
        .iter()
        .filter(|e| e["action"] == "user.secret.revoke")
        .count();
    assert_eq!(revokes, 4, "an unknown id, two revoked, the last refused");
    drop(p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_are_shown_and_reset_through_the_api() {
    let (_dc, dir, admin, p) = setup().await;
    let viewer = token(admin, "read_only");
    let (s, dave) = api(
        admin,
        "POST",
        "/api/v1/users",
        TOKEN,
        json!({ "name": "dave", "limits": { "quota": 1500 } }),
    );
    assert_eq!(s, 201, "{dave}");
    let secret = secret_of(&dave);

    // Traffic until the quota is reached; then dave is refused.
    let quota = |who: &str| api(admin, "GET", "/api/v1/users/dave/quota", who, Value::Null);
    let mut rounds = 0;
    while serves(p.addr, &secret).await {
        rounds += 1;
        assert!(rounds < 100, "the quota never ran out: {}", quota(TOKEN).1);
    }
    let (s, q) = quota(&viewer);
    assert_eq!(s, 200, "{q}");
    assert_eq!(
        (&q["over_quota"], &q["quota"]),
        (&json!(true), &json!(1500)),
        "{q}"
    );
    assert!(q["used"].as_u64().unwrap() >= 1500, "{q}");
    assert!(!serves(p.addr, &secret).await, "over its quota");

    // read_only may look, not reset; standard resets and dave is served again.
    let reset = |who: &str| {
        api(
            admin,
            "POST",
            "/api/v1/users/dave/quota/reset",
            who,
            Value::Null,
        )
    };
    assert_eq!(reset(&viewer).0, 403);
    let (s, q) = reset(TOKEN);
    assert_eq!(s, 200, "{q}");
    assert_eq!(
        (&q["used"], &q["over_quota"]),
        (&json!(0), &json!(false)),
        "{q}"
    );
    assert!(serves(p.addr, &secret).await, "served after the reset");
    assert_eq!(
        api(
            admin,
            "POST",
            "/api/v1/users/nobody/quota/reset",
            TOKEN,
            Value::Null
        )
        .0,
        404
    );
    // The reset is saved at once: the state file holds the new usage.
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("policy-state.json")).unwrap())
            .unwrap();
    let saved = &state["users"]["users"]["dave"];
    let saved = saved["up"].as_u64().unwrap() + saved["down"].as_u64().unwrap();
    assert!(saved < 1500, "saved usage {saved} after the reset");
    let trail = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let entry: Value = trail
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["action"] == "quota.reset" && e["result"] == "ok")
        .expect("the reset is recorded");
    assert_eq!(entry["before"]["over_quota"], true);
    assert_eq!(entry["after"]["used"], 0);
    drop(p);
}
