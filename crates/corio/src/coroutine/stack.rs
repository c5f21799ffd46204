//! The coroutine stack pool.
//!
//! A fresh `mmap`ed stack with its guard page costs tens of microseconds; a
//! reused one a few nanoseconds. Like QEMU (util/qemu-coroutine.c) we keep a
//! per-thread cache and a shared pool fed in batches:
//!
//! * a terminated coroutine keeps its stack; when its last handle drops on
//!   its home thread, the coroutine object goes, stack and all, to that
//!   thread's object pool (at most `BATCH` objects, plus what
//!   `inc_pool_size` added; `coroutine::pool`), which `create` tries first;
//!   otherwise the stack goes to its thread's cache;
//! * when the cache holds two batches, one batch moves to the shared pool
//!   (if the shared pool has room; otherwise the stacks are unmapped);
//! * `create` takes from the cache, else a whole batch from the shared pool,
//!   else maps a new stack;
//! * a thread's cache moves to the shared pool when the thread exits.
//!
//! The shared pool's bound respects `vm.max_map_count`: every stack is two
//! mappings (the stack and its guard page).

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use corosensei::stack::DefaultStack;

/// Stacks moved between a thread's cache and the shared pool at a time.
pub(super) const BATCH: usize = 64;
/// The default shared-pool bound, in stacks (before `inc_pool_size`).
const DEFAULT_POOL_MAX: usize = 256;
/// QEMU's default coroutine stack size: 1 MiB.
pub const DEFAULT_STACK_SIZE: usize = 1 << 20;

static STACK_SIZE: AtomicUsize = AtomicUsize::new(DEFAULT_STACK_SIZE);
static POOL_EXTRA: AtomicUsize = AtomicUsize::new(0);

/// The shared pool: a list of batches. Guarded by its mutex; touched once per
/// batch, never per coroutine.
static SHARED: Mutex<Vec<Vec<DefaultStack>>> = Mutex::new(Vec::new());

#[cfg(test)]
thread_local! {
    /// Stacks mapped by this thread (unit tests: that a pooled object was
    /// reused with its stack, not given a new one).
    pub(super) static MAPPED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

thread_local! {
    static CACHE: RefCell<LocalCache> = const { RefCell::new(LocalCache { stacks: Vec::new() }) };
}

struct LocalCache {
    stacks: Vec<DefaultStack>,
}

impl Drop for LocalCache {
    fn drop(&mut self) {
        while !self.stacks.is_empty() {
            let at = self.stacks.len().saturating_sub(BATCH);
            give_batch(self.stacks.split_off(at));
        }
    }
}

/// Gives this thread's cached stacks to the shared pool, as at thread exit.
pub(crate) fn flush_cache() {
    let cache = CACHE
        .try_with(|c| std::mem::replace(&mut *c.borrow_mut(), LocalCache { stacks: Vec::new() }));
    drop(cache); // after the borrow ended: `LocalCache`'s drop gives them back
}

/// Sets the size of stacks created from now on (at least one page more than
/// the platform minimum is used). Pooled stacks of another size are not reused.
pub fn set_stack_size(bytes: usize) {
    STACK_SIZE.store(bytes, Ordering::Relaxed);
}

/// The size of stacks that `create` hands out.
pub fn stack_size() -> usize {
    STACK_SIZE.load(Ordering::Relaxed)
}

/// Grows the coroutine pools by `n` (QEMU's `qemu_coroutine_inc_pool_size`,
/// called by a device for its queue depth): the shared stack pool's bound,
/// and each thread's object pool beyond its fixed 64 objects, so that `n`
/// more coroutines terminated on one thread are reused, object and stack,
/// by the next ones created there.
pub fn inc_pool_size(n: usize) {
    POOL_EXTRA.fetch_add(n, Ordering::Relaxed);
}

/// Shrinks the pools grown by [`inc_pool_size`] by `n` (QEMU's
/// `qemu_coroutine_dec_pool_size`). Later terminations see the smaller
/// bound; objects already pooled stay until they are reused or their
/// thread exits.
pub fn dec_pool_size(n: usize) {
    let _ = POOL_EXTRA.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}

/// The shared pool's bound in stacks: the default plus what was added, capped
/// so that pooled stacks never use more than half of what `vm.max_map_count`
/// leaves after a margin of 5000 mappings (QEMU's rule).
pub fn pool_max() -> usize {
    (DEFAULT_POOL_MAX + POOL_EXTRA.load(Ordering::Relaxed)).min(map_limit())
}

/// The pool size added by `inc_pool_size` (less what `dec_pool_size`
/// removed), under the same `vm.max_map_count` cap as [`pool_max`]: how
/// many coroutine objects, each with its stack, a thread keeps beyond its
/// fixed pool (`recycle::pool::put_beyond`), and how many terminated
/// coroutines beyond `KEEP_STACKS` keep their stack.
pub(super) fn pool_extra() -> usize {
    POOL_EXTRA.load(Ordering::Relaxed).min(map_limit())
}

/// Half of what `vm.max_map_count` leaves after a margin of 5000 mappings,
/// in stacks (each is two mappings: the stack and its guard page).
fn map_limit() -> usize {
    static MAP_LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAP_LIMIT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .map(|m| m.saturating_sub(5000) / 2)
            .unwrap_or(usize::MAX)
    })
}

/// Takes a stack of the current size: from the cache, a batch from the shared
/// pool, or a new mapping.
pub(crate) fn take() -> DefaultStack {
    let size = stack_size();
    let cached = CACHE
        .try_with(|c| {
            let mut c = c.borrow_mut();
            if c.stacks.is_empty() {
                if let Some(batch) = SHARED.lock().unwrap_or_else(|e| e.into_inner()).pop() {
                    c.stacks = batch;
                }
            }
            c.stacks.pop()
        })
        .ok()
        .flatten();
    match cached {
        Some(s) if fits(&s, size) => s,
        _ => new_stack(size),
    }
}

/// Gives a terminated coroutine's stack back.
pub(crate) fn give(stack: DefaultStack) {
    if !fits(&stack, stack_size()) {
        return; // dropped: unmapped
    }
    let overflow = CACHE.try_with(|c| {
        let mut c = c.borrow_mut();
        c.stacks.push(stack);
        if c.stacks.len() >= 2 * BATCH {
            let at = c.stacks.len() - BATCH;
            Some(c.stacks.split_off(at))
        } else {
            None
        }
    });
    if let Ok(Some(batch)) = overflow {
        give_batch(batch);
    }
    // If the thread is exiting, the stack was dropped with the closure: fine.
}

/// Gives the stacks of an exiting thread's object pool to the shared pool,
/// in batches (unmapped beyond its bound).
pub(super) fn give_all(mut stacks: Vec<DefaultStack>) {
    stacks.retain(|s| fits(s, stack_size()));
    while !stacks.is_empty() {
        let at = stacks.len().saturating_sub(BATCH);
        give_batch(stacks.split_off(at));
    }
}

/// Whether a pooled coroutine's stack, of `len` bytes, has the current
/// size (else it goes back to the stack pool, which unmaps it, and a
/// fitting one is taken).
#[inline]
pub(super) fn fits_now(len: usize) -> bool {
    fits_len(len, stack_size())
}

fn give_batch(batch: Vec<DefaultStack>) {
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if (shared.len() + 1) * BATCH <= pool_max() {
        shared.push(batch);
    }
    // else: `batch` is dropped here, after the push decision, unmapping it.
}

#[inline]
fn fits(stack: &DefaultStack, size: usize) -> bool {
    use corosensei::stack::Stack;
    fits_len(stack.base().get() - stack.limit().get(), size)
}

#[inline]
fn fits_len(len: usize, size: usize) -> bool {
    len >= size && len < size + (64 << 10)
}

#[cold]
fn new_stack(size: usize) -> DefaultStack {
    #[cfg(test)]
    MAPPED.with(|m| m.set(m.get() + 1));
    DefaultStack::new(size)
        .unwrap_or_else(|e| panic!("cannot map a {size}-byte coroutine stack: {e}"))
}

/// Stacks in this thread's caches (free stacks, and the stacks of pooled
/// coroutine objects) and in the shared pool (for tests and stats).
pub fn pooled() -> (usize, usize) {
    let local =
        CACHE.try_with(|c| c.borrow().stacks.len()).unwrap_or(0) + super::recycle::pool::len();
    let shared: usize = SHARED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(Vec::len)
        .sum();
    (local, shared)
}
