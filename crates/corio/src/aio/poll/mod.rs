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
use super::{AioContext, Clock, Local, PollParams, POLL_NS_START};
use crate::coroutine::CoHandle;
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

    /// A blocking poll's first steps: the adaptive spin, or the polled
    /// handlers' `io_poll_end` before a sleep. Handlers found ready wait in
    /// `poll_handlers.ready`. Returns how the poll goes on and when it
    /// started blocking. Out of line, so that the non-blocking path pays
    /// none of it.
    #[inline(never)]
    pub(super) fn prepare_blocking(&self) -> (Prepared, i64) {
        let s = &*self.shared;
        let mut local = s.local_in_poll();
        let mut prep = Prepared::BLOCKING;
        let mut block_start = 0;
        if local.poll.max_ns > 0 {
            prep.insert(Prepared::ADAPTIVE);
            block_start = Clock::Realtime.now_ns();
        }
        let mut ready = Vec::new();
        if prep.contains(Prepared::ADAPTIVE) && Self::may_spin(&mut local) {
            let spin = self.spin_for_work(local);
            ready = spin.ready;
            if spin.found {
                // Work arrived while spinning: take it without sleeping
                // (completions in the ring are reaped by a zero-timeout
                // wait, which makes no system call).
                prep.remove(Prepared::BLOCKING);
                let mut local = s.local_in_poll();
                // Every handler is polled and the ring (if any) had
                // nothing: as in QEMU, this poll needs no fd monitor call
                // (the next one makes it).
                if !spin.ring && local.poll_handlers.unpolled == 0 {
                    prep.insert(Prepared::SKIP_MONITOR);
                }
                if spin.ring && local.handlers.is_empty() && !local.ring_busy() {
                    // The wait is skipped without handlers; what the ring
                    // holds can then only be the context's own notifier or
                    // removed polls, which it would drop: drop them here,
                    // or every later spin would end at once on them.
                    local.drop_completions();
                }
            }
        } else if local.poll_handlers.started {
            // Not spinning this time (an unpolled handler came, or the
            // spin shrank to 0): the polled handlers get `io_poll_end`
            // before the sleep, as in QEMU's `try_poll_mode`.
            drop(local);
            if self.poll_set_started(false, &mut ready) {
                prep.remove(Prepared::BLOCKING);
            }
        } else {
            drop(local);
        }
        if !ready.is_empty() {
            prep.insert(Prepared::POLL_READY);
            s.local_in_poll().poll_handlers.ready.append(&mut ready);
        }
        (prep, block_start)
    }

    /// Resumes the coroutines whose file operations completed; returns
    /// whether there were any.
    #[inline(never)]
    pub(super) fn wake_completed(woken: Vec<CoHandle>) -> bool {
        let progress = !woken.is_empty();
        for co in woken {
            co.wake();
        }
        progress
    }

    /// QEMU's `adjust_polling_time`, after a blocking poll that took
    /// `block_ns` (spinning included).
    pub(super) fn adjust_polling_time(&self, block_ns: i64) {
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
        let ns = p.ns;
        drop(local);
        self.publish_poll_ns(ns);
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
        drop(local);
        self.publish_poll_ns(0);
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
mod tests;
