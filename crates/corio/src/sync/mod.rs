//! Coroutine locks: QEMU's `util/qemu-coroutine-lock.c` and
//! `util/qemu-coroutine-sleep.c`.
//!
//! * [`CoQueue`]: a condition-variable-like queue of sleeping coroutines;
//! * [`CoMutex`]: a mutex whose waiters sleep (yield) instead of blocking
//!   their thread, served oldest first, with newcomers barging for at most
//!   500 µs; usable from coroutines on many threads at once;
//! * [`CoRwLock`]: a fair reader-writer lock with upgrade and downgrade;
//! * [`co_sleep_ns`] and [`CoSleep`]: sleeping on a timer, or until woken.
//!
//! All of them are `Send + Sync`, so they can live in an `Arc` shared by
//! coroutines on several IOThreads. A waiter records a [`CoHandle`] of
//! itself; whoever releases it calls [`CoHandle::wake`], so the waiter always
//! resumes on its own home thread: directly (or queued behind the waker, as
//! QEMU's `aio_co_wake`) when the waker runs there, through the home
//! context's co_schedule queue otherwise. No `std` mutex guard is ever held
//! across a yield.
//!
//! [`CoHandle`]: crate::CoHandle
//! [`CoHandle::wake`]: crate::CoHandle::wake

mod lock_word;
#[allow(unsafe_code)] // the CoMutex data cell: Send/Sync impls, the guard's deref
mod mutex;
mod queue;
mod rwlock;
mod sleep;

pub use mutex::{CoMutex, CoMutexGuard, Lockable};
pub use queue::CoQueue;
pub use rwlock::CoRwLock;
pub use sleep::{co_sleep_ns, CoSleep};

/// Identifies the caller as a lock holder: the running coroutine, or (outside
/// any coroutine) the thread. Coroutine addresses are even (aligned), thread
/// identities are odd, so the two never collide.
fn holder_id() -> usize {
    let co = crate::coroutine::tls::current_co();
    if co.is_null() {
        thread_holder_id(crate::coroutine::tls::thread_token())
    } else {
        co as usize
    }
}

/// A thread's holder identity: odd, and one-to-one in the token (a token
/// never reaches `usize::MAX / 2`: it counts threads).
fn thread_holder_id(token: usize) -> usize {
    (token << 1) | 1
}

#[cfg(all(test, not(loom)))]
mod tests {
    /// Tokens that differ only in bit 0 (2 and 3) gave one identity when
    /// the id was `token | 1`.
    #[test]
    fn thread_holder_ids_are_injective_and_odd() {
        let ids: Vec<usize> = (1..64).map(super::thread_holder_id).collect();
        for (i, a) in ids.iter().enumerate() {
            assert_eq!(a & 1, 1);
            assert!(!ids[i + 1..].contains(a), "token {} collides", i + 1);
        }
    }
}

/// `std::sync::Mutex::lock` that ignores poisoning: the state guarded by the
/// locks' internal mutexes is updated in short sections that cannot panic
/// half-way.
fn lock_std<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
