//! Stackful coroutines: QEMU's `qemu-coroutine.c`.
//!
//! A [`Coroutine`] runs a closure on its own stack. [`Coroutine::enter`] runs
//! it until it calls [`yield_now`] or returns; the next `enter` resumes it
//! where it yielded. Coroutines nest: one may enter another, and `yield_now`
//! always goes back to whoever entered the yielding coroutine.
//!
//! # Threads
//!
//! A coroutine belongs to the thread that created it (its *home*), and to that
//! thread's [`AioContext`]. [`Coroutine`] is `!Send`; to wake a coroutine from
//! another thread, take a [`CoHandle`] with [`Coroutine::handle`]: it is
//! `Send`, and [`CoHandle::wake`] queues the coroutine on its home context,
//! where it resumes on its home thread. Moving a coroutine to another thread is
//! `unsafe` ([`AioContext::co_schedule_migrate`],
//! [`co_reschedule_self`](crate::co_reschedule_self)), because its stack may
//! hold values that are not `Send`.
//!
//! ```compile_fail
//! let co = corio::Coroutine::new(|| {});
//! std::thread::spawn(move || co.enter()); // Coroutine is !Send
//! ```
//!
//! # Misuse
//!
//! As in QEMU, entering a running coroutine panics with "Co-routine re-entered
//! recursively", entering one that is scheduled panics with "Co-routine was
//! already scheduled in '...'", and yielding outside a coroutine panics with
//! "Co-routine is yielding to no one". A panic inside a coroutine reaches the
//! `enter` that resumed it; the coroutine is then terminated.
//!
//! # Examples
//!
//! ```
//! use corio::{coroutine, Coroutine};
//! use std::{cell::RefCell, rc::Rc};
//!
//! let log = Rc::new(RefCell::new(Vec::new()));
//! let l = log.clone();
//! let co = Coroutine::new(move || {
//!     l.borrow_mut().push("co: start");
//!     coroutine::yield_now();
//!     l.borrow_mut().push("co: resumed");
//! });
//! co.enter();
//! log.borrow_mut().push("caller");
//! co.enter();
//! assert_eq!(*log.borrow(), ["co: start", "caller", "co: resumed"]);
//! assert!(co.is_terminated());
//! ```

mod stack;
pub(crate) mod tls;

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{
    AtomicU8, AtomicUsize,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::{Arc, Mutex};

use corosensei::stack::DefaultStack;
use corosensei::Yielder;

pub use stack::{
    dec_pool_size, inc_pool_size, pool_max, pooled, set_stack_size, stack_size, DEFAULT_STACK_SIZE,
};

use crate::aio::AioContext;
use crate::loom::AtomicPtr;
use crate::trace;

type RawCo = corosensei::Coroutine<(), (), (), DefaultStack>;

/// The `caller` of a coroutine entered from outside any coroutine.
const THREAD_CALLER: *const CoInner = std::ptr::dangling();

/// Who scheduled a coroutine: QEMU keeps the scheduling function's name in
/// `co->scheduled` to report double scheduling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Scheduler {
    AioCoSchedule = 1,
    /// A coroutine sleeping in `sync::CoSleep`: a wakeup from anyone else
    /// panics, as QEMU's `qemu_co_sleep` does.
    CoSleep = 2,
}

fn scheduler_name(code: u8) -> &'static str {
    match code {
        1 => "aio_co_schedule",
        2 => "qemu_co_sleep",
        _ => "?",
    }
}

/// The shared state of one coroutine.
pub(crate) struct CoInner {
    /// Link in a context's co_schedule queue; only that queue touches it.
    pub(crate) next: AtomicPtr<CoInner>,
    /// 0, or the [`Scheduler`] that queued this coroutine. Set by a
    /// compare-exchange from 0 (any thread: that is the double-schedule
    /// check); cleared by the home thread just before it enters the coroutine.
    scheduled: AtomicU8,
    /// The token ([`tls::thread_token`]) of the only thread that may enter
    /// this coroutine. Changed only by a migration, which holds the coroutine
    /// exclusively (it is scheduled and not running); the queue push and take
    /// publish the change to the new thread.
    home_thread: AtomicUsize,
    /// The home AioContext, filled on demand on the home thread; read by
    /// wakers on other threads.
    home: Mutex<Option<AioContext>>,
    // ---- Home thread only (see the `Sync` impl) ----
    /// The corosensei coroutine; `None` once terminated. Borrowed mutably only
    /// by `enter_one` and `terminate`, never from inside the coroutine.
    raw: UnsafeCell<Option<RawCo>>,
    /// Set by the coroutine's first instructions; valid while it runs.
    yielder: Cell<*const Yielder<(), ()>>,
    /// Who entered it: null when not entered, `THREAD_CALLER` from outside.
    caller: Cell<*const CoInner>,
    /// Coroutines woken while this one ran; entered when it yields or ends.
    wakeup: RefCell<VecDeque<Arc<CoInner>>>,
    /// Whether the coroutine returned or panicked.
    terminated: Cell<bool>,
}

// SAFETY: the fields that are not thread-safe (`raw`, `yielder`, `caller`,
// `wakeup`, `terminated`) are touched only on the home thread: `enter_one` checks
// `home_thread` before anything else, the running coroutine and its wakers
// on the same thread are by definition there, and the other threads only
// use `next`, `scheduled`, `home_thread` and `home`, which are atomics or
// behind a mutex. The non-`Send` corosensei coroutine moves threads only
// through `AioContext::co_schedule_migrate`, whose caller vouches that the
// stack holds only `Send` values. Dropping on another thread is handled in
// `Drop` (a suspended coroutine is leaked there rather than unwound).
unsafe impl Send for CoInner {}
// SAFETY: see above.
unsafe impl Sync for CoInner {}

// SAFETY: `next` is used by one co_schedule queue at a time: a coroutine is
// pushed only after winning the `scheduled` compare-exchange, and taken out
// before `scheduled` is cleared.
unsafe impl crate::aio::queue::Linked for CoInner {
    fn link(&self) -> &AtomicPtr<CoInner> {
        &self.next
    }
}

impl Drop for CoInner {
    fn drop(&mut self) {
        let Some(mut raw) = self.raw.get_mut().take() else {
            return;
        };
        if raw.done() {
            stack::give(raw.into_stack());
        } else if !raw.started() {
            // Never entered: dropping drops the closure; nothing runs as
            // this coroutine (its yielder does not exist yet).
            drop(raw);
        } else if *self.home_thread.get_mut() == tls::thread_token() {
            // Suspended and unreachable: unwind its stack (running its
            // destructors) as the running coroutine, then reuse the stack.
            // `current()` refuses to hand out this dying coroutine (its
            // count is 0), and the guard restores the caller even if a
            // panic escapes the unwinding.
            struct Restore(*const CoInner);
            impl Drop for Restore {
                fn drop(&mut self) {
                    tls::with_state(|s| s.current.set(self.0));
                }
            }
            let prev = tls::with_state(|s| s.current.replace(self as *const CoInner));
            let restore = Restore(prev);
            raw.force_unwind();
            drop(restore);
            stack::give(raw.into_stack());
            // A lock released while unwinding may have queued a waiter here.
            reschedule_wakeups(std::mem::take(self.wakeup.get_mut()));
        } else {
            // Its stack may hold values that must not be dropped on this
            // thread: leak it, as QEMU leaks an abandoned coroutine.
            std::mem::forget(raw);
        }
    }
}

/// A stackful coroutine. `!Send`: it runs on the thread that created it.
/// Cloning gives another handle to the same coroutine.
#[derive(Clone)]
pub struct Coroutine {
    inner: Arc<CoInner>,
    _not_send: PhantomData<*const ()>,
}

/// A `Send` handle to a coroutine, for waking it from any thread.
#[derive(Clone)]
pub struct CoHandle {
    pub(crate) inner: Arc<CoInner>,
}

impl Coroutine {
    /// Creates a coroutine that will run `entry` when first entered (QEMU's
    /// `qemu_coroutine_create`). The stack comes from the pool.
    ///
    /// # Thread context
    /// Any thread; the coroutine's home is the calling thread.
    pub fn new<F: FnOnce() + 'static>(entry: F) -> Coroutine {
        let raw = RawCo::with_stack(stack::take(), move |yielder, ()| {
            let me = tls::current_co();
            // SAFETY: `enter_one` made this coroutine current before resuming
            // it, and it is live while it runs.
            unsafe { &*me }.yielder.set(yielder);
            entry()
        });
        Coroutine {
            inner: Arc::new(CoInner {
                next: AtomicPtr::new(ptr::null_mut()),
                scheduled: AtomicU8::new(0),
                home_thread: AtomicUsize::new(tls::thread_token()),
                home: Mutex::new(None),
                raw: UnsafeCell::new(Some(raw)),
                yielder: Cell::new(ptr::null()),
                caller: Cell::new(ptr::null()),
                wakeup: RefCell::new(VecDeque::new()),
                terminated: Cell::new(false),
            }),
            _not_send: PhantomData,
        }
    }

    /// Runs the coroutine until it yields or returns, then runs the
    /// coroutines it woke meanwhile (QEMU's `qemu_coroutine_enter`).
    ///
    /// # Panics
    /// If the coroutine is running ("Co-routine re-entered recursively"), is
    /// scheduled ("Co-routine was already scheduled in '...'"), has
    /// terminated, or panics itself.
    pub fn enter(&self) {
        enter(&self.inner);
    }

    /// Enters the coroutine unless it is running (QEMU's
    /// `qemu_coroutine_enter_if_inactive`).
    pub fn enter_if_inactive(&self) {
        if !self.entered() {
            self.enter();
        }
    }

    /// Whether the coroutine is running: it, or a coroutine it entered, is
    /// executing (QEMU's `qemu_coroutine_entered`).
    pub fn entered(&self) -> bool {
        !self.inner.caller.get().is_null()
    }

    /// Whether the coroutine has returned (or panicked).
    pub fn is_terminated(&self) -> bool {
        self.inner.terminated.get()
    }

    /// The running coroutine, if the caller runs in one (QEMU's
    /// `qemu_coroutine_self`).
    pub fn current() -> Option<Coroutine> {
        let p = tls::current_co();
        if p.is_null() {
            return None;
        }
        // The allocation is live: the running coroutine's enterer holds an Arc
        // for the whole switch, and one unwound by its own `Drop` is still
        // allocated. `ManuallyDrop`: this borrows the count, owns none.
        // SAFETY: `p` came from `Arc::as_ptr` and is live (above).
        let arc = std::mem::ManuallyDrop::new(unsafe { Arc::from_raw(p) });
        if Arc::strong_count(&arc) == 0 {
            return None; // being dropped: must not be resurrected
        }
        Some(Coroutine {
            inner: Arc::clone(&arc),
            _not_send: PhantomData,
        })
    }

    /// Wakes the coroutine in its home context (QEMU's `aio_co_wake`): called
    /// from a coroutine, it is queued and entered when the caller yields or
    /// ends; otherwise it is entered now.
    pub fn wake(&self) {
        wake_local(&self.inner);
    }

    /// A `Send` handle for waking this coroutine from other threads. Gives the
    /// home thread an [`AioContext`] if it has none yet.
    pub fn handle(&self) -> CoHandle {
        home_context(&self.inner);
        CoHandle {
            inner: self.inner.clone(),
        }
    }

    /// The coroutine's home context (QEMU's `qemu_coroutine_get_aio_context`).
    pub fn context(&self) -> AioContext {
        home_context(&self.inner)
    }

    /// An address that identifies the coroutine, for traces and logs.
    pub fn as_ptr(&self) -> *const () {
        Arc::as_ptr(&self.inner).cast()
    }

    /// Whether both handles name the same coroutine.
    pub fn ptr_eq(&self, other: &Coroutine) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl fmt::Debug for Coroutine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coroutine")
            .field("ptr", &self.as_ptr())
            .field("entered", &self.entered())
            .finish()
    }
}

impl CoHandle {
    /// Wakes the coroutine (QEMU's `aio_co_wake`): on its home thread as
    /// [`Coroutine::wake`]; from any other thread, it is pushed onto its home
    /// context's co_schedule queue and resumes there.
    ///
    /// # Thread context
    /// Any thread.
    ///
    /// # Panics
    /// If the coroutine is already scheduled.
    pub fn wake(&self) {
        if self.is_home() {
            wake_local(&self.inner);
        } else {
            self.context()
                .co_schedule_inner(self.inner.clone(), Scheduler::AioCoSchedule);
        }
    }

    /// The coroutine's home context.
    pub fn context(&self) -> AioContext {
        self.inner
            .home
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .expect("CoHandle always has a home context")
    }

    /// The coroutine itself, if the caller is on its home thread.
    pub fn local(&self) -> Option<Coroutine> {
        self.is_home().then(|| Coroutine {
            inner: self.inner.clone(),
            _not_send: PhantomData,
        })
    }

    /// An address that identifies the coroutine, for traces and logs.
    pub fn as_ptr(&self) -> *const () {
        Arc::as_ptr(&self.inner).cast()
    }

    pub(crate) fn is_home(&self) -> bool {
        self.inner.home_thread.load(Relaxed) == tls::thread_token()
    }
}

impl fmt::Debug for CoHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoHandle")
            .field("ptr", &self.as_ptr())
            .finish()
    }
}

/// Whether the caller runs inside a coroutine (QEMU's `qemu_in_coroutine`).
pub fn in_coroutine() -> bool {
    !tls::current_co().is_null()
}

/// Suspends the running coroutine and returns to whoever entered it (QEMU's
/// `qemu_coroutine_yield`). Returns when the coroutine is entered again.
///
/// # Panics
/// Outside a coroutine: "Co-routine is yielding to no one".
#[inline(always)]
pub fn yield_now() {
    // The switch happens in the caller's frame, at the same call depth as
    // the `resume` in `enter` that it returns to, so that the CPU's
    // return-address predictor stays in step (an extra call level here costs
    // two mispredicted returns per round trip). The thread-local access is in
    // `yield_prepare`'s own frame, which ends before the switch.
    let yielder = yield_prepare();
    // No thread-local is touched after the switch (the coroutine may come
    // back on another thread if it was migrated).
    // SAFETY: the yielder lives at the base of this coroutine's stack for as
    // long as its initial function runs, which includes now.
    unsafe { &*yielder }.suspend(());
}

/// `yield_now`'s checks and trace: returns the running coroutine's yielder.
#[inline(never)]
fn yield_prepare() -> *const Yielder<(), ()> {
    tls::with_state(|st| {
        let me = st.current.get();
        if me.is_null() {
            yield_to_no_one();
        }
        // SAFETY: the running coroutine is live: its enterer holds an Arc.
        let me = unsafe { &*me };
        trace::qemu_coroutine_yield(me as *const CoInner as *const (), me.caller.get().cast());
        me.yielder.get()
    })
}

#[cold]
#[inline(never)]
fn yield_to_no_one() -> ! {
    panic!("Co-routine is yielding to no one");
}

/// Enters `co`, then the wakeups it queued, depth first (QEMU's
/// `qemu_aio_coroutine_enter`).
#[inline(never)]
pub(crate) fn enter(co: &Arc<CoInner>) {
    enter_one(co);
    if !co.wakeup.borrow().is_empty() {
        run_wakeups(co);
    }
}

/// Enters a coroutine taken from a co_schedule queue: clears `scheduled`.
pub(crate) fn enter_scheduled(co: &Arc<CoInner>) {
    // Release pairs with the Acquire of the next `mark_scheduled`: this
    // thread's last use of the queue link `next` (taking the batch) happens
    // before the next scheduler writes `next` in its push.
    co.scheduled.store(0, Release);
    enter(co);
}

#[cold]
fn run_wakeups(co: &CoInner) {
    /// If one of them panics, the rest are not lost: they are rescheduled.
    struct Pending(VecDeque<Arc<CoInner>>);
    impl Drop for Pending {
        fn drop(&mut self) {
            reschedule_wakeups(std::mem::take(&mut self.0));
        }
    }
    let mut pending = Pending(std::mem::take(&mut *co.wakeup.borrow_mut()));
    while let Some(next) = pending.0.pop_front() {
        enter_one(&next);
        let mut queued = next.wakeup.borrow_mut();
        while let Some(w) = queued.pop_back() {
            pending.0.push_front(w);
        }
    }
}

/// Hands queued wakeups to this thread's context instead of entering them
/// now (used when a panic interrupts the wakeup chain).
#[cold]
fn reschedule_wakeups(list: VecDeque<Arc<CoInner>>) {
    if list.is_empty() {
        return;
    }
    for co in list {
        // Claim it without panicking (this may run while unwinding); one
        // that someone else scheduled meanwhile is already on its way.
        if co
            .scheduled
            .compare_exchange(0, Scheduler::AioCoSchedule as u8, Acquire, Relaxed)
            .is_ok()
        {
            home_context(&co).push_scheduled(co);
        }
    }
}

#[inline(always)]
fn enter_one(co: &CoInner) {
    tls::with_state(|st| {
        let token = st.token();
        let cell = &st.current;
        if co.home_thread.load(Relaxed) != token {
            wrong_thread();
        }
        let sched = co.scheduled.load(Relaxed);
        if sched != 0 {
            already_scheduled(sched);
        }
        if !co.caller.get().is_null() {
            reentered();
        }
        // SAFETY: home thread (checked above); not running (caller is null),
        // so no other borrow of `raw` exists; the coroutine never touches
        // its own `raw`.
        let raw = unsafe { &mut *co.raw.get() };
        let Some(raw) = raw.as_mut() else {
            entered_after_termination();
        };
        let from = cell.get();
        co.caller
            .set(if from.is_null() { THREAD_CALLER } else { from });
        cell.set(co);
        // `ctx`: the home thread's token (equal to `home_thread`, checked
        // above); an atomic load here would not sink into the cold branch.
        trace::qemu_aio_coroutine_enter(
            token as *const (),
            from.cast(),
            co as *const CoInner as *const (),
            ptr::null(),
        );
        let guard = UnwindGuard { co, cell, from };
        let result = raw.resume(());
        // Normal return: restore inline; the guard only acts on a panic.
        std::mem::forget(guard);
        cell.set(from);
        co.caller.set(ptr::null());
        if let corosensei::CoroutineResult::Return(()) = result {
            terminated(co);
        }
    });
}

/// Restores the caller's state if the coroutine panicked (the panic then
/// continues into the enterer), and releases the dead coroutine's stack.
struct UnwindGuard<'a> {
    co: &'a CoInner,
    cell: &'a Cell<*const CoInner>,
    from: *const CoInner,
}

impl Drop for UnwindGuard<'_> {
    fn drop(&mut self) {
        self.cell.set(self.from);
        self.co.caller.set(ptr::null());
        // Wakeups it queued before panicking (a lock released while
        // unwinding hands over to a waiter) must not be lost: they go
        // through the home context's queue and run from its next poll.
        reschedule_wakeups(std::mem::take(&mut *self.co.wakeup.borrow_mut()));
        // SAFETY: home thread, and the switch has returned: no other borrow.
        if unsafe { &*self.co.raw.get() }
            .as_ref()
            .is_some_and(RawCo::done)
        {
            terminated(self.co);
        }
    }
}

/// A coroutine returned or panicked: its stack goes back to the pool.
#[cold]
#[inline(never)]
fn terminated(co: &CoInner) {
    trace::qemu_coroutine_terminate(co as *const CoInner as *const ());
    co.terminated.set(true);
    // SAFETY: home thread, and the switch has returned: no other borrow.
    if let Some(raw) = unsafe { &mut *co.raw.get() }.take() {
        stack::give(raw.into_stack());
    }
}

#[cold]
#[inline(never)]
fn already_scheduled(code: u8) -> ! {
    panic!(
        "Co-routine was already scheduled in '{}'",
        scheduler_name(code)
    );
}

#[cold]
#[inline(never)]
fn reentered() -> ! {
    panic!("Co-routine re-entered recursively");
}

#[cold]
#[inline(never)]
fn entered_after_termination() -> ! {
    panic!("Co-routine entered after it terminated");
}

#[cold]
#[inline(never)]
fn wrong_thread() -> ! {
    panic!("coroutine entered on a thread that is not its home context's");
}

/// QEMU's `aio_co_wake` on the home thread.
fn wake_local(co: &Arc<CoInner>) {
    let cur = tls::current_co();
    if cur.is_null() {
        enter(co);
    } else {
        assert!(
            !ptr::eq(cur, Arc::as_ptr(co)),
            "a coroutine cannot wake itself"
        );
        // SAFETY: the running coroutine is live and on this thread.
        unsafe { &*cur }.wakeup.borrow_mut().push_back(co.clone());
    }
}

fn home_context(co: &CoInner) -> AioContext {
    let mut home = co.home.lock().unwrap_or_else(|e| e.into_inner());
    home.get_or_insert_with(|| {
        assert_eq!(
            co.home_thread.load(Relaxed),
            tls::thread_token(),
            "a coroutine's home context is chosen on its home thread"
        );
        AioContext::current()
    })
    .clone()
}

impl CoInner {
    /// Claims the coroutine for a queue; panics if it is already scheduled.
    pub(crate) fn mark_scheduled(&self, who: Scheduler) {
        // Acquire on success pairs with the Release clear in
        // `enter_scheduled` (and `clear_scheduled`): the previous consumer is
        // done with the link `next` before our push writes it.
        if let Err(prev) = self
            .scheduled
            .compare_exchange(0, who as u8, Acquire, Relaxed)
        {
            panic!(
                "Co-routine was already scheduled in '{}'",
                scheduler_name(prev)
            );
        }
    }

    /// Releases a claim taken with [`mark_scheduled`](Self::mark_scheduled)
    /// by `who` without queueing the coroutine (a sleep ending). Returns
    /// whether `who` held the claim.
    pub(crate) fn clear_scheduled(&self, who: Scheduler) -> bool {
        // Release: pairs with the Acquire in `mark_scheduled` (see there).
        self.scheduled
            .compare_exchange(who as u8, 0, Release, Relaxed)
            .is_ok()
    }

    /// For migration: the coroutine must be on the caller's thread and not
    /// running. Returns whether it is.
    pub(crate) fn is_idle_here(&self) -> bool {
        self.home_thread.load(Relaxed) == tls::thread_token() && self.caller.get().is_null()
    }

    /// The token of the thread that may enter the coroutine.
    pub(crate) fn home_token(&self) -> usize {
        self.home_thread.load(Relaxed)
    }

    /// Moves the coroutine's home; the caller has claimed it (scheduled).
    pub(crate) fn set_home(&self, ctx: &AioContext) {
        *self.home.lock().unwrap_or_else(|e| e.into_inner()) = Some(ctx.clone());
        // Relaxed: published to the new thread by the queue push (Release).
        self.home_thread.store(ctx.home_token(), Relaxed);
    }
}
