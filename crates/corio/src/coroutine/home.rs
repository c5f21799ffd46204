//! "A place to wake me": all the coroutine layer knows of the event loop a
//! coroutine belongs to.
//!
//! The coroutine layer sits below `aio` and names no `AioContext`. A
//! coroutine's home is an `Arc<dyn Home>`, which `aio` fills in (its
//! `AioContext` implements [`Home`], in `aio/home.rs`); the coroutine layer
//! only queues coroutines there and runs closures there. A coroutine that
//! asked to move (`co_reschedule_self`) points at a [`MoveTarget`] that its
//! enterer hands it to once it has yielded.

use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use super::CoInner;
use crate::trace;

/// The event loop a coroutine belongs to, as the coroutine layer sees it.
pub(crate) trait Home: Send + Sync + 'static {
    /// Queues `co`, whose schedule claim the caller holds, to be entered on
    /// this home's thread (QEMU's `aio_co_schedule` after the claim).
    ///
    /// # Thread context
    /// Any thread.
    fn push_scheduled(self: Arc<Self>, co: Arc<CoInner>);

    /// Runs `f` on this home's thread, from its next turn (never now).
    ///
    /// # Thread context
    /// Any thread.
    fn run_at_home(self: Arc<Self>, f: Box<dyn FnOnce() + Send>);

    /// The implementer, for the layer that installed it to take its own type
    /// back.
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

/// Where a coroutine asked to move: borrowed from the `co_reschedule_self`
/// frame until its enterer hands the coroutine over.
pub(crate) trait MoveTarget {
    /// Makes this the home of `co` (claimed, idle, on the caller's thread)
    /// and queues it here.
    fn take_in(&self, co: Arc<CoInner>);
}

/// Gives the calling thread's current home, creating one if it has none;
/// installed by `aio` when it creates its first context.
static CURRENT_HOME: OnceLock<fn() -> Arc<dyn Home>> = OnceLock::new();

thread_local! {
    /// Coroutines to queue on this thread's first home: woken before any
    /// event loop existed in the process, then rescheduled (a panic cut their
    /// wakeup chain). Taken by `aio` when it creates this thread's context;
    /// dropped with the thread if it never does ([`Orphans`]'s drop).
    static ORPHANS: Orphans = const { Orphans(RefCell::new(Vec::new())) };
}

/// Orphans dropped at their thread's exit, in the whole process.
static ORPHANS_DROPPED: AtomicUsize = AtomicUsize::new(0);

/// This thread's orphans. A thread that exits without ever creating a
/// context leaves them with no home: they can never run again (QEMU has no
/// such case; its coroutines always have a context). Dropping the list is
/// then the right end for them, and it happens on their home thread, the
/// only one where a suspended coroutine may be unwound: each one whose
/// last reference this is unwinds from its yield point, its destructors
/// running on that thread, and its stack goes back to the pool (the
/// coroutine layer's thread state has no destructor, so it is still there
/// during thread-local destruction). One that other handles still reach is
/// dropped by the last of them (leaked if that is on another thread; see
/// the crate's "Lifetime" rules). Each drop is counted
/// ([`orphans_dropped`]) and traced (`coroutine_orphan_dropped`), since it
/// usually means a wakeup chain was cut by a panic on a thread that never
/// ran an event loop.
struct Orphans(RefCell<Vec<Arc<CoInner>>>);

impl Drop for Orphans {
    fn drop(&mut self) {
        for co in std::mem::take(self.0.get_mut()) {
            trace::coroutine_orphan_dropped(Arc::as_ptr(&co).cast());
            // Relaxed: a statistic; the thread's join orders it for readers.
            ORPHANS_DROPPED.fetch_add(1, Relaxed);
            drop(co);
        }
    }
}

/// Drops this thread's orphans now, as its exit would (counted and traced
/// the same way).
pub(super) fn drop_orphans() {
    let orphans = ORPHANS
        .try_with(|o| std::mem::take(&mut *o.0.borrow_mut()))
        .unwrap_or_default();
    drop(Orphans(RefCell::new(orphans)));
}

/// How many coroutines were dropped, in this process, because their thread
/// exited before it ever had an event loop to run them on: each had been
/// woken before any [`AioContext`](crate::AioContext) existed and could
/// never run again. They are unwound on their home thread as it exits
/// (their destructors run there). Each drop is also traced as
/// `coroutine_orphan_dropped`.
///
/// # Examples
///
/// ```
/// // Nothing woken before the first context and left behind: none dropped.
/// assert_eq!(corio::coroutine::orphans_dropped(), 0);
/// ```
pub fn orphans_dropped() -> usize {
    ORPHANS_DROPPED.load(Relaxed)
}

/// Installs `f`, which gives the calling thread's current home (the first
/// call wins; `aio` always passes the same function).
pub(crate) fn install_current_home(f: fn() -> Arc<dyn Home>) {
    if CURRENT_HOME.get().is_none() {
        let _ = CURRENT_HOME.set(f);
    }
}

/// The home of `co`, chosen now if it has none yet (it is then the current
/// home of the calling thread, which must be `co`'s home thread). `None`
/// only before `aio` created any context in the process.
pub(super) fn home_or_current(co: &CoInner) -> Option<Arc<dyn Home>> {
    match CURRENT_HOME.get() {
        Some(current) => Some(co.home_or_insert_with(current)),
        None => co.home(),
    }
}

/// Queues a claimed coroutine on its home, or keeps it for this thread's
/// first home if no event loop exists yet.
pub(super) fn push_home(co: Arc<CoInner>) {
    match home_or_current(&co) {
        Some(home) => home.push_scheduled(co),
        None => {
            let _ = ORPHANS.try_with(|o| o.0.borrow_mut().push(co));
        }
    }
}

/// The coroutines kept by [`push_home`] on this thread, for its new home.
pub(crate) fn take_orphans() -> Vec<Arc<CoInner>> {
    ORPHANS
        .try_with(|o| std::mem::take(&mut *o.0.borrow_mut()))
        .unwrap_or_default()
}
