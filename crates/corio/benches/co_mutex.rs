//! CoMutex under contention: one coroutine on each of five IOThreads loops
//! lock / increment / unlock. Throughput is in critical sections per second.
//! Peers in the same run: `tokio::sync::Mutex` with five tasks on a
//! five-worker multi-thread runtime (tasks migrate: a woken waiter runs on
//! the unlocker's worker), and with one task on each of five current_thread
//! runtimes (pinned, like coroutines on IOThreads).
//!
//! Two groups:
//! * `mutex_five_threads`: 2000 sections per thread per round, started with
//!   no barrier. A round is short (tens of µs of work per thread) next to a
//!   thread wakeup, so how much the threads overlap, and so how much they
//!   contend, varies from run to run;
//! * `mutex_five_threads_sustained`: 200000 sections per thread, all
//!   threads released together by a barrier: long enough (tens of ms per
//!   round at the least) for the contended steady state to dominate.
//!
//! `cargo bench -p corio --bench co_mutex -- --warm-up-time 1 --measurement-time 3`

use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use corio::sync::CoMutex;
use corio::{Coroutine, IoThread};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const THREADS: usize = 5;
/// Critical sections per thread per criterion iteration, short rounds.
const PER_THREAD: u64 = 2000;
/// The same for sustained rounds.
const PER_THREAD_SUSTAINED: u64 = 200_000;

fn corio_round(threads: &[IoThread], m: &Arc<CoMutex<u64>>, per: u64, sync: bool) -> Duration {
    let (tx, rx) = mpsc::channel();
    let barrier = Arc::new(Barrier::new(threads.len()));
    let start = Instant::now();
    for t in threads {
        let (m, tx, barrier) = (m.clone(), tx.clone(), barrier.clone());
        t.context().bh_schedule_oneshot(move || {
            if sync {
                barrier.wait();
            }
            Coroutine::new(move || {
                for _ in 0..per {
                    *m.lock() += 1;
                }
                tx.send(()).unwrap();
            })
            .enter();
        });
    }
    for _ in 0..threads.len() {
        rx.recv().unwrap();
    }
    start.elapsed()
}

fn tokio_mt_round(
    rt: &tokio::runtime::Runtime,
    m: &Arc<tokio::sync::Mutex<u64>>,
    per: u64,
    sync: bool,
) -> Duration {
    let start = Instant::now();
    rt.block_on(async {
        let barrier = Arc::new(tokio::sync::Barrier::new(THREADS));
        let hs: Vec<_> = (0..THREADS)
            .map(|_| {
                let (m, barrier) = (m.clone(), barrier.clone());
                tokio::spawn(async move {
                    if sync {
                        barrier.wait().await;
                    }
                    for _ in 0..per {
                        *m.lock().await += 1;
                    }
                })
            })
            .collect();
        for h in hs {
            h.await.unwrap();
        }
    });
    start.elapsed()
}

type Job = Box<dyn FnOnce(&tokio::runtime::Runtime) + Send>;

/// Five threads, each running a current_thread runtime for the jobs it gets.
struct CurrentThreads {
    senders: Vec<mpsc::Sender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CurrentThreads {
    fn new() -> Self {
        let (senders, threads) = (0..THREADS)
            .map(|_| {
                let (tx, rx) = mpsc::channel::<Job>();
                let t = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    while let Ok(job) = rx.recv() {
                        job(&rt);
                    }
                });
                (tx, t)
            })
            .unzip();
        CurrentThreads { senders, threads }
    }

    fn round(&self, m: &Arc<tokio::sync::Mutex<u64>>, per: u64, sync: bool) -> Duration {
        let (tx, rx) = mpsc::channel();
        let barrier = Arc::new(Barrier::new(THREADS));
        let start = Instant::now();
        for s in &self.senders {
            let (m, tx, barrier) = (m.clone(), tx.clone(), barrier.clone());
            s.send(Box::new(move |rt: &tokio::runtime::Runtime| {
                if sync {
                    barrier.wait();
                }
                rt.block_on(async move {
                    for _ in 0..per {
                        *m.lock().await += 1;
                    }
                });
                tx.send(()).unwrap();
            }))
            .unwrap();
        }
        for _ in 0..THREADS {
            rx.recv().unwrap();
        }
        start.elapsed()
    }

    fn join(self) {
        drop(self.senders);
        for t in self.threads {
            t.join().unwrap();
        }
    }
}

fn bench(c: &mut Criterion) {
    let threads: Vec<IoThread> = (0..THREADS).map(|_| IoThread::new().unwrap()).collect();
    let m = Arc::new(CoMutex::new(0u64));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS)
        .build()
        .unwrap();
    let ct = CurrentThreads::new();
    let tm = Arc::new(tokio::sync::Mutex::new(0u64));

    for (name, per, sync) in [
        ("mutex_five_threads", PER_THREAD, false),
        ("mutex_five_threads_sustained", PER_THREAD_SUSTAINED, true),
    ] {
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(THREADS as u64 * per));
        g.sample_size(20);
        g.bench_function("corio_co_mutex", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| corio_round(&threads, &m, per, sync))
                    .sum()
            })
        });
        g.bench_function("tokio_mutex", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| tokio_mt_round(&rt, &tm, per, sync))
                    .sum()
            })
        });
        g.bench_function("tokio_mutex_current_thread", |b| {
            b.iter_custom(|iters| (0..iters).map(|_| ct.round(&tm, per, sync)).sum())
        });
        g.finish();
    }
    ct.join();
    for t in threads {
        t.join();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
