//! Sockets and adaptive polling (issue 13): on the io_uring fd monitor the
//! spin watches the ring's completion queue, so a context serving sockets
//! keeps polling and handles a request without sleeping; on epoll a handler
//! without a poll callback still switches the spin off (see aio/poll/mod.rs).
//!
//! The contexts here spin for up to a second (`poll-max-ns` 1 s, grown to
//! it before each test), so that a loaded machine does not end a spin
//! before the other thread's next request; every wait still has a deadline.

mod helpers;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corio::aio::PollStats;
use corio::io::{Channel, SocketChannel};
use corio::{AioContext, FdMon};
use helpers::{join_within, DEADLINE};

/// The spin window the tests grow to.
const MAX_NS: i64 = 1_000_000_000;

/// A context on `kind` whose spin has grown to [`MAX_NS`]: with `grow`
/// 1000 it goes 0 -> 4 µs -> 4 ms -> 1 s, each step after a blocking poll
/// that waited longer than the current spin (a bottom half scheduled from
/// another thread after a sleep).
fn polling_ctx(kind: FdMon) -> AioContext {
    let ctx = AioContext::with_fd_monitor(kind).unwrap();
    assert_eq!(ctx.fd_monitor(), kind, "io_uring refused on this machine");
    ctx.set_poll_params(MAX_NS, 1000, 0);
    let start = Instant::now();
    while ctx.poll_stats().poll_ns < MAX_NS {
        assert!(start.elapsed() < DEADLINE, "the spin never grew to 1 s");
        let wait =
            Duration::from_nanos(ctx.poll_stats().poll_ns as u64 * 2) + Duration::from_millis(1);
        let ran = Arc::new(AtomicBool::new(false));
        let (c, r) = (ctx.clone(), ran.clone());
        let t = std::thread::spawn(move || {
            std::thread::sleep(wait);
            c.bh_schedule_oneshot(move || r.store(true, SeqCst));
        });
        poll_blocking_until(&ctx, "the growing bottom half", || ran.load(SeqCst));
        join_within(t, "grow the spin");
    }
    ctx
}

/// Blocking polls until `done`, failing with `what` after [`DEADLINE`]. A
/// watchdog wakes the context at the deadline, so that a lost wake-up
/// fails here by name instead of hanging in `poll(true)`. Returns the
/// number of polls.
fn poll_blocking_until(ctx: &AioContext, what: &str, mut done: impl FnMut() -> bool) -> usize {
    let stop = Arc::new(AtomicBool::new(false));
    let (c, s) = (ctx.clone(), stop.clone());
    let watchdog = std::thread::spawn(move || {
        let end = Instant::now() + DEADLINE;
        while !s.load(SeqCst) {
            if Instant::now() >= end {
                c.bh_schedule_oneshot(|| {});
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let start = Instant::now();
    let mut polls = 0;
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        ctx.poll(true);
        polls += 1;
    }
    stop.store(true, SeqCst);
    join_within(watchdog, "watchdog");
    polls
}

/// Counts of `after` minus `before`.
fn delta(after: PollStats, before: PollStats) -> (u64, u64, u64, u64) {
    (
        after.spins - before.spins,
        after.spins_with_work - before.spins_with_work,
        after.ring_progress - before.ring_progress,
        after.blocking_waits - before.blocking_waits,
    )
}

/// What a ping-pong saw.
struct PingPong {
    spins: u64,
    spins_with_work: u64,
    ring_progress: u64,
    blocking_waits: u64,
}

/// A coroutine echo server on `ctx` (a channel: `read_all` yields with
/// `yield_for(IN)`), driven by `rounds` request/response round trips from
/// another thread; the counters over the rounds after the first.
///
/// The client sends each request only once the server is waiting for it,
/// so that every request tests the wait (on a loaded machine client and
/// server may share a CPU, and the server would otherwise mostly find the
/// next request already there): on io_uring once the server has started a
/// new spin (its `spins` counter moved), on epoll (no spin) once the
/// coroutine is about to read, plus 2 ms for it to go to sleep.
fn ping_pong(ctx: &AioContext, rounds: usize) -> PingPong {
    let (server, client) = UnixStream::pair().unwrap();
    let warm = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let reading = Arc::new(AtomicBool::new(false));
    let (d, r) = (done.clone(), reading.clone());
    let _co = ctx.spawn(move || {
        let ch = SocketChannel::new_fd(OwnedFd::from(server)).unwrap();
        ch.set_blocking(false).unwrap();
        let mut buf = [0u8; 64];
        loop {
            r.store(true, SeqCst);
            if ch.read_all(&mut buf).is_err() || ch.write_all_bytes(&buf).is_err() {
                break;
            }
        }
        d.store(true, SeqCst);
    });
    let w = warm.clone();
    let spins_ctx = (ctx.fd_monitor() == FdMon::IoUring).then(|| ctx.clone());
    // Read here, before this thread polls again: a spin that started
    // before the client read the counter would be missed.
    let mut spins = spins_ctx.as_ref().map(|c| c.poll_stats().spins);
    let client = std::thread::spawn(move || {
        let mut s = client;
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut back = [0u8; 64];
        for i in 0..rounds {
            let start = Instant::now();
            match (&spins_ctx, &mut spins) {
                (Some(c), Some(seen)) => {
                    while c.poll_stats().spins == *seen {
                        assert!(start.elapsed() < DEADLINE, "round {i}: no spin");
                        std::thread::yield_now();
                    }
                    *seen = c.poll_stats().spins;
                }
                _ => {
                    while !reading.swap(false, SeqCst) {
                        assert!(start.elapsed() < DEADLINE, "round {i}: no read");
                        std::thread::yield_now();
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            let req = [i as u8; 64];
            s.write_all(&req).unwrap();
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, req, "round {i}: echo differs");
            w.store(true, SeqCst);
        }
        // Dropping the socket ends the server's loop.
    });
    // Counters from the first completed round on: the coroutine is then
    // waiting in `yield_for(IN)` with its handler registered.
    poll_blocking_until(ctx, "the first round trip", || warm.load(SeqCst));
    let before = ctx.poll_stats();
    poll_blocking_until(ctx, "the server to see the hang-up", || done.load(SeqCst));
    let after = ctx.poll_stats();
    join_within(client, "ping-pong client");
    let (spins, spins_with_work, ring_progress, blocking_waits) = delta(after, before);
    PingPong {
        spins,
        spins_with_work,
        ring_progress,
        blocking_waits,
    }
}

/// On io_uring, a context whose only handler is a socket's (no poll
/// callback) keeps spinning: every request is found in the ring's
/// completion queue while the context spins, none needs a blocking wait.
/// Without the completion-queue check the spins would all run out (a
/// second each) and sleep.
#[test]
fn io_uring_socket_handler_keeps_polling() {
    let ctx = polling_ctx(FdMon::IoUring);
    let p = ping_pong(&ctx, 200);
    assert!(
        p.spins >= 190,
        "{} spins for 200 requests with a socket handler registered",
        p.spins
    );
    assert!(
        p.ring_progress >= 190,
        "{} of 200 requests found in the ring",
        p.ring_progress
    );
    assert_eq!(
        p.blocking_waits, 0,
        "the context slept between requests ({} spins, {} with work, {} via the ring)",
        p.spins, p.spins_with_work, p.ring_progress
    );
    assert_eq!(p.spins_with_work, p.spins, "a spin ran out of time");
    assert_eq!(ctx.poll_stats().unpolled_handlers, 0, "handler left behind");
}

/// On epoll, a socket handler without a poll callback switches the spin off
/// (its readiness is only seen by `epoll_wait`): the context sleeps for
/// the requests, and never spins while the handler is registered.
#[test]
fn epoll_socket_handler_switches_polling_off() {
    let ctx = polling_ctx(FdMon::Epoll);
    let p = ping_pong(&ctx, 50);
    assert_eq!(p.spins, 0, "spun while a socket handler was registered");
    assert_eq!(p.ring_progress, 0);
    assert!(p.blocking_waits > 0, "never slept");
}

/// A plain fd handler (no poll callback) that counts its calls and reads
/// one byte per call when `drain` is set.
fn counting_handler(ctx: &AioContext, s: &UnixStream, drain: bool) -> Arc<AtomicUsize> {
    let calls = Arc::new(AtomicUsize::new(0));
    let (c, mut r) = (calls.clone(), s.try_clone().unwrap());
    r.set_nonblocking(true).unwrap();
    ctx.set_fd_handler(
        s.as_fd(),
        Some(Box::new(move || {
            c.fetch_add(1, SeqCst);
            if drain {
                let _ = r.read(&mut [0u8; 1]);
            }
        })),
        None,
    )
    .unwrap();
    calls
}

/// A byte written by another thread while the context spins is handled by
/// the poll that spins, through the ring, without a blocking wait; and
/// the handler stays level-triggered: while it leaves the byte unread,
/// every blocking poll calls it again at once (its re-armed poll completes
/// as it is submitted), still without sleeping.
#[test]
fn readiness_while_spinning_is_handled_level_triggered() {
    let ctx = polling_ctx(FdMon::IoUring);
    let (mut a, b) = UnixStream::pair().unwrap();
    let calls = counting_handler(&ctx, &b, false);
    let before = ctx.poll_stats();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(5));
        a.write_all(b"x").unwrap();
        a
    });
    poll_blocking_until(&ctx, "the handler", || calls.load(SeqCst) == 1);
    let a = join_within(writer, "writer");
    for n in 2..=4 {
        let polls = poll_blocking_until(&ctx, "the handler again", || calls.load(SeqCst) == n);
        assert_eq!(polls, 1, "not level-triggered: call {n} took {polls} polls");
    }
    let (spins, with_work, ring, sleeps) = delta(ctx.poll_stats(), before);
    assert_eq!(sleeps, 0, "slept ({spins} spins, {with_work} with work)");
    assert!(ring >= 4, "found via the ring {ring} times, not 4");
    // Drained, the handler is not called again: a bottom half from
    // another thread is what ends the next blocking poll.
    (&b).read_exact(&mut [0u8; 1]).unwrap();
    ctx.poll(false);
    let n = calls.load(SeqCst);
    let kicked = Arc::new(AtomicBool::new(false));
    let (c, k) = (ctx.clone(), kicked.clone());
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(5));
        c.bh_schedule_oneshot(move || k.store(true, SeqCst));
    });
    poll_blocking_until(&ctx, "the bottom half", || kicked.load(SeqCst));
    join_within(t, "kicker");
    assert_eq!(calls.load(SeqCst), n, "called once drained");
    ctx.set_fd_handler(b.as_fd(), None, None).unwrap();
    drop(a);
}

/// A handler removed while its poll is armed in the ring is never called
/// for readiness that comes after, and the completions of the removal do
/// not make the spin end at once forever: here the first handler removes
/// the second and itself from its callback, so the context is left with
/// no handler at all and only those completions in the ring.
#[test]
fn removal_while_armed() {
    let ctx = polling_ctx(FdMon::IoUring);
    let (mut a_peer, a) = UnixStream::pair().unwrap();
    let (mut b_peer, b) = UnixStream::pair().unwrap();
    let (a, b) = (Arc::new(a), Arc::new(b));
    let b_calls = counting_handler(&ctx, &b, true);
    let a_calls = Arc::new(AtomicUsize::new(0));
    let weak = ctx.downgrade();
    // The registered fd numbers themselves (a dup would be another fd).
    let (ac, a2, b2) = (a_calls.clone(), a.clone(), b.clone());
    ctx.set_fd_handler(
        a.as_fd(),
        Some(Box::new(move || {
            ac.fetch_add(1, SeqCst);
            let ctx = weak.upgrade().unwrap();
            ctx.set_fd_handler(b2.as_fd(), None, None).unwrap();
            ctx.set_fd_handler(a2.as_fd(), None, None).unwrap();
        })),
        None,
    )
    .unwrap();
    // A spin arms both polls, then finds `a` ready.
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(5));
        a_peer.write_all(b"a").unwrap();
        a_peer
    });
    poll_blocking_until(&ctx, "a's handler", || a_calls.load(SeqCst) == 1);
    let _a_peer = join_within(writer, "writer");
    let st = ctx.poll_stats();
    assert_eq!(st.unpolled_handlers + st.polled_handlers, 0);
    b_peer.write_all(b"b").unwrap();
    let kicked = Arc::new(AtomicBool::new(false));
    let (c, k) = (ctx.clone(), kicked.clone());
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        c.bh_schedule_oneshot(move || k.store(true, SeqCst));
    });
    let polls = poll_blocking_until(&ctx, "the bottom half", || kicked.load(SeqCst));
    join_within(t, "kicker");
    assert_eq!(b_calls.load(SeqCst), 0, "a removed handler was called");
    assert_eq!(a_calls.load(SeqCst), 1);
    // A few polls: the stale completions, then the bottom half. A spin
    // ending at once on completions nobody reaps would make thousands.
    assert!(polls <= 5, "{polls} blocking polls for one bottom half");
}
