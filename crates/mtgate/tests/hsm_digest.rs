//! The HSM's digest mode against a real SoftHSM2 token (Debian `softhsm2`,
//! installed by `scripts/test.sh`): `mtgate hsm`'s keys cannot be read out
//! of the token, yet the digests computed there are exactly the handshake's
//! (SHA-256 after a prefix, HMAC-SHA256), so clients of those keys pass the
//! real handshake; a token that goes away makes the digests fail (counted,
//! reported, the client a stranger), never a panic.
//!
//! One test in this binary of its own: the PKCS#11 module reads
//! `SOFTHSM2_CONF` once per process.

use mtgate::config::{Config, Overrides};
use mtgate::hsm::{self, HsmConfig, HsmMode};
use mtgate_crypto::Key16;
use mtgate_proto::faketls::build_client_hello;
use mtgate_proto::handshake::{Handshake, HandshakeConfig, Outcome, UserKey};
use mtgate_proto::key::{SecretKey, SecretOps};
use mtgate_proto::obfs2::{build_header, DcIndex, ProtoTag};
use mtgate_proto::replay::ReplayCache;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn module() -> PathBuf {
    let m = PathBuf::from(std::env::var("MTGATE_PKCS11_MODULE").unwrap_or(MODULE.into()));
    assert!(
        m.is_file(),
        "SoftHSM2 not found at {} (Debian package softhsm2; scripts/test.sh installs it)",
        m.display()
    );
    m
}

/// A fresh token `mtgate-test` (PIN 1234) in `dir`.
fn token(dir: &Path) -> HsmConfig {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    // Before the module is loaded (once, below), in this one-test binary.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let st = std::process::Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "mtgate-test"])
        .args(["--pin", "1234", "--so-pin", "5678"])
        .output()
        .expect("softhsm2-util (Debian package softhsm2)");
    assert!(st.status.success(), "{st:?}");
    let pin = dir.join("pin");
    std::fs::write(&pin, "1234\n").unwrap();
    HsmConfig {
        module: module(),
        token: "mtgate-test".into(),
        pin_file: Some(pin),
        mode: HsmMode::Digest,
    }
}

/// Moves the token's key objects (every `*.object` but `token.object`) to
/// `aside`; (where it was, where it is).
fn move_keys(tokens: &Path, aside: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut moved = Vec::new();
    for t in std::fs::read_dir(tokens).unwrap() {
        for f in std::fs::read_dir(t.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".object") && name != "token.object" {
                let to = aside.join(&name);
                std::fs::rename(&p, &to).unwrap();
                moved.push((p, to));
            }
        }
    }
    moved
}

fn kept(cfg: &HsmConfig, label: &str) -> SecretKey {
    let text = format!("[users.alice]\nsecret = \"hsm:{label}\"\nmodes = [\"ee\", \"dd\"]\n");
    let mut users = Config::from_toml(&text, &Overrides::default())
        .expect("config")
        .users;
    hsm::resolve(Some(cfg), &mut users).expect("resolve");
    users[0].secrets[0].key.clone()
}

fn accepts(key: &SecretKey, wire: &[u8], now: u64) -> Outcome {
    let cfg = HandshakeConfig {
        users: vec![UserKey::new(key.clone(), 0, false, true, true)],
        domains: vec![],
        max_past_secs: 600,
        max_future_secs: 600,
        fake_cert_len: (1000, 1100),
        observed_cert_lens: vec![],
        versions_first: false,
    };
    let mut rc = ReplayCache::new(100, 1000);
    Handshake::new().feed(wire, now, &cfg, &mut rc, &mut mtgate_crypto::fill_random)
}

#[test]
fn digests_inside_the_token_are_the_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = token(dir.path());
    let key: Key16 = hsm::create_key(&cfg, "alice").expect("create");
    // Neither object can be read out of the token.
    for label in ["alice", "alice#hmac"] {
        let e = hsm::read_keys(&cfg, &[label.to_owned()]).unwrap_err();
        assert!(
            e.to_string().contains("not a 16-byte key mtgate may read"),
            "{e}"
        );
    }
    let e = hsm::create_key(&cfg, "alice").unwrap_err().to_string();
    assert!(e.contains("already holds a key labelled `alice`"), "{e}");

    // Unwrap mode, chosen by the operator: a key the proxy reads at start.
    let unwrap = HsmConfig {
        mode: HsmMode::Unwrap,
        ..cfg.clone()
    };
    let carol = hsm::create_key(&unwrap, "carol").expect("create (unwrap)");
    let read = hsm::read_keys(&unwrap, &["carol".to_owned()]).expect("readable");
    assert!(read[0] == carol);
    // Resolved into a locked page of its own; links can still be made.
    let unwrapped = kept(&unwrap, "carol");
    assert!(matches!(unwrapped, SecretKey::External(_)));
    assert!(unwrapped.local() == Some(&carol));

    let inside = kept(&cfg, "alice");
    assert!(inside.local().is_none(), "digest mode keeps no bytes");
    let local = SecretKey::from(key.clone());
    for i in 0..20u8 {
        let prefix = [i.wrapping_mul(37); 32];
        assert_eq!(inside.sha256_after(&prefix), local.sha256_after(&prefix));
        let msg = vec![i; 100 + usize::from(i) * 50];
        assert_eq!(
            inside.hmac(&[&msg[..7], &msg[7..]]),
            local.hmac(&[&msg]),
            "HMAC over {} bytes",
            msg.len()
        );
    }

    // A client of the key passes the real handshake, obfuscated2 and FakeTLS.
    let now = 1_800_000_000u64;
    let mut random = [0u8; 64];
    mtgate_crypto::fill_random(&mut random);
    let (header, _) = build_header(&random, ProtoTag::Padded, DcIndex(2), Some(&key));
    assert!(
        matches!(accepts(&inside, &header, now), Outcome::Accepted(_)),
        "dd through the token"
    );
    let hello = build_client_hello(&key, "example.com", now as u32, &[7; 64], 600);
    assert!(
        matches!(accepts(&inside, &hello, now), Outcome::Respond(_)),
        "ee through the token"
    );
    let stranger = build_client_hello(
        &Key16::new([9; 16]),
        "example.com",
        now as u32,
        &[8; 64],
        600,
    );
    assert!(matches!(
        accepts(&inside, &stranger, now),
        Outcome::Reject(_)
    ));

    // What a digest costs (printed for docs/BENCHMARKS.md; not asserted).
    let n = 2000;
    let t = Instant::now();
    for i in 0..n {
        let _ = inside.sha256_after(&[i as u8; 32]);
    }
    let sha = t.elapsed() / n;
    let t = Instant::now();
    for _ in 0..n {
        let _ = inside.hmac(&[&hello]);
    }
    let mac = t.elapsed() / n;
    eprintln!(
        "SoftHSM2 digest mode: SHA-256 after a prefix {sha:?}, HMAC over a 600-byte hello {mac:?}"
    );

    // The keys go away (their files moved out of the token): digests fail,
    // counted and reported; the client is a stranger; nothing panics.
    let before = hsm::health().failures;
    let aside = dir.path().join("aside");
    std::fs::create_dir(&aside).unwrap();
    let moved = move_keys(&dir.path().join("tokens"), &aside);
    assert_eq!(moved.len(), 3, "alice, her HMAC form, carol: {moved:?}");
    let gone = Instant::now();
    loop {
        if inside.sha256_after(&[1; 32]).is_none() {
            break;
        }
        assert!(
            gone.elapsed() < Duration::from_secs(5),
            "digests still answered without the token"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let h = hsm::health();
    assert!(h.failing && h.failures > before, "{h:?}");
    assert!(
        h.last.as_deref().is_some_and(|l| l.contains("alice")),
        "{h:?}"
    );
    assert!(!matches!(
        accepts(&inside, &header, now + 1),
        Outcome::Accepted(_)
    ));
    // The token stays broken for the rest of this process (SoftHSM does not
    // look for removed objects again); digests keep failing without a panic
    // and the failure stays reported.
    for _ in 0..3 {
        assert_eq!(inside.hmac(&[b"x"]), None);
    }
    assert!(hsm::health().failures >= h.failures + 3);
}
