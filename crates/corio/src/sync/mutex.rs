//! CoMutex: QEMU's `qemu_co_mutex_*`.
//!
//! # Protocol
//!
//! `locked` counts the holder plus every locker that announced itself and was
//! not granted the mutex yet (QEMU's `mutex->locked`):
//!
//! * lock, fast path: compare-exchange 0 -> 1. Otherwise (after a short spin
//!   while the holder runs on another thread and nobody waits) `fetch_add(1)`:
//!   if it returned 0 the mutex was free and is ours; else we are a *slow
//!   locker* and take the `slow` mutex: a pending handoff token is ours at
//!   once, otherwise we queue our [`CoHandle`] and yield until an unlocker
//!   wakes us, the mutex already ours.
//! * unlock: `fetch_sub(1)`; if it returned 1 nobody waits and we are done.
//!   Otherwise at least one slow locker exists: under `slow` we pop the
//!   oldest waiter and wake it, or, if it has not queued itself yet, leave a
//!   handoff token that it will find when it takes `slow`.
//!
//! Every unlock that finds `locked > 1` grants the mutex to exactly one slow
//! locker, and every slow locker consumes exactly one grant (a wakeup or a
//! token), so no wakeup is lost and the mutex never has two holders. At most
//! one token exists at a time: only the holder unlocks, and the token's
//! consumer must take it before it can unlock. A new locker never overtakes a
//! waiter (the fast path needs `locked == 0`, which means nobody waits):
//! ownership is handed off FIFO, as in QEMU. The uncontended lock and unlock
//! are one atomic read-modify-write each; `slow` is only taken when there is
//! contention.

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Mutex;

use super::{holder_id, lock_std};
use crate::coroutine::{tls, yield_now, CoHandle, Coroutine};
use crate::trace;

/// How many times a locker spins while the holder runs on another thread and
/// nobody waits (QEMU spins up to 1000 times before it sleeps).
const SPIN_LIMIT: u32 = 1000;

/// A mutex for coroutines (QEMU's `CoMutex`): a locker that finds it held
/// yields until the holder hands it over, instead of blocking its thread.
///
/// * Fair: waiters get the mutex in the order they queued, by handoff.
/// * Multi-threaded: coroutines on any number of IOThreads may share one
///   (`CoMutex<T>` is `Send + Sync` when `T: Send`); a waiter always resumes
///   in its own home context, never on the unlocker's thread.
/// * [`lock`](Self::lock) returns an RAII guard; `CoMutex<()>` also has
///   QEMU's explicit [`lock_raw`](CoMutex::lock_raw) /
///   [`unlock`](CoMutex::unlock) pair.
///
/// # Examples
///
/// ```
/// use corio::{coroutine, sync::CoMutex, Coroutine};
/// use std::rc::Rc;
///
/// let m = Rc::new(CoMutex::new(0));
/// let (m1, m2) = (m.clone(), m.clone());
/// let c1 = Coroutine::new(move || {
///     let mut g = m1.lock();
///     coroutine::yield_now(); // holds the mutex across a yield
///     *g += 1;
/// });
/// let c2 = Coroutine::new(move || *m2.lock() += 10);
/// c1.enter();
/// c2.enter(); // finds the mutex held: queues and yields
/// assert!(!c2.is_terminated());
/// c1.enter(); // unlocks: c2 runs as soon as c1 has finished
/// assert!(c2.is_terminated());
/// assert_eq!(*m.try_lock().unwrap(), 11);
/// ```
pub struct CoMutex<T: ?Sized = ()> {
    /// Holder plus announced, not yet granted lockers (see the module docs).
    locked: AtomicUsize,
    /// The holder's identity ([`holder_id`]), 0 when free. Written only by
    /// the holder (after it got the mutex, before it releases it); read by
    /// the holder for its checks and by lockers as a hint.
    holder: AtomicUsize,
    /// The thread token of the holder, 0 when free: lockers spin only while
    /// the holder runs on another thread. A hint, never a correctness input.
    holder_thread: AtomicUsize,
    /// Slow path only: waiters and the handoff token.
    slow: Mutex<Slow>,
    data: UnsafeCell<T>,
}

struct Slow {
    /// Slow lockers that queued themselves, oldest first.
    waiters: VecDeque<CoHandle>,
    /// Grants left by an unlocker that found no waiter queued (0 or 1).
    handoffs: usize,
}

// SAFETY: the mutex hands out access to `data` only through a guard, and
// the protocol above guarantees one holder at a time; the holder may run on
// any thread, so `T` must be `Send`. The other fields are atomics or a std
// mutex.
unsafe impl<T: ?Sized + Send> Sync for CoMutex<T> {}
// SAFETY: as above; moving the mutex moves `T`.
unsafe impl<T: ?Sized + Send> Send for CoMutex<T> {}

impl<T> CoMutex<T> {
    /// Creates an unlocked mutex holding `data` (QEMU's `qemu_co_mutex_init`).
    pub const fn new(data: T) -> CoMutex<T> {
        CoMutex {
            locked: AtomicUsize::new(0),
            holder: AtomicUsize::new(0),
            holder_thread: AtomicUsize::new(0),
            slow: Mutex::new(Slow {
                waiters: VecDeque::new(),
                handoffs: 0,
            }),
            data: UnsafeCell::new(data),
        }
    }

    /// Consumes the mutex and returns its data.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: Default> Default for CoMutex<T> {
    fn default() -> Self {
        CoMutex::new(T::default())
    }
}

impl<T: ?Sized> CoMutex<T> {
    /// Locks the mutex, yielding the calling coroutine while another holds
    /// it (QEMU's `qemu_co_mutex_lock`). The guard unlocks when dropped.
    ///
    /// # Thread context
    /// Coroutine only (any thread).
    ///
    /// # Panics
    /// Outside a coroutine.
    pub fn lock(&self) -> CoMutexGuard<'_, T> {
        self.acquire();
        CoMutexGuard {
            mutex: self,
            _not_send: PhantomData,
        }
    }

    /// Locks the mutex if it is free, without waiting.
    ///
    /// # Thread context
    /// Any thread, in or outside a coroutine.
    pub fn try_lock(&self) -> Option<CoMutexGuard<'_, T>> {
        // Acquire: pairs with the Release `fetch_sub` in `release`, making
        // the previous holder's critical section visible to us.
        if self.locked.compare_exchange(0, 1, Acquire, Relaxed).is_ok() {
            self.set_holder();
            Some(CoMutexGuard {
                mutex: self,
                _not_send: PhantomData,
            })
        } else {
            None
        }
    }

    /// Whether some coroutine (or thread) holds the mutex. A snapshot.
    pub fn is_locked(&self) -> bool {
        self.locked.load(Relaxed) != 0
    }

    /// Panics unless the caller holds the mutex (QEMU's
    /// `qemu_co_mutex_assert_locked`).
    ///
    /// # Panics
    /// If the mutex is free or held by another coroutine.
    pub fn assert_locked(&self) {
        assert!(
            self.locked.load(Relaxed) != 0 && self.holder.load(Relaxed) == holder_id(),
            "CoMutex is not locked by the calling coroutine"
        );
    }

    /// Mutable access without locking: `&mut self` proves exclusivity.
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    fn set_holder(&self) {
        // Relaxed: only the holder reads these for its checks, and it wrote
        // them itself; lockers read `holder_thread` only as a spin hint.
        self.holder.store(holder_id(), Relaxed);
        self.holder_thread.store(tls::thread_token(), Relaxed);
    }

    fn acquire(&self) {
        let me_ptr = tls::current_co() as *const ();
        assert!(!me_ptr.is_null(), "CoMutex::lock outside a coroutine");
        let here = tls::thread_token();
        let mut spins = 0;
        let waiters = loop {
            // Acquire: pairs with the Release `fetch_sub` in `release`.
            match self.locked.compare_exchange(0, 1, Acquire, Relaxed) {
                Ok(_) => break 0,
                Err(1) if spins < SPIN_LIMIT && self.holder_thread.load(Relaxed) != here => {
                    // The holder runs elsewhere and nobody waits: a short
                    // critical section ends sooner than a sleep and wakeup.
                    spins += 1;
                    std::hint::spin_loop();
                }
                Err(_) => {
                    // Acquire: if we see 0, pairs with the Release
                    // `fetch_sub` of the last unlock (the mutex is ours).
                    break self.locked.fetch_add(1, Acquire);
                }
            }
        };
        if waiters == 0 {
            trace::qemu_co_mutex_lock_uncontended(self.ptr(), me_ptr);
        } else {
            self.lock_slowpath();
        }
        self.set_holder();
    }

    #[cold]
    fn lock_slowpath(&self) {
        let me = Coroutine::current().expect("CoMutex::lock outside a coroutine");
        trace::qemu_co_mutex_lock_entry(self.ptr(), me.as_ptr());
        let handle = me.handle();
        {
            let mut slow = lock_std(&self.slow);
            if slow.handoffs > 0 {
                // An unlocker granted the mutex before we queued. The std
                // mutex orders its release before our acquisition.
                slow.handoffs -= 1;
                return;
            }
            slow.waiters.push_back(handle);
        }
        // The unlocker may pop us and wake us before we yield: from another
        // thread the wakeup goes through our home context's queue, which
        // runs us only after this yield returns control to the loop; on our
        // thread it cannot run concurrently with us.
        yield_now();
        trace::qemu_co_mutex_lock_return(self.ptr(), me.as_ptr());
    }

    fn release(&self) {
        let holder = self.holder.load(Relaxed);
        if self.locked.load(Relaxed) == 0 || holder == 0 {
            panic!("CoMutex::unlock: the mutex is not locked");
        }
        let me = holder_id();
        if holder != me {
            panic!("CoMutex::unlock: the mutex is held by another coroutine");
        }
        trace::qemu_co_mutex_unlock_entry(self.ptr(), me as *const ());
        self.holder.store(0, Relaxed);
        self.holder_thread.store(0, Relaxed);
        // Release: publishes our critical section to the next holder, which
        // reads this counter with Acquire (fast path) or is woken through
        // `slow` and the co_schedule queue (slow path, both Release/Acquire).
        if self.locked.fetch_sub(1, Release) == 1 {
            return; // nobody waits
        }
        self.handoff();
        trace::qemu_co_mutex_unlock_return(self.ptr(), me as *const ());
    }

    #[cold]
    fn handoff(&self) {
        let next = {
            let mut slow = lock_std(&self.slow);
            let next = slow.waiters.pop_front();
            if next.is_none() {
                slow.handoffs += 1;
            }
            next
        };
        // Outside the std mutex: waking may enter the waiter right now.
        if let Some(w) = next {
            w.wake();
        }
    }

    fn ptr(&self) -> *const () {
        self as *const Self as *const ()
    }
}

impl CoMutex<()> {
    /// Locks the mutex without a guard (QEMU's `qemu_co_mutex_lock`); pair it
    /// with [`unlock`](Self::unlock). Only for the data-less mutex, where a
    /// stray unlock cannot expose data to two holders.
    ///
    /// # Thread context
    /// Coroutine only.
    ///
    /// # Panics
    /// Outside a coroutine.
    pub fn lock_raw(&self) {
        self.acquire();
    }

    /// Unlocks the mutex, handing it to the oldest waiter if any (QEMU's
    /// `qemu_co_mutex_unlock`). The waiter resumes in its own home context:
    /// queued behind the caller when that is the same thread, through its
    /// context's co_schedule queue otherwise.
    ///
    /// # Panics
    /// "CoMutex::unlock: the mutex is not locked" if it is free; "... held by
    /// another coroutine" if the caller is not the holder.
    pub fn unlock(&self) {
        self.release();
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for CoMutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoMutex")
            .field("locked", &self.locked.load(Relaxed))
            .finish_non_exhaustive()
    }
}

/// Holds a [`CoMutex`] locked; unlocks it when dropped. `!Send`: it is
/// unlocked by the coroutine that locked it.
#[must_use = "the mutex unlocks as soon as the guard is dropped"]
pub struct CoMutexGuard<'a, T: ?Sized = ()> {
    mutex: &'a CoMutex<T>,
    _not_send: PhantomData<*const ()>,
}

// SAFETY: a shared guard only gives `&T`, which is fine to share when `T`
// is `Sync`.
unsafe impl<T: ?Sized + Sync> Sync for CoMutexGuard<'_, T> {}

impl<'a, T: ?Sized> CoMutexGuard<'a, T> {
    /// Unlocks now (QEMU's `qemu_co_mutex_unlock`); the same as dropping.
    pub fn unlock(self) {
        drop(self);
    }

    /// The mutex this guard holds.
    pub fn mutex(&self) -> &'a CoMutex<T> {
        self.mutex
    }

    /// Unlocks, runs `f`, locks again: for waiting on something else while
    /// not holding the mutex (used by [`CoQueue::wait_guard`]).
    ///
    /// [`CoQueue::wait_guard`]: crate::sync::CoQueue::wait_guard
    pub(crate) fn unlocked<R>(self, f: impl FnOnce() -> R) -> (Self, R) {
        let mutex = self.mutex;
        drop(self);
        let r = f();
        (mutex.lock(), r)
    }
}

impl<T: ?Sized> Deref for CoMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while its coroutine holds the mutex,
        // and the protocol admits one holder at a time.
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T: ?Sized> DerefMut for CoMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` excludes other borrows through
        // this guard, and no other guard exists.
        unsafe { &mut *self.mutex.data.get() }
    }
}

impl<T: ?Sized> Drop for CoMutexGuard<'_, T> {
    fn drop(&mut self) {
        self.mutex.release();
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for CoMutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// A lock that a [`CoQueue`](crate::sync::CoQueue) can release while a
/// coroutine waits, and take again after (QEMU's `QemuLockable`). Implement
/// it for your own locks to wait on a queue under them.
pub trait Lockable {
    /// Takes the lock (in a coroutine, it may yield).
    fn lock(&self);
    /// Releases the lock.
    fn unlock(&self);
}

impl Lockable for CoMutex<()> {
    fn lock(&self) {
        self.lock_raw();
    }
    fn unlock(&self) {
        CoMutex::unlock(self);
    }
}
