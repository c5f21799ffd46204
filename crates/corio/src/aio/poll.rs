//! Polled fd handlers and the adaptive-polling spin (QEMU's
//! `run_poll_handlers`, `run_poll_handlers_once`, `remove_idle_poll_handlers`
//! and `poll_disable_cnt` in util/aio-posix.c).
//!
//! A handler set with [`AioContext::set_fd_handler_polled`] carries an
//! `io_poll` callback, which says without a system call whether the handler
//! has work (a ring's index moved, a flag was set by another thread), and an
//! `io_poll_ready` callback, which does that work. While a blocking poll
//! spins before it sleeps, it calls every `io_poll` in turn, along with its
//! check of the bottom-half list; the first that reports progress ends the
//! spin, and its `io_poll_ready` runs in the same poll, with no `epoll_wait`
//! sleep and no wake-up. A handler that reports progress resets its poll
//! window ([`DEFAULT_POLL_IDLE_INTERVAL`], QEMU's `POLL_IDLE_INTERVAL_NS`):
//! one that reports none for a whole window is left out of the spins (its fd
//! is still watched by the fd monitor) until its fd becomes ready, which puts
//! it back. As in QEMU, one handler without a poll callback switches the
//! spin off for the whole context (it could only be noticed by a system
//! call), until it is removed.
//!
//! Optional `io_poll_begin` / `io_poll_end` callbacks
//! ([`AioContext::set_fd_poll_begin_end`], QEMU's `poll_set_started`) run
//! when the context starts spinning and before it sleeps again, so that a
//! producer can skip its notification meanwhile; after `io_poll_end` every
//! poll callback runs once more. A poll whose spin found work and whose
//! handlers are all polled makes no fd-monitor call (QEMU's rule); the next
//! poll does.
//!
//! # Sockets and the fd monitor
//!
//! Channel (socket) handlers have no poll callback: one would have to ask
//! the kernel (`recv(MSG_PEEK | MSG_DONTWAIT)`, a system call per socket per
//! round, 350-570 ns here), which costs more than the `epoll_wait` it would
//! save; see BENCHMARKS.md. What decides whether they stop the spin is the
//! fd monitor:
//!
//! * **epoll**: a handler without a poll callback switches the spin off
//!   (QEMU's `poll_disable_cnt`), since its readiness is only seen by a
//!   system call (`epoll_wait`), and the spin exists to avoid those.
//! * **io_uring**: every registered fd has a `POLL_ADD` in the ring, and its
//!   readiness arrives as a completion in the ring's completion queue,
//!   which is shared memory. So the ring covers every handler: unpolled
//!   handlers (and file operations in flight) do not switch the spin off;
//!   the spin submits what is queued once before it starts, and in each
//!   round, beside the bottom-half list and the poll callbacks, compares the
//!   queue's head and tail (QEMU's `fdmon_io_uring_need_wait`, which also
//!   keeps polling on with io_uring). A completion ends the spin; the poll
//!   then reaps it with a zero-timeout wait, which makes no system call,
//!   and dispatches, without sleeping. The kernel posts a poll completion
//!   from task work run by this thread: the ring is set up without
//!   `IORING_SETUP_COOP_TASKRUN`, so the kernel interrupts the spinning
//!   thread to run it (an IPI) and the completion appears in memory; with
//!   `TASKRUN_FLAG` rings the spin also watches `IORING_SQ_TASKRUN` (see
//!   `sys/uring.rs` and BENCHMARKS.md for the measurements).

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use super::fd::FdNode;
use super::{AioContext, Clock, Local};
use crate::trace;

/// How long a polled handler may go without reporting progress before the
/// spin leaves it out (QEMU's `POLL_IDLE_INTERVAL_NS`, 7 s).
pub const DEFAULT_POLL_IDLE_INTERVAL: Duration = Duration::from_secs(7);

/// The context's polling counters: any thread may read them.
#[derive(Default)]
pub(super) struct PollCounters {
    spins: AtomicU64,
    spins_with_work: AtomicU64,
    poll_calls: AtomicU64,
    poll_progress: AtomicU64,
    ready_calls: AtomicU64,
    idle_removed: AtomicU64,
    ring_progress: AtomicU64,
    blocking_waits: AtomicU64,
    /// Mirrors of home-thread state, updated when it changes.
    polled_handlers: AtomicUsize,
    unpolled_handlers: AtomicUsize,
    poll_ns: AtomicI64,
}

/// A snapshot of a context's adaptive polling ([`AioContext::poll_stats`]).
/// The counts run from the context's creation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PollStats {
    /// Spins (QEMU's `run_poll_handlers` calls) started by blocking polls.
    pub spins: u64,
    /// Spins that ended because work arrived (a bottom half, or a poll
    /// callback reporting progress), not because the window elapsed.
    pub spins_with_work: u64,
    /// `io_poll` callbacks called.
    pub poll_calls: u64,
    /// `io_poll` calls that reported progress.
    pub poll_progress: u64,
    /// `io_poll_ready` callbacks run after a reported progress.
    pub ready_calls: u64,
    /// Times a polled handler was left out of the spins for being idle a
    /// whole poll window (QEMU's `remove_idle_poll_handlers`).
    pub idle_removed: u64,
    /// Spins that ended because the io_uring fd monitor's completion queue
    /// had entries: an fd became ready (a socket handler's, polled or not)
    /// or a file operation completed. Always 0 on epoll.
    pub ring_progress: u64,
    /// Blocking polls that asked the fd monitor to wait with a timeout
    /// other than zero (an `epoll_wait` or `io_uring_enter` that may sleep):
    /// the wake-ups adaptive polling is there to save.
    pub blocking_waits: u64,
    /// Polled handlers the spin calls now.
    pub polled_handlers: usize,
    /// Handlers without a poll callback. On the epoll fd monitor polling is
    /// off while this is not 0 (QEMU's `poll_disable_cnt`); on io_uring the
    /// ring's completion queue covers them and polling stays on.
    pub unpolled_handlers: usize,
    /// The current spin length in ns (QEMU's `poll_ns`).
    pub poll_ns: i64,
}

/// Home-thread polling state, in the context's `Local`.
#[derive(Default)]
pub(super) struct PollHandlers {
    /// Handlers whose `io_poll` the spin calls.
    pub(super) polled: Vec<Arc<FdNode>>,
    /// Registered handlers without a poll callback.
    pub(super) unpolled: usize,
    /// The idle window in ns (0 until set: the default).
    idle_interval_ns: i64,
    /// The polled handlers got `io_poll_begin` and not yet `io_poll_end`
    /// (QEMU's `poll_started`).
    pub(super) started: bool,
    /// Handlers a spin found ready, until their poll runs `io_poll_ready`.
    pub(super) ready: Vec<Arc<FdNode>>,
}

impl PollHandlers {
    fn idle_interval(&self) -> i64 {
        if self.idle_interval_ns > 0 {
            self.idle_interval_ns
        } else {
            DEFAULT_POLL_IDLE_INTERVAL.as_nanos() as i64
        }
    }

    /// A handler node was installed.
    pub(super) fn added(&mut self, node: &Arc<FdNode>, c: &PollCounters) {
        if node.io_poll.is_some() {
            node.poll_deadline
                .store(Clock::Realtime.now_ns() + self.idle_interval(), Relaxed);
            self.polled.push(node.clone());
        } else {
            self.unpolled += 1;
        }
        self.publish(c);
    }

    /// A handler node was removed or replaced (and marked deleted).
    pub(super) fn removed(&mut self, node: &Arc<FdNode>, c: &PollCounters) {
        if node.io_poll.is_some() {
            self.polled.retain(|n| !Arc::ptr_eq(n, node));
        } else {
            self.unpolled -= 1;
        }
        self.publish(c);
    }

    /// Every handler went away (context shutdown).
    pub(super) fn clear(&mut self, c: &PollCounters) {
        self.polled.clear();
        self.unpolled = 0;
        self.started = false;
        self.publish(c);
    }

    fn publish(&self, c: &PollCounters) {
        c.polled_handlers.store(self.polled.len(), Relaxed);
        c.unpolled_handlers.store(self.unpolled, Relaxed);
    }

    /// A handler's fd became ready through the fd monitor: if it is a
    /// polled handler left out as idle, the spin calls it again.
    pub(super) fn fd_ready(
        &mut self,
        node: &Arc<FdNode>,
        ctx: *const (),
        fd: i32,
        c: &PollCounters,
    ) {
        if node.io_poll.is_some() && !self.polled.iter().any(|n| Arc::ptr_eq(n, node)) {
            trace::poll_add(ctx, Arc::as_ptr(node).cast(), fd, 0);
            node.poll_deadline
                .store(Clock::Realtime.now_ns() + self.idle_interval(), Relaxed);
            self.polled.push(node.clone());
            self.publish(c);
        }
    }

    /// QEMU's `remove_idle_poll_handlers`: leaves out handlers idle for a
    /// whole window.
    fn remove_idle(&mut self, now: i64, ctx: *const (), c: &PollCounters) {
        let before = self.polled.len();
        self.polled.retain(|n| {
            let keep = n.poll_deadline.load(Relaxed) > now;
            if !keep {
                trace::poll_remove(ctx, Arc::as_ptr(n).cast(), -1);
            }
            keep
        });
        let removed = before - self.polled.len();
        if removed > 0 {
            c.idle_removed.fetch_add(removed as u64, Relaxed);
            self.publish(c);
        }
    }
}

/// What a spin found.
pub(super) struct Spin {
    /// Work arrived (a bottom half, or a poll callback's progress).
    pub(super) found: bool,
    /// Handlers whose `io_poll` reported progress: their `io_poll_ready`
    /// runs in this poll.
    pub(super) ready: Vec<Arc<FdNode>>,
    /// The io_uring monitor's completion queue had entries: the poll must
    /// reap them (a zero-timeout wait, no system call).
    pub(super) ring: bool,
}

/// How a poll goes on after its first steps
/// (`AioContext::prepare_blocking`): a set of flags in one byte, so that it
/// stays in a register on the non-blocking path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Prepared(u8);

impl Prepared {
    /// Still to sleep in the fd monitor (no work found while spinning).
    pub(super) const BLOCKING: Prepared = Prepared(1);
    /// Adaptive polling is on: the poll adjusts its spin afterwards.
    pub(super) const ADAPTIVE: Prepared = Prepared(2);
    /// Handlers wait in `PollHandlers::ready` for their `io_poll_ready`.
    pub(super) const POLL_READY: Prepared = Prepared(4);
    /// The spin found work and every handler is polled: no monitor call.
    pub(super) const SKIP_MONITOR: Prepared = Prepared(8);

    /// No flag: a non-blocking poll.
    pub(super) const fn empty() -> Prepared {
        Prepared(0)
    }

    pub(super) const fn contains(self, f: Prepared) -> bool {
        self.0 & f.0 == f.0
    }

    pub(super) fn insert(&mut self, f: Prepared) {
        self.0 |= f.0;
    }

    pub(super) fn remove(&mut self, f: Prepared) {
        self.0 &= !f.0;
    }
}

impl AioContext {
    /// Sets, replaces or removes the handlers of `fd` like
    /// [`set_fd_handler`](Self::set_fd_handler), with a poll callback (QEMU's
    /// `aio_set_fd_handler` with `io_poll` and `io_poll_ready`). While the
    /// context spins before sleeping (adaptive polling,
    /// [`set_poll_params`](Self::set_poll_params)), it calls `io_poll` in
    /// every round; `io_poll` must be cheap and make no system call, and
    /// returns whether there is work; then `io_poll_ready` runs from the same
    /// poll and does it. `io_read` / `io_write` still run when the fd
    /// monitor reports `fd` ready. With `io_poll` `None` this is
    /// `set_fd_handler`, which switches the context's polling off while the
    /// handler is registered.
    ///
    /// # Errors
    /// If the fd monitor refuses the fd.
    ///
    /// # Panics
    /// Outside the home thread; if `io_poll` is given without
    /// `io_poll_ready`.
    pub fn set_fd_handler_polled(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        io_read: Option<super::FdCallback>,
        io_write: Option<super::FdCallback>,
        io_poll: Option<super::PollCallback>,
        io_poll_ready: Option<super::FdCallback>,
    ) -> std::io::Result<()> {
        assert!(
            io_poll.is_none() || io_poll_ready.is_some(),
            "set_fd_handler_polled: an io_poll callback needs its io_poll_ready"
        );
        if io_read.is_none() && io_write.is_none() && io_poll.is_none() {
            return self.install_fd_node(fd, None);
        }
        let interest = if io_read.is_some() {
            super::events::IN
        } else {
            0
        } | if io_write.is_some() {
            super::events::OUT
        } else {
            0
        };
        let node = FdNode::new_polled(io_read, io_write, io_poll, io_poll_ready);
        self.install_fd_node(fd, Some((node, interest)))
    }

    /// Sets or clears the `io_poll_begin` and `io_poll_end` callbacks of the
    /// polled handler of `fd` (QEMU's `aio_set_event_notifier_poll`). The
    /// context calls `io_poll_begin` when it starts spinning and
    /// `io_poll_end` when it stops to sleep, then polls once more (work that
    /// arrived just before the end is not missed). While it spins, the
    /// producer may skip its notification (a virtqueue turns its kicks off);
    /// `io_poll_end` turns them back on.
    ///
    /// # Panics
    /// Outside the home thread; if `fd` has no polled handler.
    pub fn set_fd_poll_begin_end(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        io_poll_begin_end: Option<(super::FdCallback, super::FdCallback)>,
    ) {
        use std::os::fd::AsRawFd;
        let node = self.shared.local().handlers.get(&fd.as_raw_fd()).cloned();
        let node = node.filter(|n| n.io_poll.is_some()).unwrap_or_else(|| {
            panic!(
                "set_fd_poll_begin_end: fd {} has no polled handler",
                fd.as_raw_fd()
            )
        });
        let old = std::mem::replace(
            &mut *node
                .poll_begin_end
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
            io_poll_begin_end,
        );
        drop(old); // outside the lock: its destructors may do anything
                   // Set while the context spins: it has begun for this handler too.
        if self.shared.local().poll_handlers.started {
            node.call_poll_started(true);
        }
    }

    /// QEMU's `poll_set_started`: calls `io_poll_begin` (or `io_poll_end`)
    /// on the polled handlers if the state changes; after `io_poll_end`,
    /// polls each once more and queues those with work in `ready`. Returns
    /// whether any had work.
    pub(super) fn poll_set_started(&self, started: bool, ready: &mut Vec<Arc<FdNode>>) -> bool {
        let handlers = {
            let mut local = self.shared.local_in_poll();
            if local.poll_handlers.started == started {
                return false;
            }
            local.poll_handlers.started = started;
            local.poll_handlers.polled.clone()
        };
        let mut progress = false;
        for node in &handlers {
            node.call_poll_started(started);
            if !started && node.call_poll() {
                ready.push(node.clone());
                progress = true;
            }
        }
        progress
    }

    /// Sets how long a polled handler may report no progress before the
    /// spin leaves it out until its fd is next ready (QEMU's
    /// `POLL_IDLE_INTERVAL_NS`; default [`DEFAULT_POLL_IDLE_INTERVAL`]).
    ///
    /// # Panics
    /// Outside the home thread.
    pub fn set_poll_idle_interval(&self, interval: Duration) {
        let ns = i64::try_from(interval.as_nanos())
            .unwrap_or(i64::MAX)
            .max(1);
        self.shared.local().poll_handlers.idle_interval_ns = ns;
    }

    /// The context's polling counters.
    ///
    /// # Thread context
    /// Any thread.
    pub fn poll_stats(&self) -> PollStats {
        let c = &self.shared.poll_counters;
        PollStats {
            spins: c.spins.load(Relaxed),
            spins_with_work: c.spins_with_work.load(Relaxed),
            poll_calls: c.poll_calls.load(Relaxed),
            poll_progress: c.poll_progress.load(Relaxed),
            ready_calls: c.ready_calls.load(Relaxed),
            idle_removed: c.idle_removed.load(Relaxed),
            ring_progress: c.ring_progress.load(Relaxed),
            blocking_waits: c.blocking_waits.load(Relaxed),
            polled_handlers: c.polled_handlers.load(Relaxed),
            unpolled_handlers: c.unpolled_handlers.load(Relaxed),
            poll_ns: c.poll_ns.load(Relaxed),
        }
    }

    /// A blocking poll is about to ask the fd monitor to wait.
    pub(super) fn count_blocking_wait(&self) {
        self.shared
            .poll_counters
            .blocking_waits
            .fetch_add(1, Relaxed);
    }

    pub(super) fn publish_poll_ns(&self, ns: i64) {
        self.shared.poll_counters.poll_ns.store(ns, Relaxed);
    }

    /// Whether a blocking poll may spin now: polling is on, no bottom half
    /// is already queued, and the spin can see every kind of work without a
    /// system call. On io_uring the completion queue covers every handler
    /// and file operation (the queued polls are submitted here, first); on
    /// epoll every handler must have a poll callback and no file operation
    /// may be in flight on a ring beside it (see the module documentation).
    pub(super) fn may_spin(local: &mut Local) -> bool {
        if local.poll.ns <= 0 || !local.bh_queue.is_empty() {
            return false;
        }
        if local.monitor.polls_in_memory() {
            // A failure leaves the spin out; the wait that follows reports it.
            return local.monitor.prepare_spin().is_ok();
        }
        local.poll_handlers.unpolled == 0 && !local.ring_busy()
    }

    /// QEMU's `run_poll_handlers`: spins for up to `local.poll.ns` (never
    /// past the nearest timer) watching the bottom-half list and calling the
    /// poll callbacks. `notify_me` stays lowered meanwhile, so notifiers skip
    /// the eventfd write. The home-state borrow is released while it spins:
    /// callbacks may use the context (remove handlers, schedule).
    pub(super) fn spin_for_work(&self, local: std::cell::RefMut<'_, Local>) -> Spin {
        let s = &*self.shared;
        let start = Clock::Realtime.now_ns();
        let mut end = start + local.poll.ns;
        if let Some(t) = local.timers.first() {
            end = end.min(t.expire.load(Relaxed));
        }
        let handlers = local.poll_handlers.polled.clone();
        let interval = local.poll_handlers.idle_interval();
        let max_ns = local.poll.max_ns;
        let watch_ring = local.monitor.polls_in_memory();
        drop(local);
        let mut ring = false;
        let mut ready = Vec::new();
        self.poll_set_started(true, &mut ready);
        s.poll_counters.spins.fetch_add(1, Relaxed);
        trace::run_poll_handlers_begin(self.as_ptr(), max_ns, end - start);
        // Rounds between clock reads and CPU yields (a system call).
        let inner = if handlers.is_empty() { 64 } else { 16 };
        let found = 'spin: loop {
            for _ in 0..inner {
                if !s.bh_list.is_empty() {
                    break 'spin true;
                }
                // The borrow ends at once: poll callbacks may use the context.
                if watch_ring && s.local_in_poll().monitor.has_completions() {
                    ring = true;
                    break 'spin true;
                }
                if self.poll_once(&handlers, interval, &mut ready) {
                    break 'spin true;
                }
                std::hint::spin_loop();
            }
            if Clock::Realtime.now_ns() >= end {
                break false;
            }
            // Let another runnable thread have the CPU: with more busy
            // threads than cores, pure spinning would starve the very
            // threads that produce our work. Returns at once otherwise.
            std::thread::yield_now();
        };
        // About to sleep: notifications back on, and one last look.
        let found = found || self.poll_set_started(false, &mut ready);
        let now = Clock::Realtime.now_ns();
        trace::run_poll_handlers_end(self.as_ptr(), found, end - start);
        if found {
            s.poll_counters.spins_with_work.fetch_add(1, Relaxed);
        }
        if ring {
            s.poll_counters.ring_progress.fetch_add(1, Relaxed);
        }
        s.local_in_poll()
            .poll_handlers
            .remove_idle(now, self.as_ptr(), &s.poll_counters);
        Spin { found, ready, ring }
    }

    /// QEMU's `run_poll_handlers_once`: calls every poll callback; those
    /// that report progress go to `ready` and reset their window.
    fn poll_once(
        &self,
        handlers: &[Arc<FdNode>],
        interval: i64,
        ready: &mut Vec<Arc<FdNode>>,
    ) -> bool {
        let c = &self.shared.poll_counters;
        let mut progress = false;
        for node in handlers {
            c.poll_calls.fetch_add(1, Relaxed);
            if node.call_poll() {
                c.poll_progress.fetch_add(1, Relaxed);
                node.poll_deadline
                    .store(Clock::Realtime.now_ns() + interval, Relaxed);
                ready.push(node.clone());
                progress = true;
            }
        }
        progress
    }

    /// Runs the `io_poll_ready` callbacks of the handlers a spin found
    /// ready (parked in `PollHandlers::ready`); returns whether any ran.
    #[inline(never)]
    pub(super) fn dispatch_poll_ready(&self) -> bool {
        let ready = std::mem::take(&mut self.shared.local_in_poll().poll_handlers.ready);
        let mut progress = false;
        for node in ready {
            if node.call(&node.io_poll_ready) {
                self.shared.poll_counters.ready_calls.fetch_add(1, Relaxed);
                progress = true;
            }
        }
        progress
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::aio::{EventNotifier, FdCallback, PollCallback};
    use std::os::fd::AsFd;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::time::Instant;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// A context that polls, with its spin already grown past 0 (it starts
    /// at 0 and grows after a blocking poll that woke within `max_ns`).
    fn polling_ctx() -> AioContext {
        polling_ctx_on(crate::FdMon::from_env())
    }

    /// [`polling_ctx`] on the fd monitor `kind`.
    fn polling_ctx_on(kind: crate::FdMon) -> AioContext {
        let ctx = AioContext::with_fd_monitor(kind).unwrap();
        assert_eq!(ctx.fd_monitor(), kind, "io_uring refused on this machine");
        // A large bound: a loaded machine must not shrink the spin to 0.
        ctx.set_poll_params(1_000_000_000, 0, 0);
        let start = Instant::now();
        while ctx.poll_stats().poll_ns == 0 {
            assert!(start.elapsed() < DEADLINE, "the spin never grew");
            let ran = Arc::new(AtomicBool::new(false));
            let (c, r) = (ctx.clone(), ran.clone());
            let t = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(1));
                c.bh_schedule_oneshot(move || r.store(true, Relaxed));
            });
            while !ran.load(Relaxed) {
                ctx.poll(true);
            }
            t.join().unwrap();
        }
        ctx
    }

    /// A polled handler on its own eventfd: `io_poll` reports `work`,
    /// `io_poll_ready` clears it and counts.
    struct Polled {
        fd: EventNotifier,
        work: Arc<AtomicBool>,
        ready: Arc<AtomicUsize>,
    }

    impl Polled {
        fn new() -> Polled {
            Polled {
                fd: EventNotifier::new().unwrap(),
                work: Arc::new(AtomicBool::new(false)),
                ready: Arc::new(AtomicUsize::new(0)),
            }
        }

        fn callbacks(&self) -> (PollCallback, FdCallback) {
            let (w, w2, r) = (self.work.clone(), self.work.clone(), self.ready.clone());
            (
                Box::new(move || w.load(Relaxed)),
                Box::new(move || {
                    w2.store(false, Relaxed);
                    r.fetch_add(1, Relaxed);
                }),
            )
        }

        /// With a read handler that clears the eventfd.
        fn register(&self, ctx: &AioContext) {
            let (p, r) = self.callbacks();
            let fd = self.fd.clone();
            let read: FdCallback = Box::new(move || {
                fd.test_and_clear();
            });
            ctx.set_fd_handler_polled(self.fd.as_fd(), Some(read), None, Some(p), Some(r))
                .unwrap();
        }

        fn ready(&self) -> usize {
            self.ready.load(Relaxed)
        }
    }

    /// Reported progress is handled in the same poll, from the spin; a
    /// handler that keeps reporting progress keeps its window, one that
    /// reports none for a window is left out of the spins until its fd is
    /// ready, which puts it back.
    #[test]
    fn progress_resets_the_poll_window() {
        let ctx = polling_ctx();
        ctx.set_poll_idle_interval(Duration::from_millis(30));
        let (busy, idle) = (Polled::new(), Polled::new());
        busy.register(&ctx);
        idle.register(&ctx);
        assert_eq!(ctx.poll_stats().polled_handlers, 2);
        let start = Instant::now();
        let mut rounds = 0;
        while ctx.poll_stats().polled_handlers == 2 {
            assert!(
                start.elapsed() < DEADLINE,
                "the idle handler was never left out"
            );
            busy.work.store(true, Relaxed);
            assert!(ctx.poll(true), "the ready callback is progress");
            rounds += 1;
            assert_eq!(busy.ready(), rounds, "one ready call per reported progress");
        }
        assert!(
            start.elapsed() >= Duration::from_millis(30),
            "not before its window"
        );
        let st = ctx.poll_stats();
        assert_eq!(st.idle_removed, 1);
        assert!(st.spins_with_work >= rounds as u64);
        assert!(st.poll_progress >= rounds as u64);
        // The busy one is still polled: its progress reset its window.
        busy.work.store(true, Relaxed);
        ctx.poll(true);
        assert_eq!(busy.ready(), rounds + 1);
        assert_eq!(idle.ready(), 0);
        // The idle one's fd becomes ready: it is polled again.
        idle.fd.set().unwrap();
        ctx.poll(true);
        assert_eq!(ctx.poll_stats().polled_handlers, 2);
        idle.work.store(true, Relaxed);
        ctx.poll(true);
        assert_eq!(idle.ready(), 1, "polled again after its fd was ready");
        ctx.set_fd_handler_polled(busy.fd.as_fd(), None, None, None, None)
            .unwrap();
        ctx.set_fd_handler_polled(idle.fd.as_fd(), None, None, None, None)
            .unwrap();
        assert_eq!(ctx.poll_stats().polled_handlers, 0);
    }

    /// On epoll, one handler without a poll callback switches the spin off
    /// for the whole context (QEMU's `poll_disable_cnt`); removing it
    /// switches the spin back on. (On io_uring the ring covers it and the
    /// spin stays on: tests/aio_poll_ring.rs.)
    #[test]
    fn handler_without_poll_callback_switches_polling_off() {
        let ctx = polling_ctx_on(crate::FdMon::Epoll);
        let polled = Polled::new();
        polled.register(&ctx);
        let plain = EventNotifier::new().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        ctx.set_event_notifier(
            &plain,
            Some(Box::new(move |e: &EventNotifier| {
                e.test_and_clear();
                h.fetch_add(1, Relaxed);
            })),
        )
        .unwrap();
        // The first blocking poll ends the spinning state (QEMU's
        // `poll_set_started(false)`, with its last look: no work yet).
        plain.set().unwrap();
        ctx.poll(true);
        assert_eq!(hits.load(Relaxed), 1);
        let st = ctx.poll_stats();
        assert_eq!((st.polled_handlers, st.unpolled_handlers), (1, 1));
        // Work reported by the poll callback is not seen: no spin. The
        // plain notifier wakes the poll instead.
        polled.work.store(true, Relaxed);
        plain.set().unwrap();
        ctx.poll(true);
        assert_eq!(hits.load(Relaxed), 2);
        assert_eq!(
            polled.ready(),
            0,
            "no spin while an unpolled handler exists"
        );
        assert_eq!(ctx.poll_stats().spins, st.spins);
        // Without it, the spin runs and finds the work.
        ctx.set_event_notifier(&plain, None).unwrap();
        assert_eq!(ctx.poll_stats().unpolled_handlers, 0);
        ctx.poll(true);
        assert_eq!(polled.ready(), 1);
        assert!(ctx.poll_stats().spins > st.spins);
        ctx.set_fd_handler_polled(polled.fd.as_fd(), None, None, None, None)
            .unwrap();
    }

    /// `io_poll_begin` runs when the context starts spinning and stays in
    /// effect while spins find work; `io_poll_end` runs before the context
    /// sleeps, followed by one more poll, which catches work that arrived
    /// meanwhile (here, from `io_poll_end` itself) without sleeping.
    #[test]
    fn poll_begin_and_end() {
        let ctx = polling_ctx();
        let h = Polled::new();
        h.register(&ctx);
        let (begins, ends) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (b, e, w) = (begins.clone(), ends.clone(), h.work.clone());
        let end_brings_work = Arc::new(AtomicBool::new(false));
        let ebw = end_brings_work.clone();
        ctx.set_fd_poll_begin_end(
            h.fd.as_fd(),
            Some((
                Box::new(move || {
                    b.fetch_add(1, Relaxed);
                }),
                Box::new(move || {
                    e.fetch_add(1, Relaxed);
                    if ebw.load(Relaxed) {
                        w.store(true, Relaxed);
                    }
                }),
            )),
        );
        for round in 1..=3 {
            h.work.store(true, Relaxed);
            assert!(ctx.poll(true));
            assert_eq!(h.ready(), round);
        }
        assert_eq!(begins.load(Relaxed), 1, "begun once, while spins find work");
        assert_eq!(ends.load(Relaxed), 0);
        // No work while spinning: the spin ends, `io_poll_end` brings work,
        // the last look finds it and the poll does not sleep.
        end_brings_work.store(true, Relaxed);
        assert!(ctx.poll(true));
        assert_eq!(ends.load(Relaxed), 1);
        assert_eq!(h.ready(), 4, "work from io_poll_end was not missed");
        // Polling starts again at the next spin.
        h.work.store(true, Relaxed);
        assert!(ctx.poll(true));
        assert_eq!(begins.load(Relaxed), 2);
        ctx.set_fd_handler_polled(h.fd.as_fd(), None, None, None, None)
            .unwrap();
    }

    /// A ready callback removes its own handler and another one that
    /// reported progress in the same round: the other's ready callback does
    /// not run, and neither is polled again.
    #[test]
    fn removal_from_inside_a_callback() {
        let ctx = polling_ctx();
        let (a, b) = (Polled::new(), Polled::new());
        let weak = ctx.downgrade();
        let (fa, fb) = (a.fd.clone(), b.fd.clone());
        let a_ready = a.ready.clone();
        let a_work = a.work.clone();
        ctx.set_fd_handler_polled(
            a.fd.as_fd(),
            None,
            None,
            Some(Box::new(move || a_work.load(Relaxed))),
            Some(Box::new(move || {
                a_ready.fetch_add(1, Relaxed);
                let ctx = weak.upgrade().unwrap();
                ctx.set_fd_handler_polled(fa.as_fd(), None, None, None, None)
                    .unwrap();
                ctx.set_fd_handler_polled(fb.as_fd(), None, None, None, None)
                    .unwrap();
            })),
        )
        .unwrap();
        b.register(&ctx);
        a.work.store(true, Relaxed);
        b.work.store(true, Relaxed);
        assert!(ctx.poll(true));
        assert_eq!(a.ready(), 1);
        assert_eq!(b.ready(), 0, "removed before its ready callback's turn");
        let st = ctx.poll_stats();
        assert_eq!((st.polled_handlers, st.unpolled_handlers), (0, 0));
        // Nothing polls them any more: with the flags still set, a
        // non-blocking poll finds nothing to do.
        assert!(!ctx.poll(false));
        assert_eq!(ctx.poll_stats().poll_calls, st.poll_calls);
    }
}
