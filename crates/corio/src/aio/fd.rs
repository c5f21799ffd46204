//! fd handlers and event notifiers (QEMU's `aio_set_fd_handler`,
//! `aio_set_event_notifier`, util/event_notifier-posix.c).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use rustix::event::{eventfd, EventfdFlags};

/// An fd handler callback. It runs on the context's home thread.
pub type FdCallback = Box<dyn FnMut() + Send>;

/// An event-mask fd handler ([`AioContext::set_fd_events_handler`]); it
/// gets the ready events (`events::*` bits).
///
/// [`AioContext::set_fd_events_handler`]: super::AioContext::set_fd_events_handler
pub type EventsCallback = Box<dyn FnMut(u32) + Send>;

/// An event notifier handler; it gets the notifier that fired.
pub type NotifierCallback = Box<dyn FnMut(&EventNotifier) + Send>;

/// One registered fd: what `poll` dispatches to.
pub(crate) struct FdNode {
    pub(crate) read: Option<Mutex<FdCallback>>,
    pub(crate) write: Option<Mutex<FdCallback>>,
    /// Instead of read/write: one callback that gets the ready events.
    pub(crate) events: Option<Mutex<EventsCallback>>,
    /// Set when the handler is removed or replaced; a dispatch already under
    /// way skips it from then on.
    pub(crate) deleted: AtomicBool,
}

impl FdNode {
    pub(crate) fn new(read: Option<FdCallback>, write: Option<FdCallback>) -> Arc<FdNode> {
        Arc::new(FdNode {
            read: read.map(Mutex::new),
            write: write.map(Mutex::new),
            events: None,
            deleted: AtomicBool::new(false),
        })
    }

    pub(crate) fn new_events(cb: EventsCallback) -> Arc<FdNode> {
        Arc::new(FdNode {
            read: None,
            write: None,
            events: Some(Mutex::new(cb)),
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
