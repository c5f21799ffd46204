//! The schedule claim (QEMU's `co->scheduled`): who has queued a coroutine
//! and not yet entered it. Any thread may try to take it; exactly one
//! taker wins, and a losing waker panics with QEMU's "Co-routine was
//! already scheduled in '...'". The home thread gives it back just before
//! it enters the coroutine.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

use super::Scheduler;
// The crate's `loom` facade has no `AtomicUsize`; the same switch here.
#[cfg(loom)]
use loom::sync::atomic::AtomicUsize;
#[cfg(not(loom))]
use std::sync::atomic::AtomicUsize;

/// 0, or the [`Scheduler`] that holds the claim. A word, not a byte: the
/// enter path ORs it into its refusal check, and a byte would cost a
/// zero-extension there.
pub(crate) struct Claim(AtomicUsize);

impl Claim {
    pub(crate) fn new() -> Claim {
        Claim(AtomicUsize::new(0))
    }

    /// Takes the claim for `who`, or returns the holder's code.
    ///
    /// # Thread context
    /// Any thread.
    pub(crate) fn mark(&self, who: Scheduler) -> Result<(), u8> {
        // A compare-exchange, not a swap: a loser must leave the winner's
        // claim (and its code, for the panic message) in place. Acquire on
        // success pairs with the Release in `release` (and `clear`): the
        // previous holder's consumer is done with the queue link `next`
        // before our push writes it.
        self.0
            .compare_exchange(0, who as usize, Acquire, Relaxed)
            .map(|_| ())
            .map_err(|code| code as u8)
    }

    /// Gives back a claim that `who` holds without the coroutine having been
    /// queued (a sleep ending). Returns whether `who` held it.
    ///
    /// # Thread context
    /// Any thread.
    pub(crate) fn clear(&self, who: Scheduler) -> bool {
        // Release: pairs with the Acquire in the next `mark`.
        self.0
            .compare_exchange(who as usize, 0, Release, Relaxed)
            .is_ok()
    }

    /// Gives back the claim of a coroutine taken from a queue, just before
    /// entering it.
    ///
    /// # Thread context
    /// The coroutine's home thread, which took it from the queue.
    pub(crate) fn release(&self) {
        // Release pairs with the Acquire of the next `mark`: this thread's
        // last use of the queue link `next` (taking the batch) happens
        // before the next claimer writes `next` in its push.
        self.0.store(0, Release);
    }

    /// Turns a claim held by `from` into one held by `to` (a wake-list
    /// claim becoming a co_schedule one). Returns whether `from` held it.
    ///
    /// # Thread context
    /// Any thread.
    pub(crate) fn hand_over(&self, from: Scheduler, to: Scheduler) -> bool {
        // AcqRel: the claim changes hands, so both halves: Acquire as
        // `mark`'s (pairs with a `release` / `clear`), Release as a
        // `release`'s (pairs with the next `mark`).
        self.0
            .compare_exchange(from as usize, to as usize, AcqRel, Relaxed)
            .is_ok()
    }

    /// The holder's code, 0 if none. A snapshot (`Relaxed`): the enter
    /// path's refusal check, on the home thread, which is the thread that
    /// releases the claim of a queued coroutine.
    pub(crate) fn get(&self) -> usize {
        self.0.load(Relaxed)
    }

    /// Drops any claim, on an object owned exclusively (being pooled).
    pub(crate) fn reset(&mut self) {
        *self = Claim::new();
    }
}

/// loom models of the claim, run on the real [`Claim`].
#[cfg(all(test, loom))]
#[allow(unsafe_code)] // loom's UnsafeCell accessors
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use loom::thread;

    /// Two threads wake one suspended coroutine (`co_schedule` and a wake
    /// from a coroutine): exactly one takes the claim; the loser sees the
    /// winner's code (what its panic message names). Checked by mutation:
    /// a `mark` that loads, then stores (check-then-set), fails it.
    #[test]
    fn loom_claim_two_wakers() {
        loom::model(|| {
            let claim = Arc::new(Claim::new());
            let other = {
                let claim = claim.clone();
                thread::spawn(move || claim.mark(Scheduler::AioCoWake))
            };
            let mine = claim.mark(Scheduler::AioCoSchedule);
            let theirs = other.join().unwrap();
            match (mine, theirs) {
                (Ok(()), Err(code)) => assert_eq!(code, Scheduler::AioCoSchedule as u8),
                (Err(code), Ok(())) => assert_eq!(code, Scheduler::AioCoWake as u8),
                r => panic!("not exactly one winner: {r:?}"),
            }
        });
    }

    /// A sleep ends (`CoSleep::wake`: `clear` then a co_schedule `mark`)
    /// while a stray waker tries to wake the sleeper: exactly one of the
    /// two wakes takes the claim.
    #[test]
    fn loom_claim_sleep_end_races_waker() {
        loom::model(|| {
            let claim = Arc::new(Claim::new());
            claim.mark(Scheduler::CoSleep).unwrap();
            let sleep_end = {
                let claim = claim.clone();
                thread::spawn(move || {
                    assert!(claim.clear(Scheduler::CoSleep));
                    claim.mark(Scheduler::AioCoSchedule).is_ok()
                })
            };
            let stray = claim.mark(Scheduler::AioCoWake).is_ok();
            let ended = sleep_end.join().unwrap();
            assert!(
                stray ^ ended,
                "wakes that won: stray {stray}, sleep end {ended}"
            );
        });
    }

    /// The claim hands the queue link over: the home thread takes the
    /// coroutine from the queue (its last use of `next`, a cell here) and
    /// releases the claim; a waker that then wins the claim writes `next`
    /// in its push. loom reports a race on the cell unless the release
    /// happens before the winner's write. Checked by mutation: `mark` with
    /// `Relaxed` on success, or `release` with `Relaxed`, fail it.
    #[test]
    fn loom_claim_hands_over_the_link() {
        loom::model(|| {
            let claim = Arc::new(Claim::new());
            let link = Arc::new(UnsafeCell::new(0usize));
            claim.mark(Scheduler::AioCoSchedule).unwrap();
            let waker = {
                let (claim, link) = (claim.clone(), link.clone());
                thread::spawn(move || {
                    if claim.mark(Scheduler::AioCoSchedule).is_ok() {
                        // SAFETY: the claim is ours; loom checks the order.
                        link.with_mut(|l| unsafe { *l = 2 });
                    }
                })
            };
            // SAFETY: we hold the claim; loom checks the order.
            link.with_mut(|l| unsafe { *l = 1 });
            claim.release();
            waker.join().unwrap();
        });
    }
}
