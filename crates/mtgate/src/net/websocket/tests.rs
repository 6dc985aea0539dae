use super::*;
use proptest::prelude::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

#[test]
fn an_upgrade_on_the_path_is_accepted() {
    let req = upgrade("/apiws", "Sec-WebSocket-Protocol: binary\r\n");
    match parse_head(req.as_bytes(), "/apiws") {
        Head::Upgrade {
            len,
            key,
            binary,
            forwarded_for,
        } => {
            assert_eq!(len, req.len());
            assert_eq!(key, KEY);
            assert!(binary);
            assert_eq!(forwarded_for, None);
        }
        h => panic!("{h:?}"),
    }
    let r = upgrade_response(KEY, true);
    assert!(
        r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{r}"
    );
    assert!(r.contains("Sec-WebSocket-Protocol: binary\r\n"));
    let xff = upgrade("/apiws?x=1", "X-Forwarded-For: 10.0.0.1, 203.0.113.9\r\n");
    assert!(matches!(
        parse_head(xff.as_bytes(), "/apiws"),
        Head::Upgrade { binary: false, forwarded_for: Some(ip), .. } if ip.to_string() == "203.0.113.9"
    ));
}

#[test]
fn anything_else_gets_a_web_answer() {
    assert_eq!(
        parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "/apiws"),
        Head::Web { status: 404 }
    );
    assert_eq!(
        parse_head(b"POST /apiws HTTP/1.1\r\nHost: x\r\n\r\n", "/apiws"),
        Head::Web { status: 405 }
    );
    assert_eq!(
        parse_head(b"GET /apiws HTTP/1.1\r\nHost: x\r\n\r\n", "/apiws"),
        Head::Web { status: 400 }
    );
    assert_eq!(
        parse_head(b"GET /apiws HTTP/1.1\r\nHo", "/apiws"),
        Head::Incomplete
    );
    assert_eq!(
        parse_head(b"\xef\xef\xef\xef\x00\x01", "/apiws"),
        Head::Invalid
    );
    let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
    assert_eq!(parse_head(huge.as_bytes(), "/apiws"), Head::Invalid);
    let page = String::from_utf8(web_answer(404)).unwrap();
    assert!(page.starts_with("HTTP/1.1 404 Not Found\r\nServer: nginx\r\n"));
    let body = page.split("\r\n\r\n").nth(1).unwrap();
    assert!(page.contains(&format!("Content-Length: {}\r\n", body.len())));
}

#[test]
fn config_is_checked() {
    assert!(WsConfig::from_raw(RawWs {
        listen: Some(vec!["nope".into()]),
        path: None
    })
    .is_err());
    assert!(WsConfig::from_raw(RawWs {
        listen: None,
        path: Some("apiws".into())
    })
    .is_err());
    let c = WsConfig::from_raw(RawWs::default()).unwrap();
    assert_eq!((c.listen.len(), c.path.as_str()), (0, "/apiws"));
}

proptest! {
    /// Any bytes: a decision or a wish for more, never a panic; an upgrade's
    /// head length is within what was given.
    #[test]
    fn arbitrary_heads_are_decided(buf in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Head::Upgrade { len, .. } = parse_head(&buf, "/apiws") {
            prop_assert!(len <= buf.len());
        }
    }

    /// A valid upgrade split anywhere is incomplete before its end and
    /// accepted at it.
    #[test]
    fn a_split_upgrade_waits_for_its_end(cut in 0usize..200) {
        let req = upgrade("/apiws", "");
        let cut = cut.min(req.len() - 1);
        prop_assert_eq!(parse_head(&req.as_bytes()[..cut], "/apiws"), Head::Incomplete);
        let is_upgrade = matches!(parse_head(req.as_bytes(), "/apiws"), Head::Upgrade { .. });
        prop_assert!(is_upgrade);
    }
}
