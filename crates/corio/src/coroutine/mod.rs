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
//! thread's [`AioContext`](crate::AioContext). [`Coroutine`] is `!Send`; to
//! wake a coroutine from another thread, take a [`CoHandle`] with
//! [`Coroutine::handle`]: it is `Send`, and [`CoHandle::wake`] queues the
//! coroutine on its home context, where it resumes on its home thread.
//! Moving a coroutine to another thread is `unsafe`
//! ([`AioContext::co_schedule_migrate`](crate::AioContext::co_schedule_migrate),
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
//! `enter` that resumed it; the coroutine is then terminated. A wake of a
//! coroutine whose earlier wake has not run yet (queued behind the running
//! coroutine, or in a context's queue) panics with "Co-routine was already
//! scheduled in 'aio_co_wake'" (or `'aio_co_schedule'`), from any thread,
//! rather than resuming it twice.
//!
//! # Lifetime
//!
//! A coroutine lives while a handle to it does ([`Coroutine`], [`CoHandle`],
//! including the ones that wait lists, channels and context queues hold).
//! When the last one drops:
//!
//! * a terminated coroutine's object and stack go back to the pool;
//! * a never-entered one drops its closure on its home thread (sent home
//!   through its home context if the last handle dropped elsewhere; leaked
//!   if it cannot get there);
//! * a suspended one dropped on its home thread is unwound from its yield
//!   point: its destructors run as if it had been cancelled; dropped on
//!   another thread it is leaked (its stack may hold values that are not
//!   `Send`), as QEMU leaks an abandoned coroutine.
//!
//! The destructors that run while a coroutine is unwound this way (dropped
//! or cancelled) must not wait: nothing will ever resume the coroutine. A
//! coroutine lock, a sleep or `submit_co` called from such a destructor
//! panics naming the coroutine; since that panic happens during unwinding,
//! the process then aborts. Release resources without waiting (drop a
//! guard, close a channel, `try_lock`).
//!
//! Coroutines started with [`AioContext::spawn`](crate::AioContext::spawn)
//! are also owned by their context until they finish, and can be cancelled
//! ([`JoinHandle::abort`](crate::JoinHandle::abort),
//! [`AioContext::shutdown`](crate::AioContext::shutdown)).
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

// `unsafe_code` is allowed for this module (lib.rs) for mod.rs, enter.rs and
// cancel.rs, which touch the switch state, recycle.rs (the last-reference
// check), running.rs (a coroutine on a view of the stack it owns) and the
// unit tests (reading a coroutine's stack size); the rest deny it again.
mod cancel;
#[deny(unsafe_code)] // its loom model allows it for loom's UnsafeCell
mod claim;
mod enter;
#[deny(unsafe_code)]
mod home;
mod recycle;
mod running;
#[deny(unsafe_code)]
mod stack;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_pool_size;
#[deny(unsafe_code)]
pub(crate) mod tls;

pub(crate) use self::enter::*;
use self::recycle::*;

pub(crate) use cancel::{cancel, cancelling, Cancel};
pub use home::orphans_dropped;

/// Empties what the coroutine layer keeps in the calling thread's
/// thread-locals, as the thread's exit would: its orphans (dropped, and so
/// unwound here), then its pooled coroutine objects and its cached stacks
/// (given to the shared pool). For a reused worker thread between two
/// tasks (`io::task`'s workers). The thread's token, its identity, stays.
///
/// # Thread context
/// Outside any coroutine.
pub(crate) fn reset_thread_locals() {
    debug_assert!(tls::current_co().is_null(), "reset inside a coroutine");
    home::drop_orphans();
    recycle::pool::flush();
    stack::flush_cache();
}
pub(crate) use home::{install_current_home, take_orphans, Home, MoveTarget};

use std::cell::{Cell, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ptr::{self, NonNull};
use std::sync::{Arc, Mutex};

use corosensei::Yielder;

pub use stack::{
    dec_pool_size, inc_pool_size, pool_max, pooled, set_stack_size, stack_size, DEFAULT_STACK_SIZE,
};

use crate::loom::AtomicPtr;
use crate::trace;

use running::Running;

/// Who scheduled a coroutine: QEMU keeps the scheduling function's name in
/// `co->scheduled` to report double scheduling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Scheduler {
    AioCoSchedule = 1,
    /// A coroutine sleeping in `sync::CoSleep`: a wakeup from anyone else
    /// panics, as QEMU's `qemu_co_sleep` does.
    CoSleep = 2,
    /// Queued on the running coroutine's wakeup list by a wake on the same
    /// thread: a second wake before it runs panics (QEMU aborts the same way).
    AioCoWake = 3,
}

fn scheduler_name(code: u8) -> &'static str {
    match code {
        1 => "aio_co_schedule",
        2 => "qemu_co_sleep",
        3 => "aio_co_wake",
        _ => "?",
    }
}

/// The coroutine states, in [`CoInner::state`]. 0 is idle: never entered, or
/// suspended in `yield_now`; only an idle coroutine may be entered, so the
/// enter path checks "state is 0" in one comparison.
mod state {
    // `usize`, as `CoInner::state` is: the refusal check ORs it into its
    // other words straight from memory, with no zero-extension.
    /// Entered: it, or a coroutine it entered, is executing. Set and cleared
    /// by `enter_one` around the switch.
    pub(super) const RUNNING: usize = 1;
    /// Returned or panicked. Final until the object is recycled by the pool.
    pub(super) const TERMINATED: usize = 2;
    /// Only with `RUNNING`: its wakeup list is not empty (set by `wake_local`;
    /// read and cleared by `enter_one` after the switch returns).
    pub(super) const WAKEUPS: usize = 4;
}

/// The shared state of one coroutine.
///
/// Objects are pooled per thread with their stacks (QEMU's coroutine pool
/// reuses the `Coroutine` struct and its stack): when the last handle of a
/// terminated coroutine drops on its home thread, the allocation, with the
/// finished corosensei coroutine and its stack inside, goes to [`pool`], and
/// the next `Coroutine::new` on that thread reuses both.
pub(crate) struct CoInner {
    /// Link in a context's co_schedule queue; only that queue touches it.
    pub(crate) next: AtomicPtr<CoInner>,
    /// The token ([`tls::thread_token`]) of the only thread that may enter
    /// this coroutine, and 0 or the [`Scheduler`] that queued it, in one
    /// word. The claim is taken by a compare-exchange from 0 (any thread:
    /// that is the double-schedule check) and released by the home thread
    /// just before it enters the coroutine; the home changes only by a
    /// migration, which holds the claim (the coroutine is scheduled and not
    /// running), and the queue push and take publish it to the new thread
    /// (the protocol and its loom models are in `claim.rs`).
    scheduled: claim::Claim,
    /// The home context ("a place to wake me", see [`Home`]), filled on
    /// demand on the home thread; read by wakers on other threads. Emptied
    /// when the object is pooled.
    home: Mutex<Option<Arc<dyn Home>>>,
    // ---- Home thread only (see the `Sync` impl) ----
    /// The corosensei coroutine: a finished one (holding its stack) once
    /// terminated; `None` only after `Drop` took it. Borrowed mutably only by
    /// `enter_one` (around the switch, while `state` is `RUNNING`), by the
    /// unwind guard after the switch, by `reuse` (a pooled object, owned by
    /// the pool alone) and by `Drop`; never from inside the coroutine.
    raw: UnsafeCell<Option<Running>>,
    /// Set by the coroutine's first instructions; valid while it runs.
    yielder: Cell<*const Yielder<(), ()>>,
    /// The coroutine that was current when this one was entered (null if
    /// none): `enter_one` makes it current again once this one yields,
    /// returns or unwinds. Meaningful only while `RUNNING`.
    caller: Cell<*const CoInner>,
    /// One of the [`state`] values (a word: see [`state`]).
    state: Cell<usize>,
    /// Terminated by [`cancel`] rather than by returning: a wakeup that was
    /// already on its way (queued, or registered with an fd handler or a
    /// lock) finds it terminated and is dropped instead of panicking.
    cancelled: Cell<bool>,
    /// Coroutines woken while this one ran; entered when it yields or ends.
    wakeup: RefCell<VecDeque<Arc<CoInner>>>,
    /// Set by `co_reschedule_self` (with `WAKEUPS`, so that the enterer
    /// looks after the switch): once the coroutine has yielded, its enterer
    /// hands it to this context. Not an owned handle: it points at the
    /// `&AioContext` that `co_reschedule_self` borrowed, which outlives the
    /// hand-over because that call returns only once the coroutine has been
    /// resumed, after the push (saves two contended reference-count updates
    /// per hop).
    migrate_to: Cell<Option<NonNull<dyn MoveTarget>>>,
    /// How many `AioContext::poll` calls are in progress on this coroutine's
    /// stack: while any is, the coroutine must not migrate (those frames use
    /// their context's home-thread state), see [`PollFrame`].
    polls: Cell<u32>,
}

// SAFETY: the fields that are not thread-safe (`raw`, `yielder`, `caller`,
// `state`, `wakeup`) are touched only on the home thread: `enter_one` checks
// the home thread (in `scheduled`) before anything else, the running coroutine and its wakers
// on the same thread are by definition there, the pool is per thread and
// takes objects only on their home thread, and the other threads only
// use `next`, `scheduled` and `home`, which are atomics or
// behind a mutex. The non-`Send` corosensei coroutine moves threads only
// through `AioContext::co_schedule_migrate`, whose caller vouches that the
// stack holds only `Send` values. Dropping on another thread is handled in
// `Drop` (a suspended coroutine is leaked there rather than unwound).
unsafe impl Send for CoInner {}
// SAFETY: see above.
unsafe impl Sync for CoInner {}

impl Drop for CoInner {
    fn drop(&mut self) {
        if self.holds_stack_mut() && self.scheduled.home_mut() == tls::thread_token() {
            // Dropped elsewhere, its home thread's count stays one high
            // until that thread exits: it then keeps one stack fewer.
            tls::kept_stack_released();
        }
        let Some(mut raw) = self.raw.get_mut().take() else {
            return;
        };
        let home_thread = self.scheduled.home_mut();
        let at_home = home_thread == tls::thread_token();
        if raw.done() {
            stack::give(raw.into_stack());
        } else if !raw.started() {
            // Never entered: dropping drops the closure; nothing runs as
            // this coroutine (its yielder does not exist yet). The closure
            // need not be `Send`: off its home thread it is sent home and
            // dropped there (or leaked if it cannot get there).
            if at_home {
                drop(raw);
            } else {
                let home = self
                    .home
                    .get_mut()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                send_home(raw, home_thread, home);
            }
        } else if at_home {
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

/// A never-entered coroutine (its closure inside) on its way back to its
/// home thread, the only one where the closure may be dropped.
struct HomeBound {
    raw: ManuallyDrop<Running>,
    home_thread: usize,
}

// SAFETY: the coroutine inside is never used off its home thread: it is only
// moved (its bytes copied, nothing read through them) until `Drop` runs, and
// `Drop` drops it only on the home thread, leaking it anywhere else.
unsafe impl Send for HomeBound {}

impl Drop for HomeBound {
    fn drop(&mut self) {
        if tls::thread_token() == self.home_thread {
            // SAFETY: dropped once, here, on its home thread.
            unsafe { ManuallyDrop::drop(&mut self.raw) };
        }
    }
}

/// Drops a never-entered coroutine from a bottom half of its home context;
/// leaks it if it has no context (or the bottom half never runs there).
#[cold]
fn send_home(raw: Running, home_thread: usize, home: Option<Arc<dyn Home>>) {
    let bound = HomeBound {
        raw: ManuallyDrop::new(raw),
        home_thread,
    };
    match home {
        Some(home) => home.run_at_home(Box::new(move || drop(bound))),
        None => std::mem::forget(bound),
    }
}

/// A stackful coroutine. `!Send`: it runs on the thread that created it.
/// Cloning gives another handle to the same coroutine.
pub struct Coroutine {
    /// Taken only by `Drop`, which hands it to [`release`].
    inner: ManuallyDrop<Arc<CoInner>>,
    _not_send: PhantomData<*const ()>,
}

impl Clone for Coroutine {
    fn clone(&self) -> Self {
        Coroutine::from_arc(Arc::clone(&self.inner))
    }
}

impl Drop for Coroutine {
    fn drop(&mut self) {
        // SAFETY: `inner` is not used again: this is the handle's drop.
        let inner = unsafe { ManuallyDrop::take(&mut self.inner) };
        release(inner);
    }
}

/// A `Send` handle to a coroutine, for waking it from any thread.
#[derive(Clone)]
pub struct CoHandle {
    pub(crate) inner: Arc<CoInner>,
}

impl Drop for CoHandle {
    fn drop(&mut self) {
        // The last handle of a terminated coroutine, dropped at home: pool
        // the object through a second reference (the field itself is
        // dropped by the compiler right after this).
        if Arc::strong_count(&self.inner) == 1 {
            release_handle(&mut self.inner);
        }
    }
}

impl Coroutine {
    fn from_arc(inner: Arc<CoInner>) -> Coroutine {
        Coroutine {
            inner: ManuallyDrop::new(inner),
            _not_send: PhantomData,
        }
    }

    /// Creates a coroutine that will run `entry` when first entered (QEMU's
    /// `qemu_coroutine_create`). The coroutine object and its stack come from
    /// the pool.
    ///
    /// # Thread context
    /// Any thread; the coroutine's home is the calling thread.
    pub fn new<F: FnOnce() + 'static>(entry: F) -> Coroutine {
        match pool::take() {
            Some(co) => {
                reuse(&co, entry);
                Coroutine::from_arc(co)
            }
            None => Coroutine::from_arc(fresh(entry)),
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
        self.inner.state.get() & state::RUNNING != 0
    }

    /// Whether the coroutine has returned (or panicked).
    pub fn is_terminated(&self) -> bool {
        self.inner.state.get() == state::TERMINATED
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
        let arc = ManuallyDrop::new(unsafe { Arc::from_raw(p) });
        if Arc::strong_count(&arc) == 0 {
            return None; // being dropped: must not be resurrected
        }
        Some(Coroutine::from_arc(Arc::clone(&arc)))
    }

    /// Wakes the coroutine in its home context (QEMU's `aio_co_wake`): called
    /// from a coroutine, it is queued and entered when the caller yields or
    /// ends; otherwise it is entered now.
    pub fn wake(&self) {
        wake_local(&self.inner);
    }

    // `handle`, `context` and `set_home_context` are aio's (aio/home.rs):
    // they name the `AioContext`.

    /// The shared state, for the layers above (aio).
    pub(crate) fn inner(&self) -> &Arc<CoInner> {
        &self.inner
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

/// The corosensei body of a coroutine of the object at `me`, running
/// `entry`: it first stores its yielder in the object (for `yield_now`).
#[inline(always)]
fn body<F: FnOnce() + 'static>(
    me: *const CoInner,
    entry: F,
) -> impl FnOnce(&Yielder<(), ()>, ()) + 'static {
    move |yielder: &Yielder<(), ()>, ()| {
        // SAFETY: `me` is the object that holds this coroutine; it is live
        // while the coroutine runs (its enterer holds a reference for the
        // whole switch) and never moves (an `Arc` allocation).
        unsafe { &*me }.yielder.set(yielder);
        entry()
    }
}

/// A new object for a coroutine running `entry` (the pool was empty).
#[cold]
#[inline(never)]
fn fresh<F: FnOnce() + 'static>(entry: F) -> Arc<CoInner> {
    let mut co = Arc::new(CoInner {
        next: AtomicPtr::new(ptr::null_mut()),
        scheduled: claim::Claim::new(tls::thread_token()),
        home: Mutex::new(None),
        raw: UnsafeCell::new(None),
        yielder: Cell::new(ptr::null()),
        caller: Cell::new(ptr::null()),
        state: Cell::new(0),
        cancelled: Cell::new(false),
        wakeup: RefCell::new(VecDeque::new()),
        migrate_to: Cell::new(None),
        polls: Cell::new(0),
    });
    let me = Arc::as_ptr(&co);
    let inner = Arc::get_mut(&mut co).expect("a new Arc is unique");
    *inner.raw.get_mut() = Some(Running::new(stack::take(), body(me, entry)));
    co
}

/// Prepares a pooled object for a new coroutine running `entry` on its
/// stack.
#[inline]
fn reuse<F: FnOnce() + 'static>(co: &CoInner, entry: F) {
    // SAFETY: the object came from this thread's pool, which held the only
    // reference (checked by `release`): nothing else can borrow `raw`, and
    // the finished coroutine in it is not running.
    let raw = unsafe { &mut *co.raw.get() };
    match raw {
        Some(done) if stack::fits_now(done.stack_len()) => done.renew(body(co, entry)),
        _ => renew_on_new_stack(raw, body(co, entry)),
    }
    co.state.set(0);
    co.cancelled.set(false);
}

/// `reuse` when the pooled object gave its stack back when it terminated,
/// or has one of an old size: a new coroutine on a fitting stack.
#[cold]
#[inline(never)]
fn renew_on_new_stack<F>(raw: &mut Option<Running>, body: F)
where
    F: FnOnce(&Yielder<(), ()>, ()) + 'static,
{
    if let Some(done) = raw.take() {
        stack::give(done.into_stack());
    }
    *raw = Some(Running::new(stack::take(), body));
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
            let home = self
                .inner
                .home()
                .expect("CoHandle always has a home context");
            self.inner.mark_scheduled(Scheduler::AioCoSchedule);
            home.push_scheduled(self.inner.clone());
        }
    }

    // `context` is aio's (aio/home.rs).

    /// The coroutine itself, if the caller is on its home thread.
    pub fn local(&self) -> Option<Coroutine> {
        self.is_home()
            .then(|| Coroutine::from_arc(self.inner.clone()))
    }

    /// An address that identifies the coroutine, for traces and logs.
    pub fn as_ptr(&self) -> *const () {
        Arc::as_ptr(&self.inner).cast()
    }

    pub(crate) fn is_home(&self) -> bool {
        self.inner.scheduled.home() == tls::thread_token()
    }
}

impl fmt::Debug for CoHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoHandle")
            .field("ptr", &self.as_ptr())
            .finish()
    }
}

/// The running coroutine, for a primitive (`what`) that is about to make
/// it wait.
///
/// # Panics
/// Outside a coroutine ("`what`: not in a coroutine"), and in a coroutine
/// whose last handle dropped and whose stack is being unwound (a destructor
/// running then cannot wait: nothing could ever resume it).
pub(crate) fn current_for(what: &str) -> Coroutine {
    match Coroutine::current() {
        Some(_) if cancelling() => panic!(
            "{what}: coroutine {:p} is being cancelled (its stack unwinds) and a destructor \
             tried to wait; destructors that run while a coroutine is dropped or cancelled \
             must not wait",
            tls::current_co()
        ),
        Some(co) => co,
        None if in_coroutine() => panic!(
            "{what}: coroutine {:p} is being dropped (its stack unwinds because its last \
             handle went away) and a destructor tried to wait; destructors that run while \
             a coroutine is dropped or cancelled must not wait",
            tls::current_co()
        ),
        None => panic!("{what}: not in a coroutine"),
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

/// `yield_now`'s check: returns the running coroutine's yielder. (Its
/// trace event is emitted by the enterer once the switch returns, see
/// `enter::switch`.)
#[inline(never)]
fn yield_prepare() -> *const Yielder<(), ()> {
    let me = tls::with_state(|st| st.current.get());
    if me.is_null() {
        yield_to_no_one();
    }
    // SAFETY: the running coroutine is live: its enterer holds an Arc.
    unsafe { &*me }.yielder.get()
}

#[cold]
#[inline(never)]
fn yield_to_no_one() -> ! {
    panic!("Co-routine is yielding to no one");
}

impl CoInner {
    /// Whether the coroutine terminated and still holds its stack (in the
    /// finished corosensei coroutine): such coroutines are counted in their
    /// home thread's `kept_stacks` (at most [`KEEP_STACKS`] plus the extra
    /// pool size from `inc_pool_size` per thread). A
    /// terminated coroutine's stack is either kept (counted) or given back
    /// at once (`raw` emptied), see [`keep_or_give_stack`].
    fn holds_stack_mut(&mut self) -> bool {
        *self.state.get_mut() == state::TERMINATED && self.raw.get_mut().is_some()
    }

    /// The home context, if it has one yet.
    pub(crate) fn home(&self) -> Option<Arc<dyn Home>> {
        self.home.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The home context; if it has none, `current()` becomes it (the
    /// caller's current context: only the home thread may choose).
    ///
    /// # Panics
    /// If a home has to be chosen off the home thread.
    pub(crate) fn home_or_insert_with(
        &self,
        current: impl FnOnce() -> Arc<dyn Home>,
    ) -> Arc<dyn Home> {
        let mut home = self.home.lock().unwrap_or_else(|e| e.into_inner());
        home.get_or_insert_with(|| {
            assert_eq!(
                self.scheduled.home(),
                tls::thread_token(),
                "a coroutine's home context is chosen on its home thread"
            );
            current()
        })
        .clone()
    }

    /// Claims the coroutine for a queue; panics if it is already scheduled.
    pub(crate) fn mark_scheduled(&self, who: Scheduler) {
        // Its ordering: see `Claim::mark`.
        if let Err(prev) = self.scheduled.mark(who) {
            panic!(
                "Co-routine was already scheduled in '{}'",
                scheduler_name(prev)
            );
        }
    }

    /// Claims the coroutine like [`mark_scheduled`](Self::mark_scheduled),
    /// but returns `false` instead of panicking if someone else holds the
    /// claim (that one's wakeup will enter it).
    pub(crate) fn try_mark_scheduled(&self, who: Scheduler) -> bool {
        // Its ordering: see `Claim::mark`.
        self.scheduled.mark(who).is_ok()
    }

    /// Releases a claim taken with [`mark_scheduled`](Self::mark_scheduled)
    /// by `who` without queueing the coroutine (a sleep ending). Returns
    /// whether `who` held the claim.
    pub(crate) fn clear_scheduled(&self, who: Scheduler) -> bool {
        // Its ordering: see `Claim::clear`.
        self.scheduled.clear(who)
    }

    /// For migration: the coroutine must be on the caller's thread and not
    /// running. Returns whether it is.
    pub(crate) fn is_idle_here(&self) -> bool {
        self.scheduled.home() == tls::thread_token() && self.state.get() & state::RUNNING == 0
    }

    /// The token of the thread that may enter the coroutine.
    pub(crate) fn home_token(&self) -> usize {
        self.scheduled.home()
    }

    /// Makes `home` the home context; the caller checked that it belongs to
    /// the coroutine's home thread.
    pub(crate) fn replace_home(&self, home: Arc<dyn Home>) {
        *self.home.lock().unwrap_or_else(|e| e.into_inner()) = Some(home);
    }

    /// Moves the coroutine's home to `home`, whose thread is `token`; the
    /// caller has claimed it (scheduled).
    pub(crate) fn set_home(&self, home: Arc<dyn Home>, token: usize) {
        *self.home.lock().unwrap_or_else(|e| e.into_inner()) = Some(home);
        // Published to the new thread by the queue push (Release).
        self.scheduled.set_home(token);
    }
}
