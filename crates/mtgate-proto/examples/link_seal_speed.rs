//! How fast the link's records seal and open, per cipher (16 KiB records):
//! `cargo run --release -p mtgate-proto --example link_seal_speed`.

use mtgate_proto::link::negotiate::Cipher;
use mtgate_proto::link::record::{Kind, Opener, Sealer, MAX_PLAINTEXT};
use std::time::Instant;
use zeroize::Zeroizing;

fn main() {
    let body = vec![7u8; MAX_PLAINTEXT - 1];
    for c in Cipher::ALL {
        let mut s = Sealer::new(c, Zeroizing::new([1; 32]));
        let mut o = Opener::new(c, Zeroizing::new([1; 32]));
        let mut wire = Vec::with_capacity(MAX_PLAINTEXT + 64);
        let n = 20_000;
        let t = Instant::now();
        for _ in 0..n {
            wire.clear();
            s.seal(Kind::Frames, &body, &mut wire).expect("seal");
            o.open(&mut wire).expect("open").expect("whole");
        }
        let secs = t.elapsed().as_secs_f64();
        let gb = (n * body.len()) as f64 / 1e9;
        println!("{:20} seal+open {:.2} GB/s", c.name(), gb / secs);
    }
}
