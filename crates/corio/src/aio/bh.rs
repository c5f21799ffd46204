//! Bottom halves (QEMU's `QEMUBH`, util/async.c).
//!
//! A bottom half is a callback that a context runs from `poll`. Scheduling is
//! wait-free and works from any thread; the callback always runs on the home
//! thread.
//!
//! # State bits (`flags`)
//! * `PENDING`: the BH is in the context's list (pushed once per pending
//!   period; set by whoever pushes, cleared when `poll` takes it out).
//! * `SCHEDULED`: the callback should run when the BH is taken out. Cleared by
//!   `cancel` and when taken out.
//! * `IDLE`: scheduled with `schedule_idle`: runs within 10 ms, counts as no
//!   progress. Cleared when taken out.
//! * `DELETED`: never runs again; the callback is dropped when taken out.
//!   Never cleared.
//! * `ONESHOT`: the callback is dropped after its one run.

use std::cell::{Cell, UnsafeCell};
use std::ptr::{self, NonNull};
use std::sync::atomic::Ordering::{AcqRel, Relaxed};

use super::queue::AtomicStack;
use std::sync::Arc;

use super::AioContext;
use crate::loom::{AtomicPtr, AtomicU32};
use crate::trace;

pub(crate) const PENDING: u32 = 1 << 0;
pub(crate) const SCHEDULED: u32 = 1 << 1;
pub(crate) const DELETED: u32 = 1 << 2;
pub(crate) const ONESHOT: u32 = 1 << 3;
pub(crate) const IDLE: u32 = 1 << 4;

type Callback = Box<dyn FnMut() + Send>;

pub(crate) struct BhInner {
    next: AtomicPtr<BhInner>,
    pub(crate) flags: AtomicU32,
    name: &'static str,
    // ---- Home thread only (see the `Sync` impl) ----
    cb: UnsafeCell<Option<Callback>>,
    /// The callback is running (a nested `poll` must not call it again).
    running: Cell<bool>,
    /// Drop the callback when the running call returns.
    release_after_run: Cell<bool>,
}

// SAFETY: `cb`, `running` and `release_after_run` are touched only by
// `call` and `release`, which only `AioContext::bh_poll` calls, on the
// context's home thread (it asserts so). Other threads touch only `next` (the
// queue's) and `flags` (atomic). The callback is `Send`, so dropping a
// `BhInner` on any thread is fine.
unsafe impl Sync for BhInner {}
// SAFETY: as above; every field is `Send` but the `Cell`s, which are only
// used on the home thread.
unsafe impl Send for BhInner {}

// SAFETY: `next` is used by one context's list at a time: a BH is pushed
// only by the caller that set `PENDING` (so once per pending period) and is
// taken out by that context before `PENDING` is cleared.
unsafe impl super::queue::Linked for BhInner {
    fn link(&self) -> &AtomicPtr<BhInner> {
        &self.next
    }
}

impl BhInner {
    pub(crate) fn new(name: &'static str, cb: Callback) -> Arc<BhInner> {
        Arc::new(BhInner {
            next: AtomicPtr::new(ptr::null_mut()),
            flags: AtomicU32::new(0),
            name,
            cb: UnsafeCell::new(Some(cb)),
            running: Cell::new(false),
            release_after_run: Cell::new(false),
        })
    }

    /// Runs the callback. Returns false (and runs nothing) if it is already
    /// running further up this thread's stack.
    ///
    /// # Safety
    /// Home thread only (see the `Sync` impl).
    pub(crate) unsafe fn call(&self, ctx: *const ()) -> bool {
        if self.running.get() {
            trace::reentrant_aio(ctx, self.name);
            return false;
        }
        trace::aio_bh_call(ctx, self as *const BhInner as *const (), self.name);
        struct Running<'a>(&'a BhInner);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.running.set(false);
                if self.0.release_after_run.get() {
                    // SAFETY: home thread (the guard lives in `call`) and the
                    // callback has returned.
                    unsafe { *self.0.cb.get() = None };
                }
            }
        }
        self.running.set(true);
        let _guard = Running(self);
        // SAFETY: home thread; `running` excludes a second mutable borrow
        // from a nested poll; `release` defers while running.
        if let Some(cb) = unsafe { &mut *self.cb.get() } {
            cb();
        }
        true
    }

    /// Drops the callback (deleted or one-shot BH), now or after its run.
    ///
    /// # Safety
    /// Home thread only.
    pub(crate) unsafe fn release(&self) {
        if self.running.get() {
            self.release_after_run.set(true);
        } else {
            // SAFETY: home thread and not running: no borrow of `cb` exists.
            unsafe { *self.cb.get() = None };
        }
    }
}

/// A bottom half: a callback run by its context's `poll` after being scheduled.
///
/// Cloning gives another handle to the same bottom half. Dropping the handles
/// does not delete a scheduled bottom half; [`Bh::delete`] does.
///
/// # Examples
///
/// ```
/// use corio::AioContext;
/// use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
///
/// let ctx = AioContext::new().unwrap();
/// let n = Arc::new(AtomicUsize::new(0));
/// let n2 = n.clone();
/// let bh = ctx.bh_new(move || { n2.fetch_add(1, Ordering::Relaxed); });
/// bh.schedule();
/// assert_eq!(n.load(Ordering::Relaxed), 0); // runs only when polled
/// assert!(ctx.poll(true));
/// assert_eq!(n.load(Ordering::Relaxed), 1);
/// assert!(!ctx.poll(false));
/// ```
#[derive(Clone)]
pub struct Bh {
    pub(crate) inner: Arc<BhInner>,
    pub(crate) ctx: AioContext,
}

impl Bh {
    /// Schedules the bottom half: its callback runs once in the next `poll`
    /// of its context, however many times it is scheduled before that
    /// (QEMU's `qemu_bh_schedule`).
    ///
    /// # Thread context
    /// Any thread.
    pub fn schedule(&self) {
        self.ctx.bh_enqueue(&self.inner, SCHEDULED);
    }

    /// Like [`schedule`](Bh::schedule), but the run counts as no progress and
    /// may wait up to 10 ms for a blocking poll (QEMU's `qemu_bh_schedule_idle`).
    pub fn schedule_idle(&self) {
        self.ctx.bh_enqueue(&self.inner, SCHEDULED | IDLE);
    }

    /// Unschedules the bottom half if it has not run yet (QEMU's `qemu_bh_cancel`).
    pub fn cancel(&self) {
        self.inner.unschedule();
    }

    /// Deletes the bottom half: it never runs again, and its callback is
    /// dropped on the home thread in the next `poll` (QEMU's `qemu_bh_delete`).
    /// Safe to call from the bottom half's own callback.
    pub fn delete(self) {
        self.ctx.bh_enqueue(&self.inner, DELETED);
    }

    /// Whether the bottom half is scheduled and has not run yet.
    pub fn is_scheduled(&self) -> bool {
        let f = self.inner.flags.load(Relaxed);
        f & (SCHEDULED | DELETED) == SCHEDULED
    }

    /// The context the bottom half runs in.
    pub fn context(&self) -> &AioContext {
        &self.ctx
    }
}

impl std::fmt::Debug for Bh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bh")
            .field("name", &self.inner.name)
            .field("flags", &self.inner.flags.load(Relaxed))
            .finish()
    }
}

/// Turns an owned `Arc<BhInner>` into a queue node.
fn into_node(bh: Arc<BhInner>) -> NonNull<BhInner> {
    // SAFETY: `Arc::into_raw` never returns null.
    unsafe { NonNull::new_unchecked(Arc::into_raw(bh).cast_mut()) }
}

// ----- the flag protocol (QEMU's aio_bh_enqueue / aio_bh_dequeue) -----
//
// Schedulers on any thread set flags with a fetch_or and push the BH only
// if they set PENDING; the home thread takes the list whole, then clears
// PENDING | SCHEDULED | IDLE of each BH with a fetch_and and runs it if it
// was SCHEDULED and not DELETED. The loom models below run this code.

/// Sets `new_flags | PENDING` on `bh` and, if that set PENDING, pushes it
/// onto `list` (QEMU's `aio_bh_enqueue`). Returns false if the BH is
/// deleted (it never runs again; the caller need not notify).
///
/// # Thread context
/// Any thread.
pub(crate) fn enqueue(list: &AtomicStack<BhInner>, bh: &Arc<BhInner>, new_flags: u32) -> bool {
    // AcqRel. Release pairs with the Acquire of the fetch_and in
    // `take_pending` that takes this schedule out: what the scheduler wrote
    // before scheduling is visible to the callback even when the BH was
    // pending already and this call pushes nothing (the list's own
    // Release/Acquire only covers the pusher). Acquire pairs with the
    // Release of the previous take-out's fetch_and: when we set PENDING,
    // the consumer is done with the link `next` before our push writes it.
    let old = bh.flags.fetch_or(new_flags | PENDING, AcqRel);
    if old & DELETED != 0 {
        return false;
    }
    if old & PENDING == 0 {
        // We set PENDING, so the BH is in no list: it is pushed once per
        // pending period, and taken out before PENDING is cleared.
        // SAFETY: in no list (above); the Arc clone keeps it alive until
        // `take_all` takes it back with `Arc::from_raw`.
        unsafe { list.push(into_node(bh.clone())) };
    }
    true
}

/// Takes every BH pushed onto `list` so far, oldest first.
///
/// # Thread context
/// The list's consumer (its context's home thread) only.
pub(crate) fn take_all(list: &AtomicStack<BhInner>) -> impl Iterator<Item = Arc<BhInner>> {
    list.take_all()
        // SAFETY: nodes in a BH list are `Arc`s given up by `enqueue`.
        .map(|p| unsafe { Arc::from_raw(p.as_ptr()) })
}

impl BhInner {
    /// `Bh::cancel`: clears SCHEDULED.
    ///
    /// # Thread context
    /// Any thread.
    pub(crate) fn unschedule(&self) {
        // Relaxed: a cancel publishes nothing to anyone (it only stops the
        // run), and as a read-modify-write it does not break the release
        // sequence from a schedule's fetch_or to the take-out's fetch_and.
        self.flags.fetch_and(!SCHEDULED, Relaxed);
    }

    /// The take-out (QEMU's `aio_bh_dequeue`): clears PENDING, SCHEDULED
    /// and IDLE, and returns the flags as they were. From here a schedule
    /// pushes the BH again.
    ///
    /// # Thread context
    /// The list's consumer only, after taking the BH from the list.
    pub(crate) fn take_pending(&self) -> u32 {
        // AcqRel. Acquire pairs with the Release of every `enqueue`
        // fetch_or taken out here (the callback sees what the schedulers
        // wrote). Release pairs with the Acquire of the next `enqueue`
        // that sets PENDING: our take of the list happens before its push.
        self.flags.fetch_and(!(PENDING | SCHEDULED | IDLE), AcqRel)
    }
}

/// Whether a BH taken out with `flags` runs its callback.
pub(crate) fn runs(flags: u32) -> bool {
    flags & (SCHEDULED | DELETED) == SCHEDULED
}

/// Whether a BH taken out with `flags` drops its callback (deleted or
/// one-shot), after the run if it runs.
pub(crate) fn releases(flags: u32) -> bool {
    flags & (DELETED | ONESHOT) != 0
}

/// loom models of the flag protocol: the real [`enqueue`], [`take_all`],
/// [`BhInner::take_pending`], [`runs`] / [`releases`] and the real list,
/// with `poll_once` standing for `AioContext::bh_poll` over one batch.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::{AtomicBool, AtomicUsize};
    use loom::thread;

    /// What the callbacks saw, shared with the model's threads.
    #[derive(Default)]
    struct Seen {
        /// Callback runs.
        runs: AtomicUsize,
        /// What the last run read from `data`.
        last: AtomicUsize,
        /// Written by a scheduler before it schedules.
        data: AtomicUsize,
        /// Set when the callback is dropped.
        dropped: AtomicBool,
        /// Set by `poll_once` when a take-out saw DELETED.
        deleted_seen: AtomicBool,
    }

    struct DropFlag(loom::sync::Arc<Seen>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.dropped.store(true, Relaxed);
        }
    }

    fn new_bh(seen: &loom::sync::Arc<Seen>) -> Arc<BhInner> {
        let flag = DropFlag(seen.clone());
        BhInner::new(
            "model",
            Box::new(move || {
                let s = &flag.0;
                s.runs.fetch_add(1, Relaxed);
                // Relaxed: only the take-out's Acquire can make the
                // scheduler's write visible here.
                s.last.store(s.data.load(Relaxed), Relaxed);
            }),
        )
    }

    /// `AioContext::bh_poll` over one batch (the home thread is the model's
    /// main thread, so `call` / `release` are used as they ship).
    fn poll_once(list: &AtomicStack<BhInner>, seen: &Seen) {
        // A BH pushed twice in one pending period makes its link a cycle:
        // count the raw nodes (bounded) before owning them.
        let nodes: Vec<_> = list.take_all().take(3).collect();
        assert!(nodes.len() <= 1, "a bottom half was pushed twice");
        for p in nodes {
            // SAFETY: nodes in the list are `Arc`s given up by `enqueue`.
            let bh = unsafe { Arc::from_raw(p.as_ptr()) };
            let flags = bh.take_pending();
            if runs(flags) {
                assert!(
                    !seen.deleted_seen.load(Relaxed),
                    "a deleted bottom half ran again"
                );
                // SAFETY: the model's main thread is the home thread.
                unsafe { bh.call(ptr::null()) };
            }
            if flags & DELETED != 0 {
                seen.deleted_seen.store(true, Relaxed);
            }
            if releases(flags) {
                // SAFETY: as above.
                unsafe { bh.release() };
            }
        }
    }

    fn setup() -> (
        Arc<AtomicStack<BhInner>>,
        loom::sync::Arc<Seen>,
        Arc<BhInner>,
    ) {
        let list = Arc::new(AtomicStack::new());
        let seen = loom::sync::Arc::new(Seen::default());
        let bh = new_bh(&seen);
        (list, seen, bh)
    }

    /// A BH already pending is scheduled again from another thread while
    /// the home thread polls: it runs, at least once after that schedule
    /// (its last run sees what the scheduler wrote before scheduling), at
    /// most once per schedule, and is pushed at most once per pending
    /// period. Checked by mutation: `enqueue`'s fetch_or `Relaxed` (or
    /// `Acquire`), `take_pending`'s fetch_and `Relaxed` (or `Release`), a
    /// `take_pending` that leaves PENDING set, or an `enqueue` that pushes
    /// whatever PENDING was, each fail this model.
    #[test]
    fn loom_bh_schedule_races_poll() {
        loom::model(|| {
            let (list, seen, bh) = setup();
            assert!(enqueue(&list, &bh, SCHEDULED));
            let t = {
                let (list, seen, bh) = (list.clone(), seen.clone(), bh.clone());
                thread::spawn(move || {
                    seen.data.store(1, Relaxed);
                    assert!(enqueue(&list, &bh, SCHEDULED));
                })
            };
            poll_once(&list, &seen);
            t.join().unwrap();
            poll_once(&list, &seen);
            assert!(list.is_empty(), "a schedule was left in the list");
            let runs = seen.runs.load(Relaxed);
            assert!((1..=2).contains(&runs), "{runs} runs for two schedules");
            assert_eq!(seen.last.load(Relaxed), 1, "no run after the schedule");
            assert_eq!(bh.flags.load(Relaxed) & PENDING, 0);
        });
    }

    /// A delete races a schedule and the poll: once a take-out has seen
    /// DELETED the BH never runs again, a later schedule is refused, the
    /// callback is dropped by the poll that sees DELETED, and nothing is
    /// pushed twice. Checked by mutation: an `enqueue` that pushes a
    /// deleted BH again (the early return removed) fails it.
    #[test]
    fn loom_bh_delete_races_schedule() {
        loom::model(|| {
            let (list, seen, bh) = setup();
            assert!(enqueue(&list, &bh, SCHEDULED));
            let scheduler = {
                let (list, bh) = (list.clone(), bh.clone());
                thread::spawn(move || {
                    enqueue(&list, &bh, SCHEDULED);
                })
            };
            let deleter = {
                let (list, bh) = (list.clone(), bh.clone());
                thread::spawn(move || {
                    enqueue(&list, &bh, DELETED);
                })
            };
            poll_once(&list, &seen);
            scheduler.join().unwrap();
            deleter.join().unwrap();
            poll_once(&list, &seen);
            assert!(list.is_empty());
            assert!(seen.deleted_seen.load(Relaxed));
            assert!(seen.dropped.load(Relaxed), "a deleted callback was kept");
            assert!(seen.runs.load(Relaxed) <= 2);
            assert!(
                !enqueue(&list, &bh, SCHEDULED),
                "a deleted BH was scheduled"
            );
            assert!(list.is_empty());
        });
    }

    /// A cancel races a schedule and the poll: the BH runs at most once,
    /// a run sees what the scheduler wrote (the cancel's `Relaxed`
    /// read-modify-write keeps the release sequence), and the BH ends
    /// neither pending nor in the list.
    #[test]
    fn loom_bh_cancel_races_schedule() {
        loom::model(|| {
            let (list, seen, bh) = setup();
            let scheduler = {
                let (list, seen, bh) = (list.clone(), seen.clone(), bh.clone());
                thread::spawn(move || {
                    seen.data.store(1, Relaxed);
                    assert!(enqueue(&list, &bh, SCHEDULED));
                })
            };
            let canceller = {
                let bh = bh.clone();
                thread::spawn(move || bh.unschedule())
            };
            poll_once(&list, &seen);
            scheduler.join().unwrap();
            canceller.join().unwrap();
            poll_once(&list, &seen);
            assert!(list.is_empty());
            let runs = seen.runs.load(Relaxed);
            assert!(runs <= 1, "{runs} runs for one schedule");
            if runs == 1 {
                assert_eq!(seen.last.load(Relaxed), 1);
            }
            assert_eq!(bh.flags.load(Relaxed) & PENDING, 0);
        });
    }
}
