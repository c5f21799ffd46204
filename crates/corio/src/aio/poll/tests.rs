//! The poll-handler protocol: progress resets the window, an unpolled
//! handler switches polling off, begin/end, removal from a callback.

use super::*;
use crate::aio::{EventNotifier, FdCallback, PollCallback};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Instant;

const DEADLINE: Duration = Duration::from_secs(10);

/// A context that polls, with its spin already grown past 0 (it starts
/// at 0 and grows after a blocking poll that woke within `max_ns`).
fn polling_ctx() -> AioContext {
    polling_ctx_on(crate::FdMon::from_env())
}

/// [`polling_ctx`] on the fd monitor `kind`.
fn polling_ctx_on(kind: crate::FdMon) -> AioContext {
    let ctx = AioContext::with_fd_monitor(kind).unwrap();
    assert_eq!(ctx.fd_monitor(), kind, "io_uring refused on this machine");
    // A large bound: a loaded machine must not shrink the spin to 0.
    ctx.set_poll_params(1_000_000_000, 0, 0);
    let start = Instant::now();
    while ctx.poll_stats().poll_ns == 0 {
        assert!(start.elapsed() < DEADLINE, "the spin never grew");
        let ran = Arc::new(AtomicBool::new(false));
        let (c, r) = (ctx.clone(), ran.clone());
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1));
            c.bh_schedule_oneshot(move || r.store(true, Relaxed));
        });
        while !ran.load(Relaxed) {
            ctx.poll(true);
        }
        t.join().unwrap();
    }
    ctx
}

/// A polled handler on its own eventfd: `io_poll` reports `work`,
/// `io_poll_ready` clears it and counts.
struct Polled {
    fd: EventNotifier,
    work: Arc<AtomicBool>,
    ready: Arc<AtomicUsize>,
}

impl Polled {
    fn new() -> Polled {
        Polled {
            fd: EventNotifier::new().unwrap(),
            work: Arc::new(AtomicBool::new(false)),
            ready: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn callbacks(&self) -> (PollCallback, FdCallback) {
        let (w, w2, r) = (self.work.clone(), self.work.clone(), self.ready.clone());
        (
            Box::new(move || w.load(Relaxed)),
            Box::new(move || {
                w2.store(false, Relaxed);
                r.fetch_add(1, Relaxed);
            }),
        )
    }

    /// With a read handler that clears the eventfd.
    fn register(&self, ctx: &AioContext) {
        let (p, r) = self.callbacks();
        let fd = self.fd.clone();
        let read: FdCallback = Box::new(move || {
            fd.test_and_clear();
        });
        ctx.set_fd_handler_polled(self.fd.as_fd(), Some(read), None, Some(p), Some(r))
            .unwrap();
    }

    fn ready(&self) -> usize {
        self.ready.load(Relaxed)
    }
}

/// Reported progress is handled in the same poll, from the spin; a
/// handler that keeps reporting progress keeps its window, one that
/// reports none for a window is left out of the spins until its fd is
/// ready, which puts it back.
#[test]
fn progress_resets_the_poll_window() {
    let ctx = polling_ctx();
    ctx.set_poll_idle_interval(Duration::from_millis(30));
    let (busy, idle) = (Polled::new(), Polled::new());
    busy.register(&ctx);
    idle.register(&ctx);
    assert_eq!(ctx.poll_stats().polled_handlers, 2);
    let start = Instant::now();
    let mut rounds = 0;
    while ctx.poll_stats().polled_handlers == 2 {
        assert!(
            start.elapsed() < DEADLINE,
            "the idle handler was never left out"
        );
        busy.work.store(true, Relaxed);
        assert!(ctx.poll(true), "the ready callback is progress");
        rounds += 1;
        assert_eq!(busy.ready(), rounds, "one ready call per reported progress");
    }
    assert!(
        start.elapsed() >= Duration::from_millis(30),
        "not before its window"
    );
    let st = ctx.poll_stats();
    assert_eq!(st.idle_removed, 1);
    assert!(st.spins_with_work >= rounds as u64);
    assert!(st.poll_progress >= rounds as u64);
    // The busy one is still polled: its progress reset its window.
    busy.work.store(true, Relaxed);
    ctx.poll(true);
    assert_eq!(busy.ready(), rounds + 1);
    assert_eq!(idle.ready(), 0);
    // The idle one's fd becomes ready: it is polled again.
    idle.fd.set().unwrap();
    ctx.poll(true);
    assert_eq!(ctx.poll_stats().polled_handlers, 2);
    idle.work.store(true, Relaxed);
    ctx.poll(true);
    assert_eq!(idle.ready(), 1, "polled again after its fd was ready");
    ctx.set_fd_handler_polled(busy.fd.as_fd(), None, None, None, None)
        .unwrap();
    ctx.set_fd_handler_polled(idle.fd.as_fd(), None, None, None, None)
        .unwrap();
    assert_eq!(ctx.poll_stats().polled_handlers, 0);
}

/// On epoll, one handler without a poll callback switches the spin off
/// for the whole context (QEMU's `poll_disable_cnt`); removing it
/// switches the spin back on. (On io_uring the ring covers it and the
/// spin stays on: tests/aio_poll_ring.rs.)
#[test]
fn handler_without_poll_callback_switches_polling_off() {
    let ctx = polling_ctx_on(crate::FdMon::Epoll);
    let polled = Polled::new();
    polled.register(&ctx);
    let plain = EventNotifier::new().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    ctx.set_event_notifier(
        &plain,
        Some(Box::new(move |e: &EventNotifier| {
            e.test_and_clear();
            h.fetch_add(1, Relaxed);
        })),
    )
    .unwrap();
    // The first blocking poll ends the spinning state (QEMU's
    // `poll_set_started(false)`, with its last look: no work yet).
    plain.set().unwrap();
    ctx.poll(true);
    assert_eq!(hits.load(Relaxed), 1);
    let st = ctx.poll_stats();
    assert_eq!((st.polled_handlers, st.unpolled_handlers), (1, 1));
    // Work reported by the poll callback is not seen: no spin. The
    // plain notifier wakes the poll instead.
    polled.work.store(true, Relaxed);
    plain.set().unwrap();
    ctx.poll(true);
    assert_eq!(hits.load(Relaxed), 2);
    assert_eq!(
        polled.ready(),
        0,
        "no spin while an unpolled handler exists"
    );
    assert_eq!(ctx.poll_stats().spins, st.spins);
    // Without it, the spin runs and finds the work.
    ctx.set_event_notifier(&plain, None).unwrap();
    assert_eq!(ctx.poll_stats().unpolled_handlers, 0);
    ctx.poll(true);
    assert_eq!(polled.ready(), 1);
    assert!(ctx.poll_stats().spins > st.spins);
    ctx.set_fd_handler_polled(polled.fd.as_fd(), None, None, None, None)
        .unwrap();
}

/// `io_poll_begin` runs when the context starts spinning and stays in
/// effect while spins find work; `io_poll_end` runs before the context
/// sleeps, followed by one more poll, which catches work that arrived
/// meanwhile (here, from `io_poll_end` itself) without sleeping.
#[test]
fn poll_begin_and_end() {
    let ctx = polling_ctx();
    let h = Polled::new();
    h.register(&ctx);
    let (begins, ends) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (b, e, w) = (begins.clone(), ends.clone(), h.work.clone());
    let end_brings_work = Arc::new(AtomicBool::new(false));
    let ebw = end_brings_work.clone();
    ctx.set_fd_poll_begin_end(
        h.fd.as_fd(),
        Some((
            Box::new(move || {
                b.fetch_add(1, Relaxed);
            }),
            Box::new(move || {
                e.fetch_add(1, Relaxed);
                if ebw.load(Relaxed) {
                    w.store(true, Relaxed);
                }
            }),
        )),
    );
    for round in 1..=3 {
        h.work.store(true, Relaxed);
        assert!(ctx.poll(true));
        assert_eq!(h.ready(), round);
    }
    assert_eq!(begins.load(Relaxed), 1, "begun once, while spins find work");
    assert_eq!(ends.load(Relaxed), 0);
    // No work while spinning: the spin ends, `io_poll_end` brings work,
    // the last look finds it and the poll does not sleep.
    end_brings_work.store(true, Relaxed);
    assert!(ctx.poll(true));
    assert_eq!(ends.load(Relaxed), 1);
    assert_eq!(h.ready(), 4, "work from io_poll_end was not missed");
    // Polling starts again at the next spin.
    h.work.store(true, Relaxed);
    assert!(ctx.poll(true));
    assert_eq!(begins.load(Relaxed), 2);
    ctx.set_fd_handler_polled(h.fd.as_fd(), None, None, None, None)
        .unwrap();
}

/// A ready callback removes its own handler and another one that
/// reported progress in the same round: the other's ready callback does
/// not run, and neither is polled again.
#[test]
fn removal_from_inside_a_callback() {
    let ctx = polling_ctx();
    let (a, b) = (Polled::new(), Polled::new());
    let weak = ctx.downgrade();
    let (fa, fb) = (a.fd.clone(), b.fd.clone());
    let a_ready = a.ready.clone();
    let a_work = a.work.clone();
    ctx.set_fd_handler_polled(
        a.fd.as_fd(),
        None,
        None,
        Some(Box::new(move || a_work.load(Relaxed))),
        Some(Box::new(move || {
            a_ready.fetch_add(1, Relaxed);
            let ctx = weak.upgrade().unwrap();
            ctx.set_fd_handler_polled(fa.as_fd(), None, None, None, None)
                .unwrap();
            ctx.set_fd_handler_polled(fb.as_fd(), None, None, None, None)
                .unwrap();
        })),
    )
    .unwrap();
    b.register(&ctx);
    a.work.store(true, Relaxed);
    b.work.store(true, Relaxed);
    assert!(ctx.poll(true));
    assert_eq!(a.ready(), 1);
    assert_eq!(b.ready(), 0, "removed before its ready callback's turn");
    let st = ctx.poll_stats();
    assert_eq!((st.polled_handlers, st.unpolled_handlers), (0, 0));
    // Nothing polls them any more: with the flags still set, a
    // non-blocking poll finds nothing to do.
    assert!(!ctx.poll(false));
    assert_eq!(ctx.poll_stats().poll_calls, st.poll_calls);
}
