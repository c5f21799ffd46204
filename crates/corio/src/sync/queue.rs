//! CoQueue: QEMU's `qemu_co_queue_*`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use super::lock_std;
use super::mutex::{CoMutexGuard, Lockable};
use crate::coroutine::{yield_now, CoHandle};

/// A queue of sleeping coroutines, used like a condition variable (QEMU's
/// `CoQueue`). A coroutine [`wait`](Self::wait)s, optionally releasing a lock
/// while it sleeps; [`next`](Self::next) wakes the oldest waiter,
/// [`restart_all`](Self::restart_all) every waiter.
///
/// A woken coroutine resumes in its own home context: when the waker runs
/// in a coroutine on the same thread, after the waker yields or ends (QEMU's
/// `aio_co_wake` queueing); outside a coroutine on the same thread, at once;
/// from another thread, through its context's co_schedule queue.
///
/// `Send + Sync`: coroutines on several threads may wait on one queue. As
/// with a condition variable, the condition itself must be protected by a
/// lock that waiters release while they sleep, or a wakeup can be missed.
///
/// # Examples
///
/// ```
/// use corio::{sync::CoQueue, Coroutine};
/// use std::rc::Rc;
///
/// let q = Rc::new(CoQueue::new());
/// let q2 = q.clone();
/// let waiter = Coroutine::new(move || q2.wait());
/// waiter.enter();
/// assert!(!q.is_empty());
/// assert!(q.enter_next()); // outside a coroutine: enters it now
/// assert!(waiter.is_terminated());
/// assert!(q.is_empty());
/// ```
#[derive(Default)]
pub struct CoQueue {
    /// Waiters, oldest first. The std mutex is held only to push or pop,
    /// never across a yield or a wakeup.
    entries: Mutex<VecDeque<CoHandle>>,
}

impl CoQueue {
    /// Creates an empty queue (QEMU's `qemu_co_queue_init`).
    pub const fn new() -> CoQueue {
        CoQueue {
            entries: Mutex::new(VecDeque::new()),
        }
    }

    /// Sleeps until woken by [`next`](Self::next),
    /// [`restart_all`](Self::restart_all) or their `enter_` forms (QEMU's
    /// `qemu_co_queue_wait(q, NULL)`).
    ///
    /// # Thread context
    /// Coroutine only.
    ///
    /// # Panics
    /// Outside a coroutine.
    pub fn wait(&self) {
        self.wait_lockable::<dyn Lockable>(None);
    }

    /// Sleeps at the front of the queue instead of the back (QEMU's
    /// `CO_QUEUE_WAIT_FRONT`).
    ///
    /// # Panics
    /// Outside a coroutine.
    pub fn wait_front(&self) {
        self.enqueue(true);
        yield_now();
    }

    /// Releases `lock` (if any), sleeps until woken, then takes `lock` again
    /// (QEMU's `qemu_co_queue_wait(q, lock)` with any `QemuLockable`).
    ///
    /// # Panics
    /// Outside a coroutine.
    pub fn wait_lockable<L: Lockable + ?Sized>(&self, lock: Option<&L>) {
        self.enqueue(false);
        if let Some(l) = lock {
            l.unlock();
        }
        // A waker on another thread may pop us before we yield: its wakeup
        // goes through our home context's queue, which enters us only once
        // this yield has returned control to the loop.
        yield_now();
        if let Some(l) = lock {
            l.lock();
        }
    }

    /// Releases the [`CoMutex`](crate::sync::CoMutex) held by `guard`,
    /// sleeps until woken, and locks it again (QEMU's
    /// `qemu_co_queue_wait(q, &mutex)`).
    ///
    /// # Panics
    /// Outside a coroutine.
    pub fn wait_guard<'a, T: ?Sized>(&self, guard: CoMutexGuard<'a, T>) -> CoMutexGuard<'a, T> {
        self.enqueue(false);
        guard.unlocked(yield_now).0
    }

    /// Releases a `std` mutex, sleeps until woken, and locks it again (QEMU's
    /// `qemu_co_queue_wait(q, &qemu_mutex)`). `guard` must come from `mutex`.
    /// The guard is dropped before the yield, so no `std` guard is held while
    /// the coroutine sleeps.
    ///
    /// # Panics
    /// Outside a coroutine; or if `mutex` was poisoned while we slept.
    pub fn wait_std<'a, T>(
        &self,
        mutex: &'a Mutex<T>,
        guard: MutexGuard<'a, T>,
    ) -> MutexGuard<'a, T> {
        self.enqueue(false);
        drop(guard);
        yield_now();
        mutex.lock().expect("CoQueue::wait_std: mutex poisoned")
    }

    fn enqueue(&self, front: bool) {
        let me = crate::coroutine::current_for("CoQueue::wait");
        let h = me.handle();
        let mut q = lock_std(&self.entries);
        if front {
            q.push_front(h);
        } else {
            q.push_back(h);
        }
    }

    fn pop(&self) -> Option<CoHandle> {
        lock_std(&self.entries).pop_front()
    }

    /// Wakes the oldest waiter; returns whether there was one (QEMU's
    /// `qemu_co_queue_next`). Called from a coroutine on the waiter's thread,
    /// the waiter runs after the caller yields or ends.
    ///
    /// # Thread context
    /// Any thread.
    pub fn next(&self) -> bool {
        match self.pop() {
            Some(h) => {
                h.wake();
                true
            }
            None => false,
        }
    }

    /// Wakes every waiter, oldest first (QEMU's `qemu_co_queue_restart_all`).
    ///
    /// # Thread context
    /// Any thread.
    pub fn restart_all(&self) {
        let all = std::mem::take(&mut *lock_std(&self.entries));
        for h in all {
            h.wake();
        }
    }

    /// Wakes the oldest waiter from outside a coroutine: on the waiter's
    /// thread it runs now, before this returns (QEMU's `qemu_co_enter_next`
    /// with no lock). Returns whether there was one.
    ///
    /// # Thread context
    /// Any thread.
    pub fn enter_next(&self) -> bool {
        self.enter_next_lockable::<dyn Lockable>(None)
    }

    /// Like [`enter_next`](Self::enter_next), releasing `lock` around the
    /// wakeup so that the woken coroutine can take it (QEMU's
    /// `qemu_co_enter_next(q, lock)`).
    pub fn enter_next_lockable<L: Lockable + ?Sized>(&self, lock: Option<&L>) -> bool {
        let Some(h) = self.pop() else {
            return false;
        };
        if let Some(l) = lock {
            l.unlock();
        }
        h.wake();
        if let Some(l) = lock {
            l.lock();
        }
        true
    }

    /// Wakes every waiter from outside a coroutine (QEMU's `qemu_co_enter_all`).
    pub fn enter_all(&self) {
        while self.enter_next() {}
    }

    /// Whether no coroutine waits (QEMU's `qemu_co_queue_empty`). A snapshot.
    pub fn is_empty(&self) -> bool {
        lock_std(&self.entries).is_empty()
    }
}

impl fmt::Debug for CoQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoQueue")
            .field("waiters", &lock_std(&self.entries).len())
            .finish()
    }
}
