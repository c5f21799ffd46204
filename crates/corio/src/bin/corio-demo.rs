//! corio-demo: five IOThreads bounce coroutines among themselves with
//! co_schedule and print QEMU's test-aio-multithread counters every second.
//!
//! Usage: `corio-demo [--seconds N] [--threads N] [--coroutines-per-thread N] [--tokens N]`
//!
//! Each IOThread hosts some coroutines, asleep and published in a slot. A few
//! tokens circulate: a coroutine that holds one picks a random slot, takes the
//! coroutine sleeping there and hands it to its home context with
//! `co_schedule` (*scheduled* when that is another thread, *queued* when it is
//! its own; *retry* when the slot was empty), then publishes itself and
//! yields. Trace events can be switched on with `CORIO_TRACE=aio_co_*`.

#![deny(unsafe_code)]

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corio::{yield_now, AioContext, CoHandle, Coroutine, IoThread};

struct Opts {
    seconds: u64,
    threads: usize,
    per_thread: usize,
    tokens: usize,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        seconds: 3,
        threads: 5,
        per_thread: 16,
        tokens: 8,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            let v = args.next().ok_or(format!("{name} needs a value"))?;
            v.parse::<u64>()
                .map_err(|_| format!("{name}: {v:?} is not a whole number"))
        };
        match a.as_str() {
            "--seconds" => o.seconds = num("--seconds")?,
            "--threads" => o.threads = num("--threads")? as usize,
            "--coroutines-per-thread" => o.per_thread = num("--coroutines-per-thread")? as usize,
            "--tokens" => o.tokens = num("--tokens")? as usize,
            "-h" | "--help" => {
                println!("usage: corio-demo [--seconds N] [--threads N] [--coroutines-per-thread N] [--tokens N]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if o.threads == 0 || o.per_thread == 0 {
        return Err("--threads and --coroutines-per-thread must be at least 1".into());
    }
    if o.tokens == 0 || o.tokens >= o.threads * o.per_thread {
        return Err("--tokens must be at least 1 and fewer than the coroutines".into());
    }
    Ok(o)
}

#[derive(Default)]
struct Counters {
    scheduled: AtomicU64,
    queued: AtomicU64,
    retry: AtomicU64,
}

struct Shared {
    ctxs: Vec<AioContext>,
    /// One slot per coroutine: its handle while it sleeps.
    slots: Vec<Mutex<Option<CoHandle>>>,
    /// Which context each coroutine lives in.
    home_of: Vec<usize>,
    stopping: AtomicBool,
    ended: AtomicUsize,
    counters: Counters,
}

fn body(sh: Arc<Shared>, me: usize, start_with_token: bool) {
    let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ (me as u64 + 1).wrapping_mul(0x9e37_79b9);
    let mut holding = start_with_token;
    while !sh.stopping.load(Relaxed) {
        if holding {
            // Pass the token on to a random sleeping coroutine.
            loop {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let n = (rng % sh.slots.len() as u64) as usize;
                if n == me {
                    continue;
                }
                let Some(co) = sh.slots[n].lock().unwrap().take() else {
                    sh.counters.retry.fetch_add(1, Relaxed);
                    continue;
                };
                let target = sh.home_of[n];
                if target == sh.home_of[me] {
                    sh.counters.queued.fetch_add(1, Relaxed);
                } else {
                    sh.counters.scheduled.fetch_add(1, Relaxed);
                }
                sh.ctxs[target].co_schedule(&co);
                break;
            }
        }
        *sh.slots[me].lock().unwrap() = Some(Coroutine::current().unwrap().handle());
        yield_now();
        holding = true;
    }
    sh.ended.fetch_add(1, Relaxed);
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("corio-demo: {e}");
            return ExitCode::from(2);
        }
    };
    let threads: Vec<IoThread> = (0..o.threads)
        .map(|i| IoThread::with_name(&format!("iothread{i}")).expect("start an IOThread"))
        .collect();
    let total = o.threads * o.per_thread;
    let sh = Arc::new(Shared {
        ctxs: threads.iter().map(|t| t.context().clone()).collect(),
        slots: (0..total).map(|_| Mutex::new(None)).collect(),
        home_of: (0..total).map(|i| i / o.per_thread).collect(),
        stopping: AtomicBool::new(false),
        ended: AtomicUsize::new(0),
        counters: Counters::default(),
    });
    println!(
        "corio-demo: {} IOThreads, {} coroutines, {} tokens, {} s",
        o.threads, total, o.tokens, o.seconds
    );
    // Start the coroutines without tokens first, so that slots are full.
    let token_holders: Vec<usize> = (0..o.tokens).map(|k| k * total / o.tokens).collect();
    for pass in [false, true] {
        for me in 0..total {
            if token_holders.contains(&me) != pass {
                continue;
            }
            let s = sh.clone();
            sh.ctxs[sh.home_of[me]]
                .run_in(move || Coroutine::new(move || body(s, me, pass)).enter());
        }
    }
    println!(
        "{:>4}  {:>12}  {:>12}  {:>10}",
        "sec", "scheduled/s", "queued/s", "retry/s"
    );
    let c = &sh.counters;
    let mut last = (0, 0, 0);
    let t0 = Instant::now();
    for sec in 1..=o.seconds {
        std::thread::sleep(
            (t0 + Duration::from_secs(sec)).saturating_duration_since(Instant::now()),
        );
        let now = (
            c.scheduled.load(Relaxed),
            c.queued.load(Relaxed),
            c.retry.load(Relaxed),
        );
        println!(
            "{sec:>4}  {:>12}  {:>12}  {:>10}",
            now.0 - last.0,
            now.1 - last.1,
            now.2 - last.2
        );
        last = now;
    }
    sh.stopping.store(true, Relaxed);
    // Wake every sleeper so that it sees `stopping` and ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sh.ended.load(Relaxed) < total {
        for n in 0..total {
            if let Some(co) = sh.slots[n].lock().unwrap().take() {
                sh.ctxs[sh.home_of[n]].co_schedule(&co);
            }
        }
        if Instant::now() > deadline {
            eprintln!(
                "corio-demo: {} coroutines did not end",
                total - sh.ended.load(Relaxed)
            );
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for t in threads {
        t.join();
    }
    let secs = t0.elapsed().as_secs_f64();
    let (s, q, r) = (
        c.scheduled.load(Relaxed),
        c.queued.load(Relaxed),
        c.retry.load(Relaxed),
    );
    println!(
        "total: scheduled {s}, queued {q}, retry {r}; {:.0} hand-overs/s; all {total} coroutines ended",
        (s + q) as f64 / secs
    );
    ExitCode::SUCCESS
}
