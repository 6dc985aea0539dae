//! A counting global allocator for memory and allocation tests.
//!
//! A test binary installs it with
//! `#[global_allocator] static GLOBAL: Counting = Counting;` and reads
//! [`live_bytes`] (heap bytes held now, over all threads), [`allocations`]
//! (allocations so far, over all threads) or [`thread_allocations`] (this
//! thread's allocations, immune to the harness's other threads).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering::Relaxed};

/// Forwards to [`System`] and counts.
pub struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static THREAD_ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count(size: usize) {
    LIVE.fetch_add(size as isize, Relaxed);
    ALLOCS.fetch_add(1, Relaxed);
    // `try_with`: a thread being torn down has no thread-locals left.
    let _ = THREAD_ALLOCS.try_with(|a| a.set(a.get() + 1));
}

// SAFETY: every method forwards to the system allocator with the same layout
// and pointer it was given, so `System`'s guarantees hold unchanged; the
// counters are only bookkeeping (atomics and a const-initialised Cell
// thread-local, none of which allocate).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size());
        // SAFETY: forwarded unchanged (the caller upholds GlobalAlloc's contract).
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count(l.size());
        // SAFETY: forwarded unchanged (the caller upholds GlobalAlloc's contract).
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        LIVE.fetch_sub(l.size() as isize, Relaxed);
        // SAFETY: `p` was allocated by `System` with layout `l` (every
        // allocation goes through this allocator); the caller upholds the rest.
        unsafe { System.realloc(p, l, new_size) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Relaxed);
        // SAFETY: `p` was allocated by `System` with layout `l` above.
        unsafe { System.dealloc(p, l) }
    }
}

/// Heap bytes held now, over all threads (from the start of the process).
pub fn live_bytes() -> isize {
    LIVE.load(Relaxed)
}

/// Allocations (including reallocations) so far, over all threads.
pub fn allocations() -> u64 {
    ALLOCS.load(Relaxed)
}

/// Allocations (including reallocations) so far on this thread.
pub fn thread_allocations() -> u64 {
    THREAD_ALLOCS.with(|a| a.get())
}
