//! The futures bridge: wait on any [`std::future::Future`] from a
//! coroutine with [`block_on`], and await a [`JoinHandle`](crate::JoinHandle)
//! (which is a `Future`) from async code.
//!
//! corio's coroutines are stackful: they wait by yielding, and need no
//! `async`. A library that only has an async API (imago's async mode, a
//! channel, an async client) can still be used from a coroutine:
//! `block_on(fut)` polls the future and, while it is pending, suspends the
//! coroutine so that its thread serves everyone else. The future's
//! [`Waker`] is `Send + Sync`; called from any thread, it resumes the
//! coroutine in its home context, on its home thread, where the future is
//! polled again.
//!
//! # What `block_on` guarantees
//!
//! * **No lost wakeup.** A wake that comes while the future is being polled
//!   (before the coroutine has suspended) makes it poll again instead of
//!   sleeping.
//! * **No double schedule.** However many wakes come, from however many
//!   threads, the coroutine is resumed at most once per suspension; later
//!   wakes only ask for one more poll. Wakers may be cloned, sent anywhere,
//!   and called any number of times, also after `block_on` returned (then
//!   they do nothing, and they do not keep the coroutine alive).
//! * **Spurious resumes are harmless.** If something else enters the
//!   suspended coroutine, it polls the future again and goes back to
//!   sleep if it is still pending; a wake that raced with that resume does
//!   not enter the coroutine a second time later.
//! * **A future that wakes itself forever does not starve the loop.** After
//!   [`POLL_BUDGET`] polls in a row that each ended with a wake, the
//!   coroutine [yields to its loop](crate::yield_to_loop) once, so other
//!   coroutines and callbacks of the context run, then polls again.
//! * **Cancellation drops the future at home.** A coroutine cancelled while
//!   in `block_on` ([`JoinHandle::abort`](crate::JoinHandle::abort),
//!   [`AioContext::shutdown`]) is unwound from its suspension point, and
//!   the future is dropped then, on the coroutine's home thread.
//!
//! The future is polled only on the coroutine's home thread, so it need not
//! be `Send`. The home context must be polled for the coroutine to resume
//! (an [`IoThread`](crate::IoThread) does that; on a thread of your own,
//! call [`AioContext::poll`]). A coroutine moved to another thread while it
//! waits, by the unsafe [`AioContext::co_schedule_migrate`], polls the
//! future there, with a new waker for its new home (the caller of that
//! function vouches for the future being `Send`).
//!
//! Outside a coroutine, `block_on` blocks the calling thread (see
//! [`block_on`] for the exact rules).
//!
//! # Futures that need another runtime (tokio)
//!
//! `block_on` is an executor for *runtime-independent* futures: channels
//! (`tokio::sync`, `futures-channel`), locks, [`JoinHandle`](crate::JoinHandle)s,
//! async code written over corio's own primitives, libraries that do their
//! I/O through a trait you implement. What works and what does not:
//!
//! * **Works:** futures that need no reactor, directly: `block_on(rx)` for a
//!   `tokio::sync::oneshot::Receiver`, a `tokio::sync::Mutex` lock, and so
//!   on. Their wakers are called from whichever thread completes them.
//! * **Works, through a runtime on other threads:** a future that needs
//!   tokio's reactor or timer (`tokio::net`, `tokio::time`, `reqwest`) is
//!   spawned on a tokio runtime and its `tokio::task::JoinHandle` is
//!   awaited with `block_on(rt_handle.spawn(fut))`. The future runs on
//!   tokio's worker threads, and tokio's waker resumes the coroutine from
//!   there. The future (and its output) must be `Send + 'static`, as for
//!   any `tokio::spawn`.
//! * **Does not work:** polling a reactor-bound tokio future directly in a
//!   coroutine, `block_on(tokio::time::sleep(d))`: tokio panics "there is no
//!   reactor running, must be called from the context of a Tokio 1.x
//!   runtime", because corio's loop is not tokio's driver. Entering the
//!   runtime with `Handle::enter` around it is not a fix: the guard is
//!   thread-local, and other coroutines of the thread run, enter and drop
//!   their own guards while this one is suspended (tokio panics when guards
//!   are dropped out of order).
//! * **Does not work:** `tokio::runtime::Runtime::block_on` or
//!   `futures::executor::block_on` inside a coroutine: they block the
//!   whole thread, and every other coroutine of the context with it. Use
//!   this module's `block_on`.
//!
//! # Examples
//!
//! A coroutine on an IoThread waits for a future completed by another
//! thread; its thread keeps serving other work meanwhile:
//!
//! ```
//! use corio::future::block_on;
//! use corio::IoThread;
//!
//! let t = IoThread::new().unwrap();
//! let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
//! let h = t.spawn(move || block_on(rx).unwrap() + 1);
//! std::thread::spawn(move || tx.send(41).unwrap());
//! assert_eq!(h.join().unwrap(), 42);
//! t.join();
//! ```
//!
//! A tokio-dependent future, run on a tokio runtime and awaited from a
//! coroutine:
//!
//! ```
//! use std::time::Duration;
//! use corio::future::block_on;
//! use corio::IoThread;
//!
//! let rt = tokio::runtime::Builder::new_multi_thread()
//!     .worker_threads(1)
//!     .enable_all()
//!     .build()
//!     .unwrap();
//! let rt_handle = rt.handle().clone();
//! let t = IoThread::new().unwrap();
//! let h = t.spawn(move || {
//!     let slept = rt_handle.spawn(async {
//!         tokio::time::sleep(Duration::from_millis(1)).await; // needs tokio's timer
//!         "slept on tokio"
//!     });
//!     block_on(slept).unwrap() // tokio's JoinHandle, woken from tokio's thread
//! });
//! assert_eq!(h.join().unwrap(), "slept on tokio");
//! t.join();
//! ```
//!
//! And the other way round, a corio [`JoinHandle`](crate::JoinHandle)
//! awaited by async code:
//!
//! ```
//! let t = corio::IoThread::new().unwrap();
//! let h = t.spawn(|| 6 * 7);
//! let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! assert_eq!(rt.block_on(async move { h.await.unwrap() }), 42);
//! t.join();
//! ```

mod park;
mod waker;

// The tests move a parked coroutine with the unsafe `co_schedule_migrate`.
#[cfg(all(test, not(loom)))]
#[allow(unsafe_code)]
mod tests;

use std::future::{Future, IntoFuture};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use self::waker::{CoWaker, ThreadWaker};
use crate::aio::AioContext;
use crate::coroutine::{self, Coroutine};

/// How many polls in a row, each ended by a wake that came during the poll,
/// before `block_on` yields to the coroutine's loop once (tokio's
/// cooperative budget is 128 per task tick; this one only bounds a future
/// that keeps waking itself).
pub const POLL_BUDGET: u32 = 64;

/// Runs `fut` to completion and returns its output.
///
/// * **In a coroutine:** polls it on the coroutine's home thread and,
///   while it is pending, suspends the coroutine until its waker is called
///   (from any thread). See the [module docs](self) for the guarantees.
/// * **Outside a coroutine, on a thread with a current [`AioContext`]:**
///   polls that context while it waits (as
///   [`JoinHandle::join`](crate::JoinHandle::join) does), so work on the
///   thread's own context, which may be what completes the future, goes
///   on.
/// * **On a thread without a context:** parks the thread until woken.
///
/// # Thread context
/// Any thread; in a coroutine, the coroutine is suspended, not the thread.
///
/// # Panics
/// If the future's `poll` panics (the panic propagates). In a destructor
/// that runs while its coroutine is cancelled or dropped (nothing could
/// resume it): "block_on: coroutine ... is being cancelled".
///
/// # Examples
///
/// ```
/// use corio::future::block_on;
///
/// let t = corio::IoThread::new().unwrap();
/// let inner = t.spawn(|| "from a coroutine");
/// // A coroutine awaits another coroutine's JoinHandle as a Future.
/// let outer = t.spawn(move || block_on(inner).unwrap().len());
/// assert_eq!(outer.join().unwrap(), 16);
/// t.join();
/// ```
pub fn block_on<F: IntoFuture>(fut: F) -> F::Output {
    let fut = fut.into_future();
    if coroutine::in_coroutine() {
        block_on_co(coroutine::current_for("block_on"), fut)
    } else {
        block_on_thread(fut)
    }
}

/// The waker of one coroutine's `block_on`, for as long as the coroutine
/// stays on one thread. Dropping it ends the waker's life (later wakes are
/// no-ops): when `block_on` returns or is unwound (cancelled), before the
/// future drops.
struct CoWait {
    shared: Arc<CoWaker>,
    waker: Waker,
    /// The coroutine's home context when the waker was made.
    home: AioContext,
}

impl CoWait {
    fn new(me: Coroutine) -> CoWait {
        let home = me.context();
        let shared = Arc::new(CoWaker::new(me.handle(), &home));
        CoWait {
            waker: Waker::from(Arc::clone(&shared)),
            shared,
            home,
        }
    }
}

impl Drop for CoWait {
    fn drop(&mut self) {
        self.shared.finish();
    }
}

/// `block_on` in the coroutine `me`.
fn block_on_co<F: Future>(me: Coroutine, fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut wait = CoWait::new(me);
    let mut notified_polls = 0;
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut Context::from_waker(&wait.waker)) {
            drop(wait);
            return v;
        }
        if wait.shared.park.park() {
            coroutine::yield_now();
            // Woken, or resumed spuriously: either way, poll again.
            wait.shared.park.take();
            notified_polls = 0;
            if !wait.home.in_home_thread() {
                // Moved to another thread while parked (an unsafe
                // `co_schedule_migrate`): wakes must now go to the new
                // home. The next poll hands the future the new waker.
                wait = CoWait::new(coroutine::current_for("block_on"));
            }
        } else {
            // Woken during the poll (park took the notification).
            notified_polls += 1;
            if notified_polls >= POLL_BUDGET {
                crate::yield_to_loop();
                notified_polls = 0;
            }
        }
    }
}

/// `block_on` outside any coroutine.
fn block_on_thread<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let ctx = AioContext::try_current();
    let shared = Arc::new(ThreadWaker::new(ctx.as_ref()));
    let waker = Waker::from(Arc::clone(&shared));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        while !shared.take() {
            match &ctx {
                Some(ctx) => {
                    ctx.poll(true);
                }
                None => std::thread::park(),
            }
        }
    }
}
