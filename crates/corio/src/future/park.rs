//! The waker state machine of [`block_on`](super::block_on) in a coroutine:
//! one atomic byte per `block_on` call that decides, among any number of
//! wakers on any threads and the coroutine itself, who resumes the
//! coroutine and when.
//!
//! Three bits, each with one rule:
//!
//! * [`PARKED`]: the coroutine is suspended in `block_on` (or resumed and
//!   about to look). Set by the coroutine alone ([`Park::park`]), cleared by
//!   it alone ([`Park::take`]).
//! * [`NOTIFIED`]: a wake came since the coroutine last took the
//!   notifications. Set by wakers ([`Park::wake`]), cleared by the
//!   coroutine ([`Park::take`]).
//! * [`DONE`]: `block_on` returned or was unwound; every later wake is a
//!   no-op. Set by the coroutine ([`Park::finish`]), never cleared.
//!
//! The wake that turns `PARKED` into `PARKED | NOTIFIED` (exactly one per
//! park, because wakes only add the bit) is the one that must resume the
//! coroutine; every other wake only leaves the bit for the coroutine's next
//! look. A wake while the coroutine is polling (no `PARKED`) makes its
//! `park` fail, so it polls again instead of sleeping: no lost wakeup, and
//! no second schedule.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crate::loom::AtomicU8;

/// The coroutine is suspended in `block_on`.
pub(crate) const PARKED: u8 = 1;
/// A wake came since the coroutine last took the notifications.
pub(crate) const NOTIFIED: u8 = 2;
/// `block_on` is over: wakes do nothing.
pub(crate) const DONE: u8 = 4;

/// The state of one `block_on` call (see the module docs).
pub(crate) struct Park(AtomicU8);

impl Park {
    pub(crate) fn new() -> Park {
        Park(AtomicU8::new(0))
    }

    /// A wake. Returns `true` for the one wake that found the coroutine
    /// parked and not yet notified: its caller must resume the coroutine.
    ///
    /// # Thread context
    /// Any thread.
    pub(crate) fn wake(&self) -> bool {
        // A `fetch_or`, not a compare-exchange that skips the write when
        // NOTIFIED is already set: every wake must be a read-modify-write
        // so that it continues the release sequence the coroutine's
        // Acquire in `take` reads from. A wake that found NOTIFIED set and
        // wrote nothing would not happen-before the next poll, and that
        // poll could miss what this waker published before waking (the
        // future's ready value).
        //
        // Release: pairs with the Acquire swap in `take`: what the waking
        // thread wrote before the wake is visible to the poll after it.
        // The waker needs nothing from the coroutine (the context it
        // schedules on is fixed at creation), so no Acquire.
        let prev = self.0.fetch_or(NOTIFIED, Release);
        prev == PARKED
    }

    /// After a `Pending` poll: parks the coroutine unless a wake came in
    /// since the last [`take`](Self::take). Returns `true` if it parked
    /// (the caller yields now); `false` if it was notified, in which case
    /// the notifications are taken and the caller polls again.
    ///
    /// # Thread context
    /// The coroutine that owns this state.
    pub(crate) fn park(&self) -> bool {
        // Relaxed both ways. Success publishes nothing a waker reads (the
        // waker that sees PARKED only schedules a resume on a context
        // fixed at creation). Failure means NOTIFIED is set; the Acquire
        // that makes the wakers' writes visible is `take`'s swap, right
        // after.
        match self.0.compare_exchange(0, PARKED, Relaxed, Relaxed) {
            Ok(_) => true,
            Err(cur) => {
                debug_assert_eq!(cur, NOTIFIED, "park: unexpected waker state");
                self.take();
                false
            }
        }
    }

    /// Takes the notifications and leaves the parked state: called when the
    /// coroutine resumes (woken or spuriously) and after a failed
    /// [`park`](Self::park). The coroutine polls again after it. Returns
    /// the bits it found.
    ///
    /// # Thread context
    /// The coroutine that owns this state.
    pub(crate) fn take(&self) -> u8 {
        // Acquire: pairs with the Release `fetch_or` of every wake so far
        // (a swap reads the last value in the modification order, and each
        // wake's RMW continues the release sequences before it): the poll
        // that follows sees what the wakers published. A swap, not a load
        // then a store: a wake landing in between would be erased.
        self.0.swap(0, Acquire)
    }

    /// Whether a resume scheduled by [`wake`](Self::wake) is still wanted:
    /// the coroutine is parked and has not taken the notification (it was
    /// not resumed spuriously meanwhile, and `block_on` is not over).
    ///
    /// # Thread context
    /// The coroutine's home thread, outside the coroutine (the resume
    /// bottom half).
    pub(crate) fn resume_wanted(&self) -> bool {
        // Relaxed: the bottom half runs because a wake saw PARKED and set
        // NOTIFIED, and the bottom-half queue's Release/Acquire makes that
        // write visible here, so this reads it or a later value. Later
        // values come from this thread (the coroutine's `take`, `park`,
        // `finish`) or from wakes, which only add NOTIFIED.
        self.0.load(Relaxed) == PARKED | NOTIFIED
    }

    /// `block_on` is over (returned, or its coroutine is being unwound):
    /// later wakes do nothing and no resume is wanted.
    ///
    /// # Thread context
    /// The coroutine that owns this state.
    pub(crate) fn finish(&self) {
        // Relaxed: nothing is handed over; a wake that reads DONE only
        // returns, and `resume_wanted` reads it on this thread.
        self.0.store(DONE, Relaxed);
    }
}

/// loom models of the waker state machine, run on the real [`Park`]. The
/// home thread (the model's main thread) plays the coroutine and runs the
/// resume bottom halves; a scheduled resume is a count, as in the
/// thread-pool models.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::{AtomicBool, AtomicUsize};
    use loom::sync::Arc;
    use loom::thread;
    use std::sync::atomic::Ordering::SeqCst;

    /// One `block_on` of a future that a waker thread makes ready.
    struct Model {
        park: Park,
        /// The future's readiness, written before the wake. Relaxed on
        /// purpose: only the state machine's ordering makes the poll
        /// after a wake see it.
        ready: AtomicBool,
        /// Resume bottom halves scheduled and not yet run. The model's
        /// bookkeeping: `SeqCst`, so that it adds no interleavings.
        resumes: AtomicUsize,
    }

    impl Model {
        fn new() -> Arc<Model> {
            Arc::new(Model {
                park: Park::new(),
                ready: AtomicBool::new(false),
                resumes: AtomicUsize::new(0),
            })
        }

        /// What a waker does: publish, then wake; the winner schedules.
        fn fire(&self) {
            self.ready.store(true, Relaxed);
            self.wake();
        }

        fn wake(&self) {
            if self.park.wake() {
                self.resumes.fetch_add(1, SeqCst);
            }
        }

        /// Runs one pending resume bottom half: whether it entered the
        /// coroutine.
        fn run_resume(&self) -> bool {
            if self.resumes.load(SeqCst) == 0 {
                return false;
            }
            self.resumes.fetch_sub(1, SeqCst);
            self.park.resume_wanted()
        }
    }

    /// The coroutine's `block_on` loop until the future is ready. While
    /// parked it waits for the `wakers` to finish (nothing else can wake
    /// it), then for a resume: a parked coroutine without one is a lost
    /// wakeup.
    fn block_on(m: &Model, mut wakers: Vec<thread::JoinHandle<()>>) {
        let mut polls = 0;
        while !m.ready.load(Relaxed) {
            polls += 1;
            assert!(polls < 5, "polled {polls} times for one wake");
            if m.park.park() {
                for w in wakers.drain(..) {
                    w.join().unwrap();
                }
                assert!(m.run_resume(), "lost wakeup: parked, no resume");
                assert_eq!(m.park.take(), PARKED | NOTIFIED);
            }
        }
        m.park.finish();
        for w in wakers.drain(..) {
            w.join().unwrap();
        }
        // A resume scheduled for a park the coroutine left must not enter it.
        assert!(!m.run_resume(), "a resume entered a finished block_on");
        assert_eq!(m.resumes.load(SeqCst), 0, "two resumes for one park");
    }

    /// A wake racing the first poll and the park: whether it lands before
    /// the poll, between the poll and the park, or after the park, the
    /// coroutine sees the ready value after at most one resume. Checked by
    /// mutation: `take` with `Relaxed` fails it.
    #[test]
    fn loom_block_on_wake_races_park() {
        loom::model(|| {
            let m = Model::new();
            let waker = {
                let m = m.clone();
                thread::spawn(move || m.fire())
            };
            block_on(&m, vec![waker]);
        });
    }

    /// Two wakers, one of them publishing the ready value, race the park:
    /// at most one resume is scheduled per park (no double schedule), none
    /// is lost, and a wake after the end (the stray may come last) is a
    /// no-op. Checked by mutation: a `wake` that skips its write when
    /// NOTIFIED is set fails it (the poll after the stray's notification
    /// may then miss the ready value).
    #[test]
    fn loom_block_on_two_wakers_one_resume() {
        loom::model(|| {
            let m = Model::new();
            let stray = {
                let m = m.clone();
                thread::spawn(move || m.wake())
            };
            let waker = {
                let m = m.clone();
                thread::spawn(move || m.fire())
            };
            block_on(&m, vec![waker, stray]);
        });
    }

    /// A spurious resume (the coroutine entered by someone else while
    /// parked) races a wake: the coroutine takes the state and polls
    /// again; a resume the wake scheduled meanwhile finds the notification
    /// taken and does not enter it, so the coroutine is never entered at
    /// a later, unrelated yield.
    #[test]
    fn loom_block_on_spurious_resume_races_wake() {
        loom::model(|| {
            let m = Model::new();
            assert!(m.park.park());
            let waker = {
                let m = m.clone();
                thread::spawn(move || m.wake())
            };
            // Spurious resume: take whatever is there and poll again.
            let seen = m.park.take();
            assert!(seen == PARKED || seen == PARKED | NOTIFIED, "{seen}");
            // The poll is ready this time: block_on ends.
            m.park.finish();
            waker.join().unwrap();
            assert!(!m.run_resume(), "a stale resume entered the coroutine");
        });
    }

    /// Wakes after `block_on` ended, from two threads: no resume.
    #[test]
    fn loom_block_on_wake_after_finish() {
        loom::model(|| {
            let m = Model::new();
            m.park.finish();
            let a = {
                let m = m.clone();
                thread::spawn(move || m.wake())
            };
            m.wake();
            a.join().unwrap();
            assert_eq!(m.resumes.load(SeqCst), 0);
        });
    }
}
