//! Spawning coroutines with results: [`AioContext::spawn`],
//! [`IoThread::spawn`](crate::IoThread::spawn), [`spawn_local`] and the
//! [`JoinHandle`] they return.
//!
//! [`Coroutine::new`] is QEMU's low-level form: a closure with no result,
//! created on the calling thread, whose panic reaches whoever enters it.
//! `spawn` is what a server wants: start work on any context from any
//! thread, get its value back, and keep the loop going when it panics.
//!
//! * The coroutine is created on the context's home thread and entered from
//!   that context's next poll (never inside the `spawn` call).
//! * A panic inside it is caught into its handle as [`JoinError::Panic`];
//!   the context's loop goes on.
//! * [`JoinHandle::abort`] cancels it: unwound from the point where it
//!   yielded, its destructors run, and `join` returns
//!   [`JoinError::Cancelled`]. A coroutine that never started is dropped
//!   without running.
//! * Dropping the handle detaches the coroutine; the context still owns it,
//!   and [`AioContext::shutdown`] (which [`IoThread::join`](crate::IoThread::join)
//!   calls) cancels it if it has not finished.
//!
//! # Examples
//!
//! ```
//! use corio::{IoThread, JoinError};
//!
//! let t = IoThread::new().unwrap();
//! let sum = t.spawn(|| {
//!     // In a coroutine on the iothread: let its loop run other work.
//!     corio::yield_to_loop();
//!     (1..=10).sum::<u32>()
//! });
//! assert_eq!(sum.join().unwrap(), 55);
//!
//! // A panic is caught into the handle; the iothread goes on.
//! let bad = t.spawn(|| -> u32 { panic!("boom") });
//! assert!(matches!(bad.join(), Err(JoinError::Panic(_))));
//! assert_eq!(t.spawn(|| 7).join().unwrap(), 7);
//! t.join();
//! ```

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::aio::AioContext;
use crate::coroutine::{self, CoHandle, Coroutine};

/// Why a spawned coroutine produced no value.
#[non_exhaustive]
pub enum JoinError {
    /// It panicked; the payload, as [`std::panic::catch_unwind`] gives it.
    Panic(Box<dyn Any + Send + 'static>),
    /// It was cancelled ([`JoinHandle::abort`], or its context shut down)
    /// before it returned.
    Cancelled,
}

impl JoinError {
    /// The panic message, when the payload is a string.
    pub fn panic_message(&self) -> Option<&str> {
        match self {
            JoinError::Panic(p) => p
                .downcast_ref::<&'static str>()
                .copied()
                .or_else(|| p.downcast_ref::<String>().map(String::as_str)),
            JoinError::Cancelled => None,
        }
    }

    /// Whether it was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, JoinError::Cancelled)
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Panic(_) => f
                .debug_tuple("Panic")
                .field(&self.panic_message().unwrap_or("<non-string payload>"))
                .finish(),
            JoinError::Cancelled => f.write_str("Cancelled"),
        }
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Panic(_) => write!(
                f,
                "coroutine panicked: {}",
                self.panic_message().unwrap_or("<non-string payload>")
            ),
            JoinError::Cancelled => f.write_str("coroutine was cancelled"),
        }
    }
}

impl std::error::Error for JoinError {}

/// Who waits for the result.
enum Waiter {
    /// A coroutine, woken in its home context.
    Co(CoHandle),
    /// A thread polling its context (outside any coroutine): kicked with an
    /// empty bottom half.
    Ctx(AioContext),
    /// An executor that polled the handle as a `Future`.
    Task(Waker),
}

/// What the coroutine and its handle share. The mutex guards all of it.
struct Slot<T> {
    /// The outcome, until `join` takes it.
    result: Option<Result<T, JoinError>>,
    /// Set with `result`, never cleared (the result may have been taken).
    finished: bool,
    /// The coroutine, from its creation until it finishes (for `abort`),
    /// and the context that spawned it and keeps it in its registry (its
    /// home, unless it migrated since).
    co: Option<(CoHandle, AioContext)>,
    waiter: Option<Waiter>,
}

struct JoinState<T> {
    slot: Mutex<Slot<T>>,
    /// Signalled when the result is set, for joiners that have no context.
    done: Condvar,
    /// `abort` was called. Read by the start bottom half under `slot`'s
    /// lock, written before `abort` takes that lock: whichever of the two
    /// locks second sees the other's work.
    abort: AtomicBool,
}

impl<T> JoinState<T> {
    fn lock(&self) -> MutexGuard<'_, Slot<T>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores the outcome, forgets the coroutine, and wakes the joiner.
    fn finish(&self, r: Result<T, JoinError>) {
        let (waiter, co) = {
            let mut slot = self.lock();
            slot.result = Some(r);
            slot.finished = true;
            (slot.waiter.take(), slot.co.take())
        };
        self.done.notify_all();
        if let Some((co, owner)) = co {
            owner.disown(co.as_ptr());
        }
        match waiter {
            Some(Waiter::Co(h)) => h.wake(),
            // The joiner polls that context: if it is this thread, it sees
            // the result when the poll running us returns.
            Some(Waiter::Ctx(ctx)) if !ctx.in_home_thread() => ctx.bh_schedule_oneshot(|| {}),
            Some(Waiter::Task(w)) => w.wake(),
            _ => {}
        }
    }
}

/// Owned by the coroutine's closure: finishes the handle with `Cancelled`
/// if the closure is dropped without running to the end (cancelled before
/// it was first entered, or dropped with its context).
struct Finisher<T>(Option<Arc<JoinState<T>>>);

impl<T> Finisher<T> {
    fn run(mut self, f: impl FnOnce() -> T) {
        let r = catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
            if coroutine::cancelling() {
                // `cancel`'s forced unwinding, caught here: return
                // normally, which ends the unwinding as well.
                JoinError::Cancelled
            } else {
                JoinError::Panic(p)
            }
        });
        if let Some(s) = self.0.take() {
            s.finish(r);
        }
    }
}

impl<T> Drop for Finisher<T> {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.finish(Err(JoinError::Cancelled));
        }
    }
}

/// A handle to a spawned coroutine: wait for its value, check whether it
/// finished, or cancel it. `Send` when `T` is. Dropping it detaches the
/// coroutine, which runs on.
pub struct JoinHandle<T> {
    state: Arc<JoinState<T>>,
}

impl<T> JoinHandle<T> {
    /// Waits for the coroutine and returns its value.
    ///
    /// * In a coroutine, the caller yields until the result is there.
    /// * Outside a coroutine, on a thread that has a current context, that
    ///   context is polled meanwhile (so joining a coroutine spawned on the
    ///   caller's own context works).
    /// * On a thread without a context, the thread blocks.
    ///
    /// # Errors
    /// [`JoinError::Panic`] if it panicked, [`JoinError::Cancelled`] if it
    /// was cancelled.
    ///
    /// # Panics
    /// If [`try_join`](Self::try_join) already took the result.
    pub fn join(self) -> Result<T, JoinError> {
        let st = &*self.state;
        loop {
            let mut slot = st.lock();
            if let Some(r) = slot.result.take() {
                return r;
            }
            assert!(!slot.finished, "JoinHandle::join: try_join took the result");
            if let Some(me) = Coroutine::current() {
                slot.waiter = Some(Waiter::Co(me.handle()));
                drop(slot);
                drop(me);
                coroutine::yield_now();
            } else if let Some(ctx) = AioContext::try_current() {
                slot.waiter = Some(Waiter::Ctx(ctx.clone()));
                drop(slot);
                ctx.poll(true);
            } else {
                slot.waiter = None;
                drop(st.done.wait_while(slot, |s| !s.finished));
            }
        }
    }

    /// The result, if the coroutine has finished and it was not taken yet.
    /// Never waits.
    pub fn try_join(&mut self) -> Option<Result<T, JoinError>> {
        self.state.lock().result.take()
    }

    /// Whether the coroutine has finished (returned, panicked or been
    /// cancelled).
    pub fn is_finished(&self) -> bool {
        self.state.lock().finished
    }

    /// Cancels the coroutine: if it has not started it never will; if it is
    /// suspended it is unwound from its yield point on its home thread
    /// (its destructors run) and [`join`](Self::join) returns
    /// [`JoinError::Cancelled`]; if it is running (it called `abort` on
    /// itself), that happens once it yields. A finished coroutine keeps its
    /// result. Wakeups already on their way to it are dropped.
    ///
    /// # Thread context
    /// Any thread. On the coroutine's home thread, a suspended coroutine is
    /// unwound before `abort` returns; elsewhere it is unwound from its
    /// context's next poll.
    pub fn abort(&self) {
        self.state.abort.store(true, SeqCst);
        let co = {
            let slot = self.state.lock();
            if slot.finished {
                return;
            }
            slot.co.as_ref().map(|(co, _)| co.clone())
        };
        if let Some(co) = co {
            cancel_at_home(co);
        }
        // Not created yet: the start bottom half sees `abort`.
    }
}

/// A handle is a `Future` of the coroutine's outcome, for async code: any
/// executor may poll it, from any thread, and its waker is called from the
/// thread where the coroutine finishes or its closure is dropped (its home
/// thread, unless its context was dropped elsewhere). In a coroutine,
/// [`join`](JoinHandle::join) does the same without a waker;
/// [`crate::future::block_on`] accepts a handle too.
///
/// # Panics
/// If polled again after it returned `Ready`, or after
/// [`try_join`](Self::try_join) took the result.
impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.state.lock();
        if let Some(r) = slot.result.take() {
            return Poll::Ready(r);
        }
        assert!(
            !slot.finished,
            "JoinHandle polled after its result was taken (it returned Ready, or try_join took it)"
        );
        match &slot.waiter {
            Some(Waiter::Task(w)) if w.will_wake(cx.waker()) => {}
            _ => slot.waiter = Some(Waiter::Task(cx.waker().clone())),
        }
        Poll::Pending
    }
}

/// Cancels `co` now if the caller is its home thread and it is not running,
/// else from a bottom half of its home context, retried until it yields.
fn cancel_at_home(co: CoHandle) {
    if co.is_home() && coroutine::cancel(&co.inner) != coroutine::Cancel::Running {
        return;
    }
    co.context().bh_schedule_oneshot(move || cancel_at_home(co));
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

fn new_state<T>() -> Arc<JoinState<T>> {
    Arc::new(JoinState {
        slot: Mutex::new(Slot {
            result: None,
            finished: false,
            co: None,
            waiter: None,
        }),
        done: Condvar::new(),
        abort: AtomicBool::new(false),
    })
}

/// On `ctx`'s home thread: creates the coroutine, records it, and either
/// enters it now (`enter_now`, from the start bottom half) or schedules it
/// for the next poll.
fn start<T: 'static>(
    ctx: &AioContext,
    state: Arc<JoinState<T>>,
    f: impl FnOnce() -> T + 'static,
    enter_now: bool,
) {
    let mut slot = state.lock();
    if state.abort.load(SeqCst) {
        drop(slot);
        state.finish(Err(JoinError::Cancelled));
        return;
    }
    let finisher = Finisher(Some(state.clone()));
    let co = Coroutine::new(move || finisher.run(f));
    co.set_home_context(ctx);
    let handle = co.handle();
    slot.co = Some((handle.clone(), ctx.clone()));
    drop(slot);
    ctx.adopt(&handle);
    if enter_now {
        co.enter();
    } else {
        ctx.co_schedule(&handle);
    }
}

impl AioContext {
    /// Runs `f` in a new coroutine on this context and returns a handle to
    /// its result. The coroutine is created on the context's home thread
    /// and entered from its next poll; a panic inside it is caught into the
    /// handle and the loop goes on. See [`crate::spawn`].
    ///
    /// # Thread context
    /// Any thread.
    ///
    /// # Examples
    ///
    /// ```
    /// use corio::AioContext;
    ///
    /// let ctx = AioContext::new().unwrap();
    /// let h = ctx.spawn(|| 6 * 7);
    /// assert!(!h.is_finished()); // nothing runs until the context polls
    /// assert_eq!(h.join().unwrap(), 42); // join polls this thread's context
    /// ```
    pub fn spawn<T, F>(&self, f: F) -> JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let state = new_state();
        if self.in_home_thread() {
            start(self, state.clone(), f, false);
        } else {
            let (ctx, st) = (self.downgrade(), state.clone());
            self.bh_schedule_oneshot(move || {
                if let Some(ctx) = ctx.upgrade() {
                    start(&ctx, st, f, true);
                }
            });
        }
        JoinHandle { state }
    }
}

/// Runs `f` in a new coroutine on the calling thread's current context,
/// which enters it from its next poll. `f` and its value need not be
/// `Send`. Otherwise as [`AioContext::spawn`].
///
/// # Thread context
/// Any thread; the coroutine lives on the calling thread.
///
/// # Examples
///
/// ```
/// use std::rc::Rc;
///
/// let shared = Rc::new(5); // not Send
/// let s = shared.clone();
/// let h = corio::spawn_local(move || *s + 1);
/// assert_eq!(h.join().unwrap(), 6);
/// ```
pub fn spawn_local<T: 'static>(f: impl FnOnce() -> T + 'static) -> JoinHandle<T> {
    let state = new_state();
    start(&AioContext::current(), state.clone(), f, false);
    JoinHandle { state }
}

/// Lets the context run its other work: schedules the running coroutine
/// on its home context and yields; it resumes from that context's next
/// poll (tokio's `yield_now`; QEMU writes `aio_co_schedule(ctx, self)`
/// then `qemu_coroutine_yield()`).
///
/// # Thread context
/// Coroutine only.
///
/// # Panics
/// Outside a coroutine.
pub fn yield_to_loop() {
    let me = Coroutine::current().expect("yield_to_loop: not in a coroutine");
    let h = me.handle();
    drop(me);
    h.context().co_schedule(&h);
    drop(h);
    coroutine::yield_now();
}
