//! The state every channel carries ([`ChannelBase`]): name, features,
//! blocking mode, watches, and the coroutines waiting in
//! [`Channel::yield_for`](super::Channel::yield_for)(super::Channel::yield_for) with the fd handlers
//! that wake them.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::aio::{AioContext, FdCallback};
use crate::coroutine::CoHandle;
use crate::io::watch::WatchList;

/// State every channel carries: name, features, and the coroutines waiting
/// in [`Channel::yield_for`](super::Channel::yield_for) (QEMU's `QIOChannel` base object).
#[derive(Debug, Default)]
pub struct ChannelBase {
    /// Debug name; set at any time from any thread.
    pub(super) name: Mutex<Option<String>>,
    /// Bit `1 << Feature as u32` per feature; set by the implementor during
    /// setup, read by anyone (no ordering needed: a plain flag word).
    pub(super) features: AtomicU32,
    /// The coroutines yielding for read and write; shared with the fd
    /// handlers that wake them (any thread may take a waiter out).
    pub(super) waiters: Arc<Mutex<Waiters>>,
    /// The channel's watches, ended when it closes.
    pub(super) watches: WatchList,
    /// QEMU's blocking flag, inverted so that the default (`false`) is
    /// blocking mode; set by [`Channel::set_blocking`](super::Channel::set_blocking), read by the I/O
    /// paths (a plain flag: no ordering with anything else).
    pub(super) nonblocking: AtomicBool,
}

#[derive(Debug, Default)]
pub(super) struct Waiters {
    pub(super) read: Option<Waiter>,
    pub(super) write: Option<Waiter>,
}

#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) co: CoHandle,
    pub(super) ctx: AioContext,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ChannelBase {
    /// A base with no name, no features and no waiters.
    pub fn new() -> ChannelBase {
        ChannelBase::default()
    }

    /// Whether the channel is in blocking mode (the default): see
    /// [`Channel::set_blocking`](super::Channel::set_blocking).
    pub fn is_blocking(&self) -> bool {
        !self.nonblocking.load(Relaxed)
    }

    /// Records the mode without touching any fd. [`Channel::set_blocking`](super::Channel::set_blocking)
    /// calls it; a channel that wraps another calls it at creation so that
    /// it starts in its master's mode.
    pub fn record_blocking(&self, enabled: bool) {
        self.nonblocking.store(!enabled, Relaxed);
    }

    /// Ends the channel's watches (their callbacks get `NVAL` if they asked
    /// for it): implementors call this from `io_close`.
    pub fn close_watches(&self) {
        self.watches.close_all();
    }

    /// Installs, in `ctx`, the fd handlers for the waiters whose context it
    /// is, or removes them (QEMU's `qio_channel_set_fd_handlers`).
    pub(super) fn update_handlers(&self, fd: BorrowedFd<'_>, ctx: &AioContext) -> io::Result<()> {
        let (want_read, want_write) = {
            let w = lock(&self.waiters);
            let mine = |s: &Option<Waiter>| s.as_ref().is_some_and(|w| w.ctx == *ctx);
            (mine(&w.read), mine(&w.write))
        };
        let restart = |read: bool| -> FdCallback {
            let waiters = self.waiters.clone();
            Box::new(move || {
                let taken = {
                    let mut w = lock(&waiters);
                    if read {
                        w.read.take()
                    } else {
                        w.write.take()
                    }
                };
                if let Some(w) = taken {
                    w.co.wake();
                }
            })
        };
        ctx.set_fd_handler(
            fd,
            want_read.then(|| restart(true)),
            want_write.then(|| restart(false)),
        )
    }
}
