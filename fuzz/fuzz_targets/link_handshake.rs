//! The link handshake (issue 15, `mtgate_proto::link::handshake`): any
//! bytes as a first message are refused by the exit as not a link's, and
//! any bytes as an answer are refused by the bridge, without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtgate_proto::link::handshake::{accept, Bridge, ExitKey, HandshakeError, Token};
use mtgate_proto::link::negotiate::{Cipher, Offer};
use zeroize::Zeroizing;

fuzz_target!(|data: &[u8]| {
    let key = ExitKey::from_secret(Zeroizing::new([3; 32]));
    let token = Token::new([4; 32]);
    let offer = Offer::new(Cipher::ALL.to_vec()).expect("offer");
    let r = accept(&key, std::slice::from_ref(&token), &offer, data, 0);
    assert!(matches!(r, Err(HandshakeError::NotOurs)));
    let (bridge, _) = Bridge::start(&key.public(), &token, offer, 0).expect("starts");
    assert!(bridge.finish(data).is_err());
});
