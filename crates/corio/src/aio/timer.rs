//! Timers (QEMU's `QEMUTimer` on an AioContext's timer list).

use std::marker::PhantomData;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::AioContext;

/// A clock timers run on. Times are nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Clock {
    /// QEMU's `QEMU_CLOCK_REALTIME`: monotonic time that runs while the
    /// machine is suspended too (CLOCK_MONOTONIC here, as in QEMU).
    Realtime,
}

impl Clock {
    /// The clock's current time in nanoseconds (QEMU's `qemu_clock_get_ns`).
    pub fn now_ns(self) -> i64 {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    }
}

pub(crate) struct TimerInner {
    /// Absolute deadline in ns; -1 when not pending.
    pub(crate) expire: AtomicI64,
    pub(crate) cb: Mutex<Box<dyn FnMut() + Send>>,
}

/// A timer on a context: its callback runs from that context's `poll` once
/// the deadline has passed. Dropping the timer deletes it (QEMU's
/// `timer_free`).
///
/// # Thread context
/// Home thread of its context only (the type is `!Send`).
///
/// # Examples
///
/// ```
/// use corio::{AioContext, Clock};
/// use std::sync::{atomic::{AtomicBool, Ordering}, Arc};
///
/// let ctx = AioContext::new().unwrap();
/// let fired = Arc::new(AtomicBool::new(false));
/// let f = fired.clone();
/// let t = ctx.timer_new(Clock::Realtime, move || f.store(true, Ordering::Relaxed));
/// t.modify(Clock::Realtime.now_ns() + 1_000_000); // in 1 ms
/// assert!(t.pending());
/// while !fired.load(Ordering::Relaxed) {
///     ctx.poll(true); // sleeps until the deadline
/// }
/// assert!(!t.pending());
/// ```
pub struct Timer {
    pub(crate) inner: Arc<TimerInner>,
    ctx: AioContext,
    clock: Clock,
    _not_send: PhantomData<*const ()>,
}

impl AioContext {
    /// Creates a timer whose callback runs in this context (QEMU's
    /// `aio_timer_new` with `SCALE_NS`). It is not armed.
    ///
    /// # Panics
    /// Outside the context's home thread.
    pub fn timer_new(&self, clock: Clock, cb: impl FnMut() + Send + 'static) -> Timer {
        self.assert_home("timer_new");
        Timer {
            inner: Arc::new(TimerInner {
                expire: AtomicI64::new(-1),
                cb: Mutex::new(Box::new(cb)),
            }),
            ctx: self.clone(),
            clock,
            _not_send: PhantomData,
        }
    }
}

impl Timer {
    /// Arms (or re-arms) the timer for the absolute time `expire_ns` on its
    /// clock (QEMU's `timer_mod_ns`).
    pub fn modify(&self, expire_ns: i64) {
        let expire_ns = expire_ns.max(0);
        self.ctx.timer_remove(&self.inner);
        self.inner.expire.store(expire_ns, Relaxed);
        self.ctx.timer_insert(&self.inner);
    }

    /// Arms the timer `ns` nanoseconds from now.
    pub fn modify_in(&self, ns: i64) {
        self.modify(self.clock.now_ns().saturating_add(ns));
    }

    /// Disarms the timer (QEMU's `timer_del`).
    pub fn delete(&self) {
        self.ctx.timer_remove(&self.inner);
        self.inner.expire.store(-1, Relaxed);
    }

    /// Whether the timer is armed and has not fired (QEMU's `timer_pending`).
    pub fn pending(&self) -> bool {
        self.inner.expire.load(Relaxed) >= 0
    }

    /// The deadline, or -1 when not pending (QEMU's `timer_expire_time_ns`).
    pub fn expire_time(&self) -> i64 {
        self.inner.expire.load(Relaxed)
    }

    /// The clock the timer runs on.
    pub fn clock(&self) -> Clock {
        self.clock
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.delete();
    }
}

impl std::fmt::Debug for Timer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timer")
            .field("expire", &self.expire_time())
            .finish()
    }
}

/// The context's timer list, sorted by deadline (home thread only).
impl AioContext {
    pub(super) fn timer_insert(&self, t: &Arc<TimerInner>) {
        let mut local = self.shared.local();
        let at = t.expire.load(Relaxed);
        let pos = local
            .timers
            .partition_point(|o| o.expire.load(Relaxed) <= at);
        local.timers.insert(pos, t.clone());
        // No notify: timers are armed on the home thread, which is awake.
    }

    pub(super) fn timer_remove(&self, t: &Arc<TimerInner>) {
        let mut local = self.shared.local();
        if let Some(i) = local.timers.iter().position(|o| Arc::ptr_eq(o, t)) {
            local.timers.remove(i);
        }
    }

    pub(super) fn run_timers(&self) -> bool {
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
}
