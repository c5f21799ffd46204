//! Unit tests of the object pool's overflow: after `inc_pool_size(n)`, a
//! thread pools `n` more terminated coroutines, with their stacks, than its
//! fixed array holds, and reuses them; `dec_pool_size` lowers the bound for
//! later terminations; `pool::flush` and the thread-exit `Drain` empty it.
//!
//! `inc_pool_size` is process-global: every test here (and every other unit
//! test whose assertions depend on the pool's bounds) holds [`lock`], and
//! [`ExtraPool`] gives back what it added even when the test fails. Each
//! test runs on a thread of its own (a fresh pool and kept-stack count).

use std::cell::Cell;
use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use super::tests::{kept, on_new_thread, run_counted};
use super::*;

/// Serializes the tests that change or depend on the extra pool size.
pub(super) fn lock() -> MutexGuard<'static, ()> {
    static SIZES: Mutex<()> = Mutex::new(());
    SIZES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Extra pool size added for one test, removed when dropped.
struct ExtraPool(usize);

impl ExtraPool {
    fn inc(n: usize) -> ExtraPool {
        inc_pool_size(n);
        ExtraPool(n)
    }

    fn dec(&mut self, n: usize) {
        dec_pool_size(n);
        self.0 -= n;
    }
}

impl Drop for ExtraPool {
    fn drop(&mut self) {
        dec_pool_size(self.0);
    }
}

/// The extra size these tests add.
const EXTRA: usize = 100;

/// `n` coroutines entered until they terminated, their handles held.
fn terminated(n: usize) -> Vec<Coroutine> {
    (0..n)
        .map(|_| {
            let co = Coroutine::new(|| {});
            co.enter();
            assert!(co.is_terminated());
            co
        })
        .collect()
}

/// Stacks in this thread's stack cache (free stacks, not pooled objects').
fn cached_stacks() -> usize {
    pooled().0 - pool::len()
}

/// Stacks this thread mapped so far.
fn mapped() -> usize {
    stack::MAPPED.with(Cell::get)
}

/// With the extra pool size, as many more terminated coroutines keep their
/// stack (handles held), all of them are pooled when their handles drop
/// (array and overflow), and the next coroutines created reuse every
/// object with its stack: no stack is mapped or taken from the cache. The
/// ones beyond the raised bound still give their stack back.
#[test]
fn extra_pool_size_pools_and_reuses_objects_with_stacks() {
    let _sizes = lock();
    let _extra = ExtraPool::inc(EXTRA);
    on_new_thread(|| {
        let bound = KEEP_STACKS + EXTRA;
        let cos = terminated(bound + 5);
        assert_eq!(kept(), bound, "kept stacks bounded by 64 + extra");
        let objects: HashSet<_> = cos.iter().map(Coroutine::as_ptr).collect();
        drop(cos);
        assert_eq!(pool::len(), pool::MAX + EXTRA, "array and overflow full");
        assert_eq!(
            kept(),
            pool::MAX + EXTRA,
            "every pooled object kept its stack"
        );

        let (cache, maps) = (cached_stacks(), mapped());
        let (ran, cos) = run_counted(pool::MAX + EXTRA);
        assert_eq!(ran.get(), cos.len());
        assert_eq!(pool::len(), 0, "every pooled object reused");
        assert!(cos.iter().all(|co| objects.contains(&co.as_ptr())));
        assert_eq!(mapped(), maps, "no stack mapped");
        assert_eq!(cached_stacks(), cache, "no stack taken from the cache");
    });
}

/// `dec_pool_size` lowers the bound for the coroutines pooled after it.
#[test]
fn dec_pool_size_shrinks_the_overflow_bound() {
    let _sizes = lock();
    let mut extra = ExtraPool::inc(EXTRA);
    on_new_thread(move || {
        let cos = terminated(pool::MAX + EXTRA);
        assert_eq!(kept(), pool::MAX + EXTRA);
        extra.dec(EXTRA / 2);
        drop(cos);
        assert_eq!(
            pool::len(),
            pool::MAX + EXTRA / 2,
            "pooled up to the new bound"
        );
        assert_eq!(
            kept(),
            pool::MAX + EXTRA / 2,
            "the others' stacks given back"
        );
        extra.dec(EXTRA / 2);
        pool::flush(); // so that the kept-stack count starts from 0 again
        let cos = terminated(pool::MAX + 10);
        assert_eq!(kept(), KEEP_STACKS, "no extra size left: 64 keep stacks");
        drop(cos);
        assert_eq!(pool::len(), pool::MAX, "no extra size left: the array only");
        assert_eq!(kept(), pool::MAX);
    });
}

/// `pool::flush` empties the overflow as well as the array, giving every
/// stack back, and leaves the pool open; the thread-exit `Drain` empties
/// it and closes the pool, overflow included.
#[test]
fn flush_and_thread_exit_empty_the_overflow() {
    let _sizes = lock();
    let _extra = ExtraPool::inc(EXTRA);
    on_new_thread(|| {
        drop(terminated(pool::MAX + EXTRA));
        assert_eq!(
            (pool::len(), kept()),
            (pool::MAX + EXTRA, pool::MAX + EXTRA)
        );
        pool::flush();
        assert_eq!((pool::len(), kept()), (0, 0), "flushed, stacks given back");
        assert!(pool::take().is_none(), "nothing left in the overflow");
        drop(terminated(pool::MAX + 3));
        assert_eq!(pool::len(), pool::MAX + 3, "still open, overflow too");

        // What the thread's exit does.
        drop(pool::Drain);
        assert_eq!((pool::len(), kept()), (0, 0), "drained, stacks given back");
        assert!(pool::take().is_none(), "a closed pool gives nothing");
        drop(terminated(pool::MAX + 3));
        assert_eq!((pool::len(), kept()), (0, 0), "closed: nothing pooled");
    });
}
