//! A context's io_uring: the choice of fd monitor (QEMU's fdmon choice,
//! with its fallback to epoll), and the ring that coroutines' file
//! operations go to (QEMU's per-context `LuringState`).
//!
//! A context on the io_uring monitor submits file operations to the
//! monitor's own ring: they go in with the loop's one `io_uring_enter` and
//! their completions are reaped by the same wait as the polls. A context
//! on epoll sets up a second ring on its first file operation, watches that
//! ring's fd with epoll, submits once per loop iteration before it waits,
//! and reaps after. A context that cannot have a ring (the kernel refused)
//! reports it, and [`AioFile`](crate::io::AioFile) falls back to the
//! thread pool.

use std::io;
use std::os::fd::AsFd;
use std::sync::Once;

use super::sys::{FdMon, FdMonitor, FileOp, Monitor, Uring};
use super::{events, AioContext, Epoll, Local};
use crate::coroutine::CoHandle;
use crate::trace;

/// The ring for file operations of a context on epoll.
// One per context, as `Monitor` (same reason).
#[allow(clippy::large_enum_variant)]
pub(super) enum FileRing {
    /// No file operation yet.
    Untried,
    /// The kernel refused a ring: operations go to the thread pool.
    Unavailable,
    Ring(Uring),
}

/// Why the io_uring monitor was not set up: errno and what it means.
pub(super) struct Fallback {
    errno: i32,
    reason: String,
}

/// Sets up the monitor `kind` asks for; io_uring falls back to epoll.
pub(super) fn make_monitor(kind: FdMon) -> io::Result<(Monitor, Option<Fallback>)> {
    if kind == FdMon::IoUring {
        match Uring::new() {
            Ok(u) => return Ok((Monitor::Uring(u), None)),
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(0);
                let why = match rustix::io::Errno::from_raw_os_error(errno) {
                    rustix::io::Errno::NOSYS => "the kernel has no io_uring",
                    rustix::io::Errno::PERM => {
                        "refused (a seccomp filter or kernel.io_uring_disabled)"
                    }
                    rustix::io::Errno::NOMEM => "out of memory (RLIMIT_MEMLOCK?)",
                    _ => "setup failed",
                };
                let fallback = Fallback {
                    errno,
                    reason: format!("io_uring {why}: {e}"),
                };
                return Ok((Monitor::Epoll(Epoll::new()?), Some(fallback)));
            }
        }
    }
    Ok((Monitor::Epoll(Epoll::new()?), None))
}

/// Logs a fallback: the trace event always, stderr once per process.
pub(super) fn report_fallback(ctx: &AioContext, f: &Fallback) {
    trace::fdmon_io_uring_fallback(ctx.as_ptr(), f.errno, &f.reason);
    static ONCE: Once = Once::new();
    ONCE.call_once(|| eprintln!("corio: using the epoll fd monitor: {}", f.reason));
}

impl Local {
    /// The ring file operations go to, set up on first use on epoll.
    fn file_ring(&mut self) -> Option<&mut Uring> {
        let Local {
            monitor, file_ring, ..
        } = self;
        if let Monitor::Uring(u) = monitor {
            return Some(u);
        }
        if let FileRing::Untried = file_ring {
            *file_ring = match Uring::new() {
                Ok(u) => match monitor.register(u.as_fd(), events::IN) {
                    Ok(()) => FileRing::Ring(u),
                    Err(_) => FileRing::Unavailable,
                },
                Err(_) => FileRing::Unavailable,
            };
            if let FileRing::Ring(u) = file_ring {
                trace::luring_init_state((u as *const Uring).cast(), u.sq_entries());
            }
        }
        match file_ring {
            FileRing::Ring(u) => Some(u),
            _ => None,
        }
    }

    /// Whether a wait must run even with nothing else to wait for: file
    /// operations in flight whose completions it reaps.
    pub(super) fn ring_busy(&self) -> bool {
        match (&self.monitor, &self.file_ring) {
            (Monitor::Uring(u), _) | (_, FileRing::Ring(u)) => u.ops_in_flight() > 0,
            _ => false,
        }
    }

    /// Before the monitor's wait: a separate file ring submits what the
    /// iteration queued (the monitor's own ring does so in its wait).
    pub(super) fn flush_file_ring(&mut self) -> io::Result<()> {
        match &mut self.file_ring {
            FileRing::Ring(u) => u.flush(),
            _ => Ok(()),
        }
    }

    /// Reaps the monitor's completions and drops them: for a poll that
    /// has no handler to dispatch them to (see `AioContext::prepare_blocking`).
    /// A failure is left for the next wait to report.
    pub(super) fn drop_completions(&mut self) {
        let mut ready = std::mem::take(&mut self.ready);
        let _ = self.monitor.wait(0, &mut ready);
        ready.clear();
        self.ready = ready;
    }

    /// After the monitor's wait: the coroutines whose operations completed,
    /// if any ring can have some.
    pub(super) fn take_woken(&mut self) -> Option<Vec<CoHandle>> {
        let mut out = Vec::new();
        match (&mut self.monitor, &mut self.file_ring) {
            (Monitor::Uring(u), _) => u.take_woken(&mut out),
            (_, FileRing::Ring(u)) => {
                // Reaps from memory: its submissions went in before the wait.
                let mut none = Vec::new();
                if u.wait(0, &mut none).is_ok() {
                    u.take_woken(&mut out);
                }
            }
            _ => return None,
        }
        Some(out).filter(|w| !w.is_empty())
    }
}

impl AioContext {
    /// The fd monitor this context uses: what [`with_fd_monitor`] asked
    /// for, or epoll after a fallback.
    ///
    /// [`with_fd_monitor`]: AioContext::with_fd_monitor
    ///
    /// # Panics
    /// Outside the home thread.
    pub fn fd_monitor(&self) -> FdMon {
        self.shared.local().monitor.kind()
    }

    /// Queues `op` on the context's ring, to wake `waiter` when it
    /// completes; gives `op` back when the context has no ring.
    ///
    /// # Thread context
    /// Home thread only.
    pub(crate) fn uring_submit(
        &self,
        op: FileOp,
        bs: *const (),
        waiter: CoHandle,
    ) -> Result<u64, FileOp> {
        let mut local = self.shared.local();
        match local.file_ring() {
            Some(u) => Ok(u.submit_op(op, bs, waiter)),
            None => Err(op),
        }
    }

    /// The result and buffer of operation `id`, once completed.
    pub(crate) fn uring_take(&self, id: u64) -> Option<(i32, Vec<u8>)> {
        let mut local = self.shared.local();
        local.file_ring().and_then(|u| u.take_op(id))
    }

    /// Gives up on operation `id` (its coroutine unwinds): cancelled, its
    /// buffer kept until the kernel is done with it.
    pub(crate) fn uring_abandon(&self, id: u64) {
        let mut local = self.shared.local();
        if let Some(u) = local.file_ring() {
            u.abandon_op(id);
        }
    }

    /// Number of file operations queued on the context's ring whose
    /// completion has not arrived (tests and diagnostics).
    ///
    /// # Panics
    /// Outside the home thread.
    pub fn uring_ops_in_flight(&self) -> usize {
        let local = self.shared.local();
        match (&local.monitor, &local.file_ring) {
            (Monitor::Uring(u), _) | (_, FileRing::Ring(u)) => u.ops_in_flight(),
            _ => 0,
        }
    }
}
