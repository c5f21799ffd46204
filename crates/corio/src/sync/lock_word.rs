//! The CoMutex lock word protocol, apart from coroutines: the `LOCKED` /
//! `QUEUED` / `WOKEN` word, the waiter queue, barging bounded by
//! [`STARVE`], and its loom models. `mutex.rs` puts coroutines on top.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

#[cfg(loom)]
use loom::sync::{atomic::AtomicUsize as StateWord, Mutex as SlowMutex, MutexGuard};
#[cfg(not(loom))]
use std::sync::{atomic::AtomicUsize as StateWord, Mutex as SlowMutex, MutexGuard};

/// Lock word bit: the mutex has a holder (possibly a waiter that was handed
/// the mutex and has not run yet).
pub(super) const LOCKED: usize = 1;
/// Lock word bit: `Slow::waiters` is not empty. Changed only under `slow`.
pub(super) const QUEUED: usize = 2;
/// Lock word bit: `Slow::woken` holds a waiter that was woken and has not
/// looked at the word yet. Changed only under `slow`.
pub(super) const WOKEN: usize = 4;

/// How long the oldest waiter may be overtaken by newcomers before unlocks
/// hand the mutex over to it instead of releasing it. Long enough that a
/// cross-thread wakeup (1-10 µs) never triggers it on a machine with a CPU
/// per thread; short next to a scheduler time slice.
pub(crate) const STARVE: Duration = Duration::from_micros(500);

/// The lock protocol, apart from coroutines: `W` is how a waiter is woken
/// ([`CoHandle`] here, a parked thread in the loom models).
pub(super) struct Core<W> {
    /// [`LOCKED`] | [`QUEUED`] | [`WOKEN`]. `LOCKED` changes by
    /// compare-exchange from any locker or the holder; `QUEUED` and `WOKEN`
    /// change only under `slow`, but with a compare-exchange too, since
    /// lockers and the holder may change `LOCKED` meanwhile.
    pub(super) state: StateWord,
    /// When the waiter now woken (`WOKEN`) first queued, in µs since
    /// [`epoch`], plus one; written by `wake_oldest` before it sets
    /// `WOKEN`. A hint only (`Relaxed`): it lets an unlock that finds
    /// `WOKEN` set see, without taking `slow`, whether that waiter starves;
    /// `grant_woken` then decides under `slow`.
    woken_at: StateWord,
    /// The waiters. Never held across a yield.
    slow: SlowMutex<Slow<W>>,
    /// How many times the mutex was handed to a starving waiter (QEMU's
    /// handoff): a statistic, never a protocol input (std, `Relaxed`).
    handoffs: std::sync::atomic::AtomicU64,
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
    pub(super) const fn new() -> Self {
        Core {
            state: StateWord::new(0),
            woken_at: StateWord::new(0),
            slow: SlowMutex::new(Slow {
                waiters: VecDeque::new(),
                woken: None,
                granted: false,
            }),
            handoffs: std::sync::atomic::AtomicU64::new(0),
        }
    }

    #[cfg(loom)]
    pub(super) fn new() -> Self {
        Core {
            state: StateWord::new(0),
            woken_at: StateWord::new(0),
            slow: SlowMutex::new(Slow {
                waiters: VecDeque::new(),
                woken: None,
                granted: false,
            }),
            handoffs: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Takes the mutex if it has no holder, even ahead of queued waiters
    /// (the barging window; see the module docs). Returns whether it did.
    pub(super) fn try_take(&self) -> bool {
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
    pub(super) fn take_or_mark_queued(&self, clear: usize, waiters_left: bool) -> bool {
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
    pub(super) fn lock_slow(&self, id: usize, waker: impl FnOnce() -> W, mut wait: impl FnMut()) {
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
    pub(super) fn release(&self, starving: impl Fn(&Instant) -> bool) -> Option<W> {
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
    pub(super) fn woken_starves(&self, starving: &impl Fn(&Instant) -> bool) -> bool {
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
    pub(super) fn grant_woken(&self) -> bool {
        let mut slow = lock_slow_state(&self.slow);
        if slow.woken.is_none() || slow.granted {
            return false;
        }
        // `slow` orders our critical section before the waiter, which reads
        // `granted` under it, as in `wake_oldest`'s handoff.
        slow.granted = true;
        self.handoffs.fetch_add(1, Relaxed);
        true
    }

    /// How many times the mutex was handed over (see `handoffs`).
    pub(super) fn handoffs(&self) -> u64 {
        self.handoffs.load(Relaxed)
    }

    #[cold]
    pub(super) fn wake_oldest(&self, starving: impl Fn(&Instant) -> bool) -> W {
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
        if grant {
            self.handoffs.fetch_add(1, Relaxed);
        }
        waker
    }
}

/// loom models of the lock word and the waiter queue:
/// `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p corio --profile loom --lib loom_`.
#[cfg(all(test, loom))]
#[allow(unsafe_code)] // loom's UnsafeCell accessors
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
