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

mod bh;
mod fd;
mod lifecycle;
pub(crate) mod queue;
mod sys;
mod timer;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::{AcqRel, Relaxed, Release, SeqCst};
use std::sync::{Arc, Weak};

pub use bh::Bh;
pub use fd::{EventNotifier, EventsCallback, FdCallback, NotifierCallback};
pub use sys::events;
pub use timer::{Clock, Timer};

use self::bh::{BhInner, DELETED, IDLE, ONESHOT, PENDING, SCHEDULED};
use self::fd::FdNode;
use self::queue::AtomicStack;
use self::sys::{Epoll, FdMonitor, Ready};
use self::timer::TimerInner;
use crate::coroutine::{self, tls, CoHandle, CoInner, Scheduler};
use crate::loom::{fence, AtomicU32};
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
    /// thread. Written only by the home thread, read by notifiers.
    notify_me: AtomicU32,
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
    /// `ctx->thread_pool`); dropping it with the context stops its workers.
    thread_pool: std::sync::OnceLock<crate::thread_pool::PoolOwner>,
}

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
    monitor: Epoll,
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

impl Drop for Shared {
    fn drop(&mut self) {
        for p in self.bh_list.take_all() {
            // SAFETY: nodes in `bh_list` are `Arc`s given up by `bh_enqueue`.
            drop(unsafe { Arc::from_raw(p.as_ptr()) });
        }
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
    /// `aio_context_new`).
    ///
    /// # Errors
    /// If the eventfd or the epoll instance cannot be created.
    pub fn new() -> io::Result<AioContext> {
        trace::init_from_env();
        let notifier = EventNotifier::new()?;
        let mut monitor = Epoll::new()?;
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
                notify_me: AtomicU32::new(0),
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
                    handlers: HashMap::new(),
                    ready: Vec::with_capacity(64),
                    bh_queue: VecDeque::new(),
                    timers: Vec::new(),
                    poll: PollParams::default(),
                    owned: HashMap::new(),
                }),
                thread_pool: std::sync::OnceLock::new(),
            }
        });
        let ctx = AioContext { shared };
        tls::set_current_ctx_if_none(&ctx);
        Ok(ctx)
    }

    /// The calling thread's current context (QEMU's
    /// `qemu_get_current_aio_context`), created on first use.
    ///
    /// # Panics
    /// If a context has to be created and cannot be (out of fds).
    pub fn current() -> AioContext {
        tls::current_ctx().unwrap_or_else(|| {
            AioContext::new().unwrap_or_else(|e| panic!("cannot create an AioContext: {e}"))
        })
    }

    /// The calling thread's current context, if it has one.
    pub fn try_current() -> Option<AioContext> {
        tls::current_ctx()
    }

    /// Makes this context the calling thread's current one, returning the
    /// previous one (QEMU's `qemu_set_current_aio_context`).
    ///
    /// # Panics
    /// If the calling thread is not the context's home.
    pub fn set_current(&self) -> Option<AioContext> {
        self.assert_home("set_current");
        tls::replace_current_ctx(Some(self.clone()))
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

    pub(crate) fn thread_pool_slot(&self) -> &std::sync::OnceLock<crate::thread_pool::PoolOwner> {
        &self.shared.thread_pool
    }

    /// Wakes the home thread if it sleeps in a blocking poll (QEMU's
    /// `aio_notify`). Costs a fence and a load when it does not.
    ///
    /// # Thread context
    /// Any thread.
    pub fn notify(&self) {
        // Dekker with `poll`: we wrote the work (a list push) before this
        // fence, poll raises `notify_me` before its fence and looks for work
        // after it. SeqCst fences on both sides guarantee that poll sees our
        // work or we see `notify_me` raised (or both). Pairs with the fence
        // in `poll`.
        fence(SeqCst);
        if self.shared.notify_me.load(Relaxed) != 0 {
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
        // AcqRel: Release publishes what the scheduler wrote before
        // scheduling to the callback (pairs with the AcqRel fetch_and in
        // `bh_poll`); Acquire orders us after the previous take-out.
        let old = bh.flags.fetch_or(new_flags | PENDING, AcqRel);
        if old & DELETED != 0 {
            return; // never again
        }
        trace::aio_bh_schedule(self.as_ptr(), Arc::as_ptr(bh).cast(), "");
        if old & PENDING == 0 {
            // SAFETY: we won PENDING, so the BH is in no list; the Arc clone
            // keeps it alive until `poll` takes it back with `Arc::from_raw`.
            unsafe { self.shared.bh_list.push(bh::into_node(bh.clone())) };
        }
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
    fn bh_poll(&self) -> bool {
        let s = &*self.shared;
        let mut progress = false;
        loop {
            let Some(bh) = s.local_in_poll().bh_queue.pop_front() else {
                break;
            };
            // AcqRel: pairs with the fetch_or in `bh_enqueue` (see there).
            let flags = bh.flags.fetch_and(!(PENDING | SCHEDULED | IDLE), AcqRel);
            if flags & (SCHEDULED | DELETED) == SCHEDULED {
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
            if flags & (DELETED | ONESHOT) != 0 {
                // SAFETY: home thread, as above.
                unsafe { bh.release() };
            }
        }
        progress
    }

    fn take_bhs(&self, local: &mut Local) {
        for p in self.shared.bh_list.take_all() {
            // SAFETY: nodes in `bh_list` are `Arc`s given up by `bh_enqueue`.
            local
                .bh_queue
                .push_back(unsafe { Arc::from_raw(p.as_ptr()) });
        }
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
        let mut local = s.local();
        // A coroutine whose stack holds this frame must not migrate until
        // it returns: the home-thread state below is this thread's.
        let _frame = coroutine::PollFrame::enter();
        let adaptive = blocking && local.poll.max_ns > 0;
        let block_start = if adaptive {
            Clock::Realtime.now_ns()
        } else {
            0
        };
        let mut blocking = blocking;
        if adaptive && local.poll.ns > 0 && self.spin_for_work(&local) {
            // Work arrived while spinning: take it without sleeping.
            blocking = false;
        }
        if blocking {
            s.notify_me.fetch_add(2, Relaxed);
            // Pairs with the fence in `notify`: either we see the work it
            // published, or it sees `notify_me` raised and kicks the eventfd.
            fence(SeqCst);
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
        let ready = if timeout != 0 || !local.handlers.is_empty() {
            let mut ready = std::mem::take(&mut local.ready);
            if let Err(e) = local.monitor.wait(timeout, &mut ready) {
                // Only a broken invariant gets here (EBADF, EFAULT,
                // EINVAL; EINTR is a plain wake-up). Lower `notify_me`
                // first, so that a caller who catches the panic does not
                // leave every later `notify` writing the eventfd.
                if blocking {
                    s.notify_me.fetch_sub(2, Release);
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
            // Release: our reads of the lists happen before a notifier sees
            // `notify_me` lowered (QEMU's qatomic_store_release).
            s.notify_me.fetch_sub(2, Release);
        }
        drop(local);

        if adaptive {
            self.adjust_polling_time(Clock::Realtime.now_ns() - block_start);
        }
        let mut progress = self.bh_poll();
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

    /// QEMU's `run_poll_handlers`: before sleeping, spin for up to
    /// `poll.ns` (never past the nearest timer) watching for bottom halves
    /// and co_schedule hand-overs. `notify_me` stays lowered meanwhile, so
    /// notifiers skip the eventfd write. Like QEMU, polling is off while any
    /// fd handler is registered (ours have no poll callback to call).
    /// Returns whether work arrived.
    fn spin_for_work(&self, local: &Local) -> bool {
        if !local.handlers.is_empty() || !local.bh_queue.is_empty() {
            return false;
        }
        let start = Clock::Realtime.now_ns();
        let mut end = start + local.poll.ns;
        if let Some(t) = local.timers.first() {
            end = end.min(t.expire.load(Relaxed));
        }
        trace::run_poll_handlers_begin(self.as_ptr(), local.poll.max_ns, end - start);
        loop {
            for _ in 0..64 {
                if !self.shared.bh_list.is_empty() {
                    trace::run_poll_handlers_end(self.as_ptr(), true, end - start);
                    return true;
                }
                std::hint::spin_loop();
            }
            if Clock::Realtime.now_ns() >= end {
                trace::run_poll_handlers_end(self.as_ptr(), false, end - start);
                return false;
            }
            // Let another runnable thread have the CPU: with more busy
            // threads than cores, pure spinning would starve the very
            // threads that produce our work. Returns at once otherwise.
            std::thread::yield_now();
        }
    }

    /// QEMU's `adjust_polling_time`, after a blocking poll that took
    /// `block_ns` (spinning included).
    fn adjust_polling_time(&self, block_ns: i64) {
        let mut local = self.shared.local_in_poll();
        let p = &mut local.poll;
        let old = p.ns;
        if block_ns <= p.ns {
            // The sweet spot: the work came while we spun.
        } else if block_ns > p.max_ns {
            p.ns = if p.shrink > 0 { p.ns / p.shrink } else { 0 };
            if p.ns != old {
                trace::poll_shrink(self.as_ptr(), old, p.ns);
            }
        } else if p.ns < p.max_ns {
            let grow = if p.grow > 0 { p.grow } else { 2 };
            p.ns = if p.ns == 0 {
                POLL_NS_START
            } else {
                p.ns * grow
            }
            .min(p.max_ns);
            trace::poll_grow(self.as_ptr(), old, p.ns);
        }
    }

    /// Sets adaptive polling (QEMU's `aio_context_set_poll_params`): a
    /// blocking poll spins for up to `max_ns` before sleeping, growing the
    /// spin by `grow` (0: 2) and shrinking it by `shrink` (0: to nothing).
    /// `max_ns` 0 turns polling off (the default; IOThreads use 32768 as in
    /// QEMU).
    ///
    /// # Panics
    /// Outside the home thread.
    pub fn set_poll_params(&self, max_ns: i64, grow: i64, shrink: i64) {
        let mut local = self.shared.local();
        local.poll = PollParams {
            max_ns: max_ns.max(0),
            grow: grow.max(0),
            shrink: shrink.max(0),
            ns: 0,
        };
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
            let Some(node) = s.local_in_poll().handlers.get(&r.fd).cloned() else {
                continue;
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

    // ----- fd handlers -----

    /// Sets, replaces or (with both callbacks `None`) removes the handlers of
    /// `fd` (QEMU's `aio_set_fd_handler`). Handlers are level-triggered:
    /// `io_read` runs from every poll while `fd` is readable (or hung up, or in
    /// error), `io_write` while it is writable. A handler may remove or
    /// replace itself from its own callback.
    ///
    /// # Errors
    /// If the fd monitor refuses the fd.
    ///
    /// # Panics
    /// Outside the home thread.
    pub fn set_fd_handler(
        &self,
        fd: BorrowedFd<'_>,
        io_read: Option<FdCallback>,
        io_write: Option<FdCallback>,
    ) -> io::Result<()> {
        let node = if io_read.is_none() && io_write.is_none() {
            None
        } else {
            let interest = if io_read.is_some() { events::IN } else { 0 }
                | if io_write.is_some() { events::OUT } else { 0 };
            Some((FdNode::new(io_read, io_write), interest))
        };
        self.install_fd_node(fd, node)
    }

    /// Replaces `fd`'s handler node with `node` (interest included), or
    /// removes it with `None`. The old node is marked deleted so that a
    /// dispatch already under way skips it; its callbacks drop after the
    /// home-state borrow ends, since their destructors may use the context.
    fn install_fd_node(
        &self,
        fd: BorrowedFd<'_>,
        node: Option<(Arc<FdNode>, u32)>,
    ) -> io::Result<()> {
        let s = &*self.shared;
        let raw = fd.as_raw_fd();
        let mut local = s.local();
        let old = local.handlers.remove(&raw);
        if let Some(old) = &old {
            old.deleted.store(true, Relaxed);
        }
        match node {
            None => {
                if let Some(old) = &old {
                    trace::poll_remove(s.ptr(), Arc::as_ptr(old).cast(), raw);
                    local.monitor.deregister(fd);
                }
            }
            Some((node, interest)) => {
                trace::poll_add(s.ptr(), Arc::as_ptr(&node).cast(), raw, interest);
                local.monitor.register(fd, interest)?;
                local.handlers.insert(raw, node);
            }
        }
        drop(local);
        drop(old);
        Ok(())
    }

    /// Sets, replaces or (with `None`) removes one handler for `fd` that
    /// asks for `interest` (any of [`events::IN`], [`events::OUT`],
    /// [`events::PRI`]; `ERR` and `HUP` are always reported) and receives the
    /// ready events. It replaces read/write handlers of the same fd. This is
    /// what channel watches (QEMU's GSource-based `qio_channel_add_watch`)
    /// need beyond [`set_fd_handler`](Self::set_fd_handler): urgent data,
    /// and hang-up or error without asking for readability.
    ///
    /// # Errors
    /// If the fd monitor refuses the fd.
    ///
    /// # Panics
    /// Outside the home thread.
    pub fn set_fd_events_handler(
        &self,
        fd: BorrowedFd<'_>,
        interest: u32,
        cb: Option<EventsCallback>,
    ) -> io::Result<()> {
        let node = cb.map(|cb| {
            let interest = interest & (events::IN | events::OUT | events::PRI);
            (FdNode::new_events(cb), interest)
        });
        self.install_fd_node(fd, node)
    }

    /// Sets or removes (`None`) the handler of an [`EventNotifier`] (QEMU's
    /// `aio_set_event_notifier`). The handler gets the notifier and normally
    /// calls [`EventNotifier::test_and_clear`].
    ///
    /// # Errors
    /// As [`set_fd_handler`](Self::set_fd_handler).
    pub fn set_event_notifier(
        &self,
        notifier: &EventNotifier,
        io_read: Option<NotifierCallback>,
    ) -> io::Result<()> {
        let cb = io_read.map(|mut f| {
            let n = notifier.clone();
            Box::new(move || f(&n)) as FdCallback
        });
        self.set_fd_handler(notifier.as_fd(), cb, None)
    }

    // ----- timers -----

    fn timer_insert(&self, t: &Arc<TimerInner>) {
        let mut local = self.shared.local();
        let at = t.expire.load(Relaxed);
        let pos = local
            .timers
            .partition_point(|o| o.expire.load(Relaxed) <= at);
        local.timers.insert(pos, t.clone());
        // No notify: timers are armed on the home thread, which is awake.
    }

    fn timer_remove(&self, t: &Arc<TimerInner>) {
        let mut local = self.shared.local();
        if let Some(i) = local.timers.iter().position(|o| Arc::ptr_eq(o, t)) {
            local.timers.remove(i);
        }
    }

    fn run_timers(&self) -> bool {
        let s = &*self.shared;
        if s.local_in_poll().timers.is_empty() {
            return false;
        }
        let now = Clock::Realtime.now_ns();
        let mut progress = false;
        loop {
            let t = {
                let mut local = s.local_in_poll();
                match local.timers.first() {
                    Some(t) if t.expire.load(Relaxed) <= now => local.timers.remove(0),
                    _ => break,
                }
            };
            t.expire.store(-1, Relaxed);
            let called = match t.cb.try_lock() {
                Ok(mut cb) => {
                    cb();
                    true
                }
                // An earlier run panicked: the timer still works.
                Err(std::sync::TryLockError::Poisoned(e)) => {
                    (e.into_inner())();
                    true
                }
                // Running further up the stack (a nested poll).
                Err(std::sync::TryLockError::WouldBlock) => false,
            };
            progress |= called;
        }
        progress
    }

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
        co.inner.set_home(self);
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
    fn co_schedule_bh_cb(&self) {
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
        let waiter = tls::current_ctx();
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
    // SAFETY: the caller of `co_reschedule_self` vouched for the stack.
    if unsafe { crate::coroutine::request_migration(ctx) } {
        crate::coroutine::yield_now();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A failing fd monitor panics out of `poll`, but leaves `notify_me`
    /// lowered and the context usable for the caller who catches it.
    #[test]
    fn poll_monitor_failure_lowers_notify_me() {
        let ctx = AioContext::new().unwrap();
        let e = crate::aio::EventNotifier::new().unwrap();
        ctx.set_event_notifier(&e, Some(Box::new(|_| {}))).unwrap();
        ctx.shared.local().monitor.break_for_test();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.poll(true)));
        let msg = r.expect_err("poll on a broken monitor must panic");
        let msg = msg
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or_default();
        assert!(msg.contains("fd monitor wait failed"), "{msg}");
        assert_eq!(ctx.shared.notify_me.load(Relaxed), 0);
        // Still usable: the home-thread state was not left borrowed.
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r2 = ran.clone();
        let bh = ctx.bh_new(move || r2.store(true, Relaxed));
        bh.schedule();
        ctx.set_event_notifier(&e, None).unwrap();
        assert!(ctx.poll(false));
        assert!(ran.load(Relaxed));
    }
}
