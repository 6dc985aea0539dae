use super::*;
use crate::link::record::Kind;
use proptest::prelude::*;
use Cipher::*;

const NOW: u64 = 1_800_000_000;

fn offer(c: &[Cipher]) -> Offer {
    Offer::new(c.to_vec()).expect("offer")
}

/// Runs a handshake; the exit's result and the bridge's.
fn run(
    exit: &ExitKey,
    pinned: &[u8; 32],
    bridge_token: &Token,
    exit_tokens: &[Token],
    b: &Offer,
    e: &Offer,
    bridge_now: u64,
) -> (
    Result<Established, HandshakeError>,
    Result<Established, HandshakeError>,
) {
    let (bridge, first) = Bridge::start(pinned, bridge_token, b.clone(), bridge_now).unwrap();
    match accept(exit, exit_tokens, e, &first, NOW) {
        Err(err) => (Err(err.clone()), Err(err)),
        Ok(a) => {
            let theirs = bridge.finish(&a.answer);
            (a.result, theirs)
        }
    }
}

/// One record each way under the two sides' keys.
fn talk(bridge: &mut Established, exit: &mut Established) {
    let mut wire = Vec::new();
    bridge
        .sealer
        .seal(Kind::Frames, b"ping", &mut wire)
        .unwrap();
    let r = exit.opener.open(&mut wire).unwrap().unwrap();
    assert_eq!(&wire[r.body], b"ping");
    let mut wire = Vec::new();
    exit.sealer.seal(Kind::Frames, b"pong", &mut wire).unwrap();
    let r = bridge.opener.open(&mut wire).unwrap().unwrap();
    assert_eq!(&wire[r.body], b"pong");
}

#[test]
fn the_pattern_parses() {
    assert!(PATTERN.parse::<snow::params::NoiseParams>().is_ok());
}

#[test]
fn every_cipher_gives_both_sides_the_same_keys() {
    let key = ExitKey::generate();
    let token = Token::generate();
    for c in Cipher::ALL {
        let (e, b) = run(
            &key,
            &key.public(),
            &token,
            std::slice::from_ref(&token),
            &offer(&Cipher::ALL),
            &offer(&[c]),
            NOW,
        );
        let (mut e, mut b) = (e.unwrap(), b.unwrap());
        assert_eq!((e.cipher, b.cipher), (c, c));
        talk(&mut b, &mut e);
    }
}

#[test]
fn the_exit_names_which_token_a_bridge_used() {
    let key = ExitKey::generate();
    let tokens = [Token::generate(), Token::generate(), Token::generate()];
    let all = offer(&Cipher::ALL);
    let (e, b) = run(&key, &key.public(), &tokens[2], &tokens, &all, &all, NOW);
    let (mut e, mut b) = (e.unwrap(), b.unwrap());
    assert_eq!(e.token, 2);
    talk(&mut b, &mut e);
}

#[test]
fn a_wrong_token_or_another_exit_key_is_not_ours() {
    let key = ExitKey::generate();
    let all = offer(&Cipher::ALL);
    let token = Token::generate();
    let (e, _) = run(
        &key,
        &key.public(),
        &Token::generate(),
        std::slice::from_ref(&token),
        &all,
        &all,
        NOW,
    );
    assert_eq!(e.unwrap_err(), HandshakeError::NotOurs);
    let other = ExitKey::generate();
    let (e, _) = run(
        &key,
        &other.public(),
        &token,
        std::slice::from_ref(&token),
        &all,
        &all,
        NOW,
    );
    assert_eq!(e.unwrap_err(), HandshakeError::NotOurs);
}

#[test]
fn an_answer_from_an_exit_with_another_key_does_not_authenticate() {
    // A man in the middle with its own key answers a bridge that pinned the
    // real exit: it cannot read the first message, so its answer fails.
    let real = ExitKey::generate();
    let token = Token::generate();
    let all = offer(&Cipher::ALL);
    let (bridge, _first) = Bridge::start(&real.public(), &token, all.clone(), NOW).unwrap();
    let (_, own_first) = Bridge::start(&real.public(), &token, all.clone(), NOW).unwrap();
    let a = accept(&real, &[token], &all, &own_first, NOW).unwrap();
    assert_eq!(
        bridge.finish(&a.answer).unwrap_err(),
        HandshakeError::BadAnswer
    );
}

#[test]
fn mismatched_lists_are_refused_on_both_sides_with_the_lists() {
    let key = ExitKey::generate();
    let token = Token::generate();
    let (e, b) = run(
        &key,
        &key.public(),
        &token,
        std::slice::from_ref(&token),
        &offer(&[Aes128Gcm, Aes256Gcm]),
        &offer(&[ChaCha20Poly1305]),
        NOW,
    );
    let want = HandshakeError::NoCommon {
        bridge: "aes-128-gcm, aes-256-gcm".into(),
        exit: "chacha20-poly1305".into(),
    };
    assert_eq!(e.unwrap_err(), want);
    assert_eq!(b.unwrap_err(), want);
}

#[test]
fn a_flipped_byte_in_either_message_is_detected() {
    let key = ExitKey::generate();
    let token = Token::generate();
    let all = offer(&Cipher::ALL);
    let (_, first) = Bridge::start(&key.public(), &token, all.clone(), NOW).unwrap();
    for i in 2..first.len() {
        let mut bad = first.clone();
        bad[i] ^= 0x20;
        assert!(
            matches!(
                accept(&key, std::slice::from_ref(&token), &all, &bad, NOW),
                Err(HandshakeError::NotOurs)
            ),
            "byte {i}"
        );
    }
    let (bridge, first) = Bridge::start(&key.public(), &token, all.clone(), NOW).unwrap();
    let a = accept(&key, std::slice::from_ref(&token), &all, &first, NOW).unwrap();
    let mut bad = a.answer.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(bridge.finish(&bad).unwrap_err(), HandshakeError::BadAnswer);
}

#[test]
fn a_stale_clock_is_refused_and_said() {
    let key = ExitKey::generate();
    let token = Token::generate();
    let all = offer(&Cipher::ALL);
    let (e, b) = run(
        &key,
        &key.public(),
        &token,
        std::slice::from_ref(&token),
        &all,
        &all,
        NOW - 600,
    );
    assert_eq!(e.unwrap_err(), HandshakeError::Skew(600));
    assert_eq!(b.unwrap_err(), HandshakeError::ClockRefused);
    let (e, b) = run(
        &key,
        &key.public(),
        &token,
        std::slice::from_ref(&token),
        &all,
        &all,
        NOW + 60,
    );
    assert!(e.is_ok() && b.is_ok());
}

#[test]
fn a_replayed_first_message_gives_keys_the_bridge_never_has() {
    // The exit answers a replay (it cannot tell), but the replayer lacks the
    // bridge's ephemeral key, and the real bridge's keys differ from the
    // second answer's.
    let key = ExitKey::generate();
    let token = Token::generate();
    let all = offer(&Cipher::ALL);
    let (bridge, first) = Bridge::start(&key.public(), &token, all.clone(), NOW).unwrap();
    let a1 = accept(&key, std::slice::from_ref(&token), &all, &first, NOW).unwrap();
    let a2 = accept(&key, std::slice::from_ref(&token), &all, &first, NOW).unwrap();
    let mut b = bridge.finish(&a1.answer).unwrap();
    let mut replayed = a2.result.unwrap();
    let mut wire = Vec::new();
    replayed.sealer.seal(Kind::Frames, b"x", &mut wire).unwrap();
    assert_eq!(
        b.opener.open(&mut wire),
        Err(crate::link::record::RecordError::Auth)
    );
}

#[test]
fn lengths_are_checked() {
    assert_eq!(message_len(&[0]), Ok(None));
    assert_eq!(message_len(&[0, 0]), Err(HandshakeError::Length(0)));
    assert_eq!(
        message_len(&[0xff, 0xff]),
        Err(HandshakeError::Length(0xffff))
    );
    assert_eq!(message_len(&[0, 40]), Ok(Some(42)));
}

#[test]
fn the_secret_half_is_never_printed() {
    let key = ExitKey::generate();
    let shown = format!("{key:?} {:?}", Token::new([0xab; 32]));
    assert!(!shown.contains(&hex::encode(key.secret())));
    assert!(!shown.contains("abab"));
}

proptest! {
    #[test]
    fn garbage_first_messages_are_not_ours(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let key = ExitKey::from_secret(Zeroizing::new([3; 32]));
        let r = accept(&key, &[Token::new([1; 32])], &offer(&Cipher::ALL), &bytes, NOW);
        prop_assert!(matches!(r, Err(HandshakeError::NotOurs)));
    }

    #[test]
    fn garbage_answers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let key = ExitKey::from_secret(Zeroizing::new([3; 32]));
        let (bridge, _) =
            Bridge::start(&key.public(), &Token::new([1; 32]), offer(&Cipher::ALL), NOW).unwrap();
        prop_assert!(bridge.finish(&bytes).is_err());
    }

    #[test]
    fn any_two_lists_agree_or_both_refuse(
        b in proptest::sample::subsequence(Cipher::ALL.to_vec(), 1..=4),
        e in proptest::sample::subsequence(Cipher::ALL.to_vec(), 1..=4),
    ) {
        let key = ExitKey::from_secret(Zeroizing::new([5; 32]));
        let token = Token::new([9; 32]);
        let (x, y) = run(&key, &key.public(), &token, std::slice::from_ref(&token), &offer(&b), &offer(&e), NOW);
        match negotiate::choose(&offer(&b), &offer(&e)) {
            Ok(c) => {
                let (mut x, mut y) = (x.unwrap(), y.unwrap());
                prop_assert_eq!((x.cipher, y.cipher), (c, c));
                talk(&mut y, &mut x);
            }
            Err(_) => prop_assert!(x.is_err() && y.is_err()),
        }
    }
}
