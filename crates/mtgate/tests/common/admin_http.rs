//! The admin API from a test: one blocking request a connection.

use serde_json::Value;
use std::io::{Read, Write};
use std::time::Duration;

/// One request to the admin listener: the status and the JSON body.
pub fn call(port: u16, method: &str, path: &str, bearer: Option<&str>, body: &str) -> (u16, Value) {
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"));
    let json = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| serde_json::from_str(b.trim()).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    (status, json)
}

/// The superuser token of [`spawn`]'s proxies.
pub const TOKEN: &str = "config-superuser-token-0123456789";
/// Alice's secret there (a config user, `dd`).
pub const ALICE: &str = "00112233445566778899aabbccddeeff";

/// `mtgate run` in `dir` with the admin listener on `admin` ([`TOKEN`]),
/// no fronting, DCs at `dc`, alice, `server` lines added to `[server]` and
/// `extra` tables appended.
pub fn spawn(
    dir: &std::path::Path,
    admin: u16,
    dc: std::net::SocketAddr,
    server: &str,
    extra: &str,
) -> super::MtgateProcess {
    use mtgate_testkit::conf::{dcs_table, users_tables, TLS_NO_FRONTING};
    let path = dir.join("mtgate.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\npublic_host = \"127.0.0.1\"\nstate_dir = \"{}\"\n\
             watch_config = false\n{server}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{TOKEN}\"\n\
             {TLS_NO_FRONTING}{}{}{extra}",
            dir.display(),
            dcs_table(&[dc]),
            users_tables(&[("alice", ALICE)], &["dd"])
        ),
    )
    .expect("config");
    super::MtgateProcess::spawn(&path, dir, std::process::Stdio::null())
}

/// [`call`] with a JSON body (`null`: none) from inside a test's runtime.
pub fn api(port: u16, method: &str, path: &str, bearer: &str, body: Value) -> (u16, Value) {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    tokio::task::block_in_place(|| call(port, method, path, Some(bearer), &body))
}

/// A new token of `role` (made with [`TOKEN`]).
pub fn token(port: u16, role: &str) -> String {
    let (s, t) = api(
        port,
        "POST",
        "/api/v1/tokens",
        TOKEN,
        serde_json::json!({ "name": role, "role": role }),
    );
    assert_eq!(s, 201, "{t}");
    t["token"].as_str().expect("a token").to_owned()
}
