//! AioContext benchmarks (DESIGN.md §5):
//!
//! * `bh`: `Bh::schedule` + `poll(false)` on the same thread, per pair
//!   (target: ≤ 20 ns; no peer);
//! * `ping_pong`: two coroutines on two IOThreads hand a token back and forth
//!   with `CoHandle::wake`; time per hop, vs two tokio current_thread runtimes
//!   on two threads ping-ponging over mpsc channels (target: faster);
//! * `wake_storm`: five IOThreads, 64 coroutines each; 64 tokens circulate,
//!   each woken coroutine passing its token to a random sleeping coroutine
//!   (any context); wakes per second, vs the same scheme on five tokio
//!   current_thread runtimes with `tokio::sync::Notify` (target: more per
//!   second).
//!
//! `cargo bench -p corio --bench aio -- --warm-up-time 1 --measurement-time 3`
//!
//! Instruction counts of the bottom-half pair: run the binary with
//! `CORIO_CALLGRIND=bh:<n>` under
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect=*callgrind_region*`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use corio::{coroutine, AioContext, CoHandle, Coroutine, IoThread};
use criterion::{Criterion, Throughput};

/// A context with a bottom half that counts its runs (a plain load and
/// store: the callback is `Send`, and a locked add would weigh on the pair).
fn counting_bh() -> (AioContext, corio::Bh, Arc<AtomicU64>) {
    let ctx = AioContext::new().expect("context");
    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let bh = ctx.bh_new(move || {
        r.store(r.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    });
    (ctx, bh, runs)
}

fn bh_pair(ctx: &AioContext, bh: &corio::Bh) {
    bh.schedule();
    ctx.poll(false);
}

fn bh(c: &mut Criterion) {
    let mut g = c.benchmark_group("bh");
    let (ctx, bh, runs) = counting_bh();
    // The pair really runs the callback (checked before measuring, so that a
    // criterion filter that skips this group does not trip it).
    bh_pair(&ctx, &bh);
    assert_eq!(runs.load(Ordering::Relaxed), 1);
    g.bench_function("schedule_poll", |b| b.iter(|| bh_pair(&ctx, &bh)));
    bh.delete();
    ctx.poll(false);
    g.finish();
}

/// The loop callgrind counts (`--toggle-collect=*callgrind_region*`).
#[inline(never)]
fn callgrind_region(n: u64, f: &mut dyn FnMut()) {
    for _ in 0..n {
        f();
    }
}

// ---------------------------------------------------------------- ping-pong

/// Runs `rounds` round trips between a coroutine on `a` and one on `b`;
/// returns the time they took.
fn corio_ping_pong(a: &AioContext, b: &AioContext, rounds: u64) -> Duration {
    let a_handle: Arc<OnceLock<CoHandle>> = Arc::new(OnceLock::new());
    let stop = Arc::new(AtomicBool::new(false));
    // The ponger: sleeps until pinged, pings back; ends when told to stop.
    let (ah, st) = (a_handle.clone(), stop.clone());
    let b_handle = b.run_in(move || {
        let co = Coroutine::new(move || loop {
            coroutine::yield_now();
            if st.load(Ordering::Relaxed) {
                return;
            }
            ah.get().expect("pinger's handle").wake();
        });
        co.enter(); // to its first yield
        co.handle()
    });
    // The pinger: wakes the ponger and sleeps until woken back.
    let (tx, rx) = std::sync::mpsc::channel();
    a.run_in(move || {
        let co = Coroutine::new(move || {
            let start = Instant::now();
            for _ in 0..rounds {
                b_handle.wake();
                coroutine::yield_now();
            }
            let took = start.elapsed();
            stop.store(true, Ordering::Relaxed);
            b_handle.wake();
            tx.send(took).expect("send");
        });
        a_handle.set(co.handle()).expect("set once");
        co.enter();
    });
    rx.recv().expect("pinger finished")
}

fn tokio_ping_pong(rounds: u64) -> Duration {
    use tokio::sync::mpsc::unbounded_channel;
    let (ab_tx, mut ab_rx) = unbounded_channel::<u64>();
    let (ba_tx, mut ba_rx) = unbounded_channel::<u64>();
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    };
    let ponger = std::thread::spawn(move || {
        rt().block_on(async move {
            while let Some(v) = ab_rx.recv().await {
                if ba_tx.send(v).is_err() {
                    break;
                }
            }
        })
    });
    let pinger = std::thread::spawn(move || {
        rt().block_on(async move {
            let start = Instant::now();
            for i in 0..rounds {
                ab_tx.send(i).expect("send");
                ba_rx.recv().await.expect("recv");
            }
            start.elapsed()
        })
    });
    let took = pinger.join().expect("pinger");
    ponger.join().expect("ponger");
    took
}

fn ping_pong(c: &mut Criterion) {
    let mut g = c.benchmark_group("ping_pong");
    // One iteration is one hop; a round trip is two.
    g.throughput(Throughput::Elements(1));
    let (t1, t2) = (IoThread::new().expect("t1"), IoThread::new().expect("t2"));
    g.bench_function("corio", |b| {
        b.iter_custom(|hops| {
            let rounds = hops.div_ceil(2);
            scale(
                corio_ping_pong(t1.context(), t2.context(), rounds),
                hops,
                2 * rounds,
            )
        })
    });
    g.bench_function("tokio", |b| {
        b.iter_custom(|hops| {
            let rounds = hops.div_ceil(2);
            scale(tokio_ping_pong(rounds), hops, 2 * rounds)
        })
    });
    g.finish();
    t1.join();
    t2.join();
}

// --------------------------------------------------------------- wake storm

const THREADS: usize = 5;
const PER_THREAD: usize = 64;
const TOKENS: usize = 64;
const ALL: usize = THREADS * PER_THREAD;

/// The token-passing scheme both sides run. A coroutine (task) is claimable
/// while `asleep[i]` is set: it sets the flag just before it sleeps, and a
/// waker claims it by clearing the flag, so that it is woken exactly once per
/// sleep and never while already scheduled. Every woken sleeper passes its
/// token to one claimed sleeper, so `TOKENS` stay in flight.
struct Storm {
    asleep: Vec<AtomicBool>,
    stop: AtomicBool,
    wakes: AtomicU64,
    target: u64,
    finished: AtomicUsize,
    /// Set with the time of the `target`-th wake.
    done: (Mutex<Option<Instant>>, Condvar),
}

impl Storm {
    fn new(target: u64) -> Storm {
        Storm {
            asleep: (0..ALL).map(|_| AtomicBool::new(false)).collect(),
            stop: AtomicBool::new(false),
            wakes: AtomicU64::new(0),
            target,
            finished: AtomicUsize::new(0),
            done: (Mutex::new(None), Condvar::new()),
        }
    }

    fn claim(&self, i: usize) -> bool {
        self.asleep[i]
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Claims a random sleeper other than `me`; gives up once stopping (the
    /// sleepers may all be claimed by `stop`'s sweep).
    fn claim_random(&self, me: usize, rng: &mut u64) -> Option<usize> {
        loop {
            let j = rand(rng) % ALL;
            if j != me && self.claim(j) {
                return Some(j);
            }
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
        }
    }

    fn count_wake(&self) {
        if self.wakes.fetch_add(1, Ordering::Relaxed) + 1 == self.target {
            *self.done.0.lock().unwrap() = Some(Instant::now());
            self.done.1.notify_one();
        }
    }

    /// Claims and wakes `TOKENS` sleepers, returns when `target` wakes are
    /// done, and the time they took.
    fn run(&self, wake: impl Fn(usize)) -> Duration {
        let mut rng = 0x9e37_79b9_7f4a_7c15;
        let start = Instant::now();
        for _ in 0..TOKENS {
            wake(self.claim_random(usize::MAX, &mut rng).expect("a sleeper"));
        }
        let mut done = self.done.0.lock().unwrap();
        while done.is_none() {
            done = self.done.1.wait(done).unwrap();
        }
        done.unwrap() - start
    }

    /// Stops the storm: wakes sleepers until every one has seen `stop`.
    fn stop(&self, wake: impl Fn(usize)) {
        self.stop.store(true, Ordering::Relaxed);
        while self.finished.load(Ordering::Acquire) < ALL {
            for i in 0..ALL {
                if self.claim(i) {
                    wake(i);
                }
            }
            std::thread::yield_now();
        }
    }
}

/// `d` measured over `den` iterations, scaled to `num` iterations.
fn scale(d: Duration, num: u64, den: u64) -> Duration {
    Duration::from_secs_f64(d.as_secs_f64() * num as f64 / den as f64)
}

/// xorshift64.
fn rand(s: &mut u64) -> usize {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s as usize
}

fn corio_storm(threads: &[IoThread], wakes: u64) -> Duration {
    let storm = Arc::new(Storm::new(wakes));
    let handles: Arc<OnceLock<Vec<CoHandle>>> = Arc::new(OnceLock::new());
    let mut all = Vec::with_capacity(ALL);
    for (t, thread) in threads.iter().enumerate() {
        let (storm, handles) = (storm.clone(), handles.clone());
        all.extend(thread.context().run_in(move || {
            (0..PER_THREAD)
                .map(|k| {
                    let me = t * PER_THREAD + k;
                    let (storm, handles) = (storm.clone(), handles.clone());
                    let co = Coroutine::new(move || {
                        let mut rng = (me as u64 + 1) * 0x2545_f491_4f6c_dd1d;
                        loop {
                            storm.asleep[me].store(true, Ordering::Release);
                            coroutine::yield_now();
                            if storm.stop.load(Ordering::Relaxed) {
                                storm.finished.fetch_add(1, Ordering::Release);
                                return;
                            }
                            if let Some(j) = storm.claim_random(me, &mut rng) {
                                handles.get().expect("handles")[j].wake();
                                storm.count_wake();
                            }
                        }
                    });
                    co.enter(); // to its first sleep
                    co.handle()
                })
                .collect::<Vec<_>>()
        }));
    }
    assert!(handles.set(all).is_ok());
    let hs = handles.get().expect("handles");
    let took = storm.run(|i| hs[i].wake());
    storm.stop(|i| hs[i].wake());
    took
}

fn tokio_storm(wakes: u64) -> Duration {
    use tokio::sync::Notify;
    let storm = Arc::new(Storm::new(wakes));
    let notify: Arc<Vec<Notify>> = Arc::new((0..ALL).map(|_| Notify::new()).collect());
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (storm, notify) = (storm.clone(), notify.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let tasks: Vec<_> = (0..PER_THREAD)
                        .map(|k| {
                            let me = t * PER_THREAD + k;
                            let (storm, notify) = (storm.clone(), notify.clone());
                            tokio::spawn(async move {
                                let mut rng = (me as u64 + 1) * 0x2545_f491_4f6c_dd1d;
                                loop {
                                    storm.asleep[me].store(true, Ordering::Release);
                                    notify[me].notified().await;
                                    if storm.stop.load(Ordering::Relaxed) {
                                        storm.finished.fetch_add(1, Ordering::Release);
                                        return;
                                    }
                                    if let Some(j) = storm.claim_random(me, &mut rng) {
                                        notify[j].notify_one();
                                        storm.count_wake();
                                    }
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("task");
                    }
                })
            })
        })
        .collect();
    // Wait until every task sleeps, as the corio side does.
    while storm.asleep.iter().any(|a| !a.load(Ordering::Acquire)) {
        std::thread::yield_now();
    }
    let took = storm.run(|i| notify[i].notify_one());
    storm.stop(|i| notify[i].notify_one());
    for t in threads {
        t.join().expect("runtime thread");
    }
    took
}

fn wake_storm(c: &mut Criterion) {
    let mut g = c.benchmark_group("wake_storm");
    // One iteration is one wake: criterion reports wakes per second.
    g.throughput(Throughput::Elements(1));
    let threads: Vec<IoThread> = (0..THREADS)
        .map(|_| IoThread::new().expect("iothread"))
        .collect();
    // Each sample needs enough wakes to dwarf the start-up of the tokens.
    let min = 10_000;
    g.bench_function("corio", |b| {
        b.iter_custom(|n| scale(corio_storm(&threads, n.max(min)), n, n.max(min)))
    });
    g.bench_function("tokio", |b| {
        b.iter_custom(|n| scale(tokio_storm(n.max(min)), n, n.max(min)))
    });
    g.finish();
    for t in threads {
        t.join();
    }
}

fn main() {
    // `CORIO_CALLGRIND=bh:<n>`: n schedule + poll pairs in `callgrind_region`
    // and nothing else, for
    // `valgrind --tool=callgrind --collect-atstart=no --toggle-collect=*callgrind_region*`.
    if let Ok(spec) = std::env::var("CORIO_CALLGRIND") {
        let n = spec
            .strip_prefix("bh:")
            .and_then(|n| n.parse().ok())
            .expect("CORIO_CALLGRIND=bh:<iterations>");
        let (ctx, bh, runs) = counting_bh();
        bh_pair(&ctx, &bh);
        callgrind_region(n, &mut || bh_pair(&ctx, &bh));
        assert_eq!(runs.load(Ordering::Relaxed), n + 1);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bh(&mut c);
    ping_pong(&mut c);
    wake_storm(&mut c);
    c.final_summary();
}
