//! The link's cipher negotiation.
//!
//! Each side offers the AEAD ciphers it accepts, in its order of
//! preference ([`Offer`], a few bytes on the wire). The exit (the side
//! that answers) picks: the first cipher of *its* list that the bridge
//! offers too ([`choose`]), so an operator orders the exit's list for its
//! CPU (AES-GCM first with AES instructions, ChaCha20 first without:
//! [`preferred`]). Both sides then hash the two offers and the choice into
//! a [`transcript`] that the link handshake authenticates, so an offer
//! changed in flight (a downgrade) makes the handshake fail.
//!
//! Wire form of an offer: version `1`, a count (1..=8), then one byte per
//! cipher id, no repeats.

/// An AEAD cipher the link can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cipher {
    Aes256Gcm,
    Aes128Gcm,
    ChaCha20Poly1305,
    XChaCha20Poly1305,
}

impl Cipher {
    /// Every cipher.
    pub const ALL: [Cipher; 4] = [
        Cipher::Aes256Gcm,
        Cipher::Aes128Gcm,
        Cipher::ChaCha20Poly1305,
        Cipher::XChaCha20Poly1305,
    ];

    /// Its byte on the wire.
    pub fn id(self) -> u8 {
        match self {
            Cipher::Aes256Gcm => 1,
            Cipher::Aes128Gcm => 2,
            Cipher::ChaCha20Poly1305 => 3,
            Cipher::XChaCha20Poly1305 => 4,
        }
    }

    pub fn from_id(id: u8) -> Option<Cipher> {
        Cipher::ALL.into_iter().find(|c| c.id() == id)
    }

    /// Its name in the configuration and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm => "aes-256-gcm",
            Cipher::Aes128Gcm => "aes-128-gcm",
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
            Cipher::XChaCha20Poly1305 => "xchacha20-poly1305",
        }
    }

    pub fn parse(name: &str) -> Option<Cipher> {
        Cipher::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// The order a side prefers when its operator names none: AES-GCM first on
/// a CPU with AES instructions (`hw_aes`), ChaCha20 first without.
pub fn preferred(hw_aes: bool) -> Vec<Cipher> {
    use Cipher::*;
    if hw_aes {
        vec![Aes256Gcm, Aes128Gcm, ChaCha20Poly1305, XChaCha20Poly1305]
    } else {
        vec![ChaCha20Poly1305, XChaCha20Poly1305, Aes256Gcm, Aes128Gcm]
    }
}

/// The wire version of an offer.
pub const VERSION: u8 = 1;
/// Most ciphers an offer may hold.
pub const MAX_CIPHERS: usize = 8;

/// Why an offer or a negotiation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("link offer: too short")]
    Short,
    #[error("link offer: version {0}, this side speaks {VERSION}")]
    Version(u8),
    #[error("link offer: {0} ciphers (1..={MAX_CIPHERS})")]
    Count(usize),
    #[error("link offer: unknown cipher id {0}")]
    Unknown(u8),
    #[error("link offer: cipher {0} twice")]
    Repeated(&'static str),
    #[error("link offer: {0} trailing bytes")]
    Trailing(usize),
    #[error("the two sides share no cipher")]
    NoCommonCipher,
}

/// One side's ciphers, in its order of preference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    ciphers: Vec<Cipher>,
}

impl Offer {
    /// An offer of `ciphers` (1..=8, no repeats).
    pub fn new(ciphers: Vec<Cipher>) -> Result<Offer, NegotiationError> {
        if ciphers.is_empty() || ciphers.len() > MAX_CIPHERS {
            return Err(NegotiationError::Count(ciphers.len()));
        }
        for (i, c) in ciphers.iter().enumerate() {
            if ciphers[..i].contains(c) {
                return Err(NegotiationError::Repeated(c.name()));
            }
        }
        Ok(Offer { ciphers })
    }

    pub fn ciphers(&self) -> &[Cipher] {
        &self.ciphers
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.ciphers.len());
        out.push(VERSION);
        out.push(self.ciphers.len() as u8);
        out.extend(self.ciphers.iter().map(|c| c.id()));
        out
    }

    /// Reads an offer that must fill `bytes` exactly.
    pub fn decode(bytes: &[u8]) -> Result<Offer, NegotiationError> {
        let [version, count, rest @ ..] = bytes else {
            return Err(NegotiationError::Short);
        };
        if *version != VERSION {
            return Err(NegotiationError::Version(*version));
        }
        let n = usize::from(*count);
        if n == 0 || n > MAX_CIPHERS {
            return Err(NegotiationError::Count(n));
        }
        if rest.len() < n {
            return Err(NegotiationError::Short);
        }
        if rest.len() > n {
            return Err(NegotiationError::Trailing(rest.len() - n));
        }
        let ciphers = rest
            .iter()
            .map(|&id| Cipher::from_id(id).ok_or(NegotiationError::Unknown(id)))
            .collect::<Result<Vec<_>, _>>()?;
        Offer::new(ciphers)
    }
}

/// The exit's choice: the first cipher of `exit`'s list the `bridge`
/// offers too.
pub fn choose(bridge: &Offer, exit: &Offer) -> Result<Cipher, NegotiationError> {
    exit.ciphers
        .iter()
        .copied()
        .find(|c| bridge.ciphers.contains(c))
        .ok_or(NegotiationError::NoCommonCipher)
}

/// What the link handshake authenticates: SHA-256 of a label, both
/// offers as sent (length-prefixed) and the choice. Any byte of either
/// offer changed in flight gives the two sides different transcripts.
pub fn transcript(bridge: &Offer, exit: &Offer, chosen: Cipher) -> [u8; 32] {
    let (b, e) = (bridge.encode(), exit.encode());
    mtgate_crypto::sha256(&[
        b"mtgate link negotiation v1",
        &[b.len() as u8],
        &b,
        &[e.len() as u8],
        &e,
        &[chosen.id()],
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Cipher::*;

    fn offer(c: &[Cipher]) -> Offer {
        Offer::new(c.to_vec()).expect("offer")
    }

    #[test]
    fn the_exit_picks_its_first_cipher_the_bridge_has() {
        let bridge = offer(&[ChaCha20Poly1305, Aes256Gcm]);
        assert_eq!(choose(&bridge, &offer(&preferred(true))), Ok(Aes256Gcm));
        assert_eq!(
            choose(&bridge, &offer(&preferred(false))),
            Ok(ChaCha20Poly1305)
        );
        assert_eq!(
            choose(&offer(&[Aes128Gcm]), &offer(&[XChaCha20Poly1305])),
            Err(NegotiationError::NoCommonCipher)
        );
        for c in Cipher::ALL {
            assert_eq!(Cipher::from_id(c.id()), Some(c));
            assert_eq!(Cipher::parse(c.name()), Some(c));
        }
    }

    #[test]
    fn bad_offers_are_named() {
        use NegotiationError::*;
        let cases: [(&[u8], NegotiationError); 7] = [
            (&[], Short),
            (&[1], Short),
            (&[2, 1, 1], Version(2)),
            (&[1, 0], Count(0)),
            (&[1, 2, 1], Short),
            (&[1, 1, 9], Unknown(9)),
            (&[1, 2, 3, 3], Repeated("chacha20-poly1305")),
        ];
        for (bytes, want) in cases {
            assert_eq!(Offer::decode(bytes), Err(want), "{bytes:?}");
        }
        assert_eq!(Offer::decode(&[1, 1, 1, 0]), Err(Trailing(1)));
        assert_eq!(
            Offer::decode(&[1, 9, 1, 2, 3, 4, 1, 2, 3, 4, 1]),
            Err(Count(9))
        );
    }

    #[test]
    fn a_downgraded_offer_changes_the_transcript() {
        let bridge = offer(&[Aes256Gcm, ChaCha20Poly1305]);
        let exit = offer(&preferred(true));
        let honest = transcript(&bridge, &exit, choose(&bridge, &exit).unwrap());
        // A middlebox strips AES-256-GCM from the bridge's offer.
        let stripped = offer(&[ChaCha20Poly1305]);
        let seen = transcript(&stripped, &exit, choose(&stripped, &exit).unwrap());
        assert_ne!(honest, seen);
        assert_eq!(
            honest,
            transcript(&bridge, &exit, Aes256Gcm),
            "deterministic"
        );
    }

    fn any_offer() -> impl Strategy<Value = Offer> {
        prop::sample::subsequence(Cipher::ALL.to_vec(), 1..=4)
            .prop_shuffle()
            .prop_map(|c| Offer::new(c).expect("valid"))
    }

    proptest! {
        #[test]
        fn offers_round_trip(o in any_offer()) {
            prop_assert_eq!(Offer::decode(&o.encode()), Ok(o));
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..32)) {
            if let Ok(o) = Offer::decode(&bytes) {
                prop_assert_eq!(o.encode(), bytes);
            }
        }

        #[test]
        fn the_choice_is_common_and_the_exits_first(b in any_offer(), e in any_offer()) {
            match choose(&b, &e) {
                Ok(c) => {
                    prop_assert!(b.ciphers().contains(&c) && e.ciphers().contains(&c));
                    let at = e.ciphers().iter().position(|x| *x == c).unwrap();
                    prop_assert!(e.ciphers()[..at].iter().all(|x| !b.ciphers().contains(x)));
                }
                Err(_) => prop_assert!(e.ciphers().iter().all(|x| !b.ciphers().contains(x))),
            }
        }
    }
}
