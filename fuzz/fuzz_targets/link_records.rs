//! The link's records and frames (issue 15, `mtgate_proto::link::{record,
//! frame}`): any bytes given to an opener are refused or opened without a
//! panic, the frames of any record body decode or stop at an error, and a
//! frame that decodes encodes back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtgate_proto::link::frame::frames;
use mtgate_proto::link::negotiate::Cipher;
use mtgate_proto::link::record::{Opener, Sealer};
use zeroize::Zeroizing;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let cipher = Cipher::ALL[usize::from(pick) % 4];
    // Garbage as records.
    let mut opener = Opener::new(cipher, Zeroizing::new([1; 32]));
    let mut buf = rest.to_vec();
    let _ = opener.open(&mut buf);
    // The same bytes as a record body, sealed and opened, then as frames.
    let mut sealer = Sealer::new(cipher, Zeroizing::new([2; 32]));
    let mut opener = Opener::new(cipher, Zeroizing::new([2; 32]));
    let body = &rest[..rest.len().min(4000)];
    let mut wire = Vec::new();
    sealer
        .seal(mtgate_proto::link::record::Kind::Frames, body, &mut wire)
        .expect("a short body seals");
    let opened = opener.open(&mut wire).expect("opens").expect("whole");
    assert_eq!(&wire[opened.body.clone()], body);
    for f in frames(body).flatten() {
        let mut again = Vec::new();
        f.encode(&mut again);
        assert_eq!(
            mtgate_proto::link::frame::Frame::decode(&again).map(|x| x.0),
            Ok(f)
        );
    }
});
