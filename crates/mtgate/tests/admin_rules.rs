//! ACL rules and reputation blocks through the admin API (issue 13) on the
//! real binary over real sockets: an `admin` token blocks a source (it gets
//! no DC answer from the next connection on, others are served), the rule
//! runs out at its end or is removed at once, survives a restart, and is
//! listed beside the config file's rules; a reputation block is listed and
//! lifted; `standard` is refused; every change is in the audit trail.

mod common;

use common::admin_http::{api, spawn, token, ALICE, TOKEN};
use common::MtgateProcess;
use mtgate_testkit::client::{ClientMode, ClientOptions, ObfsClient};
use mtgate_testkit::conf::key_from_hex;
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

fn start(dir: &std::path::Path, admin: u16, dc: SocketAddr) -> MtgateProcess {
    spawn(
        dir,
        admin,
        dc,
        "",
        "[[policy.acl.rules]]\ncidr = \"198.51.100.0/24\"\nlevel = \"limited\"\n\
         [policy.reputation]\nthreshold = 1.0\n",
    )
}

/// Whether alice, connecting from `from`, gets the DC's answer.
async fn served_from(proxy: SocketAddr, from: &str) -> bool {
    let opts = ClientOptions {
        bind: Some(from.parse().unwrap()),
        io_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let Ok(Ok(mut c)) = tokio::time::timeout(
        Duration::from_secs(3),
        ObfsClient::connect_with(proxy, &key_from_hex(ALICE), ClientMode::Secure, 2, opts),
    )
    .await
    else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), c.req_pq_multi()).await,
        Ok(Ok(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_blocks_through_the_api() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .expect("dc");
    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_port().port();
    let mut p = start(dir.path(), admin, dc.local_addr());
    let staff = token(admin, "standard");
    let ops = token(admin, "admin");
    assert!(served_from(p.addr, "127.0.0.2").await);

    // standard may not; bad rules are refused; nothing changes.
    let block = json!({ "net": "127.0.0.2/32", "level": "blocked", "note": "abuse report 17" });
    assert_eq!(
        api(admin, "POST", "/api/v1/rules", &staff, block.clone()).0,
        403
    );
    assert_eq!(
        api(admin, "GET", "/api/v1/rules", &staff, Value::Null).0,
        403
    );
    for (bad, says) in [
        (
            json!({ "net": "300.0.0.0/8", "level": "blocked" }),
            "not an address",
        ),
        (json!({ "net": "10.0.0.0/8", "level": "banned" }), "level"),
        (
            json!({ "net": "10.0.0.0/8", "level": "blocked", "expires_in": 0 }),
            "expires_in",
        ),
        (
            json!({ "net": "10.0.0.0/8", "level": "blocked", "why": "x" }),
            "why",
        ),
    ] {
        let (s, e) = api(admin, "POST", "/api/v1/rules", &ops, bad.clone());
        assert_eq!(s, 400, "{bad}: {e}");
        assert!(e["error"].as_str().unwrap().contains(says), "{bad}: {e}");
    }

    // A block of one source: refused from the next connection on; others served.
    let (s, rule) = api(admin, "POST", "/api/v1/rules", &ops, block);
    assert_eq!(s, 201, "{rule}");
    let id = rule["id"].as_str().unwrap().to_owned();
    assert!(!served_from(p.addr, "127.0.0.2").await, "blocked");
    assert!(served_from(p.addr, "127.0.0.1").await, "others served");
    let (_, list) = api(admin, "GET", "/api/v1/rules", &ops, Value::Null);
    let list = list.as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(
        (&list[0]["source"], &list[0]["net"], &list[0]["id"]),
        (&json!("config"), &json!("198.51.100.0/24"), &Value::Null)
    );
    assert_eq!(
        (&list[1]["source"], &list[1]["note"]),
        (&json!("api"), &json!("abuse report 17"))
    );

    // It survives a restart; removing it serves the source at once.
    drop(p);
    p = start(dir.path(), admin, dc.local_addr());
    assert!(
        !served_from(p.addr, "127.0.0.2").await,
        "blocked after a restart"
    );
    assert_eq!(
        api(
            admin,
            "DELETE",
            &format!("/api/v1/rules/{id}"),
            &ops,
            Value::Null
        )
        .0,
        200
    );
    assert_eq!(
        api(
            admin,
            "DELETE",
            &format!("/api/v1/rules/{id}"),
            &ops,
            Value::Null
        )
        .0,
        404
    );
    assert!(served_from(p.addr, "127.0.0.2").await, "removed");

    // A rule with an end runs out by itself.
    let (s, r) = api(
        admin,
        "POST",
        "/api/v1/rules",
        &ops,
        json!({ "net": "127.0.0.4", "level": "blocked", "expires_in": 2 }),
    );
    assert_eq!(s, 201, "{r}");
    assert!(r["until"].is_string());
    assert!(
        !served_from(p.addr, "127.0.0.4").await,
        "blocked until its end"
    );
    let t0 = Instant::now();
    while !served_from(p.addr, "127.0.0.4").await {
        assert!(
            t0.elapsed() < Duration::from_secs(6),
            "the rule never ran out"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A reputation block (one bad handshake at threshold 1) is listed and lifted.
    {
        let mut c = bind_connect("127.0.0.3", p.addr);
        c.write_all(&[0x17u8; 64]).unwrap();
        let _ = c.read(&mut [0u8; 16]);
    }
    let t0 = Instant::now();
    let blocks = loop {
        let (s, b) = api(admin, "GET", "/api/v1/blocks", &ops, Value::Null);
        assert_eq!(s, 200, "{b}");
        if !b.as_array().unwrap().is_empty() || t0.elapsed() > Duration::from_secs(5) {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(blocks[0]["source"], "127.0.0.3", "{blocks}");
    assert!(blocks[0]["until"].is_string());
    assert_eq!(
        api(
            admin,
            "DELETE",
            "/api/v1/blocks/127.0.0.3",
            &staff,
            Value::Null
        )
        .0,
        403
    );
    assert_eq!(
        api(
            admin,
            "DELETE",
            "/api/v1/blocks/127.0.0.3",
            &ops,
            Value::Null
        )
        .0,
        200
    );
    assert_eq!(
        api(
            admin,
            "DELETE",
            "/api/v1/blocks/127.0.0.3",
            &ops,
            Value::Null
        )
        .0,
        404
    );
    assert_eq!(
        api(
            admin,
            "DELETE",
            "/api/v1/blocks/not-an-ip",
            &ops,
            Value::Null
        )
        .0,
        400
    );
    let (_, blocks) = api(admin, "GET", "/api/v1/blocks", &ops, Value::Null);
    assert_eq!(blocks, json!([]));

    // The effective config, secrets redacted; reload and its status.
    assert_eq!(
        api(admin, "GET", "/api/v1/config", &staff, Value::Null).0,
        403
    );
    let (s, c) = api(admin, "GET", "/api/v1/config", &ops, Value::Null);
    assert_eq!(s, 200, "{c}");
    let settings = &c["file"]["settings"];
    assert_eq!(settings["admin"]["token"], "<redacted>");
    assert_eq!(settings["users"]["alice"]["secret"], "<redacted>");
    assert!(!c.to_string().contains(ALICE) && !c.to_string().contains(TOKEN));
    assert_eq!(settings["policy"]["reputation"]["threshold"], 1.0);
    let (s, r) = api(admin, "POST", "/api/v1/config/reload", &ops, Value::Null);
    assert_eq!((s, &r["ok"]), (200, &json!(true)), "{r}");
    let path = dir.path().join("mtgate.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        good.replace("threshold = 1.0", "threshold = \"high\""),
    )
    .unwrap();
    let (s, r) = api(admin, "POST", "/api/v1/config/reload", &ops, Value::Null);
    assert_eq!(s, 400, "{r}");
    assert!(r["error"].as_str().unwrap().contains("threshold"), "{r}");
    let (_, c) = api(admin, "GET", "/api/v1/config", &ops, Value::Null);
    assert_eq!(c["last_reload"]["ok"], false, "{c}");
    assert!(
        served_from(p.addr, "127.0.0.1").await,
        "the running config stays"
    );
    std::fs::write(&path, good).unwrap();

    // The trail through the API (read_only and up), newest last.
    let viewer = token(admin, "read_only");
    let (s, recent) = api(admin, "GET", "/api/v1/audit?n=3", &viewer, Value::Null);
    assert_eq!(s, 200, "{recent}");
    let recent = recent.as_array().unwrap();
    assert_eq!(recent.len(), 3);
    assert_eq!(
        recent[2]["action"], "token.create",
        "the viewer's own token, last"
    );
    assert!(recent[0]["seq"].as_u64() < recent[2]["seq"].as_u64());
    for bad in ["n=0", "n=1001", "n=many"] {
        let (s, _) = api(
            admin,
            "GET",
            &format!("/api/v1/audit?{bad}"),
            &viewer,
            Value::Null,
        );
        assert_eq!(s, 400, "{bad}");
    }

    // The trail: who blocked which range, when.
    let trail = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let entries: Vec<Value> = trail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let add = entries
        .iter()
        .find(|e| e["action"] == "rule.add" && e["result"] == "ok")
        .unwrap();
    assert_eq!(add["target"], "127.0.0.2/32");
    assert_eq!(add["actor"]["role"], "admin");
    assert_eq!(add["after"]["note"], "abuse report 17");
    assert!(add["ts"].as_u64().unwrap() > 1_700_000_000, "when: {add}");
    let count = |action: &str, ok: bool| {
        entries
            .iter()
            .filter(|e| e["action"] == action && (e["result"] == "ok") == ok)
            .count()
    };
    assert_eq!(count("rule.add", true), 2);
    // The role and the three bad rules the control plane saw (an unknown
    // field never reaches it).
    assert_eq!(count("rule.add", false), 4);
    assert_eq!(count("rule.remove", true), 1);
    assert_eq!(count("block.remove", true), 1);
    assert_eq!(count("block.remove", false), 3);
    drop(p);
}

fn bind_connect(from: &str, to: SocketAddr) -> std::net::TcpStream {
    let ip: IpAddr = from.parse().unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(ip, 0).into()).unwrap();
    sock.connect(&to.into()).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    sock.into()
}
