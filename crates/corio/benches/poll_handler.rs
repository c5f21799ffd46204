//! Polled fd handlers (issue 13): a request/acknowledge ping-pong between
//! the bench thread and a context on its own thread that polls adaptively
//! (`poll-max-ns` 32768, an IOThread's default). One round trip: the bench
//! thread raises a request, the context's handler acknowledges it, the
//! bench thread sees the acknowledgement (spinning, yielding the CPU).
//!
//! * `eventfd` (the peer): a handler without a poll callback; every request
//!   writes its eventfd (as KVM's ioeventfd does for a virtqueue kick), its
//!   read callback clears the eventfd and acknowledges. Adaptive polling is
//!   off while it is registered, so every request wakes the context from
//!   `epoll_wait`;
//! * `polled_kick`: the same handler with an `io_poll` callback watching the
//!   request counter (memory) and an `io_poll_ready` that acknowledges;
//!   every request still writes the eventfd;
//! * `polled`: as `polled_kick`, with `io_poll_begin` / `io_poll_end`
//!   turning the requester's eventfd write off while the context spins (as
//!   virtio turns queue notifications off): a request is then a store.
//!
//! `cargo bench -p corio --bench poll_handler -- --warm-up-time 1 --measurement-time 3`

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corio::{AioContext, EventNotifier};
use criterion::{criterion_group, criterion_main, Criterion};

struct Shared {
    /// The requester writes the eventfd (cleared by `io_poll_begin`).
    kick: AtomicBool,
    request: AtomicU64,
    ack: AtomicU64,
    stop: AtomicBool,
    fd: EventNotifier,
}

/// Starts the context thread; its handler acknowledges requests.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Eventfd,
    PolledKick,
    Polled,
}

fn start(mode: Mode) -> (Arc<Shared>, std::thread::JoinHandle<()>) {
    let sh = Arc::new(Shared {
        kick: AtomicBool::new(true),
        request: AtomicU64::new(0),
        ack: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        fd: EventNotifier::new().unwrap(),
    });
    let s = sh.clone();
    let t = std::thread::spawn(move || {
        let ctx = AioContext::new().unwrap();
        ctx.set_poll_params(32768, 0, 0);
        let ack = |s: &Shared| s.ack.store(s.request.load(SeqCst), SeqCst);
        let (s1, s2, s3) = (s.clone(), s.clone(), s.clone());
        let read = Box::new(move || {
            s1.fd.test_and_clear();
            ack(&s1);
        });
        if mode != Mode::Eventfd {
            ctx.set_fd_handler_polled(
                s.fd.as_fd(),
                Some(read),
                None,
                Some(Box::new(move || {
                    s2.request.load(SeqCst) != s2.ack.load(SeqCst)
                })),
                Some(Box::new(move || ack(&s3))),
            )
            .unwrap();
            if mode == Mode::Polled {
                let (b, e) = (s.clone(), s.clone());
                ctx.set_fd_poll_begin_end(
                    s.fd.as_fd(),
                    Some((
                        Box::new(move || b.kick.store(false, SeqCst)),
                        Box::new(move || e.kick.store(true, SeqCst)),
                    )),
                );
            }
        } else {
            ctx.set_fd_handler(s.fd.as_fd(), Some(read), None).unwrap();
        }
        while !s.stop.load(SeqCst) {
            ctx.poll(true);
        }
        ctx.set_fd_handler(s.fd.as_fd(), None, None).unwrap();
    });
    (sh, t)
}

fn round_trips(sh: &Shared, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let want = sh.request.fetch_add(1, SeqCst) + 1;
        // SeqCst with `io_poll_end`'s store and the last poll after it:
        // either we see the kick back on, or that poll sees the request.
        if sh.kick.load(SeqCst) {
            sh.fd.set().unwrap();
        }
        let mut spins = 0u32;
        while sh.ack.load(SeqCst) < want {
            spins += 1;
            if spins % 64 == 0 {
                std::thread::yield_now();
            }
        }
    }
    start.elapsed()
}

fn stop(sh: &Shared, t: std::thread::JoinHandle<()>) {
    sh.stop.store(true, SeqCst);
    sh.fd.set().unwrap();
    t.join().unwrap();
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("poll_handler_round_trip");
    for (name, mode) in [
        ("polled", Mode::Polled),
        ("polled_kick", Mode::PolledKick),
        ("eventfd", Mode::Eventfd),
    ] {
        let (sh, t) = start(mode);
        g.bench_function(name, |b| b.iter_custom(|iters| round_trips(&sh, iters)));
        stop(&sh, t);
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
