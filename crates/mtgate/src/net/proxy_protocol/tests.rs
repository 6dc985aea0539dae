use super::*;
use proptest::prelude::*;

/// Runs the read loop over `input` as a stream would deliver it: the
/// outcome and how many bytes were taken.
fn drive(input: &[u8]) -> (Step, usize) {
    let mut taken = 0;
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps <= MAX_HEADER + 2, "the loop is bounded");
        match next_read(&input[..taken]) {
            Step::Read(n) => {
                assert!(n > 0, "a read of nothing would spin");
                if taken + n > input.len() {
                    return (Step::Read(n), taken);
                }
                taken += n;
            }
            done => return (done, taken),
        }
    }
}

fn addr(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

#[test]
fn v1_headers_give_the_client() {
    let (s, n) = drive(b"PROXY TCP4 203.0.113.9 198.51.100.1 51000 443\r\n\xef\xef\xef\xef");
    assert_eq!(s, Step::Done(Some("203.0.113.9:51000".parse().unwrap())));
    assert_eq!(n, 47, "not a byte past the CRLF");
    let (s, _) = drive(b"PROXY TCP6 2001:db8::9 2001:db8::1 51000 443\r\n");
    assert_eq!(s, Step::Done(Some("[2001:db8::9]:51000".parse().unwrap())));
    let (s, n) = drive(b"PROXY UNKNOWN\r\nrest");
    assert_eq!((s, n), (Step::Done(None), 15));
}

#[test]
fn v2_headers_give_the_client_or_the_front_end() {
    let c: SocketAddr = "203.0.113.9:51000".parse().unwrap();
    let l: SocketAddr = "198.51.100.1:443".parse().unwrap();
    let mut h = v2_header(c, l);
    let len = h.len();
    h.extend_from_slice(b"\x16\x03\x01 client bytes");
    assert_eq!(drive(&h), (Step::Done(Some(c)), len));
    // LOCAL (a health check of the front end's own): no client.
    let mut local = v2_header(c, l);
    local[12] = 0x20;
    assert_eq!(drive(&local).0, Step::Done(None));
    // IPv6 both ways, and mixed families mapped.
    let c6: SocketAddr = "[2001:db8::9]:51000".parse().unwrap();
    assert_eq!(drive(&v2_header(c6, l)).0, Step::Done(Some(as_v6(c6))));
}

#[test]
fn bad_and_oversized_headers_are_refused() {
    assert_eq!(
        drive(b"\xef\xef\xef\xef some obfuscated2 bytes").0,
        Step::Invalid("no PROXY protocol header")
    );
    assert!(matches!(
        drive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").0,
        Step::Invalid(_)
    ));
    let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
    assert!(matches!(drive(&long).0, Step::Invalid(_)));
    assert!(matches!(
        drive(b"PROXY \r\n and more bytes").0,
        Step::Invalid(_)
    ));
    assert!(matches!(
        drive(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n").0,
        Step::Invalid(_)
    ));
    let mut big = V2_SIGNATURE.to_vec();
    big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    assert!(matches!(drive(&big).0, Step::Invalid(_)));
    let mut bad_version = v2_header("1.2.3.4:5".parse().unwrap(), "5.6.7.8:9".parse().unwrap());
    bad_version[12] = 0x31;
    assert!(matches!(drive(&bad_version).0, Step::Invalid(_)));
}

#[test]
fn trust_is_by_network_and_sees_through_mapped_addresses() {
    let cfg = ProxyProtocolConfig {
        trusted: vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ],
        header_timeout: Duration::from_secs(1),
        mask: None,
    };
    assert!(cfg.trusts("10.1.2.3".parse().unwrap()));
    assert!(cfg.trusts("::ffff:10.1.2.3".parse().unwrap()));
    assert!(cfg.trusts("2001:db8::1".parse().unwrap()));
    assert!(!cfg.trusts("11.0.0.1".parse().unwrap()));
    assert!(!ProxyProtocolConfig::default().trusts("10.0.0.1".parse().unwrap()));
}

#[tokio::test]
async fn read_header_takes_exactly_the_header() {
    let (mut a, mut b) = tokio::io::duplex(4096);
    let h = v1_header(
        "203.0.113.9:1000".parse().unwrap(),
        "198.51.100.1:443".parse().unwrap(),
    );
    tokio::io::AsyncWriteExt::write_all(&mut a, &[h.as_slice(), b"after"].concat())
        .await
        .unwrap();
    let got = read_header(&mut b, Duration::from_secs(1)).await.unwrap();
    assert_eq!(got, Some("203.0.113.9:1000".parse().unwrap()));
    let mut rest = [0u8; 5];
    b.read_exact(&mut rest).await.unwrap();
    assert_eq!(&rest, b"after");
    // A front end that says nothing in time.
    let (_a, mut b) = tokio::io::duplex(64);
    assert!(matches!(
        read_header(&mut b, Duration::from_millis(50)).await,
        Err(HeaderError::Timeout(_))
    ));
}

fn any_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| addr(IpAddr::from(ip), p)),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| addr(IpAddr::from(ip), p)),
    ]
}

proptest! {
    /// Any header we (or a front end) build reads back as its client, and the
    /// bytes after it are never taken.
    #[test]
    fn built_headers_read_back(c in any_addr(), l in any_addr(), v2 in any::<bool>(),
                               tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let h = if v2 { v2_header(c, l) } else { v1_header(c, l) };
        let mut input = h.clone();
        input.extend_from_slice(&tail);
        let (step, taken) = drive(&input);
        let want = match (canonical_addr(c), canonical_addr(l)) {
            (c4 @ SocketAddr::V4(_), SocketAddr::V4(_)) => c4,
            _ => as_v6(canonical_addr(c)),
        };
        prop_assert_eq!(step, Step::Done(Some(want)));
        prop_assert_eq!(taken, h.len());
    }

    /// Arbitrary bytes: the loop ends (never a read of nothing, never more
    /// than MAX_HEADER bytes) and never panics.
    #[test]
    fn arbitrary_bytes_end_the_loop(input in proptest::collection::vec(any::<u8>(), 0..2048),
                                    sig in any::<bool>()) {
        let input = if sig { [V2_SIGNATURE.as_slice(), &input].concat() } else { input };
        let (_, taken) = drive(&input);
        prop_assert!(taken <= MAX_HEADER);
    }
}
