//! The futures bridge: `corio::future::block_on` in a coroutine against
//! tokio's current_thread `Runtime::block_on`, in one run.
//!
//! * `ready`: a future that is ready at once (the bridge's fixed cost: a
//!   waker, one poll).
//! * `woken_cross_thread`: a `tokio::sync::oneshot` completed by a helper
//!   thread, one round trip per iteration (the waker called from another
//!   thread resumes the coroutine on its IoThread, vs tokio's waker
//!   unparking its runtime thread), with a baseline: the same round trip
//!   as a plain `CoHandle::wake` of a coroutine that yields, no future
//!   involved.
//!
//! `cargo bench -p corio --bench future`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tokio::sync::oneshot;

use corio::future::block_on;
use corio::IoThread;

/// A thread that completes every oneshot sent to it.
fn helper() -> (
    crossbeam_channel::Sender<oneshot::Sender<u64>>,
    std::thread::JoinHandle<()>,
) {
    let (tx, rx) = crossbeam_channel::unbounded::<oneshot::Sender<u64>>();
    let t = std::thread::spawn(move || {
        for (i, s) in rx.iter().enumerate() {
            let _ = s.send(i as u64);
        }
    });
    (tx, t)
}

fn ready(c: &mut Criterion) {
    let mut g = c.benchmark_group("future_ready");
    let t = IoThread::new().unwrap();
    g.bench_function("corio_block_on_in_coroutine", |b| {
        b.iter_custom(|iters| {
            t.spawn(move || {
                let start = Instant::now();
                for i in 0..iters {
                    std::hint::black_box(block_on(async move { i }));
                }
                start.elapsed()
            })
            .join()
            .unwrap()
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    g.bench_function("tokio_current_thread_block_on", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                std::hint::black_box(rt.block_on(async move { i }));
            }
            start.elapsed()
        })
    });
    g.finish();
    t.join();
}

fn woken_cross_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("future_woken_cross_thread");
    g.measurement_time(Duration::from_secs(5));
    let (to_helper, helper_thread) = helper();
    let t = IoThread::new().unwrap();
    g.bench_function("corio_block_on_in_coroutine", |b| {
        b.iter_custom(|iters| {
            let to_helper = to_helper.clone();
            t.spawn(move || {
                let start = Instant::now();
                for _ in 0..iters {
                    let (tx, rx) = oneshot::channel();
                    to_helper.send(tx).unwrap();
                    std::hint::black_box(block_on(rx).unwrap());
                }
                start.elapsed()
            })
            .join()
            .unwrap()
        })
    });
    // The baseline without futures: the helper wakes the coroutine's
    // CoHandle directly (the wake path the bridge's waker ends in).
    let (to_waker, waker_thread) = {
        let (tx, rx) = crossbeam_channel::unbounded::<corio::CoHandle>();
        let t = std::thread::spawn(move || rx.iter().for_each(|h| h.wake()));
        (tx, t)
    };
    g.bench_function("corio_cohandle_wake_baseline", |b| {
        b.iter_custom(|iters| {
            let to_waker = to_waker.clone();
            t.spawn(move || {
                let me = corio::Coroutine::current().unwrap().handle();
                let start = Instant::now();
                for _ in 0..iters {
                    to_waker.send(me.clone()).unwrap();
                    corio::yield_now();
                }
                start.elapsed()
            })
            .join()
            .unwrap()
        })
    });
    drop(to_waker);
    waker_thread.join().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    g.bench_function("tokio_current_thread_block_on", |b| {
        b.iter_custom(|iters| {
            let to_helper = to_helper.clone();
            rt.block_on(async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let (tx, rx) = oneshot::channel();
                    to_helper.send(tx).unwrap();
                    std::hint::black_box(rx.await.unwrap());
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    drop(to_helper);
    helper_thread.join().unwrap();
    t.join();
}

criterion_group!(benches, ready, woken_cross_thread);
criterion_main!(benches);
