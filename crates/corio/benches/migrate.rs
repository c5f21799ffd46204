//! Coroutines migrating between contexts at random: QEMU's
//! `/aio/multi/schedule` shape (tests/unit/test-aio-multithread.c), five
//! IoThreads with 1 or 100 coroutines each hopping to a random context with
//! `co_reschedule_self`, against the same number of tokens moved at random
//! between five tokio current_thread runtimes (mpsc) and between five
//! threads (crossbeam-channel), in interleaved rounds of one process.
//!
//! `cargo bench -p corio --bench migrate [-- ROUNDS [HOPS]]`
//! `CORIO_MIGRATE_ONLY=corio:500:HOPS` runs one corio case and nothing else
//! (for callgrind's per-hop instruction count).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corio::{AioContext, IoThread};

const THREADS: usize = 5;

/// xorshift64.
fn rand(s: &mut u64) -> usize {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s as usize
}

fn corio_hops(threads: &[IoThread], per_thread: usize, hops: u64) -> Duration {
    let ctxs: Arc<Vec<AioContext>> =
        Arc::new(threads.iter().map(|t| t.context().clone()).collect());
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..THREADS * per_thread)
        .map(|i| {
            let (ctxs, count) = (ctxs.clone(), count.clone());
            ctxs[i % THREADS].clone().spawn(move || {
                let mut rng = (i as u64 + 1) * 0x2545_f491_4f6c_dd1d;
                while count.fetch_add(1, Relaxed) < hops {
                    let to = &ctxs[rand(&mut rng) % THREADS];
                    // SAFETY: this coroutine's stack holds only `Send`
                    // values (Arcs, integers) across the hop, and no
                    // thread-local reference.
                    unsafe { corio::co_reschedule_self(to) };
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("hopper");
    }
    start.elapsed()
}

/// Tokens forwarded between runtimes; `None` stops a runtime.
fn tokio_hops(tokens: usize, hops: u64) -> Duration {
    use tokio::sync::mpsc;
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS)
        .map(|_| mpsc::unbounded_channel::<Option<u64>>())
        .unzip();
    let txs = Arc::new(txs);
    let count = Arc::new(AtomicU64::new(0));
    let dead = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let threads: Vec<_> = rxs
        .into_iter()
        .enumerate()
        .map(|(t, mut rx)| {
            let (txs, count, dead) = (txs.clone(), count.clone(), dead.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let mut rng = (t as u64 + 1) * 0x2545_f491_4f6c_dd1d;
                    while let Some(Some(tok)) = rx.recv().await {
                        if count.fetch_add(1, Relaxed) < hops {
                            let _ = txs[rand(&mut rng) % THREADS].send(Some(tok));
                        } else if dead.fetch_add(1, Relaxed) + 1 == tokens {
                            for tx in txs.iter() {
                                let _ = tx.send(None);
                            }
                        }
                    }
                })
            })
        })
        .collect();
    for i in 0..tokens {
        txs[i % THREADS].send(Some(i as u64)).expect("send");
    }
    for t in threads {
        t.join().expect("runtime thread");
    }
    start.elapsed()
}

fn crossbeam_hops(tokens: usize, hops: u64) -> Duration {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS)
        .map(|_| crossbeam_channel::unbounded::<Option<u64>>())
        .unzip();
    let txs = Arc::new(txs);
    let count = Arc::new(AtomicU64::new(0));
    let dead = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let threads: Vec<_> = rxs
        .into_iter()
        .enumerate()
        .map(|(t, rx)| {
            let (txs, count, dead) = (txs.clone(), count.clone(), dead.clone());
            std::thread::spawn(move || {
                let mut rng = (t as u64 + 1) * 0x2545_f491_4f6c_dd1d;
                while let Ok(Some(tok)) = rx.recv() {
                    if count.fetch_add(1, Relaxed) < hops {
                        let _ = txs[rand(&mut rng) % THREADS].send(Some(tok));
                    } else if dead.fetch_add(1, Relaxed) + 1 == tokens {
                        for tx in txs.iter() {
                            let _ = tx.send(None);
                        }
                    }
                }
            })
        })
        .collect();
    for i in 0..tokens {
        txs[i % THREADS].send(Some(i as u64)).expect("send");
    }
    for t in threads {
        t.join().expect("worker thread");
    }
    start.elapsed()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let threads: Vec<IoThread> = (0..THREADS)
        .map(|_| IoThread::new().expect("iothread"))
        .collect();
    if let Ok(spec) = std::env::var("CORIO_MIGRATE_ONLY") {
        let mut it = spec.split(':');
        let (_, n, hops) = (it.next(), it.next(), it.next());
        let n: usize = n
            .and_then(|n| n.parse().ok())
            .expect("CORIO_MIGRATE_ONLY=corio:<in flight>:<hops>");
        let hops: u64 = hops.and_then(|h| h.parse().ok()).expect("hops");
        let d = corio_hops(&threads, n / THREADS, hops);
        println!("corio {n} in flight: {hops} hops in {d:?}");
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let rounds: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(7);
    let hops: u64 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    println!("migrate: {THREADS} threads, {hops} hops per run, {rounds} interleaved rounds");
    for per_thread in [1usize, 100] {
        let tokens = THREADS * per_thread;
        let (mut vs_tokio, mut vs_xbeam) = (Vec::new(), Vec::new());
        let (mut c_rate, mut t_rate, mut x_rate) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let rate = |d: Duration| hops as f64 / d.as_secs_f64() / 1e6;
            let c = rate(corio_hops(&threads, per_thread, hops));
            let t = rate(tokio_hops(tokens, hops));
            let x = rate(crossbeam_hops(tokens, hops));
            vs_tokio.push(c / t);
            vs_xbeam.push(c / x);
            c_rate.push(c);
            t_rate.push(t);
            x_rate.push(x);
        }
        println!(
            "{tokens:>4} in flight: corio {:.2} M hops/s, tokio {:.2} M/s, crossbeam {:.2} M/s; \
             median ratio corio/tokio {:.2}x, corio/crossbeam {:.2}x",
            median(&mut c_rate),
            median(&mut t_rate),
            median(&mut x_rate),
            median(&mut vs_tokio),
            median(&mut vs_xbeam),
        );
    }
    for t in threads {
        t.join();
    }
}
