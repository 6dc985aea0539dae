//! Unwrap mode's memory: a key read out of the token lives in a page of its
//! own, locked in RAM (`mlock`: never written to swap), left out of core
//! dumps (`MADV_DONTDUMP`), and zeroed, unlocked and unmapped when the last
//! runtime using it is dropped. The handshake reads it in place through
//! [`SecretOps`], so it is never copied for a handshake; links are made from
//! it on demand (a zeroized copy, as with any key).

use super::HsmError;
use mtgate_crypto::Key16;
use mtgate_proto::key::SecretOps;
use std::ptr::NonNull;

/// A key in a locked page.
pub struct LockedKey {
    /// The start of a private anonymous mapping of [`LockedKey::len`] bytes
    /// holding one initialised `Key16` at offset 0.
    page: NonNull<Key16>,
}

// SAFETY: the page is written once, in `new`, before the value is shared,
// and only read afterwards (through `&self`) until `drop`, which has the
// value to itself; `Key16` is `Send + Sync`.
unsafe impl Send for LockedKey {}
// SAFETY: as above: shared access is read-only.
unsafe impl Sync for LockedKey {}

impl LockedKey {
    fn len() -> usize {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(page)
            .ok()
            .filter(|p| *p >= std::mem::size_of::<Key16>())
            .unwrap_or(4096)
    }

    /// Moves `key` into a fresh locked page. An error when the page cannot
    /// be had or locked (e.g. `RLIMIT_MEMLOCK`): the caller refuses the
    /// start or the reload rather than keep the key in ordinary memory.
    pub fn new(key: Key16) -> Result<LockedKey, HsmError> {
        let len = Self::len();
        // SAFETY: a new private anonymous mapping; no existing memory is
        // touched. The result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(HsmError::Other(format!(
                "cannot map a page for a key: {}",
                std::io::Error::last_os_error()
            )));
        }
        let page = NonNull::new(ptr.cast::<Key16>()).ok_or_else(|| {
            HsmError::Other("cannot map a page for a key: got a null address".into())
        })?;
        // SAFETY: `ptr` is a live mapping of `len` bytes that we own.
        if unsafe { libc::mlock(ptr, len) } != 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: the mapping made above, not yet shared.
            unsafe { libc::munmap(ptr, len) };
            return Err(HsmError::Other(format!(
                "cannot lock a key's memory ({e}): raise the memlock limit (systemd \
                 LimitMEMLOCK=, ulimit -l), or use [hsm] mode = \"digest\""
            )));
        }
        // Best effort: not every kernel knows MADV_DONTDUMP.
        #[cfg(target_os = "linux")]
        // SAFETY: advice on our own mapping; it changes no contents.
        unsafe {
            libc::madvise(ptr, len, libc::MADV_DONTDUMP);
        }
        // SAFETY: the page is page-aligned (so aligned for Key16), writable,
        // at least size_of::<Key16>() bytes, and holds no value yet.
        unsafe { page.as_ptr().write(key) };
        Ok(LockedKey { page })
    }

    /// The key, read in place.
    pub fn key(&self) -> &Key16 {
        // SAFETY: `new` wrote an initialised Key16 here, and it lives until
        // `drop`; `&self` keeps the mapping alive for the borrow.
        unsafe { self.page.as_ref() }
    }
}

impl Drop for LockedKey {
    fn drop(&mut self) {
        let len = Self::len();
        let ptr = self.page.as_ptr();
        // SAFETY: the Key16 written in `new` is dropped exactly once, here
        // (Key16 zeroizes itself on drop); then the mapping, ours alone, is
        // unlocked and removed, and never used again.
        unsafe {
            std::ptr::drop_in_place(ptr);
            libc::munlock(ptr.cast(), len);
            libc::munmap(ptr.cast(), len);
        }
    }
}

impl SecretOps for LockedKey {
    #[inline]
    fn sha256_after(&self, prefix: &[u8; 32]) -> Option<[u8; 32]> {
        self.key().sha256_after(prefix)
    }

    #[inline]
    fn hmac(&self, parts: &[&[u8]]) -> Option<[u8; 32]> {
        self.key().hmac(parts)
    }

    fn exposed(&self) -> Option<&Key16> {
        Some(self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_key_gives_the_keys_digests_and_is_locked() {
        let k = Key16::new([5; 16]);
        let locked = LockedKey::new(k.clone()).expect("a locked page");
        let p = [1u8; 32];
        assert_eq!(locked.sha256_after(&p), k.sha256_after(&p));
        assert_eq!(locked.hmac(&[b"abc"]), k.hmac(&[b"abc"]));
        assert!(locked.key() == &k && locked.exposed() == Some(&k));
        // The page is locked: /proc/self/status counts it in VmLck.
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let vmlck = status
            .lines()
            .find_map(|l| l.strip_prefix("VmLck:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
        assert!(vmlck.is_some_and(|kb| kb >= 4), "{status}");
        let many: Vec<_> = (0..8u8)
            .map(|i| LockedKey::new(Key16::new([i; 16])).expect("page"))
            .collect();
        assert!(many
            .iter()
            .enumerate()
            .all(|(i, l)| l.key().expose()[0] == i as u8));
    }
}
