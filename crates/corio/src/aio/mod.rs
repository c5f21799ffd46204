//! AioContext: QEMU's event loop (block/aio.h, util/async.c, util/aio-posix.c).
//!
//! A context runs, from [`AioContext::poll`] on its home thread:
//!
//! * bottom halves ([`Bh`]), scheduled from any thread, run in FIFO order;
//! * level-triggered fd handlers and event notifiers;
//! * timers, whose nearest deadline bounds a blocking poll;
//! * coroutines handed over with [`AioContext::co_schedule`] from any thread.
//!
//! [`AioContext`] is a cheap, `Send + Sync` handle. What only the home thread
//! may do (poll, fd handlers, timers) panics elsewhere; what any thread may do
//! (schedule, notify, co_schedule, run_in) says so in its `# Thread context`.
//!
//! # Notification
//!
//! QEMU's `notify_me` protocol: a blocking `poll` raises `notify_me` before it
//! looks for work and lowers it after waking; [`AioContext::notify`] writes
//! the eventfd only when `notify_me` is raised, so notifying a context that
//! is busy costs a fence and a load, no system call.
//!
//! # Examples
//!
//! ```
//! use corio::{AioContext, Coroutine, coroutine};
//! use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
//!
//! let ctx = AioContext::new().unwrap();
//! let steps = Arc::new(AtomicUsize::new(0));
//! let s = steps.clone();
//! let co = Coroutine::new(move || {
//!     s.fetch_add(1, Ordering::SeqCst);
//!     coroutine::yield_now();
//!     s.fetch_add(1, Ordering::SeqCst);
//! });
//! co.enter();
//! let handle = co.handle();
//! // Another thread hands the coroutine back to its context...
//! std::thread::spawn(move || handle.wake()).join().unwrap();
//! // ...which resumes it in its next poll.
//! while steps.load(Ordering::SeqCst) < 2 {
//!     ctx.poll(true);
//! }
//! assert!(co.is_terminated());
//! ```

#[allow(unsafe_code)] // BH nodes in the intrusive list; the callback cell (home thread only)
mod bh;
mod current;
mod fd;
mod home;
mod lifecycle;
mod notify;
mod poll;
#[allow(unsafe_code)]
// coroutines in and out of the co_schedule queue as raw Arcs (`Linked for CoInner`)
mod schedule;
mod slot;

pub use schedule::co_reschedule_self;
#[allow(unsafe_code)] // the lock-free intrusive stack (`Linked`, `push`)
pub(crate) mod queue;
mod sys;
mod timer;
mod uring;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd};

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

pub use bh::Bh;
pub use fd::{EventNotifier, EventsCallback, FdCallback, NotifierCallback, PollCallback};
pub use poll::{PollStats, DEFAULT_POLL_IDLE_INTERVAL};
pub(crate) use sys::FileOp;

/// Takes the calling thread's current context away (the thread then has
/// none), for a reused worker thread to start its next task as a fresh
/// thread would (`io::task`'s workers).
pub(crate) fn take_current_ctx() -> Option<AioContext> {
    current::replace_current_ctx(None)
}

/// Whether the calling thread's thread-locals are being destroyed (its
/// current context is gone or going): the thread is exiting.
pub(crate) fn thread_exiting() -> bool {
    current::current_ctx_destroyed()
}
pub use sys::{events, FdMon};
pub use timer::{Clock, Timer};

use self::bh::{BhInner, DELETED, IDLE, ONESHOT, SCHEDULED};
use self::current::current_ctx;
use self::fd::FdNode;
use self::notify::NotifyMe;
use self::poll::Prepared;
use self::queue::AtomicStack;
use self::slot::OpaqueSlot;
use self::sys::{Epoll, FdMonitor, Monitor, Ready};
use self::timer::TimerInner;
use crate::coroutine::{self, tls, CoHandle, CoInner};
use crate::trace;

/// How long a blocking poll may sleep while only idle bottom halves wait.
const IDLE_BH_TIMEOUT_NS: i64 = 10_000_000;

/// An event loop. Cloning gives another handle to the same context.
#[derive(Clone)]
pub struct AioContext {
    shared: Arc<Shared>,
}

struct Shared {
    /// The home thread's token (`tls::thread_token`): poll runs only there.
    home_token: usize,
    home_name: String,
    /// QEMU's `notify_me`: 2 per blocking poll in progress on the home
    /// thread. Written only by the home thread, read by notifiers (the
    /// protocol and its loom model are in `notify.rs`).
    notify_me: NotifyMe,
    /// The context's own eventfd: written by `notify` when `notify_me` is
    /// raised; registered with the fd monitor.
    notifier: EventNotifier,
    /// Scheduled bottom halves, pushed by any thread, taken by `poll`.
    bh_list: AtomicStack<BhInner>,
    /// Coroutines handed over by `co_schedule`, taken by `co_bh`.
    co_queue: AtomicStack<CoInner>,
    /// The bottom half that enters the coroutines in `co_queue`.
    co_bh: Arc<BhInner>,
    /// Home-thread state (see the `Sync` impl).
    local: RefCell<Local>,
    /// The context's thread pool, created on first use (QEMU's
    /// `ctx->thread_pool`); dropping it with the context cancels its queued
    /// requests and joins its workers (`thread_pool.rs`, "Teardown").
    /// Opaque here: the pool (a floor above) puts and takes its own type.
    thread_pool: OpaqueSlot,
    /// Adaptive polling's counters ([`AioContext::poll_stats`]).
    poll_counters: poll::PollCounters,
}

// unsafe: this impl, `Shared`'s drop and `bh_poll` are the only items of
// this file that allow `unsafe_code`.
#[allow(unsafe_code)]
// SAFETY: `local` is the only field that is not thread-safe; it is reached
// only through `Shared::local`, which asserts that the caller is the home
// thread, and every borrow of it ends before a callback runs. Its contents are
// `Send` (checked by `_assert_local_send`), so dropping a `Shared` on another
// thread is fine.
unsafe impl Sync for Shared {}

fn _assert_kinds() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<AioContext>();
    send_sync::<Bh>();
    send_sync::<CoHandle>();
    send::<Local>();
}

struct Local {
    monitor: Monitor,
    /// The ring of file operations when `monitor` is epoll (see `uring.rs`).
    file_ring: uring::FileRing,
    handlers: HashMap<i32, Arc<FdNode>>,
    /// Reused buffer for the fd monitor's results.
    ready: Vec<Ready>,
    /// Bottom halves taken from `bh_list` and not yet run, oldest first. A
    /// nested poll continues this queue before its own batch (QEMU's slices).
    bh_queue: VecDeque<Arc<BhInner>>,
    /// Armed timers, nearest deadline first.
    timers: Vec<Arc<TimerInner>>,
    /// Adaptive busy polling (QEMU's `poll-max-ns`, `poll-grow`, `poll-shrink`).
    poll: PollParams,
    /// Polled handlers and the count of unpolled ones (`poll.rs`).
    poll_handlers: poll::PollHandlers,
    /// Coroutines spawned here ([`AioContext::spawn`]) that have not
    /// finished, by address: [`AioContext::shutdown`] cancels them.
    owned: HashMap<usize, CoHandle>,
}

/// Adaptive polling state: a blocking poll first spins for `ns` looking for
/// work before it sleeps; `ns` grows while wake-ups come soon after the spin
/// ends and shrinks when sleeps are longer than `max_ns`.
#[derive(Clone, Copy, Debug, Default)]
struct PollParams {
    max_ns: i64,
    grow: i64,
    shrink: i64,
    ns: i64,
}

/// Where adaptive polling starts (QEMU: 4 µs).
const POLL_NS_START: i64 = 4_000;

#[allow(unsafe_code)] // the Arcs left in `co_queue`
impl Drop for Shared {
    fn drop(&mut self) {
        bh::take_all(&self.bh_list).for_each(drop);
        for p in self.co_queue.take_all() {
            // SAFETY: nodes in `co_queue` are `Arc`s given up by `co_schedule_inner`.
            drop(unsafe { Arc::from_raw(p.as_ptr()) });
        }
    }
}

impl Shared {
    fn is_home(&self) -> bool {
        self.home_token == tls::thread_token()
    }

    fn local(&self) -> std::cell::RefMut<'_, Local> {
        if !self.is_home() {
            not_home(&self.home_name, "access its home-thread state");
        }
        self.local.borrow_mut()
    }

    /// `local` without the thread check, for `poll`'s helpers only: `poll`
    /// checked once that it runs on the home thread, and a poll never changes
    /// threads (it does not yield).
    fn local_in_poll(&self) -> std::cell::RefMut<'_, Local> {
        debug_assert!(self.is_home());
        self.local.borrow_mut()
    }

    fn ptr(&self) -> *const () {
        self as *const Shared as *const ()
    }
}

#[cold]
fn not_home(home: &str, what: &str) -> ! {
    panic!(
        "{what}: only the AioContext's home thread ({home}) may do this, not {:?}",
        std::thread::current().name().unwrap_or("unnamed")
    );
}

impl AioContext {
    /// Creates a context whose home is the calling thread, and makes it the
    /// thread's current context if the thread has none (QEMU's
    /// `aio_context_new`). Its fd monitor is the one `CORIO_FDMON` names
    /// (`epoll`, the default, or `io_uring`; see [`FdMon::from_env`]).
    ///
    /// # Errors
    /// If the eventfd or the epoll instance cannot be created.
    ///
    /// # Panics
    /// If `CORIO_FDMON` names no monitor.
    pub fn new() -> io::Result<AioContext> {
        AioContext::with_fd_monitor(FdMon::from_env())
    }

    /// Like [`new`](Self::new) with the fd monitor `fdmon` (QEMU's
    /// fdmon-io_uring or fdmon-epoll). When the kernel refuses io_uring
    /// (`ENOSYS`, `EPERM` from seccomp, `ENOMEM`), the context uses epoll
    /// and says why in the trace event `fdmon_io_uring_fallback` (and once
    /// per process on stderr); [`fd_monitor`](Self::fd_monitor) tells which
    /// one it got.
    ///
    /// # Errors
    /// If the eventfd or the epoll instance cannot be created.
    pub fn with_fd_monitor(fdmon: FdMon) -> io::Result<AioContext> {
        trace::init_from_env();
        let notifier = EventNotifier::new()?;
        let (mut monitor, fallback) = uring::make_monitor(fdmon)?;
        // Edge-triggered: every `set` is one wake-up of a sleeping poll, and
        // the eventfd is never read (its counter cannot realistically reach
        // 2^64 - 1), which saves a system call per cross-thread wake-up.
        monitor.register(notifier.as_fd(), events::IN | sys::EDGE)?;
        let home_name = std::thread::current().name().map_or_else(
            || format!("{:?}", std::thread::current().id()),
            str::to_owned,
        );
        let shared = Arc::new_cyclic(|weak: &Weak<Shared>| {
            let weak = weak.clone();
            Shared {
                home_token: tls::thread_token(),
                home_name,
                notify_me: NotifyMe::new(),
                notifier,
                bh_list: AtomicStack::new(),
                co_queue: AtomicStack::new(),
                co_bh: BhInner::new(
                    "co_schedule_bh",
                    Box::new(move || {
                        if let Some(shared) = weak.upgrade() {
                            AioContext { shared }.co_schedule_bh_cb();
                        }
                    }),
                ),
                local: RefCell::new(Local {
                    monitor,
                    file_ring: uring::FileRing::Untried,
                    handlers: HashMap::new(),
                    ready: Vec::with_capacity(64),
                    bh_queue: VecDeque::new(),
                    timers: Vec::new(),
                    poll: PollParams::default(),
                    poll_handlers: poll::PollHandlers::default(),
                    owned: HashMap::new(),
                }),
                thread_pool: OpaqueSlot::default(),
                poll_counters: poll::PollCounters::default(),
            }
        });
        let ctx = AioContext { shared };
        if let Some(f) = &fallback {
            uring::report_fallback(&ctx, f);
        }
        coroutine::install_current_home(home::current_home);
        if current::set_current_ctx_if_none(&ctx) {
            ctx.adopt_orphans();
        }
        Ok(ctx)
    }

    /// The calling thread's current context (QEMU's
    /// `qemu_get_current_aio_context`), created on first use.
    ///
    /// # Panics
    /// If a context has to be created and cannot be (out of fds).
    pub fn current() -> AioContext {
        current_ctx().unwrap_or_else(|| {
            AioContext::new().unwrap_or_else(|e| panic!("cannot create an AioContext: {e}"))
        })
    }

    /// The calling thread's current context, if it has one.
    pub fn try_current() -> Option<AioContext> {
        current_ctx()
    }

    /// Makes this context the calling thread's current one, returning the
    /// previous one (QEMU's `qemu_set_current_aio_context`).
    ///
    /// # Panics
    /// If the calling thread is not the context's home.
    pub fn set_current(&self) -> Option<AioContext> {
        self.assert_home("set_current");
        current::replace_current_ctx(Some(self.clone()))
    }

    /// Whether the calling thread is this context's home (QEMU's
    /// `in_aio_context_home_thread`).
    pub fn in_home_thread(&self) -> bool {
        self.shared.is_home()
    }

    pub(crate) fn home_token(&self) -> usize {
        self.shared.home_token
    }

    pub(crate) fn assert_home(&self, what: &str) {
        if !self.shared.is_home() {
            not_home(&self.shared.home_name, what);
        }
    }

    /// An address that identifies the context, for traces and logs.
    pub fn as_ptr(&self) -> *const () {
        self.shared.ptr()
    }

    /// Whether both handles name the same context.
    pub fn ptr_eq(&self, other: &AioContext) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// A handle that does not keep the context alive: for work that may
    /// outlive it (a pool worker, a QIOTask thread), which then drops its
    /// completion instead of keeping a dead loop's memory.
    pub fn downgrade(&self) -> WeakAioContext {
        WeakAioContext {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// The thread pool's slot: opaque to this layer (see `Shared::thread_pool`).
    pub(crate) fn thread_pool_slot(&self) -> &OpaqueSlot {
        &self.shared.thread_pool
    }

    /// Wakes the home thread if it sleeps in a blocking poll (QEMU's
    /// `aio_notify`). Costs a fence and a load when it does not.
    ///
    /// As in QEMU, this is a kick for work the poll itself looks at (a
    /// bottom half, a coroutine handed over, a timer): a notify that comes
    /// while the home thread is between its own check of some flag and its
    /// next blocking poll is not remembered. To tell a loop "look at my
    /// flag again", schedule a bottom half
    /// ([`bh_schedule_oneshot`](Self::bh_schedule_oneshot)) after setting
    /// the flag instead.
    ///
    /// # Thread context
    /// Any thread.
    pub fn notify(&self) {
        // Dekker with `poll`: we published the work (a list push) before
        // this; `needs_kick`'s SeqCst fence pairs with the one in
        // `NotifyMe::raise` (see notify.rs).
        if self.shared.notify_me.needs_kick() {
            let _ = self.shared.notifier.set();
        }
    }

    // ----- bottom halves -----

    /// Creates a bottom half in this context (QEMU's `aio_bh_new`).
    ///
    /// # Thread context
    /// Any thread; the callback runs on the home thread.
    pub fn bh_new(&self, cb: impl FnMut() + Send + 'static) -> Bh {
        self.bh_new_named("bh", cb)
    }

    /// Like [`bh_new`](Self::bh_new) with a name for traces (QEMU's `aio_bh_new_full`).
    pub fn bh_new_named(&self, name: &'static str, cb: impl FnMut() + Send + 'static) -> Bh {
        Bh {
            inner: BhInner::new(name, Box::new(cb)),
            ctx: self.clone(),
        }
    }

    /// Schedules `cb` to run once in this context, then drops it (QEMU's
    /// `aio_bh_schedule_oneshot`).
    ///
    /// # Thread context
    /// Any thread.
    pub fn bh_schedule_oneshot(&self, cb: impl FnOnce() + Send + 'static) {
        let mut cb = Some(cb);
        let bh = BhInner::new(
            "oneshot",
            Box::new(move || {
                if let Some(cb) = cb.take() {
                    cb()
                }
            }),
        );
        self.bh_enqueue(&bh, SCHEDULED | ONESHOT);
    }

    /// QEMU's `aio_bh_enqueue`: sets `new_flags | PENDING` and, if the BH
    /// was not pending, pushes it and notifies.
    fn bh_enqueue(&self, bh: &Arc<BhInner>, new_flags: u32) {
        // The flag protocol (and its ordering) is `bh::enqueue`'s.
        if !bh::enqueue(&self.shared.bh_list, bh, new_flags) {
            return; // deleted: never again
        }
        trace::aio_bh_schedule(self.as_ptr(), Arc::as_ptr(bh).cast(), "");
        // Notify even when the BH was already pending (QEMU does too): a
        // poll may have taken it while it was cancelled, found nothing to
        // do, and gone to sleep. On the home thread there is no sleeping
        // poll to wake: the home thread is running this.
        if !self.shared.is_home() {
            self.notify();
        }
    }

    /// Runs the bottom halves taken so far; returns whether any non-idle one
    /// ran (QEMU's `aio_bh_poll`).
    #[allow(unsafe_code)] // `BhInner::call` and `release`: home thread only
    fn bh_poll(&self) -> bool {
        let s = &*self.shared;
        let mut progress = false;
        loop {
            let Some(bh) = s.local_in_poll().bh_queue.pop_front() else {
                break;
            };
            let flags = bh.take_pending();
            if bh::runs(flags) {
                let ran = if Arc::ptr_eq(&bh, &s.co_bh) {
                    // The co_schedule BH may run nested in itself (a
                    // coroutine it entered polls, waiting for another
                    // coroutine to be handed over): it holds no FnMut state,
                    // it only takes the queue again, as QEMU's does.
                    self.co_schedule_bh_cb();
                    true
                } else {
                    // SAFETY: `bh_poll` runs on the home thread (checked once
                    // by `poll`).
                    unsafe { bh.call(s.ptr()) }
                };
                if ran && flags & IDLE == 0 {
                    progress = true;
                }
                if !ran {
                    // Its callback is running further up: run it next time.
                    self.bh_enqueue(&bh, flags & (SCHEDULED | IDLE));
                }
            }
            if bh::releases(flags) {
                // SAFETY: home thread, as above.
                unsafe { bh.release() };
            }
        }
        progress
    }

    fn take_bhs(&self, local: &mut Local) {
        local.bh_queue.extend(bh::take_all(&self.shared.bh_list));
    }

    // ----- poll -----

    /// Runs one iteration of the loop: bottom halves, ready fd handlers and
    /// expired timers. With `blocking`, first sleeps until there is something
    /// to do. Returns whether any callback made progress (QEMU's `aio_poll`;
    /// idle bottom halves and the context's own notifier are not progress).
    ///
    /// # Thread context
    /// Home thread only. A callback may poll again (nested poll).
    ///
    /// # Panics
    /// On another thread; and a panic in a callback propagates from here.
    pub fn poll(&self, blocking: bool) -> bool {
        let s = &*self.shared;
        if !s.is_home() {
            not_home(&s.home_name, "access its home-thread state");
        }
        // A coroutine whose stack holds this frame must not migrate until
        // it returns: the home-thread state below is this thread's.
        let _frame = coroutine::PollFrame::enter();
        // The spin and the poll-ready list exist for blocking polls only;
        // the non-blocking path (nested polls, bottom-half loops) skips them.
        let (prep, block_start) = if blocking {
            self.prepare_blocking()
        } else {
            (Prepared::empty(), 0)
        };
        let blocking = prep.contains(Prepared::BLOCKING);
        let mut local = s.local_in_poll();
        if blocking {
            // Its SeqCst fence pairs with the one in `notify`
            // (`NotifyMe::needs_kick`): either the look for work below sees
            // the work a notifier published, or it sees `notify_me` raised
            // and kicks the eventfd.
            s.notify_me.raise();
        }
        self.take_bhs(&mut local);
        let timeout = if blocking {
            Self::compute_timeout(&local)
        } else {
            0
        };
        trace::aio_poll_begin(s.ptr(), blocking, timeout);
        // With nothing to wait for but our own notifier, a zero timeout needs
        // no system call: the notifier is only written while we sleep.
        let ready = if timeout != 0
            || (!local.handlers.is_empty() && !prep.contains(Prepared::SKIP_MONITOR))
            || local.ring_busy()
        {
            let mut ready = std::mem::take(&mut local.ready);
            let waited = local
                .flush_file_ring()
                .and_then(|()| local.monitor.wait(timeout, &mut ready));
            if let Err(e) = waited {
                // Only a broken invariant gets here (EBADF, EFAULT,
                // EINVAL; EINTR is a plain wake-up). Lower `notify_me`
                // first, so that a caller who catches the panic does not
                // leave every later `notify` writing the eventfd.
                if blocking {
                    s.notify_me.lower();
                }
                local.ready = ready;
                drop(local);
                panic!("AioContext::poll: fd monitor wait failed: {e}");
            }
            Some(ready)
        } else {
            None
        };
        if blocking {
            // See `NotifyMe::lower` for its ordering (it pairs with nothing).
            s.notify_me.lower();
            if timeout != 0 {
                // Counted here, off the non-blocking path.
                self.count_blocking_wait();
            }
        }
        let woken = if ready.is_some() {
            local.take_woken()
        } else {
            None
        };
        drop(local);

        if prep.contains(Prepared::ADAPTIVE) {
            self.adjust_polling_time(Clock::Realtime.now_ns() - block_start);
        }
        // Coroutines whose file operations completed resume here, on
        // the home thread (QEMU's luring_process_completions).
        let mut progress = false;
        if let Some(woken) = woken {
            progress = Self::wake_completed(woken);
        }
        progress |= self.bh_poll();
        if prep.contains(Prepared::POLL_READY) {
            // A poll nested in a bottom half above may have run them.
            progress |= self.dispatch_poll_ready();
        }
        if let Some(mut ready) = ready {
            progress |= self.dispatch(&ready);
            ready.clear();
            // Give the buffer back for reuse (a nested poll may have left a
            // bigger one).
            let mut local = s.local_in_poll();
            if local.ready.capacity() < ready.capacity() {
                local.ready = ready;
            }
        }
        progress |= self.run_timers();
        trace::aio_poll_end(s.ptr(), progress);
        progress
    }

    fn compute_timeout(local: &Local) -> i64 {
        let mut timeout = -1;
        for bh in &local.bh_queue {
            let f = bh.flags.load(Relaxed);
            if f & (SCHEDULED | DELETED) == SCHEDULED {
                if f & IDLE == 0 {
                    return 0;
                }
                timeout = IDLE_BH_TIMEOUT_NS;
            }
        }
        if let Some(t) = local.timers.first() {
            let left = (t.expire.load(Relaxed) - Clock::Realtime.now_ns()).max(0);
            if timeout < 0 || left < timeout {
                timeout = left;
            }
        }
        timeout
    }

    fn dispatch(&self, ready: &[Ready]) -> bool {
        let s = &*self.shared;
        let own = s.notifier.as_raw_fd();
        let mut progress = false;
        for r in ready {
            if r.fd == own {
                continue; // edge-triggered: nothing to clear
            }
            let node = {
                let mut local = s.local_in_poll();
                let Some(node) = local.handlers.get(&r.fd).cloned() else {
                    continue;
                };
                if node.io_poll.is_some() {
                    local
                        .poll_handlers
                        .fd_ready(&node, s.ptr(), r.fd, &s.poll_counters);
                }
                node
            };
            if let Some(cb) = &node.events {
                progress |= node.call_events(cb, r.events);
                continue;
            }
            if r.events & (events::IN | events::HUP | events::ERR) != 0 {
                progress |= node.call(&node.read);
            }
            if r.events & (events::OUT | events::ERR) != 0 {
                progress |= node.call(&node.write);
            }
        }
        progress
    }
}

impl std::fmt::Debug for AioContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AioContext")
            .field("ptr", &self.as_ptr())
            .field("home", &self.shared.home_name)
            .finish()
    }
}

/// A weak [`AioContext`] handle, from [`AioContext::downgrade`].
#[derive(Clone, Debug)]
pub struct WeakAioContext {
    shared: Weak<Shared>,
}

impl WeakAioContext {
    /// The context, if it still exists.
    ///
    /// # Thread context
    /// Any thread.
    pub fn upgrade(&self) -> Option<AioContext> {
        self.shared.upgrade().map(|shared| AioContext { shared })
    }
}

impl PartialEq for AioContext {
    fn eq(&self, other: &Self) -> bool {
        self.ptr_eq(other)
    }
}
impl Eq for AioContext {}

#[cfg(all(test, not(loom)))]
mod tests;
