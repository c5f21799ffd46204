//! CoMutex under contention: one coroutine on each of five IOThreads loops
//! lock / increment / unlock. Peer: `tokio::sync::Mutex` with five tasks on
//! a five-worker multi-thread runtime, in the same run. Throughput is in
//! critical sections per second.
//!
//! `cargo bench -p corio --bench co_mutex -- --warm-up-time 1 --measurement-time 3`

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use corio::sync::CoMutex;
use corio::{Coroutine, IoThread};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const THREADS: usize = 5;
/// Critical sections per thread per criterion iteration.
const PER_THREAD: u64 = 2000;

fn corio_round(threads: &[IoThread], m: &Arc<CoMutex<u64>>) -> Duration {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    for t in threads {
        let (m, tx) = (m.clone(), tx.clone());
        t.context().bh_schedule_oneshot(move || {
            Coroutine::new(move || {
                for _ in 0..PER_THREAD {
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

fn tokio_round(rt: &tokio::runtime::Runtime, m: &Arc<tokio::sync::Mutex<u64>>) -> Duration {
    let start = Instant::now();
    rt.block_on(async {
        let hs: Vec<_> = (0..THREADS)
            .map(|_| {
                let m = m.clone();
                tokio::spawn(async move {
                    for _ in 0..PER_THREAD {
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

fn bench(c: &mut Criterion) {
    let threads: Vec<IoThread> = (0..THREADS).map(|_| IoThread::new().unwrap()).collect();
    let m = Arc::new(CoMutex::new(0u64));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(THREADS)
        .build()
        .unwrap();
    let tm = Arc::new(tokio::sync::Mutex::new(0u64));

    let mut g = c.benchmark_group("mutex_five_threads");
    g.throughput(Throughput::Elements(THREADS as u64 * PER_THREAD));
    g.sample_size(20);
    g.bench_function("corio_co_mutex", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| corio_round(&threads, &m)).sum())
    });
    g.bench_function("tokio_mutex", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| tokio_round(&rt, &tm)).sum())
    });
    g.finish();
    for t in threads {
        t.join();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
