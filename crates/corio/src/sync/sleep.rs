//! Coroutine sleeps: QEMU's `util/qemu-coroutine-sleep.c`.

use std::fmt;
use std::sync::{Arc, Mutex};

use super::lock_std;
use crate::aio::Clock;
use crate::coroutine::{yield_now, CoHandle, Coroutine, Scheduler};

/// Sleeps the calling coroutine for `ns` nanoseconds of `clock`, on a timer
/// of its home context (QEMU's `qemu_co_sleep_ns`). Other coroutines and
/// callbacks of the context run meanwhile; the context must be polled.
///
/// # Thread context
/// Coroutine only.
///
/// # Panics
/// Outside a coroutine.
///
/// # Examples
///
/// ```
/// use corio::{sync::co_sleep_ns, AioContext, Clock, Coroutine};
///
/// let ctx = AioContext::new().unwrap();
/// let co = Coroutine::new(|| co_sleep_ns(Clock::Realtime, 1_000_000));
/// co.enter();
/// while !co.is_terminated() {
///     ctx.poll(true); // the timer wakes it after 1 ms
/// }
/// ```
pub fn co_sleep_ns(clock: Clock, ns: i64) {
    CoSleep::new().sleep_ns(clock, ns);
}

/// A sleep that another party can end early (QEMU's `QemuCoSleep`): one
/// coroutine at a time [`sleep`](Self::sleep)s on it, with or without a
/// timeout, and [`wake`](Self::wake) from any thread ends the sleep.
///
/// While it sleeps, the coroutine is marked as scheduled by
/// `qemu_co_sleep`: waking it by other means (a [`CoHandle::wake`], a
/// co_schedule) panics with "Co-routine was already scheduled in
/// 'qemu_co_sleep'", as in QEMU.
///
/// Cloning gives another handle to the same sleep.
///
/// # Examples
///
/// ```
/// use corio::{sync::CoSleep, AioContext, Clock, Coroutine};
///
/// let ctx = AioContext::new().unwrap();
/// let s = CoSleep::new();
/// let s2 = s.clone();
/// let co = Coroutine::new(move || s2.sleep_ns(Clock::Realtime, 3_600_000_000_000));
/// co.enter();
/// assert!(s.is_sleeping());
/// std::thread::spawn(move || s.wake()).join().unwrap(); // an hour early
/// while !co.is_terminated() {
///     ctx.poll(true);
/// }
/// ```
#[derive(Clone, Default)]
pub struct CoSleep {
    inner: Arc<SleepInner>,
}

#[derive(Default)]
struct SleepInner {
    /// The sleeping coroutine, taken by the first wake. Held only for the
    /// swap, never across a yield or a wakeup.
    to_wake: Mutex<Option<CoHandle>>,
}

impl CoSleep {
    /// A sleep nobody sleeps on yet.
    pub fn new() -> CoSleep {
        CoSleep::default()
    }

    /// Sleeps until [`wake`](Self::wake) (QEMU's `qemu_co_sleep`).
    ///
    /// # Thread context
    /// Coroutine only.
    ///
    /// # Panics
    /// Outside a coroutine, or if another coroutine sleeps on it already.
    pub fn sleep(&self) {
        let me = crate::coroutine::current_for("CoSleep::sleep");
        let h = me.handle();
        drop(me);
        {
            let mut w = lock_std(&self.inner.to_wake);
            assert!(w.is_none(), "CoSleep: a coroutine already sleeps on it");
            h.inner.mark_scheduled(Scheduler::CoSleep);
            *w = Some(h);
        }
        // A wake from another thread queues us on our home context, which
        // enters us only after this yield.
        yield_now();
    }

    /// Sleeps until [`wake`](Self::wake) or for `ns` nanoseconds of `clock`,
    /// whichever comes first (QEMU's `qemu_co_sleep_ns_wakeable`). The timer
    /// runs in the coroutine's home context.
    ///
    /// # Panics
    /// As [`sleep`](Self::sleep).
    pub fn sleep_ns(&self, clock: Clock, ns: i64) {
        let ctx = Coroutine::current()
            .expect("CoSleep::sleep_ns outside a coroutine")
            .context();
        let me = self.clone();
        let timer = ctx.timer_new(clock, move || me.wake());
        timer.modify_in(ns);
        self.sleep();
        drop(timer); // woken early: the timer must not fire later
    }

    /// Ends the sleep, if a coroutine sleeps; does nothing otherwise (QEMU's
    /// `qemu_co_sleep_wake`). The coroutine resumes in its home context.
    ///
    /// # Thread context
    /// Any thread.
    pub fn wake(&self) {
        let h = lock_std(&self.inner.to_wake).take();
        if let Some(h) = h {
            let ours = h.inner.clear_scheduled(Scheduler::CoSleep);
            debug_assert!(ours, "a sleeping coroutine lost its qemu_co_sleep mark");
            h.wake();
        }
    }

    /// Whether a coroutine sleeps on it now. A snapshot.
    pub fn is_sleeping(&self) -> bool {
        lock_std(&self.inner.to_wake).is_some()
    }
}

impl fmt::Debug for CoSleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoSleep")
            .field("sleeping", &self.is_sleeping())
            .finish()
    }
}
