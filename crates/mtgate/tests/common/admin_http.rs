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
