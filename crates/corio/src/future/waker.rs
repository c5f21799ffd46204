//! The two wakers of [`block_on`](super::block_on): one that resumes a
//! coroutine in its home context ([`CoWaker`]), one that wakes a plain
//! thread ([`ThreadWaker`]). Both are `Arc`s behind std's [`Wake`] trait: no
//! raw vtable, no `unsafe`.

use std::sync::atomic::{
    AtomicBool,
    Ordering::{Acquire, Release},
};
use std::sync::{Arc, Mutex};
use std::task::Wake;
use std::thread::Thread;

use super::park::Park;
use crate::aio::{AioContext, WeakAioContext};
use crate::coroutine::{self, CoHandle, Scheduler};

/// Wakes a coroutine parked in `block_on`: the one wake that finds it
/// parked schedules a bottom half on its home context, which enters it.
///
/// Why a bottom half and not `co_schedule`: the decision to enter is taken
/// on the home thread, where the coroutine cannot run at the same time. A
/// coroutine resumed by someone else while parked (a spurious resume)
/// takes the notification itself; the bottom half then finds no resume
/// wanted and does nothing, where a queued co_schedule would enter the
/// coroutine later, at some unrelated yield.
pub(super) struct CoWaker {
    pub(super) park: Park,
    /// The coroutine's home context, weakly: a waker that outlives its
    /// context does nothing.
    ctx: WeakAioContext,
    /// The coroutine, until `block_on` ends (so that a waker kept by a
    /// future does not keep the coroutine object alive). Locked only on
    /// the home thread (the resume bottom half, the end of `block_on`):
    /// never contended.
    co: Mutex<Option<CoHandle>>,
}

impl CoWaker {
    pub(super) fn new(co: CoHandle, ctx: &AioContext) -> CoWaker {
        CoWaker {
            park: Park::new(),
            ctx: ctx.downgrade(),
            co: Mutex::new(Some(co)),
        }
    }

    /// `block_on` is over: later wakes are no-ops, and the coroutine
    /// handle goes.
    ///
    /// # Thread context
    /// The coroutine, on its home thread.
    pub(super) fn finish(&self) {
        self.park.finish();
        let co = self.co.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(co);
    }

    /// The resume bottom half: enters the coroutine if it still waits for
    /// this wake.
    ///
    /// # Thread context
    /// The coroutine's home thread, from its home context's poll.
    fn resume(&self) {
        if !self.park.resume_wanted() {
            return; // resumed spuriously and took it, or block_on is over
        }
        let co = self.co.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(local) = co.as_ref().and_then(CoHandle::local) else {
            return;
        };
        // Parked means suspended in `block_on`; checked anyway, since
        // entering a running or finished coroutine panics.
        if local.entered() || local.is_terminated() {
            return;
        }
        drop(local);
        let co = co.expect("checked above");
        // Someone else holds the claim (a stray wake queued it): that
        // wakeup enters it, and it takes our notification then.
        if co.inner.try_mark_scheduled(Scheduler::AioCoSchedule) {
            // As the co_schedule queue does: gives the claim back and
            // enters the coroutine.
            coroutine::enter_scheduled(co.inner.clone());
        }
    }
}

impl Wake for CoWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    /// # Thread context
    /// Any thread, any number of times, also after `block_on` ended.
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.park.wake() {
            return; // not parked, or another wake resumes it
        }
        if let Some(ctx) = self.ctx.upgrade() {
            let me = Arc::clone(self);
            ctx.bh_schedule_oneshot(move || me.resume());
        }
    }
}

/// Wakes a thread that runs `block_on` outside any coroutine: by a bottom
/// half on its current context when it polls one, else by unparking it.
pub(super) struct ThreadWaker {
    /// A wake came since the thread last looked.
    woken: AtomicBool,
    thread: Thread,
    /// The context the thread polls while it waits, if any.
    ctx: Option<WeakAioContext>,
}

impl ThreadWaker {
    pub(super) fn new(ctx: Option<&AioContext>) -> ThreadWaker {
        ThreadWaker {
            woken: AtomicBool::new(false),
            thread: std::thread::current(),
            ctx: ctx.map(AioContext::downgrade),
        }
    }

    /// Takes the wake flag: whether a wake came since the last call.
    ///
    /// # Thread context
    /// The thread in `block_on`.
    pub(super) fn take(&self) -> bool {
        // Acquire: pairs with the Release swap in `wake_by_ref`: the poll
        // after this sees what the waker published before waking.
        self.woken.swap(false, Acquire)
    }
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    /// # Thread context
    /// Any thread.
    fn wake_by_ref(self: &Arc<Self>) {
        // Release: pairs with the Acquire swap in `take`. A swap, so that
        // only the first wake since the last `take` pays for the kick.
        if self.woken.swap(true, Release) {
            return;
        }
        match self.ctx.as_ref().map(WeakAioContext::upgrade) {
            // The thread polls that context: a bottom half ends a blocking
            // poll with progress (as `JoinHandle::join` kicks). On the
            // home thread itself the wake came from the future's poll or
            // a callback of that poll, and the flag is looked at next.
            Some(Some(ctx)) if !ctx.in_home_thread() => ctx.bh_schedule_oneshot(|| {}),
            Some(_) => {}
            None => self.thread.unpark(),
        }
    }
}
