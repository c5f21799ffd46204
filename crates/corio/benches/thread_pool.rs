//! Thread-pool round trip: submit from a coroutine, run on a worker, resume
//! in the context. One at a time, and 1000 in flight. Peer: tokio's
//! `spawn_blocking` awaited from a current_thread runtime, in the same run.
//!
//! `cargo bench -p corio --bench thread_pool -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::{Duration, Instant};

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
    let rt = tokio_rt();

    let mut g = c.benchmark_group("thread_pool_round_trip");
    g.bench_function("corio_submit_co", |b| {
        b.iter_custom(|iters| corio_sequential(&ctx, iters))
    });
    g.bench_function("tokio_spawn_blocking", |b| {
        b.iter_custom(|iters| tokio_sequential(&rt, iters))
    });
    g.finish();

    let mut g = c.benchmark_group("thread_pool_1000_in_flight");
    g.throughput(Throughput::Elements(IN_FLIGHT));
    g.sample_size(20);
    g.bench_function("corio_submit_co", |b| {
        b.iter_custom(|iters| corio_in_flight(&ctx, iters))
    });
    g.bench_function("tokio_spawn_blocking", |b| {
        b.iter_custom(|iters| tokio_in_flight(&rt, iters))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
