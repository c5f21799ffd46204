//! Handing coroutines to a context (QEMU's `aio_co_schedule`,
//! `aio_co_enter`, `aio_co_reschedule_self`) and running a function on a
//! context's thread (`aio_wait_bh_oneshot`).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;

use super::bh::SCHEDULED;
use super::queue;
use super::AioContext;
use super::{current_ctx, home};
use crate::coroutine::{self, CoHandle, CoInner, Scheduler};
use crate::loom::AtomicPtr;
use crate::trace;

impl AioContext {
    // ----- coroutines -----

    /// Hands a coroutine to this context: it is entered from the context's
    /// next poll (QEMU's `aio_co_schedule`). This context must be the
    /// coroutine's home; to move a coroutine elsewhere see
    /// [`co_schedule_migrate`](Self::co_schedule_migrate).
    ///
    /// # Thread context
    /// Any thread.
    ///
    /// # Panics
    /// If the coroutine is already scheduled ("Co-routine was already
    /// scheduled in 'aio_co_schedule'"), or this is not its home context.
    pub fn co_schedule(&self, co: &CoHandle) {
        if co.inner.home_token() != self.shared.home_token {
            panic!(
                "co_schedule: the coroutine's home is another AioContext; \
                 moving it needs the unsafe co_schedule_migrate"
            );
        }
        self.co_schedule_inner(co.inner.clone(), Scheduler::AioCoSchedule);
    }

    /// Moves a coroutine to this context, whatever its home, and schedules it
    /// here: it resumes on this context's home thread, which becomes its home.
    ///
    /// # Safety
    /// The coroutine's stack moves to another thread. At the point where it
    /// yielded, and at every later yield while it lives on this thread:
    /// * every value alive on its stack is `Send` (no `Rc`, no `RefCell`
    ///   borrow of shared state, no `MutexGuard` of a `std` mutex);
    /// * it holds no reference, address or guard to a thread-local;
    /// * nothing will wake it on its old context (such a wake would panic);
    /// * no `Coroutine` handle of it is used on the old thread afterwards
    ///   (`entered`, `is_terminated` read state the new thread writes).
    ///
    /// # Panics
    /// If the caller is not on the coroutine's current home thread, or the
    /// coroutine is running (entered), or it is already scheduled.
    pub unsafe fn co_schedule_migrate(&self, co: &CoHandle) {
        assert!(
            co.inner.is_idle_here(),
            "co_schedule_migrate: call it on the coroutine's home thread, while it is not running"
        );
        co.inner.mark_scheduled(Scheduler::AioCoSchedule);
        co.inner.set_home(self.as_home(), self.home_token());
        self.push_scheduled(co.inner.clone());
    }

    /// QEMU's `aio_co_enter`: enters `co` now if the caller is this context's
    /// home thread (queued behind the running coroutine, if any), else
    /// schedules it here.
    ///
    /// # Thread context
    /// Any thread.
    pub fn co_enter(&self, co: &CoHandle) {
        if self.in_home_thread() && co.is_home() {
            if let Some(local) = co.local() {
                local.wake();
            }
        } else {
            self.co_schedule(co);
        }
    }

    pub(crate) fn co_schedule_inner(&self, co: Arc<CoInner>, who: Scheduler) {
        co.mark_scheduled(who);
        self.push_scheduled(co);
    }

    pub(crate) fn push_scheduled(&self, co: Arc<CoInner>) {
        trace::aio_co_schedule(self.as_ptr(), Arc::as_ptr(&co).cast());
        // SAFETY: we won the `scheduled` compare-exchange, so the coroutine
        // is in no queue; the Arc is taken back in `co_schedule_bh_cb`.
        let was_empty = unsafe {
            self.shared.co_queue.push(std::ptr::NonNull::new_unchecked(
                Arc::into_raw(co).cast_mut(),
            ))
        };
        // Only the push that found the queue empty schedules the bottom half
        // (and notifies): a later push lands in a non-empty queue, which a
        // run of the bottom half scheduled by that first push will take
        // whole (`co_schedule_bh_cb` always empties the queue, and its
        // bottom half is marked not pending before it runs). This saves an
        // atomic read-modify-write and a fence per hop under load. The loom
        // model `loom_kick_when_empty` in `queue.rs` checks the protocol.
        if was_empty {
            self.bh_enqueue(&self.shared.co_bh, SCHEDULED);
        }
    }

    /// The co_schedule bottom half: takes the whole queue, FIFO, and enters
    /// each coroutine. If one panics, the rest go back to the queue.
    pub(super) fn co_schedule_bh_cb(&self) {
        struct Requeue<'a> {
            ctx: &'a AioContext,
            rest: queue::Batch<CoInner>,
        }
        impl Drop for Requeue<'_> {
            fn drop(&mut self) {
                for p in self.rest.by_ref() {
                    // SAFETY: still owned by the batch; back into the queue,
                    // where it was (its `scheduled` flag is still set).
                    unsafe { self.ctx.shared.co_queue.push(p) };
                    self.ctx.bh_enqueue(&self.ctx.shared.co_bh, SCHEDULED);
                }
            }
        }
        let mut batch = Requeue {
            ctx: self,
            rest: self.shared.co_queue.take_all(),
        };
        for p in batch.rest.by_ref() {
            // SAFETY: nodes in `co_queue` are `Arc`s given up by `push_scheduled`.
            let co = unsafe { Arc::from_raw(p.as_ptr()) };
            trace::aio_co_schedule_bh_cb(self.as_ptr(), Arc::as_ptr(&co).cast());
            coroutine::enter_scheduled(co);
        }
    }

    // ----- cross-thread calls -----

    /// Runs `f` on this context's home thread and returns its result (QEMU's
    /// `aio_wait_bh_oneshot`). On the home thread, calls `f` directly.
    /// While waiting, the caller's own current context keeps polling, so two
    /// contexts may `run_in` each other.
    ///
    /// # Thread context
    /// Any thread.
    ///
    /// # Panics
    /// If `f` panics, the panic resumes in the caller.
    pub fn run_in<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        if self.in_home_thread() {
            return f();
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let waiter = current_ctx();
        let kick = waiter.clone();
        self.bh_schedule_oneshot(move || {
            let r = catch_unwind(AssertUnwindSafe(f));
            let _ = tx.send(r);
            if let Some(w) = kick {
                // A BH in the waiter's context ends its blocking poll with
                // progress (QEMU's aio_wait_kick).
                w.bh_schedule_oneshot(|| {});
            }
        });
        let r = match waiter {
            Some(w) => loop {
                match rx.try_recv() {
                    Ok(r) => break r,
                    Err(_) => {
                        w.poll(true);
                    }
                }
            },
            None => rx.recv().expect("run_in: the target context was dropped"),
        };
        r.unwrap_or_else(|p| resume_unwind(p))
    }
}

/// Moves the running coroutine to `ctx` (QEMU's `aio_co_reschedule_self`): it
/// yields, and resumes on `ctx`'s home thread with `ctx` as its home context
/// (even when that thread is the one it was on). Does nothing if `ctx` is
/// the coroutine's home already.
///
/// # Safety
/// As [`AioContext::co_schedule_migrate`]: at this yield and every later one
/// while it lives on `ctx`'s thread, the coroutine's stack holds only `Send`
/// values and no thread-local reference.
///
/// # Panics
/// Outside a coroutine.
pub unsafe fn co_reschedule_self(ctx: &AioContext) {
    // The enterer pushes us onto `ctx`'s queue once we have yielded (QEMU
    // uses a oneshot bottom half on the old context for the same reason:
    // the other thread must not enter us before we have left). `ctx` stays
    // borrowed until we are resumed there, which the hand-over relies on.
    // Contexts, not threads, as QEMU compares them: a move between two
    // contexts of one thread still changes where later wakes go. Another
    // thread's context cannot be the home: no lock needed to tell.
    let already_home = |me: &CoInner| {
        ctx.home_token() == me.home_token()
            && ctx.is_home_of(&me.home_or_insert_with(home::current_home))
    };
    // SAFETY: the caller of `co_reschedule_self` vouched for the stack, and
    // `ctx` stays borrowed until the coroutine is resumed.
    if unsafe { coroutine::request_migration(ctx, already_home) } {
        coroutine::yield_now();
    }
}

// SAFETY: `next` is used by one co_schedule queue at a time: a coroutine is
// pushed only after winning the `scheduled` compare-exchange, and taken out
// before `scheduled` is cleared.
unsafe impl queue::Linked for CoInner {
    fn link(&self) -> &AtomicPtr<CoInner> {
        &self.next
    }
}
