use super::*;
use crate::me::frame::{Checksum, RpcWriter};
use proptest::prelude::*;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// The req_pq_multi of §12.2 (40 bytes).
fn req_pq_multi() -> Vec<u8> {
    h("000000000000000004000000c2b1a06514000000f18e7ebea0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
}

#[test]
fn proxy_req_vector_12_8() {
    let payload = req_pq_multi();
    let tag: [u8; 16] = h("0123456789abcdeffedcba9876543210").try_into().unwrap();
    let f = req_flags(ProtoTag::Intermediate, &payload, true, false);
    assert_eq!(f, 0x2002_100a);
    let req = ProxyReq {
        flags: f,
        conn_id: 0x0102_0304_0506_0708,
        client: "203.0.113.5:51234".parse().unwrap(),
        proxy: "198.51.100.7:443".parse().unwrap(),
        ad_tag: Some(tag),
        payload: &payload,
    };
    let mut body = Vec::new();
    req.encode(&mut body);
    assert_eq!(
        body,
        h(concat!(
            "eef1ce360a100220080706050403020100000000000000000000ffffcb007105",
            "22c8000000000000000000000000ffffc6336407bb01000018000000ae261edb",
            "100123456789abcdeffedcba9876543210000000000000000000000004000000",
            "c2b1a06514000000f18e7ebea0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
        ))
    );
    assert_eq!(ProxyReq::parse(&body), Ok(req));
    let mut frame = Vec::new();
    let mut w = RpcWriter::new();
    w.write(&[b"\0\0\0\0"], &mut Vec::new()).unwrap();
    w.write(&[b"\0\0\0\0"], &mut Vec::new()).unwrap();
    w.write(&[&body], &mut frame).unwrap();
    RpcWriter::pad(&mut frame);
    assert_eq!(
        frame,
        h(concat!(
            "8800000000000000eef1ce360a10022008070605040302010000000000000000",
            "0000ffffcb00710522c8000000000000000000000000ffffc6336407bb010000",
            "18000000ae261edb100123456789abcdeffedcba987654321000000000000000",
            "0000000004000000c2b1a06514000000f18e7ebea0a1a2a3a4a5a6a7a8a9aaab",
            "acadaeaf021515e10400000004000000"
        ))
    );
}

#[test]
fn proxy_req_captured_12_11() {
    // The official proxy's first request: seq 0, CRC32C, conn id 0x400009, NAT-less loopback.
    let frame = h(concat!(
        "8800000000000000eef1ce360a10022009004000000000000000000000000000",
        "0000ffff7f00000120ea000000000000000000000000ffff7f0000011b6f0000",
        "18000000ae261edb10975b84ece69ffe84fd9a9999e580d1d700000000000000",
        "00000000007c52274553036b14000000f18e7ebe84fea92c9f9e4c081cccea07",
        "2c0cce607b18a48c"
    ));
    let body = &frame[8..frame.len() - 4];
    let req = ProxyReq::parse(body).unwrap();
    assert_eq!(req.conn_id, 0x40_0009);
    assert_eq!(req.client, "127.0.0.1:59936".parse().unwrap());
    assert_eq!(req.proxy, "127.0.0.1:28443".parse().unwrap());
    assert_eq!(
        req.flags,
        req_flags(ProtoTag::Intermediate, req.payload, true, false)
    );
    assert_eq!(check_client_packet(req.payload), Ok(()));
    let mut again = Vec::new();
    req.encode(&mut again);
    let mut w = RpcWriter::new();
    for _ in 0..2 {
        w.write(&[b"\0\0\0\0"], &mut Vec::new()).unwrap();
    }
    w.set_checksum(Checksum::Crc32c);
    let mut out = Vec::new();
    w.write(&[&again], &mut out).unwrap();
    assert_eq!(out, frame);
}

#[test]
fn no_ad_tag_means_no_extra_block() {
    let payload = req_pq_multi();
    let req = ProxyReq {
        flags: req_flags(ProtoTag::Intermediate, &payload, false, false) | flags::HAS_AD_TAG,
        conn_id: 1,
        client: "[2001:db8::1]:1".parse().unwrap(),
        proxy: "10.0.0.1:443".parse().unwrap(),
        ad_tag: None,
        payload: &payload,
    };
    let mut body = Vec::new();
    req.encode(&mut body);
    assert_eq!(body.len(), PROXY_REQ_FIXED + payload.len());
    assert_eq!(le32(&body, 4), 0x2002_1002);
    let back = ProxyReq::parse(&body).unwrap();
    assert_eq!(back.client, req.client);
    assert_eq!(back.payload, &payload[..]);
}

#[test]
fn flags_table_7_7() {
    let enc = [1u8; 56];
    let plain = req_pq_multi();
    assert_eq!(
        req_flags(ProtoTag::Abridged, &plain, true, false),
        0x4002_100a
    );
    assert_eq!(
        req_flags(ProtoTag::Padded, &plain, true, false),
        0x2002_100a
    );
    assert_eq!(
        req_flags(ProtoTag::Intermediate, &enc, true, false),
        0x2002_1008
    );
    assert_eq!(
        req_flags(ProtoTag::Intermediate, &enc, true, true),
        0xa002_1008
    );
    assert_eq!(req_flags(ProtoTag::Abridged, &enc, true, true), 0xc002_1008);
}

#[test]
fn me_messages_12_8() {
    let ans = h("0dda0344000000000807060504030201303132333435363738393a3b3c3d3e3f4041424344454647");
    assert_eq!(
        MeMsg::parse(&ans),
        Ok(MeMsg::ProxyAns {
            flags: 0,
            conn_id: 0x0102_0304_0506_0708,
            data: &ans[16..]
        })
    );
    assert_eq!(&proxy_ans_header(0, 0x0102_0304_0506_0708)[..], &ans[..16]);
    let ack = h("9b40ac3b0807060504030201efcdab89");
    assert_eq!(
        MeMsg::parse(&ack),
        Ok(MeMsg::SimpleAck {
            conn_id: 0x0102_0304_0506_0708,
            confirm: 0x89ab_cdef
        })
    );
    assert_eq!(simple_ack(0x0102_0304_0506_0708, 0x89ab_cdef).to_vec(), ack);
    let ext = h("a234b65e0807060504030201");
    assert_eq!(
        MeMsg::parse(&ext),
        Ok(MeMsg::CloseExt {
            conn_id: 0x0102_0304_0506_0708
        })
    );
    assert_eq!(close_ext(0x0102_0304_0506_0708).to_vec(), ext);
    let cc = h("5d42cf1f0807060504030201");
    assert_eq!(close_conn(0x0102_0304_0506_0708).to_vec(), cc);
    assert_eq!(
        MeMsg::parse(&cc),
        Ok(MeMsg::CloseConn {
            conn_id: 0x0102_0304_0506_0708
        })
    );
    // §12.11 PING / PONG ids.
    let ping_body = h("dfa230578877665544332211");
    assert_eq!(
        MeMsg::parse(&ping_body),
        Ok(MeMsg::Ping {
            id: 0x1122_3344_5566_7788
        })
    );
    assert_eq!(
        pong(0x1122_3344_5566_7788).to_vec(),
        h("a7ea30848877665544332211")
    );
    assert_eq!(ping(0x1122_3344_5566_7788).to_vec(), ping_body);
    assert_eq!(
        MeMsg::parse(&[1, 2, 3, 4]),
        Ok(MeMsg::Unknown { op: 0x0403_0201 })
    );
    assert!(MeMsg::parse(&ack[..15]).is_err());
    assert!(MeMsg::parse(&ans[..15]).is_err());
    assert!(MeMsg::parse(&[0x0d]).is_err());
}

#[test]
fn tl_strings() {
    let mut out = Vec::new();
    tl_string(&[], &mut out);
    assert_eq!(out, [0, 0, 0, 0]);
    out.clear();
    tl_string(&[9; 254], &mut out);
    assert_eq!(&out[..4], &[0xfe, 254, 0, 0]);
    assert_eq!(out.len(), 4 + 256);
}

#[test]
fn client_packet_checks() {
    assert_eq!(check_client_packet(&req_pq_multi()), Ok(()));
    assert!(check_client_packet(&[1; 56]).is_ok());
    assert!(
        check_client_packet(&[1; 52]).is_err(),
        "encrypted packets are >= 56 bytes"
    );
    assert!(check_client_packet(&[0; 24]).is_err());
    assert!(check_client_packet(&[1; 57]).is_err());
    let mut wrong_fn = req_pq_multi();
    wrong_fn[20] ^= 1;
    assert!(check_client_packet(&wrong_fn).is_err());
    let mut bad_inner = req_pq_multi();
    bad_inner[16] = 0xff;
    assert!(check_client_packet(&bad_inner).is_err());
    assert!(check_client_packet(&vec![1; MAX_CLIENT_PACKET]).is_ok());
    assert!(check_client_packet(&vec![1; MAX_CLIENT_PACKET + 4]).is_err());
}

proptest! {
    #[test]
    fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = MeMsg::parse(&b);
        let _ = ProxyReq::parse(&b);
        let _ = check_client_packet(&b);
    }

    #[test]
    fn proxy_req_round_trip(f in any::<u32>(), id in any::<u64>(), tag in proptest::option::of(any::<[u8; 16]>()),
                            c in any::<[u8; 16]>(), cp in any::<u16>(), pp in any::<u16>(),
                            payload in proptest::collection::vec(any::<u8>(), 0..64)) {
        let req = ProxyReq {
            flags: f & !(flags::HTTP_QUERY_INFO | flags::HAS_AD_TAG) | if tag.is_some() { flags::HAS_AD_TAG } else { 0 },
            conn_id: id,
            client: SocketAddr::new(ip_from16(&c), cp),
            proxy: SocketAddr::new(IpAddr::from([1, 2, 3, 4]), pp),
            ad_tag: tag,
            payload: &payload,
        };
        let mut body = Vec::new();
        req.encode(&mut body);
        prop_assert_eq!(ProxyReq::parse(&body), Ok(req));
    }
}
