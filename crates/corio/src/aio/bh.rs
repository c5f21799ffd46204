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
        self.inner.flags.fetch_and(!SCHEDULED, AcqRel);
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
pub(crate) fn into_node(bh: Arc<BhInner>) -> NonNull<BhInner> {
    // SAFETY: `Arc::into_raw` never returns null.
    unsafe { NonNull::new_unchecked(Arc::into_raw(bh).cast_mut()) }
}
