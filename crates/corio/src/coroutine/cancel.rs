//! Cancelling a suspended coroutine: unwinding its stack from the point
//! where it yielded, so that its destructors run (locks released, fds
//! closed), as dropping it on its home thread does, while handles to it
//! stay valid.
//!
//! A wakeup that was already on its way when the coroutine was cancelled (it
//! sat in a co_schedule queue, a lock's wait list, a channel's fd handler)
//! finds it terminated and cancelled, and is dropped without entering it:
//! see `cancelled_wakeup`.

use super::{keep_or_give_stack, reschedule_wakeups, state, terminated, tls, CoInner};

/// What [`cancel`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cancel {
    /// It was suspended (or never entered): its stack was unwound (or its
    /// closure dropped), and it is now terminated.
    Unwound,
    /// It is running (it, or a coroutine it entered, is executing further
    /// up this thread's stack): nothing was done; try again once it yields.
    Running,
    /// It had terminated already.
    Terminated,
}

/// Cancels `co`: if it is suspended, unwinds it from its yield point as the
/// running coroutine (so that `Coroutine::current()` in its destructors is
/// itself), then marks it terminated and cancelled.
///
/// # Panics
/// Off the coroutine's home thread.
///
/// Never inlined: it reads the thread state inline (`tls::with_state`), and
/// its callers may run in a coroutine's frame that spans a switch.
#[inline(never)]
pub(crate) fn cancel(co: &CoInner) -> Cancel {
    assert_eq!(
        co.home_token(),
        tls::thread_token(),
        "a coroutine can only be cancelled on its home thread"
    );
    match co.state.get() {
        0 => {}
        state::TERMINATED => return Cancel::Terminated,
        _ => return Cancel::Running,
    }
    // SAFETY: home thread (asserted) and idle (state 0): nothing borrows
    // `raw`; the coroutine does not touch its own `raw` while it unwinds.
    let Some(raw) = (unsafe { &mut *co.raw.get() }) else {
        return Cancel::Terminated;
    };
    /// Restores the caller as the running coroutine, even if a panic
    /// escapes the unwinding.
    struct Restore(*const CoInner);
    impl Drop for Restore {
        fn drop(&mut self) {
            tls::with_state(|s| s.current.set(self.0));
        }
    }
    let prev = tls::with_state(|s| s.current.replace(co as *const CoInner));
    let restore = Restore(prev);
    co.state.set(state::RUNNING);
    // Set before the unwinding starts, so that a body that catches panics
    // (a spawned coroutine) can tell the cancellation from its own panic.
    co.cancelled.set(true);
    raw.force_unwind();
    drop(restore);
    terminated(co);
    keep_or_give_stack(co);
    // A lock released while unwinding may have queued a waiter here.
    reschedule_wakeups(std::mem::take(&mut *co.wakeup.borrow_mut()));
    Cancel::Unwound
}

/// Whether the running coroutine is being cancelled: a panic caught inside
/// it now is the unwinding [`cancel`] started, not a panic of its own.
pub(crate) fn cancelling() -> bool {
    let me = tls::current_co();
    // SAFETY: the running coroutine is live while it runs (its enterer, or
    // `cancel`, holds a reference for the whole switch).
    !me.is_null() && unsafe { &*me }.cancelled.get()
}
