use super::*;

#[test]
fn hops_parse_with_and_without_credentials() {
    let h = Socks5Hop::parse("socks5://alice:s3cret@127.0.0.1:1080").unwrap();
    assert_eq!(h.addr, "127.0.0.1:1080");
    let (u, p) = h.auth.as_ref().unwrap();
    assert_eq!((u.as_str(), p.as_str()), ("alice", "s3cret"));
    assert!(
        !format!("{h:?}").contains("s3cret"),
        "credentials never printed"
    );
    let h = Socks5Hop::parse("proxy.example:1080").unwrap();
    assert_eq!(
        (h.addr.as_str(), h.auth.is_none()),
        ("proxy.example:1080", true)
    );
    for bad in [
        "http://1.2.3.4:80",
        "socks5://1.2.3.4",
        "socks5://user@1.2.3.4:1080",
        "socks5://:pw@1.2.3.4:1080",
        "",
    ] {
        assert!(Socks5Hop::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn io_errors_are_classified() {
    use std::io::{Error, ErrorKind};
    assert_eq!(
        ErrorClass::of_io(&Error::from(ErrorKind::ConnectionRefused)),
        ErrorClass::Refused
    );
    assert_eq!(
        ErrorClass::of_io(&Error::from(ErrorKind::ConnectionReset)),
        ErrorClass::Reset
    );
    assert_eq!(
        ErrorClass::of_io(&Error::from(ErrorKind::TimedOut)),
        ErrorClass::Timeout
    );
    assert_eq!(
        ErrorClass::of_io(&Error::from_raw_os_error(libc::EMFILE)),
        ErrorClass::Local
    );
    assert_eq!(
        ErrorClass::of_io(&Error::from_raw_os_error(libc::EADDRNOTAVAIL)),
        ErrorClass::Local
    );
    assert_eq!(
        ErrorClass::of_io(&Error::from_raw_os_error(libc::ENETUNREACH)),
        ErrorClass::Unreachable
    );
    let labels: std::collections::HashSet<_> = ErrorClass::ALL.iter().map(|c| c.label()).collect();
    assert_eq!(labels.len(), ErrorClass::ALL.len());
}

#[tokio::test]
async fn a_closed_port_is_refused_and_a_silent_hop_times_out() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = Connector::direct(Duration::from_secs(2))
        .connect(closed)
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Refused, "{e}");
    // A "SOCKS5 proxy" that accepts and never answers.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hop = l.local_addr().unwrap();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let c = Connector::through(
        vec![Socks5Hop::parse(&hop.to_string()).unwrap()],
        Duration::from_millis(200),
    );
    let e = c.connect(closed).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Timeout, "{e}");
    // A first hop whose name does not resolve.
    let c = Connector::through(
        vec![Socks5Hop::parse("no-such-host.invalid:1080").unwrap()],
        Duration::from_secs(5),
    );
    assert_eq!(c.connect(closed).await.unwrap_err().class, ErrorClass::Dns);
}
