//! Shared helpers for the mtgate-proto fuzz targets.
//!
//! Everything here is deterministic: the same fuzz input always drives the
//! code under test the same way, so every crash reproduces from its artifact.

/// Splits `data` into read-sized chunks, as a socket would deliver them.
///
/// `max` is the largest chunk (0 = the whole buffer in one piece) and `seed`
/// picks the sequence of sizes, so the fuzzer controls both with two bytes.
pub fn chunks(data: &[u8], max: u8, seed: u8) -> Vec<&[u8]> {
    if max == 0 || data.is_empty() {
        return vec![data];
    }
    let mut out = Vec::new();
    let mut rng = Lcg::new(u64::from(seed) | (u64::from(max) << 8));
    let mut rest = data;
    while !rest.is_empty() {
        let n = 1 + (rng.next_u32() as usize % usize::from(max));
        let n = n.min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

/// A tiny deterministic generator (PCG-style LCG) for chunk sizes and the
/// handshake's `rand` callback.
#[derive(Clone, Debug)]
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u32(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_u32() as u8;
        }
    }
}

/// A `rand` closure for `Handshake::feed`, deterministic from `seed`.
pub fn det_rand(seed: u64) -> impl FnMut(&mut [u8]) {
    let mut g = Lcg::new(seed);
    move |b: &mut [u8]| g.fill(b)
}

/// Takes `N` bytes from the front of `data` (zero-padded when short) and advances it.
pub fn take_array<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    let n = N.min(data.len());
    a[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    a
}

/// Takes one byte (0 when empty) and advances `data`.
pub fn take_u8(data: &mut &[u8]) -> u8 {
    take_array::<1>(data)[0]
}
