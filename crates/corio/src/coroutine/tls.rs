//! The library's own thread-locals, behind accessors that cannot be cached
//! across a coroutine switch.
//!
//! LLVM may keep a thread-local's address in a register across a call
//! (llvm/llvm-project#98479). A coroutine that migrates to another thread
//! while suspended inside such a function would then touch the old thread's
//! variable. QEMU wraps its thread-locals in `QEMU_DEFINE_CO_TLS` for the same
//! reason. Our rule: every access goes through a function marked
//! `#[inline(never)]`, so the address is computed afresh in a frame that
//! never spans a switch. The switch functions themselves (`enter`,
//! `yield_now`) are not inlined either, and do no thread-local access after
//! the switch returns inside the coroutine. The functions that read
//! `with_state` inline (`enter` and what it calls after the switch,
//! `yield_prepare`, and the object pool's `take`, `put_beyond`, `release` and
//! `release_handle`, `cancel`) are never inlined into their callers.

use std::cell::Cell;
use std::mem::ManuallyDrop;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use super::CoInner;

/// Per-thread switch state, in one thread-local so that the switch path
/// computes one address.
pub(super) struct ThreadState {
    /// The running coroutine (null outside one).
    pub(super) current: Cell<*const CoInner>,
    /// This thread's token, 0 until first needed.
    token: Cell<usize>,
    /// Terminated coroutines of this thread that still hold their stack:
    /// waiting for their last handle to drop, or pooled with it.
    pub(super) kept_stacks: Cell<usize>,
    /// The coroutine-object pool (`recycle::pool`): `pool[..pool_len]` are
    /// `Some`, the rest `None`. Here rather than in a thread-local of its
    /// own so that the pool needs no borrow flag and no registration check
    /// on its fast path. `ManuallyDrop`, so that this thread-local has no
    /// destructor; `recycle::pool` registers one of its own that empties
    /// the pool.
    pub(super) pool: [Cell<ManuallyDrop<Option<Arc<CoInner>>>>; POOL_MAX],
    /// How many entries of `pool` are filled; [`POOL_MAX`] with every slot
    /// `None` once the pool is closed (the thread is exiting), so that
    /// nothing is pooled any more.
    pub(super) pool_len: Cell<usize>,
    /// The pool's cold overflow: objects pooled while `pool` is full, up to
    /// the extra pool size that `inc_pool_size` asked for
    /// (`recycle::pool::put_beyond`), taken while `pool` is empty. Touched
    /// only from the pool's never-inlined cold functions, by moving the
    /// vector out and back (a `Cell` needs no borrow flag). `ManuallyDrop`
    /// like `pool`; emptied with it by `recycle::pool::Drain` and `flush`.
    pub(super) overflow: Cell<ManuallyDrop<Vec<Arc<CoInner>>>>,
}

/// The most objects one thread's pool keeps (as many as one stack batch).
pub(super) const POOL_MAX: usize = super::stack::BATCH;

impl ThreadState {
    /// This thread's token: a number never given to another thread (a
    /// thread-local's address would be reused by a later thread), a
    /// non-zero multiple of 4.
    #[inline(always)]
    pub(super) fn token(&self) -> usize {
        match self.token.get() {
            0 => self.assign_token(),
            t => t,
        }
    }

    /// This thread's token, or 0 if it has none yet (no coroutine's home
    /// is 0, so a comparison with a home fails and the caller can then ask
    /// [`token`](Self::token) on its slow path).
    #[inline(always)]
    pub(super) fn token_if_any(&self) -> usize {
        self.token.get()
    }

    #[cold]
    #[inline(never)]
    fn assign_token(&self) -> usize {
        // Multiples of 4: a coroutine's home token shares a word with its
        // schedule claim's code (`claim::Claim`).
        static NEXT: AtomicUsize = AtomicUsize::new(4);
        // Relaxed: uniqueness needs only the atomicity of the increment.
        let t = NEXT.fetch_add(4, Relaxed);
        self.token.set(t);
        // Only a thread with a token pools coroutine objects (a pooled
        // object's home is this thread's token): its pool's thread-exit
        // destructor is registered now, off every fast path.
        super::recycle::pool::register(self);
        t
    }
}

// `STATE` must never need a destructor: then it is never "already
// destroyed" (its accessors need no liveness check, and work during thread
// exit), and the pool it holds is emptied by `recycle::pool::Drain` instead.
const _: () = assert!(!std::mem::needs_drop::<ThreadState>());

thread_local! {
    static STATE: ThreadState = const {
        ThreadState {
            current: Cell::new(ptr::null()),
            token: Cell::new(0),
            kept_stacks: Cell::new(0),
            pool: [const { Cell::new(ManuallyDrop::new(None)) }; POOL_MAX],
            pool_len: Cell::new(0),
            overflow: Cell::new(ManuallyDrop::new(Vec::new())),
        }
    };
}

/// Counts one more terminated coroutine keeping its stack, if fewer than
/// `max` do; returns whether it may.
#[inline(never)]
pub(super) fn keep_stack_slot(max: usize) -> bool {
    STATE.with(|s| s.keep_stack_slot(max))
}

impl ThreadState {
    /// [`keep_stack_slot`], for a frame that has the state at hand.
    #[inline(always)]
    pub(super) fn keep_stack_slot(&self, max: usize) -> bool {
        let kept = self.kept_stacks.get();
        let ok = kept < max;
        if ok {
            self.kept_stacks.set(kept + 1);
        }
        ok
    }
}

/// One terminated coroutine of this thread gave up the stack it kept (it
/// was reused, or dropped on this thread). Also during thread exit: this
/// thread-local has no destructor, so it is never gone.
#[inline(never)]
pub(super) fn kept_stack_released() {
    STATE.with(|s| s.kept_stacks.set(s.kept_stacks.get().saturating_sub(1)));
}

/// The switch functions' access to the thread's state.
///
/// Inlined on purpose, so only for frames that never span a switch: `enter`
/// (the resumer's frame: its thread cannot change while it runs),
/// `yield_prepare`, and the pool's `take` and `release` (never inlined:
/// their callers may be). Everything else uses the functions below.
#[inline(always)]
pub(super) fn with_state<R>(f: impl FnOnce(&ThreadState) -> R) -> R {
    STATE.with(f)
}

/// The running coroutine on this thread, or null.
#[inline(never)]
pub(crate) fn current_co() -> *const CoInner {
    STATE.with(|s| s.current.get())
}

/// A number that identifies the calling thread, never reused by another.
#[inline(never)]
pub(crate) fn thread_token() -> usize {
    STATE.with(ThreadState::token)
}
