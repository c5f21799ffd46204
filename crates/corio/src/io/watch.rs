//! Channel watches: QEMU's `qio_channel_add_watch_full` (io/channel-watch.c),
//! a callback run in a chosen [`AioContext`] whenever the channel's fd has
//! one of the asked-for conditions.
//!
//! Conditions are the [`events`] bits: `IN`, `OUT`, `PRI`, `ERR`, `HUP`,
//! `NVAL`. The callback gets the conditions that hold (the ready events
//! masked by the watch's condition, as glib's fd sources do) and returns
//! whether to keep watching. The notify runs exactly once, when the watch
//! goes: its callback returned `false`, its [`WatchHandle`] removed it, or
//! the channel was closed (the callback first gets `NVAL` if it asked for
//! it, as a glib watch on a closed fd would).
//!
//! Channels that decode their input (TLS, WebSocket) can hold data the fd
//! will never announce; their `IN` watches also fire, from a bottom half,
//! while such data is buffered: after the watch is added and after each
//! callback that keeps watching.
//!
//! A watch holds its own duplicate of the channel's fd, so that it never
//! conflicts with the fd handlers of coroutines yielding on the same channel
//! in the same context (QEMU keeps GSources and AioContext handlers apart).
//!
//! # Examples
//!
//! ```
//! use corio::io::{events, Channel, SocketChannel};
//! use corio::AioContext;
//! use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
//!
//! let ctx = AioContext::new().unwrap();
//! let (a, b) = SocketChannel::pair().unwrap();
//! let calls = Arc::new(AtomicUsize::new(0));
//! let c = calls.clone();
//! let notified = Arc::new(AtomicUsize::new(0));
//! let n = notified.clone();
//! let _w = a.add_watch(
//!     events::IN,
//!     Box::new(move |cond| {
//!         assert_eq!(cond, events::IN);
//!         c.fetch_add(1, Ordering::SeqCst);
//!         false // one shot
//!     }),
//!     Some(Box::new(move || { n.fetch_add(1, Ordering::SeqCst); })),
//!     Some(&ctx),
//! ).unwrap();
//! b.write_all_bytes(b"!").unwrap();
//! ctx.poll(true);
//! ctx.poll(false);
//! assert_eq!(calls.load(Ordering::SeqCst), 1);
//! assert_eq!(notified.load(Ordering::SeqCst), 1);
//! ```

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};

use crate::aio::events;
use crate::aio::AioContext;

/// A watch callback: gets the conditions that hold, returns whether to keep
/// watching (QEMU's `QIOChannelFunc`).
pub type WatchFunc = Box<dyn FnMut(u32) -> bool + Send>;

/// Runs once when a watch goes (QEMU's `GDestroyNotify`).
pub type WatchNotify = Box<dyn FnOnce() + Send>;

/// Tells whether a channel holds input its fd cannot announce (decrypted
/// TLS plaintext, decoded WebSocket payload); see
/// [`Channel::pending_input_probe`](super::Channel::pending_input_probe).
pub type PendingProbe = Arc<dyn Fn() -> bool + Send + Sync>;

/// Every condition a watch may ask for.
pub const ALL_CONDITIONS: u32 =
    events::IN | events::OUT | events::PRI | events::ERR | events::HUP | events::NVAL;

pub(crate) struct WatchInner {
    /// Our duplicate of the channel's fd: registered in `ctx`, closed when
    /// the watch is dropped.
    fd: OwnedFd,
    condition: u32,
    ctx: AioContext,
    /// Taken out while the callback runs, so that the callback may remove
    /// its own watch; `None` for good once removed.
    func: Mutex<Option<WatchFunc>>,
    /// Taken (and run) exactly once by `finish`.
    notify: Mutex<Option<WatchNotify>>,
    /// Set once the watch is gone (home thread writes; anyone reads).
    removed: Mutex<bool>,
    /// The channel's buffered-input probe, for `IN` watches on channels
    /// that decode input (QEMU's TLS and websock GSources check theirs).
    pending: Option<PendingProbe>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl WatchInner {
    /// Removes the fd handler and runs the notify, once.
    ///
    /// # Thread context
    /// The watch context's home thread.
    fn finish(self: &Arc<Self>) {
        {
            let mut removed = lock(&self.removed);
            if *removed {
                return;
            }
            *removed = true;
        }
        let _ = self.ctx.set_fd_events_handler(self.fd.as_fd(), 0, None);
        drop(lock(&self.func).take());
        if let Some(notify) = lock(&self.notify).take() {
            notify();
        }
    }

    /// The fd handler: calls the callback with the conditions that hold.
    fn dispatch(self: &Arc<Self>, revents: u32) {
        let cond = revents & self.condition;
        if cond == 0 {
            return;
        }
        let Some(mut f) = lock(&self.func).take() else {
            return;
        };
        let keep = f(cond);
        if keep && !*lock(&self.removed) {
            *lock(&self.func) = Some(f);
            self.kick_if_pending();
        } else {
            drop(f);
            self.finish();
        }
    }

    /// Whether the channel holds input an `IN` watch must hear of though
    /// the fd is quiet.
    fn has_pending(&self) -> bool {
        self.condition & events::IN != 0 && self.pending.as_ref().is_some_and(|p| p())
    }

    /// Dispatches `IN` from a bottom half while the channel holds input its
    /// fd cannot announce: level-triggered, like the fd itself, so the
    /// callback runs again until it has read what is buffered.
    ///
    /// # Thread context
    /// The watch context's home thread.
    fn kick_if_pending(self: &Arc<Self>) {
        if !self.has_pending() {
            return;
        }
        let me = self.clone();
        self.ctx.bh_schedule_oneshot(move || {
            if !*lock(&me.removed) && me.has_pending() {
                me.dispatch(events::IN);
            }
        });
    }

    /// Runs `finish` on the home thread, now or from a bottom half.
    fn finish_in_context(self: &Arc<Self>, nval: bool) {
        let me = self.clone();
        let run = move || {
            if nval {
                me.dispatch(events::NVAL);
            }
            me.finish();
        };
        if self.ctx.in_home_thread() {
            run();
        } else {
            self.ctx.bh_schedule_oneshot(run);
        }
    }
}

/// Removes a watch (QEMU's `g_source_remove` on the tag). Dropping the
/// handle leaves the watch in place.
#[derive(Clone)]
pub struct WatchHandle {
    inner: Weak<WatchInner>,
}

impl WatchHandle {
    /// Removes the watch; its notify runs (in the watch's context, now if
    /// called there). Does nothing if the watch is already gone.
    ///
    /// # Thread context
    /// Any thread.
    pub fn remove(&self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.finish_in_context(false);
        }
    }

    /// Whether the watch is still active.
    pub fn is_active(&self) -> bool {
        self.inner.upgrade().is_some_and(|i| !*lock(&i.removed))
    }
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHandle")
            .field("active", &self.is_active())
            .finish()
    }
}

/// The watches of one channel, so that closing it can end them.
#[derive(Default)]
pub(crate) struct WatchList(Mutex<Vec<Weak<WatchInner>>>);

impl std::fmt::Debug for WatchList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatchList")
    }
}

impl WatchList {
    fn push(&self, w: &Arc<WatchInner>) {
        let mut v = lock(&self.0);
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(w));
    }

    /// The channel is closing: every live watch gets `NVAL` (if it asked)
    /// and goes, in its own context.
    pub(crate) fn close_all(&self) {
        let all = std::mem::take(&mut *lock(&self.0));
        for w in all.iter().filter_map(Weak::upgrade) {
            w.finish_in_context(true);
        }
    }
}

/// Adds a watch on `fd` for `condition` in `ctx` (the caller's current
/// context when `None`); see the module documentation. Used by
/// [`Channel::add_watch`](super::Channel::add_watch).
pub(crate) fn add_watch(
    list: &WatchList,
    fd: BorrowedFd<'_>,
    pending: Option<PendingProbe>,
    condition: u32,
    func: WatchFunc,
    notify: Option<WatchNotify>,
    ctx: Option<&AioContext>,
) -> io::Result<WatchHandle> {
    assert!(
        condition & !ALL_CONDITIONS == 0 && condition != 0,
        "add_watch: condition {condition:#x} is not a set of events::* bits"
    );
    let ctx = ctx.cloned().unwrap_or_else(AioContext::current);
    let dup = rustix::io::fcntl_dupfd_cloexec(fd, 0)?;
    let inner = Arc::new(WatchInner {
        fd: dup,
        condition,
        ctx: ctx.clone(),
        func: Mutex::new(Some(func)),
        notify: Mutex::new(notify),
        removed: Mutex::new(false),
        pending,
    });
    list.push(&inner);
    let handle = WatchHandle {
        inner: Arc::downgrade(&inner),
    };
    let register = move || {
        if *lock(&inner.removed) {
            return Ok(()); // removed before it was registered
        }
        let w = inner.clone();
        let cb = Box::new(move |revents: u32| w.dispatch(revents));
        let interest = inner.condition & (events::IN | events::OUT | events::PRI);
        if let Err(e) = inner
            .ctx
            .set_fd_events_handler(inner.fd.as_fd(), interest, Some(cb))
        {
            inner.finish();
            return Err(e);
        }
        inner.kick_if_pending();
        Ok(())
    };
    if ctx.in_home_thread() {
        register()?;
    } else {
        // QEMU attaches a GSource from any thread; our fd handlers are set on
        // the home thread.
        ctx.bh_schedule_oneshot(move || {
            let _ = register();
        });
    }
    Ok(handle)
}
