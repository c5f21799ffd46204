//! The schedule claim (QEMU's `co->scheduled`): who has queued a coroutine
//! and not yet entered it. Any thread may try to take it; exactly one
//! taker wins, and a losing waker panics with QEMU's "Co-routine was
//! already scheduled in '...'". The home thread gives it back just before
//! it enters the coroutine.
//!
//! The claim shares its word with the coroutine's home thread (its token, a
//! multiple of 4, in the high bits; the claim's code in the low two): the
//! enter path checks "on my thread and not claimed" with one load and one
//! comparison against the thread's token. The home changes only while the
//! claim is held (a migration), and only by the holder.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

use super::Scheduler;
// The crate's `loom` facade has no `AtomicUsize`; the same switch here.
#[cfg(loom)]
use loom::sync::atomic::AtomicUsize;
#[cfg(not(loom))]
use std::sync::atomic::AtomicUsize;

/// The low bits of the word: the claim's code.
const CODE: usize = 3;

/// The home thread's token (a multiple of 4) | 0 or the [`Scheduler`] that
/// holds the claim.
pub(crate) struct Claim(AtomicUsize);

impl Claim {
    /// An unclaimed word for a coroutine homed on the thread whose token is
    /// `home` (a multiple of 4).
    pub(crate) fn new(home: usize) -> Claim {
        debug_assert_eq!(home & CODE, 0, "thread tokens are multiples of 4");
        Claim(AtomicUsize::new(home))
    }

    /// Takes the claim for `who`, or returns the holder's code.
    ///
    /// # Thread context
    /// Any thread.
    pub(crate) fn mark(&self, who: Scheduler) -> Result<(), u8> {
        // A compare-exchange, not a swap or an `or`: a loser must leave the
        // winner's claim (and its code, for the panic message) in place.
        // It loops only if the home changed under it (a migration, which
        // ends with a `release`) or spuriously. Acquire on success pairs
        // with the Release in `release` (and `clear`): the previous
        // holder's consumer is done with the queue link `next` before our
        // push writes it.
        let mut cur = self.0.load(Relaxed);
        loop {
            if cur & CODE != 0 {
                return Err((cur & CODE) as u8);
            }
            match self
                .0
                .compare_exchange_weak(cur, cur | who as usize, Acquire, Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
        }
    }

    /// Gives back a claim that `who` holds without the coroutine having been
    /// queued (a sleep ending). Returns whether `who` held it.
    ///
    /// # Thread context
    /// Any thread.
    pub(crate) fn clear(&self, who: Scheduler) -> bool {
        self.change(who, 0, Release)
    }

    /// Gives back the claim of a coroutine taken from a queue, just before
    /// entering it.
    ///
    /// # Thread context
    /// The coroutine's home thread, which took it from the queue.
    pub(crate) fn release(&self) {
        // Nobody else writes the word while the claim is held (losers'
        // compare-exchanges fail, the home changes only by the holder), so
        // a load and a store suffice. Release pairs with the Acquire of the
        // next `mark`: this thread's last use of the queue link `next`
        // (taking the batch) happens before the next claimer writes `next`
        // in its push.
        let cur = self.0.load(Relaxed);
        self.0.store(cur & !CODE, Release);
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
        self.change(from, to as usize, AcqRel)
    }

    /// Replaces the code `from` with `to` (keeping the home), if `from`
    /// holds the claim.
    fn change(&self, from: Scheduler, to: usize, order: std::sync::atomic::Ordering) -> bool {
        let mut cur = self.0.load(Relaxed);
        loop {
            if cur & CODE != from as usize {
                return false;
            }
            match self
                .0
                .compare_exchange_weak(cur, (cur & !CODE) | to, order, Relaxed)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// The holder's code, 0 if none. A snapshot (`Relaxed`).
    pub(crate) fn get(&self) -> usize {
        self.0.load(Relaxed) & CODE
    }

    /// The home thread's token and the holder's code in one word: equal to
    /// the thread's token exactly when the coroutine is homed there and not
    /// claimed. A snapshot (`Relaxed`): the enter path's refusal check, on
    /// the home thread, which is the thread that releases the claim of a
    /// queued coroutine and the only one that reads the home it set.
    pub(crate) fn word(&self) -> usize {
        self.0.load(Relaxed)
    }

    /// The home thread's token. A snapshot (`Relaxed`): a migration
    /// publishes a new home with its queue push.
    pub(crate) fn home(&self) -> usize {
        self.0.load(Relaxed) & !CODE
    }

    /// The home thread's token, on an object owned exclusively.
    pub(crate) fn home_mut(&mut self) -> usize {
        // A load, not `get_mut`: loom's atomics have none (uncontended, it
        // is the same plain read).
        self.0.load(Relaxed) & !CODE
    }

    /// Moves the home to the thread whose token is `token`; the caller holds
    /// the claim (a migration).
    ///
    /// # Thread context
    /// The claim's holder.
    pub(crate) fn set_home(&self, token: usize) {
        debug_assert_eq!(token & CODE, 0, "thread tokens are multiples of 4");
        let cur = self.0.load(Relaxed);
        debug_assert_ne!(cur & CODE, 0, "the home moves only while claimed");
        // Relaxed: published to the new thread by the queue push (Release).
        self.0.store(token | (cur & CODE), Relaxed);
    }

    /// Drops any claim, on an object owned exclusively (being pooled).
    pub(crate) fn reset(&mut self) {
        let home = self.home_mut();
        *self = Claim::new(home);
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
            let claim = Arc::new(Claim::new(0));
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
            let claim = Arc::new(Claim::new(0));
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
            let claim = Arc::new(Claim::new(0));
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

    /// A migration moves the home while it holds the claim, then releases
    /// it on the new home thread; a waker racing with both wins only after
    /// the release, and its claim keeps the new home (checked by mutation:
    /// a `mark` that stores `who` alone, or a `set_home` that drops the
    /// code, fail it).
    #[test]
    fn loom_claim_keeps_the_home() {
        loom::model(|| {
            let claim = Arc::new(Claim::new(4));
            claim.mark(Scheduler::AioCoSchedule).unwrap();
            let waker = {
                let claim = claim.clone();
                thread::spawn(move || claim.mark(Scheduler::AioCoWake))
            };
            claim.set_home(8);
            claim.release();
            let won = waker.join().unwrap().is_ok();
            let code = if won {
                Scheduler::AioCoWake as usize
            } else {
                0
            };
            assert_eq!(claim.word(), 8 | code, "waker won: {won}");
        });
    }
}
