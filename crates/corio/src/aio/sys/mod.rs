//! Operating-system fd monitoring, behind one trait (QEMU's `FDMonOps`).
//!
//! # The contract every backend meets
//!
//! * Registration is level-triggered: an fd that stays readable is reported
//!   by every `wait` until it is drained or its interest removed.
//! * `register` adds an fd or changes its interest; `deregister` removes it
//!   and is quiet if the fd is not (or no longer) registered. An fd closed
//!   while registered must be deregistered before its number is reused by
//!   another registration; `register` on a number the backend still knows
//!   replaces that registration.
//! * `wait(timeout)` blocks for at most `timeout` nanoseconds (negative:
//!   forever; zero: no blocking) and appends one [`Ready`] per fd that has an
//!   event matching its interest, or an error or hang-up condition (reported
//!   whatever the interest). An interrupted wait (`EINTR`) returns `Ok` with
//!   no events.
//! * Backends hold no callbacks: the context maps fds to handlers.
//!
//! # Backends
//!
//! * [`Epoll`] (`epoll.rs`): one `epoll_ctl` per change, checked at once
//!   (a bad fd or a regular file is refused by `register`).
//! * [`Uring`] (`uring.rs`, QEMU's fdmon-io_uring): changes are queued and
//!   go to the kernel with the next `wait`, one `io_uring_enter` per loop
//!   iteration; so an fd that is bad when that happens is reported once as
//!   `ERR | NVAL` instead of refused. Its ring also runs file operations
//!   ([`FileOp`]) for [`crate::io::AioFile`].
//!
//! The context picks one per [`FdMon`]; `tests.rs` runs the contract on both.

#[allow(unsafe_code)] // epoll's event buffer is Send
mod epoll;
#[cfg(all(test, not(loom)))]
#[allow(unsafe_code)] // borrowing a raw fd number; sigaction and pthread_kill for EINTR
mod tests;
#[allow(unsafe_code)] // SQEs with buffer pointers (`push`): see its module doc
mod uring;

pub(crate) use epoll::Epoll;
pub(crate) use uring::{FileOp, Uring};

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

/// Readiness bits, as in poll(2): what handlers and watches ask for and get.
pub mod events {
    /// Data to read (`POLLIN`).
    pub const IN: u32 = 0x001;
    /// Urgent data (`POLLPRI`).
    pub const PRI: u32 = 0x002;
    /// Writable without blocking (`POLLOUT`).
    pub const OUT: u32 = 0x004;
    /// An error condition (`POLLERR`).
    pub const ERR: u32 = 0x008;
    /// Hung up (`POLLHUP`).
    pub const HUP: u32 = 0x010;
    /// Not an open fd (`POLLNVAL`).
    pub const NVAL: u32 = 0x020;
}

/// Internal interest bit: report the fd edge-triggered (once per change)
/// instead of level-triggered. Only the context's own notifier uses it, so
/// that a wake-up never needs a read to re-arm it.
pub(crate) const EDGE: u32 = 0x8000_0000;

/// An fd with events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ready {
    pub fd: RawFd,
    pub events: u32,
}

/// The backend contract; see the module documentation.
pub(crate) trait FdMonitor: Send {
    fn register(&mut self, fd: BorrowedFd<'_>, interest: u32) -> io::Result<()>;
    fn deregister(&mut self, fd: BorrowedFd<'_>);
    fn wait(&mut self, timeout_ns: i64, out: &mut Vec<Ready>) -> io::Result<()>;
}

/// Which fd monitor a context uses (QEMU picks io_uring, then epoll, at
/// `aio_context_setup`; ours is chosen per context).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FdMon {
    /// Level-triggered epoll (the default).
    Epoll,
    /// io_uring poll requests (QEMU's util/fdmon-io_uring.c); the context's
    /// ring also serves [`crate::io::uring_file`]. Falls back to epoll when
    /// the kernel refuses io_uring.
    IoUring,
}

impl FdMon {
    /// The environment variable that picks the monitor of contexts made by
    /// [`AioContext::new`](crate::AioContext::new): `epoll` or `io_uring`.
    pub const ENV: &'static str = "CORIO_FDMON";

    /// The monitor named by `CORIO_FDMON` (`epoll`, `io_uring`; unset or
    /// empty: epoll).
    ///
    /// # Panics
    /// On any other value, naming it: a typo must not silently test the
    /// wrong monitor.
    pub fn from_env() -> FdMon {
        match std::env::var(Self::ENV) {
            Err(_) => FdMon::Epoll,
            Ok(v) => FdMon::parse(&v)
                .unwrap_or_else(|| panic!("{}={v:?}: expected 'epoll' or 'io_uring'", Self::ENV)),
        }
    }

    /// Parses `epoll` or `io_uring` (also `io-uring`, `uring`); empty is epoll.
    pub fn parse(s: &str) -> Option<FdMon> {
        match s.trim() {
            "" | "epoll" => Some(FdMon::Epoll),
            "io_uring" | "io-uring" | "uring" => Some(FdMon::IoUring),
            _ => None,
        }
    }
}

/// The monitor of one context.
// One per context, set up once and never moved: its size does not matter,
// and the hot path is spared an indirection.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Monitor {
    Epoll(Epoll),
    Uring(Uring),
}

impl Monitor {
    pub(crate) fn kind(&self) -> FdMon {
        match self {
            Monitor::Epoll(_) => FdMon::Epoll,
            Monitor::Uring(_) => FdMon::IoUring,
        }
    }

    /// Drops the registration of fd number `fd`, which may be closed
    /// already: epoll forgets a closed file by itself (and keeps an open
    /// one registered until it is closed); io_uring's polls hold their
    /// file, so they are removed.
    pub(crate) fn forget(&mut self, fd: RawFd) {
        if let Monitor::Uring(u) = self {
            u.forget(fd);
        }
    }
}

/// Adaptive polling and the monitor (`aio/poll/mod.rs`).
impl Monitor {
    /// Whether the monitor's readiness reports can be watched from memory
    /// while the context spins: io_uring's completion queue can; epoll's
    /// ready list cannot (only `epoll_wait` reads it, a system call per
    /// look), so on epoll a handler without a poll callback keeps the
    /// context from spinning, as in QEMU.
    #[inline]
    pub(crate) fn polls_in_memory(&self) -> bool {
        matches!(self, Monitor::Uring(_))
    }

    /// Before a spin: makes every registration watchable from memory (the
    /// ring's queued polls go to the kernel). Nothing to do on epoll.
    pub(crate) fn prepare_spin(&mut self) -> io::Result<()> {
        match self {
            Monitor::Epoll(_) => Ok(()),
            Monitor::Uring(u) => u.submit_pending(),
        }
    }

    /// During a spin: whether a zero-timeout `wait` would report something
    /// (io_uring: completions in the queue). Always false on epoll.
    #[inline]
    pub(crate) fn has_completions(&mut self) -> bool {
        match self {
            Monitor::Epoll(_) => false,
            Monitor::Uring(u) => u.has_completions(),
        }
    }
}

impl FdMonitor for Monitor {
    fn register(&mut self, fd: BorrowedFd<'_>, interest: u32) -> io::Result<()> {
        match self {
            Monitor::Epoll(m) => m.register(fd, interest),
            Monitor::Uring(m) => m.register(fd, interest),
        }
    }

    fn deregister(&mut self, fd: BorrowedFd<'_>) {
        match self {
            Monitor::Epoll(m) => m.deregister(fd),
            Monitor::Uring(m) => m.deregister(fd),
        }
    }

    fn wait(&mut self, timeout_ns: i64, out: &mut Vec<Ready>) -> io::Result<()> {
        match self {
            Monitor::Epoll(m) => m.wait(timeout_ns, out),
            Monitor::Uring(m) => m.wait(timeout_ns, out),
        }
    }
}
