//! The ME link's parsers (PROTOCOL §7.3–7.8): RPC framing (`RpcReader`, with
//! filler, both checksums and any expected seq_no), the set-up messages
//! (`Nonce`, `HandshakeMsg`), the ME's messages (`MeMsg`), `ProxyReq` and the
//! client-packet check; plus the encrypted receive half (`MeRx`) fed the
//! input in arbitrary chunks.
//!
//! Input: byte 0 is a control byte (checksum, starting seq_no, chunk size);
//! the rest is the byte stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtgate_proto::me::frame::{Checksum, RpcReader, RpcWriter};
use mtgate_proto::me::msg::{check_client_packet, MeMsg, ProxyReq};
use mtgate_proto::me::{HandshakeMsg, MeRx, Nonce};

fn bodies(body: &[u8]) {
    let _ = Nonce::parse(body);
    let _ = HandshakeMsg::parse(body);
    if let Ok(MeMsg::ProxyAns { data, .. }) = MeMsg::parse(body) {
        assert_eq!(data.len() + 16, body.len());
    }
    if let Ok(req) = ProxyReq::parse(body) {
        assert!(req.payload.len() <= body.len());
        let _ = check_client_packet(req.payload);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else {
        return;
    };
    let checksum = if ctl & 1 == 0 {
        Checksum::Crc32
    } else {
        Checksum::Crc32c
    };
    bodies(stream);

    // Plaintext framing: take frames until an error or the end.
    let mut r = RpcReader::new(1 << 16);
    r.set_checksum(checksum);
    let mut at = 0;
    while let Ok(p) = r.next(&stream[at..]) {
        assert!(p.consumed <= stream.len() - at);
        match p.frame {
            Some(f) => {
                assert!(f.body.end <= p.consumed);
                bodies(&stream[at + f.body.start..at + f.body.end]);
            }
            None if p.consumed == 0 => break,
            None => {}
        }
        at += p.consumed;
    }

    // The encrypted half never panics, whatever the chunking.
    let mut w = RpcWriter::new();
    let mut rd = RpcReader::new(1 << 16);
    let mut nonce = Vec::new();
    let _ = w.write(&[&[0; 32]], &mut nonce);
    let _ = rd.next(&nonce);
    let mut rx = MeRx::new(rd, &[ctl; 32], &[7; 16]);
    rx.set_checksum(checksum);
    let chunk = usize::from(ctl >> 1).max(1);
    'feed: for piece in stream.chunks(chunk) {
        rx.spare(piece.len())[..piece.len()].copy_from_slice(piece);
        rx.commit(piece.len());
        loop {
            match rx.next_frame() {
                Ok(Some((_, body))) => {
                    let body = body.to_vec();
                    bodies(&body);
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
});
