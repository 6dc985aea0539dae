//! The two encrypted halves of a ready (or handshaking) ME link, sans-I/O.
//!
//! [`MeTx`] frames messages into an output buffer; [`MeTx::seal`] pads the
//! new bytes with filler to a 16-byte boundary and CBC-encrypts them, ready to
//! be written. [`MeRx`] takes ciphertext as it arrives, decrypts whole
//! 16-byte units, and hands out checked frame bodies one at a time. Both keep
//! their buffers between calls, so a busy link does not allocate per message.

use super::frame::{Checksum, FrameError, RpcReader, RpcWriter};
use mtgate_crypto::cbc::{AesCbcDec, AesCbcEnc};

/// The sending half.
#[derive(Debug)]
pub struct MeTx {
    writer: RpcWriter,
    enc: AesCbcEnc,
    out: Vec<u8>,
    sealed: usize,
}

impl MeTx {
    /// Takes over `writer` (after the plaintext nonce frame) with the write key.
    pub fn new(writer: RpcWriter, key: &[u8; 32], iv: &[u8; 16]) -> Self {
        Self {
            writer,
            enc: AesCbcEnc::new(key, iv),
            out: Vec::new(),
            sealed: 0,
        }
    }

    /// Switches the checksum (after the handshakes).
    pub fn set_checksum(&mut self, c: Checksum) {
        self.writer.set_checksum(c);
    }

    /// Appends one frame whose body is the concatenation of `parts`.
    pub fn push(&mut self, parts: &[&[u8]]) -> Result<(), FrameError> {
        self.writer.write(parts, &mut self.out)
    }

    /// Bytes framed but not yet sealed or written.
    pub fn pending(&self) -> usize {
        self.out.len() - self.sealed
    }

    /// Pads and encrypts everything pushed since the last seal; returns all
    /// sealed bytes not yet [`consumed`](Self::consume).
    pub fn seal(&mut self) -> &[u8] {
        RpcWriter::pad(&mut self.out);
        // The tail is a whole number of blocks: `sealed` and `out.len()` are both multiples of 16.
        let tail = &mut self.out[self.sealed..];
        if self.enc.encrypt(tail).is_err() {
            unreachable!("padded output is block-aligned");
        }
        self.sealed = self.out.len();
        &self.out
    }

    /// Drops `n` written bytes from the front of the sealed output.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.sealed);
        self.out.drain(..n);
        self.sealed -= n;
        if self.out.capacity() > (1 << 20) && self.out.len() < (1 << 16) {
            self.out.shrink_to(1 << 16);
        }
    }
}

/// The receiving half.
#[derive(Debug)]
pub struct MeRx {
    reader: RpcReader,
    dec: AesCbcDec,
    /// Backing store; only `..len` holds received bytes.
    buf: Vec<u8>,
    /// Start of the unread plaintext.
    start: usize,
    /// End of the decrypted bytes; ciphertext follows up to `len`.
    plain_end: usize,
    len: usize,
}

/// Backing room kept when a link goes quiet after a large frame.
const KEEP: usize = 1 << 16;

impl MeRx {
    /// Takes over `reader` (after the plaintext nonce frame) with the read key.
    pub fn new(reader: RpcReader, key: &[u8; 32], iv: &[u8; 16]) -> Self {
        Self {
            reader,
            dec: AesCbcDec::new(key, iv),
            buf: Vec::new(),
            start: 0,
            plain_end: 0,
            len: 0,
        }
    }

    /// Switches the checksum (after the handshakes).
    pub fn set_checksum(&mut self, c: Checksum) {
        self.reader.set_checksum(c);
    }

    /// Room for at least `min` more ciphertext bytes; fill a prefix of it and
    /// call [`commit`](Self::commit) with its length.
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        if self.start > 0 && (self.start == self.len || self.start >= KEEP) {
            self.buf.copy_within(self.start..self.len, 0);
            self.plain_end -= self.start;
            self.len -= self.start;
            self.start = 0;
            if self.buf.len() > 16 * KEEP && self.len < KEEP {
                self.buf.truncate(KEEP);
                self.buf.shrink_to(KEEP);
            }
        }
        let want = self.len + min.max(1);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        &mut self.buf[self.len..]
    }

    /// Keeps `n` bytes written into [`spare`](Self::spare) and decrypts every
    /// whole 16-byte unit received so far.
    pub fn commit(&mut self, n: usize) {
        self.len = (self.len + n).min(self.buf.len());
        let end = self.plain_end + ((self.len - self.plain_end) & !15);
        if self
            .dec
            .decrypt(&mut self.buf[self.plain_end..end])
            .is_err()
        {
            unreachable!("whole blocks only");
        }
        self.plain_end = end;
    }

    /// Received bytes not yet taken as frames (filler and ciphertext included).
    pub fn buffered(&self) -> usize {
        self.len - self.start
    }

    /// The next checked frame: `(seq_no, body)`, or `None` until more arrives.
    pub fn next_frame(&mut self) -> Result<Option<(i32, &[u8])>, FrameError> {
        let p = self.reader.next(&self.buf[self.start..self.plain_end])?;
        let base = self.start;
        self.start += p.consumed;
        Ok(p.frame
            .map(move |f| (f.seq, &self.buf[base + f.body.start..base + f.body.end])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair() -> (MeTx, MeRx) {
        let (mut w, mut r) = (RpcWriter::new(), RpcReader::default());
        let mut sink = Vec::new();
        w.write(&[&[0; 32]], &mut sink).unwrap();
        r.next(&sink).unwrap();
        (
            MeTx::new(w, &[3; 32], &[4; 16]),
            MeRx::new(r, &[3; 32], &[4; 16]),
        )
    }

    fn feed(rx: &mut MeRx, wire: &[u8]) {
        rx.spare(wire.len())[..wire.len()].copy_from_slice(wire);
        rx.commit(wire.len());
    }

    #[test]
    fn handshake_then_messages_in_odd_chunks() {
        let (mut tx, mut rx) = pair();
        tx.push(&[&[7; 32]]).unwrap();
        let first = tx.seal().to_vec();
        assert_eq!(first.len(), 48);
        tx.consume(first.len());
        tx.set_checksum(Checksum::Crc32c);
        tx.push(&[&[1; 12]]).unwrap();
        tx.push(&[&[2; 4], &[3; 100]]).unwrap();
        let wire = [first, tx.seal().to_vec()].concat();
        assert_eq!(wire.len() % 16, 0);
        for chunk in wire.chunks(7) {
            feed(&mut rx, chunk);
        }
        let (seq, body) = rx.next_frame().unwrap().unwrap();
        assert_eq!((seq, body), (-1, &[7u8; 32][..]));
        rx.set_checksum(Checksum::Crc32c);
        let (seq, body) = rx.next_frame().unwrap().unwrap();
        assert_eq!((seq, body.len()), (0, 12));
        let (seq, body) = rx.next_frame().unwrap().unwrap();
        assert_eq!((seq, body.len()), (1, 104));
        assert_eq!(rx.next_frame().unwrap(), None);
        assert_eq!(rx.buffered(), 0);
    }

    #[test]
    fn wrong_key_is_an_error_not_a_panic() {
        let (mut tx, _) = pair();
        let mut rx = MeRx::new(RpcReader::default(), &[9; 32], &[4; 16]);
        tx.push(&[&[7; 32]]).unwrap();
        let wire = tx.seal().to_vec();
        feed(&mut rx, &wire);
        assert!(rx.next_frame().is_err());
    }

    proptest! {
        #[test]
        fn any_chunking_round_trips(sizes in proptest::collection::vec(1usize..300, 1..8), cut in 1usize..64) {
            let (mut tx, mut rx) = pair();
            let msgs: Vec<Vec<u8>> = sizes.iter().map(|s| vec![(*s % 251) as u8; s * 4]).collect();
            let mut wire = Vec::new();
            for m in &msgs {
                tx.push(&[m]).unwrap();
                let sealed = tx.seal();
                wire.extend_from_slice(sealed);
                let n = sealed.len();
                tx.consume(n);
            }
            let mut got = Vec::new();
            for chunk in wire.chunks(cut) {
                feed(&mut rx, chunk);
                while let Some((_, body)) = rx.next_frame().unwrap() {
                    got.push(body.to_vec());
                }
            }
            prop_assert_eq!(got, msgs);
        }
    }
}
