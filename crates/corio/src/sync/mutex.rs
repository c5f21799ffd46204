//! CoMutex: QEMU's `qemu_co_mutex_*`.
//!
//! # Protocol
//!
//! One lock word, `state` (bits [`LOCKED`], [`QUEUED`], [`WOKEN`]), and a
//! std mutex `slow` that guards the waiter queue. The uncontended lock is one
//! compare-exchange, the uncontended unlock another; `slow` is taken only
//! when a locker queues itself or an unlocker must wake a waiter.
//!
//! * lock: take the word if `LOCKED` is clear (a compare-exchange that sets
//!   it). Otherwise spin a little while the holder runs on another thread and
//!   nobody waits, as QEMU does; then, under `slow`, either take the word
//!   (it was released meanwhile) or set `QUEUED` on it, queue our
//!   [`CoHandle`] at the back and yield.
//! * unlock: clear `LOCKED`, unless `QUEUED` is set and `WOKEN` is not: then,
//!   under `slow`, pop the oldest waiter, mark it woken (`WOKEN`) and wake
//!   it. Only one waiter is awake at a time: while `WOKEN` is set, unlockers
//!   just release.
//! * the woken waiter, back in its own context, takes the word if it is free.
//!   If a newcomer took it first, the waiter goes back to the *front* of the
//!   queue, so queued waiters are always served oldest first.
//! * bounded barging: a newcomer may take a free word ahead of the woken
//!   waiter, but only until the oldest waiter has waited [`STARVE`]: then
//!   the unlocker does not release at all, it hands the mutex over (QEMU's
//!   handoff: `LOCKED` stays set and the waiter wakes up owning it).
//!
//! Why barging. Coroutines do not migrate: a waiter must resume on its own
//! thread. Under strict handoff every contended unlock leaves the mutex
//! owned by a coroutine that is not running yet, for one cross-thread wakeup
//! (a few µs, or a scheduler time slice when that thread waits for a CPU),
//! and the unlocker, locking again, must queue behind it: the lock convoys
//! and throughput collapses to one critical section per wakeup. With a
//! bounded window the running holder keeps going while the woken waiter is on
//! its way, and the waiter still gets the mutex within [`STARVE`] of
//! reaching the front of the queue (Go's `sync.Mutex` normal and starvation
//! modes are the same idea).
//!
//! No wakeup is lost: `QUEUED` is set on the lock word, by a compare-exchange
//! that sees `LOCKED` set, before the waiter queues, so the holder's unlock
//! either fails its fast compare-exchange and takes `slow` (where it finds
//! the waiter), or happened first and the locker sees the word free. A woken
//! waiter keeps `WOKEN` set until it either holds the mutex or is queued
//! again with `QUEUED` set, so an unlocker that skips the wakeup always
//! leaves one waiter that will look at the word again. The mutex never has
//! two holders: `LOCKED` is only set by a compare-exchange that found it
//! clear, or kept set by a handoff for the one waiter it names.

use std::cell::UnsafeCell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering::Relaxed;

// Hints and the holder's own bookkeeping: never a correctness input for
// the protocol, so plain std atomics even under loom.
use std::sync::atomic::AtomicUsize;

use super::holder_id;
use super::lock_word::{Core, LOCKED, STARVE};
use crate::coroutine::{tls, yield_now, CoHandle};
use crate::trace;

/// How many times a locker spins while the holder runs on another thread and
/// nobody waits (QEMU spins up to 1000 times before it sleeps).
const SPIN_LIMIT: u32 = 1000;

/// A mutex for coroutines (QEMU's `CoMutex`): a locker that finds it held
/// yields until the holder hands it over, instead of blocking its thread.
///
/// * Fair among waiters, with bounded barging: queued waiters get the
///   mutex oldest first; a running locker may take it ahead of the woken
///   waiter, but only until the oldest waiter has waited 500 µs, after
///   which unlocks hand it over as QEMU's do (see the module
///   documentation for why).
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
    /// The lock word and the waiter queue (see the module docs).
    core: Core<CoHandle>,
    /// The holder's identity ([`holder_id`]), 0 when free. Written only by
    /// the holder (after it got the mutex, before it releases it); read by
    /// the holder for its checks and by lockers as a hint.
    holder: AtomicUsize,
    /// The thread token of the holder, 0 when free: lockers spin only while
    /// the holder runs on another thread. A hint, never a correctness input.
    holder_thread: AtomicUsize,
    data: UnsafeCell<T>,
}

// SAFETY: the mutex hands out access to `data` only through a guard, and
// the protocol above guarantees one holder at a time; the holder may run on
// any thread, so `T` must be `Send`. The other fields are atomics or behind
// a std mutex, and `CoHandle` is `Send`.
unsafe impl<T: ?Sized + Send> Sync for CoMutex<T> {}
// SAFETY: as above; moving the mutex moves `T`.
unsafe impl<T: ?Sized + Send> Send for CoMutex<T> {}

impl<T> CoMutex<T> {
    /// Creates an unlocked mutex holding `data` (QEMU's `qemu_co_mutex_init`).
    #[cfg(not(loom))]
    pub const fn new(data: T) -> CoMutex<T> {
        CoMutex {
            core: Core::new(),
            holder: AtomicUsize::new(0),
            holder_thread: AtomicUsize::new(0),
            data: UnsafeCell::new(data),
        }
    }

    /// Creates an unlocked mutex holding `data` (loom atomics are not `const`).
    #[cfg(loom)]
    pub fn new(data: T) -> CoMutex<T> {
        CoMutex {
            core: Core::new(),
            holder: AtomicUsize::new(0),
            holder_thread: AtomicUsize::new(0),
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
        if self.core.try_take() {
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
        self.core.state.load(Relaxed) & LOCKED != 0
    }

    /// Panics unless the caller holds the mutex (QEMU's
    /// `qemu_co_mutex_assert_locked`).
    ///
    /// # Panics
    /// If the mutex is free or held by another coroutine.
    pub fn assert_locked(&self) {
        assert!(
            self.is_locked() && self.holder.load(Relaxed) == holder_id(),
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
        if self.core.try_take() || self.spin() {
            trace::qemu_co_mutex_lock_uncontended(self.ptr(), me_ptr);
        } else {
            self.lock_slowpath();
        }
        self.set_holder();
    }

    /// QEMU's spin in `qemu_co_mutex_lock`: while the holder runs on another
    /// thread and nobody waits, a short critical section ends sooner than a
    /// sleep and a wakeup. Reads the word and only tries to take it when it
    /// looks free, so that spinning does not steal the cache line from the
    /// holder. Returns whether we took the mutex.
    fn spin(&self) -> bool {
        let here = tls::thread_token();
        for _ in 0..SPIN_LIMIT {
            let s = self.core.state.load(Relaxed);
            if s & LOCKED == 0 {
                if self.core.try_take() {
                    return true;
                }
            } else if s != LOCKED || self.holder_thread.load(Relaxed) == here {
                // Waiters exist (spinning would overtake them), or the
                // holder needs this very thread to make progress.
                return false;
            }
            std::hint::spin_loop();
        }
        false
    }

    #[cold]
    fn lock_slowpath(&self) {
        let me = crate::coroutine::current_for("CoMutex::lock");
        trace::qemu_co_mutex_lock_entry(self.ptr(), me.as_ptr());
        // The waker may wake us before we yield: from another thread the
        // wakeup goes through our home context's queue, which runs us only
        // after this yield returns control to the loop; on our thread it
        // cannot run concurrently with us.
        self.core
            .lock_slow(me.as_ptr() as usize, || me.handle(), yield_now);
        trace::qemu_co_mutex_lock_return(self.ptr(), me.as_ptr());
    }

    fn release(&self) {
        let holder = self.holder.load(Relaxed);
        if !self.is_locked() || holder == 0 {
            panic!("CoMutex::unlock: the mutex is not locked");
        }
        let me = holder_id();
        if holder != me {
            panic!("CoMutex::unlock: the mutex is held by another coroutine");
        }
        trace::qemu_co_mutex_unlock_entry(self.ptr(), me as *const ());
        self.holder.store(0, Relaxed);
        self.holder_thread.store(0, Relaxed);
        if let Some(w) = self.core.release(|since| since.elapsed() >= STARVE) {
            // Outside `slow`: waking may enter the waiter right now.
            w.wake();
        }
        trace::qemu_co_mutex_unlock_return(self.ptr(), me as *const ());
    }

    fn ptr(&self) -> *const () {
        self as *const Self as *const ()
    }

    /// How many unlocks so far handed the mutex over to a waiter that had
    /// waited too long (QEMU's handoff: the mutex stays locked and the
    /// waiter wakes up owning it) instead of releasing it. A statistic, for
    /// tests and tuning.
    pub fn handoffs(&self) -> u64 {
        self.core.handoffs()
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
            .field("locked", &self.is_locked())
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
