//! fd handlers and event notifiers (QEMU's `aio_set_fd_handler`,
//! `aio_set_event_notifier`, util/event_notifier-posix.c).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use rustix::event::{eventfd, EventfdFlags};

use super::sys::{events, FdMonitor};
use crate::trace;

/// An fd handler callback. It runs on the context's home thread.
pub type FdCallback = Box<dyn FnMut() + Send>;

/// An event-mask fd handler ([`AioContext::set_fd_events_handler`]); it
/// gets the ready events (`events::*` bits).
///
/// [`AioContext::set_fd_events_handler`]: super::AioContext::set_fd_events_handler
pub type EventsCallback = Box<dyn FnMut(u32) + Send>;

/// A poll callback ([`AioContext::set_fd_handler_polled`]): returns whether
/// its handler has work, without a system call.
///
/// [`AioContext::set_fd_handler_polled`]: super::AioContext::set_fd_handler_polled
pub type PollCallback = Box<dyn FnMut() -> bool + Send>;

/// An event notifier handler; it gets the notifier that fired.
pub type NotifierCallback = Box<dyn FnMut(&EventNotifier) + Send>;

/// One registered fd: what `poll` dispatches to.
pub(crate) struct FdNode {
    pub(crate) read: Option<Mutex<FdCallback>>,
    pub(crate) write: Option<Mutex<FdCallback>>,
    /// Instead of read/write: one callback that gets the ready events.
    pub(crate) events: Option<Mutex<EventsCallback>>,
    /// Called while the context spins: whether there is work (`poll.rs`).
    pub(crate) io_poll: Option<Mutex<PollCallback>>,
    /// Does the work `io_poll` reported.
    pub(crate) io_poll_ready: Option<Mutex<FdCallback>>,
    /// When the handler's poll window ends without progress (realtime ns).
    pub(crate) poll_deadline: AtomicI64,
    /// QEMU's `io_poll_begin` / `io_poll_end`, called when the context
    /// starts and stops spinning (`AioContext::set_fd_poll_begin_end`).
    pub(crate) poll_begin_end: Mutex<Option<(FdCallback, FdCallback)>>,
    /// Set when the handler is removed or replaced; a dispatch already under
    /// way skips it from then on.
    pub(crate) deleted: AtomicBool,
}

impl FdNode {
    pub(crate) fn new(read: Option<FdCallback>, write: Option<FdCallback>) -> Arc<FdNode> {
        Self::new_polled(read, write, None, None)
    }

    pub(crate) fn new_polled(
        read: Option<FdCallback>,
        write: Option<FdCallback>,
        io_poll: Option<PollCallback>,
        io_poll_ready: Option<FdCallback>,
    ) -> Arc<FdNode> {
        Arc::new(FdNode {
            read: read.map(Mutex::new),
            write: write.map(Mutex::new),
            events: None,
            io_poll: io_poll.map(Mutex::new),
            io_poll_ready: io_poll_ready.map(Mutex::new),
            poll_deadline: AtomicI64::new(0),
            poll_begin_end: Mutex::new(None),
            deleted: AtomicBool::new(false),
        })
    }

    pub(crate) fn new_events(cb: EventsCallback) -> Arc<FdNode> {
        Arc::new(FdNode {
            read: None,
            write: None,
            events: Some(Mutex::new(cb)),
            io_poll: None,
            io_poll_ready: None,
            poll_deadline: AtomicI64::new(0),
            poll_begin_end: Mutex::new(None),
            deleted: AtomicBool::new(false),
        })
    }

    /// Like [`call`](Self::call) for the events callback.
    pub(crate) fn call_events(&self, cb: &Mutex<EventsCallback>, revents: u32) -> bool {
        if self.deleted.load(Relaxed) {
            return false;
        }
        match cb.try_lock() {
            Ok(mut cb) => cb(revents),
            // An earlier call panicked: the handler still works.
            Err(std::sync::TryLockError::Poisoned(e)) => (e.into_inner())(revents),
            // Running further up the stack (a nested poll).
            Err(std::sync::TryLockError::WouldBlock) => return false,
        }
        true
    }

    /// Calls the poll callback: whether it reported work. False if the node
    /// was deleted, has none, or it runs further up the stack.
    pub(crate) fn call_poll(&self) -> bool {
        if self.deleted.load(Relaxed) {
            return false;
        }
        let Some(m) = &self.io_poll else { return false };
        match m.try_lock() {
            Ok(mut cb) => cb(),
            Err(std::sync::TryLockError::Poisoned(e)) => (e.into_inner())(),
            Err(std::sync::TryLockError::WouldBlock) => false,
        }
    }

    /// Calls `io_poll_begin` (`started`) or `io_poll_end`, if set, unless
    /// the node was deleted or the callback runs further up the stack.
    pub(crate) fn call_poll_started(&self, started: bool) {
        if self.deleted.load(Relaxed) {
            return;
        }
        let mut g = match self.poll_begin_end.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        if let Some((begin, end)) = g.as_mut() {
            if started {
                begin()
            } else {
                end()
            }
        }
    }

    /// Calls one of the callbacks unless the node was deleted or that
    /// callback is already running further up the stack (a nested poll).
    pub(crate) fn call(&self, which: &Option<Mutex<FdCallback>>) -> bool {
        if self.deleted.load(Relaxed) {
            return false;
        }
        let Some(m) = which else { return false };
        match m.try_lock() {
            Ok(mut cb) => cb(),
            // An earlier call panicked: the handler still works.
            Err(std::sync::TryLockError::Poisoned(e)) => (e.into_inner())(),
            // Running further up the stack (a nested poll).
            Err(std::sync::TryLockError::WouldBlock) => return false,
        }
        true
    }
}

/// An eventfd-based notifier (QEMU's `EventNotifier`): [`set`](Self::set)
/// makes it readable, [`test_and_clear`](Self::test_and_clear) consumes that.
/// Clones share the same eventfd.
///
/// # Examples
///
/// ```
/// use corio::{AioContext, EventNotifier};
/// use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
///
/// let ctx = AioContext::new().unwrap();
/// let e = EventNotifier::new().unwrap();
/// let n = Arc::new(AtomicUsize::new(0));
/// let n2 = n.clone();
/// ctx.set_event_notifier(&e, Some(Box::new(move |e: &EventNotifier| {
///     e.test_and_clear();
///     n2.fetch_add(1, Ordering::Relaxed);
/// }))).unwrap();
/// e.set().unwrap();
/// assert!(ctx.poll(false));
/// assert_eq!(n.load(Ordering::Relaxed), 1);
/// assert!(!ctx.poll(false));
/// ctx.set_event_notifier(&e, None).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct EventNotifier {
    fd: Arc<OwnedFd>,
}

impl EventNotifier {
    /// Creates an unset notifier.
    ///
    /// # Errors
    /// If the eventfd cannot be created (for example, out of fds).
    pub fn new() -> io::Result<EventNotifier> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(EventNotifier { fd: Arc::new(fd) })
    }

    /// Makes the notifier readable (QEMU's `event_notifier_set`).
    ///
    /// # Errors
    /// Only on an unexpected eventfd error; a saturated counter is success.
    pub fn set(&self) -> io::Result<()> {
        match rustix::io::write(&*self.fd, &1u64.to_ne_bytes()) {
            Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Clears the notifier; returns whether it was set (QEMU's
    /// `event_notifier_test_and_clear`).
    pub fn test_and_clear(&self) -> bool {
        let mut buf = [0u8; 8];
        matches!(rustix::io::read(&*self.fd, &mut buf), Ok(8))
    }
}

impl AsFd for EventNotifier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for EventNotifier {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

// ----- fd handlers of a context (QEMU's `aio_set_fd_handler`) -----

impl super::AioContext {
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
    pub(super) fn install_fd_node(
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
            local.poll_handlers.removed(old, &s.poll_counters);
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
                local.poll_handlers.added(&node, &s.poll_counters);
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
}
