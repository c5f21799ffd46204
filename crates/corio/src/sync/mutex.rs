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
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

#[cfg(loom)]
use loom::sync::{atomic::AtomicUsize as StateWord, Mutex as SlowMutex, MutexGuard};
#[cfg(not(loom))]
use std::sync::{atomic::AtomicUsize as StateWord, Mutex as SlowMutex, MutexGuard};
// Hints and the holder's own bookkeeping: never a correctness input for
// the protocol, so plain std atomics even under loom.
use std::sync::atomic::AtomicUsize;

use super::holder_id;
use crate::coroutine::{tls, yield_now, CoHandle};
use crate::trace;

/// Lock word bit: the mutex has a holder (possibly a waiter that was handed
/// the mutex and has not run yet).
const LOCKED: usize = 1;
/// Lock word bit: `Slow::waiters` is not empty. Changed only under `slow`.
const QUEUED: usize = 2;
/// Lock word bit: `Slow::woken` holds a waiter that was woken and has not
/// looked at the word yet. Changed only under `slow`.
const WOKEN: usize = 4;

/// How long the oldest waiter may be overtaken by newcomers before unlocks
/// hand the mutex over to it instead of releasing it. Long enough that a
/// cross-thread wakeup (1-10 µs) never triggers it on a machine with a CPU
/// per thread; short next to a scheduler time slice.
pub(crate) const STARVE: Duration = Duration::from_micros(500);

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

/// The lock protocol, apart from coroutines: `W` is how a waiter is woken
/// ([`CoHandle`] here, a parked thread in the loom models).
struct Core<W> {
    /// [`LOCKED`] | [`QUEUED`] | [`WOKEN`]. `LOCKED` changes by
    /// compare-exchange from any locker or the holder; `QUEUED` and `WOKEN`
    /// change only under `slow`, but with a compare-exchange too, since
    /// lockers and the holder may change `LOCKED` meanwhile.
    state: StateWord,
    /// When the waiter now woken (`WOKEN`) first queued, in µs since
    /// [`epoch`], plus one; written by `wake_oldest` before it sets
    /// `WOKEN`. A hint only (`Relaxed`): it lets an unlock that finds
    /// `WOKEN` set see, without taking `slow`, whether that waiter starves;
    /// `grant_woken` then decides under `slow`.
    woken_at: StateWord,
    /// The waiters. Never held across a yield.
    slow: SlowMutex<Slow<W>>,
}

/// The origin of [`Core::woken_at`].
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

struct Slow<W> {
    /// Queued waiters, oldest first; [`QUEUED`] is set iff not empty.
    waiters: VecDeque<Waiter<W>>,
    /// The waiter woken by the last slow unlock, until it runs; [`WOKEN`]
    /// is set iff `Some`.
    woken: Option<Waiter<W>>,
    /// Whether `woken` was handed the mutex (`LOCKED` kept for it).
    granted: bool,
}

struct Waiter<W> {
    waker: W,
    /// The waiting coroutine's address: checks that the one resumed is the
    /// one woken.
    id: usize,
    /// When it first queued: it keeps its age when it goes back to the front.
    since: Instant,
}

fn lock_slow_state<T>(m: &SlowMutex<T>) -> MutexGuard<'_, T> {
    // Poisoning cannot leave `Slow` half-updated: nothing in its critical
    // sections panics between two related writes.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<W: Clone> Core<W> {
    #[cfg(not(loom))]
    const fn new() -> Self {
        Core {
            state: StateWord::new(0),
            woken_at: StateWord::new(0),
            slow: SlowMutex::new(Slow {
                waiters: VecDeque::new(),
                woken: None,
                granted: false,
            }),
        }
    }

    #[cfg(loom)]
    fn new() -> Self {
        Core {
            state: StateWord::new(0),
            woken_at: StateWord::new(0),
            slow: SlowMutex::new(Slow {
                waiters: VecDeque::new(),
                woken: None,
                granted: false,
            }),
        }
    }

    /// Takes the mutex if it has no holder, even ahead of queued waiters
    /// (the barging window; see the module docs). Returns whether it did.
    fn try_take(&self) -> bool {
        let mut s = self.state.load(Relaxed);
        while s & LOCKED == 0 {
            // Acquire: pairs with the Release compare-exchanges that clear
            // LOCKED in `release` / `wake_oldest`, making the previous
            // holder's critical section visible to us.
            match self
                .state
                .compare_exchange_weak(s, s | LOCKED, Acquire, Relaxed)
            {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
        false
    }

    /// Under `slow`: takes the mutex if it has no holder (and returns true),
    /// or marks the word `QUEUED` while it has one (the caller then queues).
    /// `clear` is dropped from the word either way; `QUEUED` is cleared
    /// when taking it with `waiters_left` false.
    fn take_or_mark_queued(&self, clear: usize, waiters_left: bool) -> bool {
        let mut s = self.state.load(Relaxed);
        loop {
            let (next, took) = if s & LOCKED == 0 {
                let keep = if waiters_left {
                    !clear
                } else {
                    !(clear | QUEUED)
                };
                ((s | LOCKED) & keep, true)
            } else {
                ((s | QUEUED) & !clear, false)
            };
            // Acquire: when taking, as in `try_take`. When queueing, it
            // orders nothing (the holder finds our record through `slow`),
            // but one ordering for both keeps the loop simple.
            match self.state.compare_exchange_weak(s, next, Acquire, Relaxed) {
                Ok(_) => return took,
                Err(now) => s = now,
            }
        }
    }

    /// Queues the caller (or takes the mutex if it became free) and returns
    /// once it holds the mutex. `wait` must return only after the `W` made by
    /// `waker` was woken; it is called with `slow` unlocked.
    fn lock_slow(&self, id: usize, waker: impl FnOnce() -> W, mut wait: impl FnMut()) {
        // Made before QUEUED is set: nothing that can fail (a waker may
        // panic) may come between setting QUEUED and queueing our record.
        let waker = waker();
        let since = Instant::now();
        let mut slow = lock_slow_state(&self.slow);
        if self.take_or_mark_queued(0, true) {
            return;
        }
        slow.waiters.push_back(Waiter { waker, id, since });
        loop {
            drop(slow);
            wait();
            slow = lock_slow_state(&self.slow);
            // Checked before taking the record, so that a misuse leaves the
            // woken waiter's record (and WOKEN) for that waiter.
            match &slow.woken {
                None => panic!("CoMutex: a waiter resumed without being woken"),
                Some(w) => assert_eq!(w.id, id, "CoMutex: resumed a waiter that was not woken"),
            }
            let me = slow.woken.take().expect("checked above");
            let left = !slow.waiters.is_empty();
            if std::mem::take(&mut slow.granted) {
                // Handed over: LOCKED was kept for us. `slow` orders the
                // unlocker's critical section before us (it set `granted`
                // under it).
                let clear = if left { WOKEN } else { WOKEN | QUEUED };
                self.state.fetch_and(!clear, Relaxed);
                return;
            }
            if self.take_or_mark_queued(WOKEN, left) {
                return;
            }
            // A newcomer got it first: back to the front, keeping our age.
            slow.waiters.push_front(me);
        }
    }

    /// Unlocks; returns the waiter to wake, which the caller must wake after
    /// this returns (no lock held). `starving` says whether the oldest
    /// waiter, queued at the given instant, must be handed the mutex.
    fn release(&self, starving: impl Fn(&Instant) -> bool) -> Option<W> {
        let mut s = LOCKED;
        loop {
            if s & (QUEUED | WOKEN) == QUEUED {
                return Some(self.wake_oldest(starving));
            }
            // A waiter is on its way but has not run: if it starves (its
            // thread is busy, or it is the holder's own thread, which runs
            // it only when the holder yields), hand it the mutex instead of
            // releasing, so that a holder relocking in a loop cannot keep
            // it past the bound.
            if s & WOKEN != 0 && self.woken_starves(&starving) {
                if self.grant_woken() {
                    return None;
                }
                s = self.state.load(Relaxed);
                continue;
            }
            // Release: publishes the critical section to the next holder,
            // which takes the word with Acquire (`try_take`,
            // `take_or_mark_queued`). With WOKEN set a waiter is already on
            // its way and will look at the word: no wakeup needed.
            match self
                .state
                .compare_exchange_weak(s, s & !LOCKED, Release, Relaxed)
            {
                Ok(_) => return None,
                Err(now) => s = now,
            }
        }
    }

    /// Whether the woken waiter, by the `woken_at` hint, must be handed
    /// the mutex.
    fn woken_starves(&self, starving: &impl Fn(&Instant) -> bool) -> bool {
        match self.woken_at.load(Relaxed) {
            0 => false,
            at => starving(&(epoch() + Duration::from_micros(at as u64 - 1))),
        }
    }

    /// Turns the pending wakeup into a handoff: the caller holds the mutex
    /// and keeps `LOCKED` set for the woken waiter, which finds `granted`
    /// when it runs. Returns false if that waiter already ran (took its
    /// record): then the caller releases as usual.
    #[cold]
    fn grant_woken(&self) -> bool {
        let mut slow = lock_slow_state(&self.slow);
        if slow.woken.is_none() || slow.granted {
            return false;
        }
        // `slow` orders our critical section before the waiter, which reads
        // `granted` under it, as in `wake_oldest`'s handoff.
        slow.granted = true;
        true
    }

    #[cold]
    fn wake_oldest(&self, starving: impl Fn(&Instant) -> bool) -> W {
        let mut slow = lock_slow_state(&self.slow);
        // QUEUED was set when we looked, and only `slow` holders clear it:
        // the waiter that set it is in the queue (it pushed before it
        // released `slow`).
        let w = slow
            .waiters
            .pop_front()
            .expect("CoMutex: QUEUED without a waiter");
        let grant = starving(&w.since);
        let last = slow.waiters.is_empty();
        let at = w.since.saturating_duration_since(epoch()).as_micros() as usize;
        self.woken_at.store(at.saturating_add(1), Relaxed);
        let mut s = self.state.load(Relaxed);
        loop {
            let mut next = s | WOKEN;
            if last {
                next &= !QUEUED;
            }
            if !grant {
                next &= !LOCKED;
            }
            // Release: as in `release`, for a newcomer that takes the word
            // once LOCKED is clear. The woken waiter itself is ordered after
            // us by `slow`.
            match self.state.compare_exchange_weak(s, next, Release, Relaxed) {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        let waker = w.waker.clone();
        slow.woken = Some(w);
        slow.granted = grant;
        waker
    }
}

/// loom models of the lock word and the waiter queue:
/// `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p corio --profile loom --lib loom_`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use loom::thread;

    /// A blocked thread stands for a yielded coroutine: `wake` sets its
    /// flag and signals it, as a co_schedule push and notify would; the
    /// flag's mutex orders the waker's writes before the woken thread's reads
    /// (the co_schedule queue's Release/Acquire does that for coroutines).
    #[derive(Clone)]
    struct ThreadWaker(Arc<(loom::sync::Mutex<bool>, loom::sync::Condvar)>);

    impl ThreadWaker {
        fn new() -> Self {
            ThreadWaker(Arc::new((
                loom::sync::Mutex::new(false),
                loom::sync::Condvar::new(),
            )))
        }
        fn wake(&self) {
            *self.0 .0.lock().unwrap() = true;
            self.0 .1.notify_one();
        }
        fn wait(&self) {
            let mut woken = self.0 .0.lock().unwrap();
            while !*woken {
                woken = self.0 .1.wait(woken).unwrap();
            }
            *woken = false;
        }
    }

    struct Shared {
        core: Core<ThreadWaker>,
        /// Written under the mutex only: loom reports any access that is
        /// not ordered after the previous holder's.
        counter: UnsafeCell<usize>,
    }

    fn section(sh: &Shared, id: usize, me: &ThreadWaker, starving: fn(usize) -> bool) {
        if !sh.core.try_take() {
            let w = me.clone();
            sh.core.lock_slow(id, move || w, || me.wait());
        }
        // SAFETY: we hold the mutex; loom checks it.
        sh.counter.with_mut(|c| unsafe { *c += 1 });
        // The policy looks at the holder, not the clock: loom needs a
        // deterministic model.
        if let Some(w) = sh.core.release(|_| starving(id)) {
            w.wake();
        }
    }

    /// `threads` contenders (the model's main thread is one), each running
    /// `iters` critical sections. Every section counts once, the mutex ends
    /// free with an empty queue, and no thread stays parked (loom reports a
    /// deadlock if one does).
    fn model(threads: usize, iters: usize, starving: fn(usize) -> bool) {
        loom::model(move || {
            let sh = Arc::new(Shared {
                core: Core::new(),
                counter: UnsafeCell::new(0),
            });
            let hs: Vec<_> = (1..threads)
                .map(|id| {
                    let sh = sh.clone();
                    thread::spawn(move || {
                        let me = ThreadWaker::new();
                        for _ in 0..iters {
                            section(&sh, id, &me, starving);
                        }
                    })
                })
                .collect();
            let me = ThreadWaker::new();
            for _ in 0..iters {
                section(&sh, 0, &me, starving);
            }
            for h in hs {
                h.join().unwrap();
            }
            // SAFETY: every thread has finished.
            let n = sh.counter.with(|c| unsafe { *c });
            assert_eq!(n, threads * iters);
            assert_eq!(sh.core.state.load(Relaxed), 0);
            let slow = lock_slow_state(&sh.core.slow);
            assert!(slow.waiters.is_empty() && slow.woken.is_none() && !slow.granted);
        });
    }

    /// Pure barging window: unlocks always release, woken waiters compete.
    #[test]
    fn loom_co_mutex_barging() {
        model(2, 2, |_| false);
        model(3, 1, |_| false);
    }

    /// Pure handoff (every waiter starving): QEMU's protocol.
    #[test]
    fn loom_co_mutex_handoff() {
        model(2, 2, |_| true);
        model(3, 1, |_| true);
    }

    /// Mixed: some unlocks hand over, others release.
    #[test]
    fn loom_co_mutex_mixed() {
        model(3, 1, |holder| holder == 1);
    }
}
