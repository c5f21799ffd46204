//! Thread-pool round trip: submit from a coroutine, run on a worker, resume
//! in the context. One at a time, and 1000 in flight. Peers in the same run:
//! tokio's `spawn_blocking` awaited from a current_thread runtime; the
//! `threadpool` crate (one worker per CPU) and `rayon::spawn` (its global
//! pool), each job reporting back over a crossbeam channel that the
//! submitting thread receives from. Also the QIOTask round trip
//! (`Task::run_in_thread` to its completion in the context), against a
//! plain `std::thread::spawn` + `join`.
//!
//! The corio context polls adaptively as an IOThread's does (`poll-max-ns`
//! 32768, QEMU's default).
//!
//! `cargo bench -p corio --bench thread_pool -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::{Duration, Instant};

use corio::io::task::Task;
use corio::{AioContext, Coroutine};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const IN_FLIGHT: u64 = 1000;

fn corio_sequential(ctx: &AioContext, iters: u64) -> Duration {
    let pool = ctx.thread_pool();
    let start = Instant::now();
    let co = Coroutine::new(move || {
        for i in 0..iters {
            black_box(pool.submit_co(move || black_box(i)).unwrap());
        }
    });
    co.enter();
    while !co.is_terminated() {
        ctx.poll(true);
    }
    start.elapsed()
}

fn corio_in_flight(ctx: &AioContext, iters: u64) -> Duration {
    let pool = ctx.thread_pool();
    let start = Instant::now();
    for _ in 0..iters {
        let cos: Vec<Coroutine> = (0..IN_FLIGHT)
            .map(|i| {
                let p = pool.clone();
                let co = Coroutine::new(move || {
                    black_box(p.submit_co(move || black_box(i)).unwrap());
                });
                co.enter();
                co
            })
            .collect();
        while !cos.iter().all(Coroutine::is_terminated) {
            ctx.poll(true);
        }
    }
    start.elapsed()
}

fn corio_aio_in_flight(ctx: &AioContext, iters: u64) -> Duration {
    let pool = ctx.thread_pool();
    let left = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    for _ in 0..iters {
        left.store(IN_FLIGHT, std::sync::atomic::Ordering::Relaxed);
        for i in 0..IN_FLIGHT {
            let l = left.clone();
            pool.submit_aio(
                move || black_box(i),
                move |r| {
                    black_box(r.unwrap());
                    l.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                },
            );
        }
        while left.load(std::sync::atomic::Ordering::Relaxed) != 0 {
            ctx.poll(true);
        }
    }
    start.elapsed()
}

fn threadpool_sequential(pool: &threadpool::ThreadPool, iters: u64) -> Duration {
    let (tx, rx) = crossbeam_channel::unbounded();
    let start = Instant::now();
    for i in 0..iters {
        let tx = tx.clone();
        pool.execute(move || tx.send(black_box(i)).unwrap());
        black_box(rx.recv().unwrap());
    }
    start.elapsed()
}

fn threadpool_in_flight(pool: &threadpool::ThreadPool, iters: u64) -> Duration {
    let (tx, rx) = crossbeam_channel::unbounded();
    let start = Instant::now();
    for _ in 0..iters {
        for i in 0..IN_FLIGHT {
            let tx = tx.clone();
            pool.execute(move || tx.send(black_box(i)).unwrap());
        }
        for _ in 0..IN_FLIGHT {
            black_box(rx.recv().unwrap());
        }
    }
    start.elapsed()
}

fn rayon_sequential(iters: u64) -> Duration {
    let (tx, rx) = crossbeam_channel::unbounded();
    let start = Instant::now();
    for i in 0..iters {
        let tx = tx.clone();
        rayon::spawn(move || tx.send(black_box(i)).unwrap());
        black_box(rx.recv().unwrap());
    }
    start.elapsed()
}

fn rayon_in_flight(iters: u64) -> Duration {
    let (tx, rx) = crossbeam_channel::unbounded();
    let start = Instant::now();
    for _ in 0..iters {
        for i in 0..IN_FLIGHT {
            let tx = tx.clone();
            rayon::spawn(move || tx.send(black_box(i)).unwrap());
        }
        for _ in 0..IN_FLIGHT {
            black_box(rx.recv().unwrap());
        }
    }
    start.elapsed()
}

fn qio_task_round_trip(ctx: &AioContext, iters: u64) -> Duration {
    let got = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    for i in 0..iters {
        let g = got.clone();
        let task = Task::new((), move |t| {
            let v = t.take_result::<u64>().unwrap().unwrap();
            g.store(v + 1, std::sync::atomic::Ordering::Relaxed);
        });
        task.run_in_thread(move |t| t.set_result(black_box(i)), Some(ctx));
        while got.load(std::sync::atomic::Ordering::Relaxed) != i + 1 {
            ctx.poll(true);
        }
    }
    start.elapsed()
}

fn std_thread_round_trip(iters: u64) -> Duration {
    let start = Instant::now();
    for i in 0..iters {
        black_box(std::thread::spawn(move || black_box(i)).join().unwrap());
    }
    start.elapsed()
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn tokio_sequential(rt: &tokio::runtime::Runtime, iters: u64) -> Duration {
    let start = Instant::now();
    rt.block_on(async {
        for i in 0..iters {
            black_box(
                tokio::task::spawn_blocking(move || black_box(i))
                    .await
                    .unwrap(),
            );
        }
    });
    start.elapsed()
}

fn tokio_in_flight(rt: &tokio::runtime::Runtime, iters: u64) -> Duration {
    let start = Instant::now();
    rt.block_on(async {
        for _ in 0..iters {
            let hs: Vec<_> = (0..IN_FLIGHT)
                .map(|i| tokio::task::spawn_blocking(move || black_box(i)))
                .collect();
            for h in hs {
                black_box(h.await.unwrap());
            }
        }
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    // 1000 coroutines alive at once: grow the stack pool by as many, as a
    // QEMU device does for its queue depth (qemu_coroutine_inc_pool_size),
    // so that the loop measures the round trip, not mmap.
    corio::coroutine::inc_pool_size(IN_FLIGHT as usize);
    let ctx = AioContext::new().unwrap();
    ctx.set_poll_params(32768, 0, 0); // as an IOThread's (QEMU's default)
    let rt = tokio_rt();
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let tp = threadpool::ThreadPool::new(cpus);

    let mut g = c.benchmark_group("thread_pool_round_trip");
    g.bench_function("corio_submit_co", |b| {
        b.iter_custom(|iters| corio_sequential(&ctx, iters))
    });
    g.bench_function("tokio_spawn_blocking", |b| {
        b.iter_custom(|iters| tokio_sequential(&rt, iters))
    });
    g.bench_function("threadpool_crossbeam", |b| {
        b.iter_custom(|iters| threadpool_sequential(&tp, iters))
    });
    g.bench_function("rayon_crossbeam", |b| b.iter_custom(rayon_sequential));
    g.finish();

    let mut g = c.benchmark_group("thread_pool_1000_in_flight");
    g.throughput(Throughput::Elements(IN_FLIGHT));
    g.sample_size(20);
    g.bench_function("corio_submit_co", |b| {
        b.iter_custom(|iters| corio_in_flight(&ctx, iters))
    });
    g.bench_function("corio_submit_aio", |b| {
        b.iter_custom(|iters| corio_aio_in_flight(&ctx, iters))
    });
    g.bench_function("tokio_spawn_blocking", |b| {
        b.iter_custom(|iters| tokio_in_flight(&rt, iters))
    });
    g.bench_function("threadpool_crossbeam", |b| {
        b.iter_custom(|iters| threadpool_in_flight(&tp, iters))
    });
    g.bench_function("rayon_crossbeam", |b| b.iter_custom(rayon_in_flight));
    g.finish();

    let mut g = c.benchmark_group("qio_task_round_trip");
    g.bench_function("corio_run_in_thread", |b| {
        b.iter_custom(|iters| qio_task_round_trip(&ctx, iters))
    });
    g.bench_function("std_thread_spawn_join", |b| {
        b.iter_custom(std_thread_round_trip)
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
