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

#[allow(unsafe_code)] // epoll's event buffer is Send
mod epoll;

pub(crate) use epoll::Epoll;

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
