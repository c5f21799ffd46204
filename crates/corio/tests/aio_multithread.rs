//! QEMU's tests/unit/test-aio-multithread.c: /aio/multi/lifecycle and
//! /aio/multi/schedule across five IOThreads, plus the migrating form of
//! co_schedule. Quick by default (1 s); `CORIO_TEST_THOROUGH=1` runs 10 s.

mod helpers;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corio::{co_reschedule_self, yield_now, AioContext, CoHandle, Coroutine, IoThread};
use helpers::{join_iothread, join_within, LockExt, Rng};

const NUM_CONTEXTS: usize = 5;

fn duration() -> Duration {
    helpers::quick_or_thorough(Duration::from_secs(1), Duration::from_secs(10))
}

fn start_threads() -> Vec<IoThread> {
    (0..NUM_CONTEXTS)
        .map(|i| IoThread::with_name(&format!("iothread{i}")).unwrap())
        .collect()
}

/// /aio/multi/lifecycle: five IOThreads learn their id through a oneshot BH
/// (run_in), and are joined.
#[test]
fn multi_lifecycle() {
    let threads = start_threads();
    for (i, t) in threads.iter().enumerate() {
        let name = t
            .context()
            .run_in(|| std::thread::current().name().map(str::to_owned));
        assert_eq!(name.as_deref(), Some(format!("iothread{i}").as_str()));
        assert!(t
            .context()
            .run_in(|| AioContext::current().in_home_thread()));
    }
    for t in threads {
        join_iothread(t, "t");
    }
}

#[derive(Default)]
struct ScheduleState {
    /// `to_schedule[n]`: the coroutine of context n, published while it sleeps.
    to_schedule: Vec<Mutex<Option<CoHandle>>>,
    stopping: AtomicBool,
    scheduled: AtomicUsize,
    queued: AtomicUsize,
    retry: AtomicUsize,
    /// Times each coroutine was entered after a schedule.
    wakes: Vec<AtomicUsize>,
    /// Schedules aimed at each coroutine.
    aimed: Vec<AtomicUsize>,
    done: AtomicUsize,
}

/// /aio/multi/schedule: each context runs one coroutine that hands a random
/// context's sleeping coroutine back to that context (co_schedule onto its
/// home: the safe form), publishes itself and yields. No coroutine is
/// scheduled twice, none is lost.
#[test]
fn multi_schedule() {
    let threads = start_threads();
    let ctxs: Arc<Vec<AioContext>> =
        Arc::new(threads.iter().map(|t| t.context().clone()).collect());
    let st = Arc::new(ScheduleState {
        to_schedule: (0..NUM_CONTEXTS).map(|_| Mutex::new(None)).collect(),
        wakes: (0..NUM_CONTEXTS).map(|_| AtomicUsize::new(0)).collect(),
        aimed: (0..NUM_CONTEXTS).map(|_| AtomicUsize::new(0)).collect(),
        ..Default::default()
    });
    for (id, t) in threads.iter().enumerate() {
        let (st, ctxs) = (st.clone(), ctxs.clone());
        t.context().run_in(move || {
            let co = Coroutine::new(move || {
                let mut rng = Rng::new(id as u64 + 1);
                while !st.stopping.load(SeqCst) {
                    let n = rng.below(NUM_CONTEXTS);
                    // schedule_next(n): take n's coroutine (QEMU's xchg).
                    let taken = st.to_schedule[n].locked().take();
                    match taken {
                        None => {
                            st.retry.fetch_add(1, SeqCst);
                        }
                        Some(co) => {
                            if n == id {
                                st.queued.fetch_add(1, SeqCst);
                            } else {
                                st.scheduled.fetch_add(1, SeqCst);
                            }
                            st.aimed[n].fetch_add(1, SeqCst);
                            ctxs[n].co_schedule(&co);
                        }
                    }
                    let me = Coroutine::current().unwrap().handle();
                    *st.to_schedule[id].locked() = Some(me);
                    yield_now();
                    st.wakes[id].fetch_add(1, SeqCst);
                    assert!(
                        st.to_schedule[id].locked().is_none(),
                        "woken while still published: entered twice"
                    );
                }
                st.done.fetch_add(1, SeqCst);
            });
            co.enter();
        });
    }
    std::thread::sleep(duration());
    st.stopping.store(true, SeqCst);
    // Wake every sleeping coroutine so that it sees `stopping` and ends.
    let deadline = Instant::now() + Duration::from_secs(30);
    while st.done.load(SeqCst) < NUM_CONTEXTS {
        for n in 0..NUM_CONTEXTS {
            if let Some(co) = st.to_schedule[n].locked().take() {
                st.aimed[n].fetch_add(1, SeqCst);
                ctxs[n].co_schedule(&co);
            }
        }
        assert!(Instant::now() < deadline, "a coroutine was lost");
        std::thread::sleep(Duration::from_millis(1));
    }
    for t in threads {
        join_iothread(t, "t");
    }
    for n in 0..NUM_CONTEXTS {
        assert_eq!(
            st.wakes[n].load(SeqCst),
            st.aimed[n].load(SeqCst),
            "coroutine {n}"
        );
    }
    let (s, q, r) = (
        st.scheduled.load(SeqCst),
        st.queued.load(SeqCst),
        st.retry.load(SeqCst),
    );
    println!("scheduled {s}, queued {q}, retry {r}, total {}", s + q + r);
}

/// The migrating form: coroutines hop to random contexts with
/// `co_reschedule_self` (which uses `co_schedule_migrate`) and check that each
/// hop lands on the target's thread. Every coroutine ends, none is lost.
#[test]
fn multi_schedule_migrating() {
    const PER_CONTEXT: usize = 4;
    let threads = start_threads();
    let ctxs: Arc<Vec<AioContext>> =
        Arc::new(threads.iter().map(|t| t.context().clone()).collect());
    let stopping = Arc::new(AtomicBool::new(false));
    let hops = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    for (id, t) in threads.iter().enumerate() {
        for k in 0..PER_CONTEXT {
            let (ctxs, stopping, hops, done) =
                (ctxs.clone(), stopping.clone(), hops.clone(), done.clone());
            t.context().run_in(move || {
                let co = Coroutine::new(move || {
                    let mut rng = Rng::new((id * PER_CONTEXT + k) as u64 + 7);
                    while !stopping.load(SeqCst) {
                        let target = &ctxs[rng.below(NUM_CONTEXTS)];
                        // The stack holds Arcs of atomics, a reference into an
                        // Arc'd Vec of contexts and integers; nothing else wakes
                        // this coroutine.
                        // SAFETY: only `Send` values, no thread-local reference.
                        unsafe { co_reschedule_self(target) };
                        assert!(target.in_home_thread(), "resumed on the target's thread");
                        hops.fetch_add(1, SeqCst);
                    }
                    done.fetch_add(1, SeqCst);
                });
                co.enter();
            });
        }
    }
    std::thread::sleep(duration());
    stopping.store(true, SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(SeqCst) < NUM_CONTEXTS * PER_CONTEXT {
        assert!(Instant::now() < deadline, "a migrating coroutine was lost");
        std::thread::sleep(Duration::from_millis(1));
    }
    for t in threads {
        join_iothread(t, "t");
    }
    println!("migrations {}", hops.load(SeqCst));
    assert!(hops.load(SeqCst) > 0);
}

/// Cross-thread wakes of many coroutines through their handles: each ends
/// exactly once on its own thread.
#[test]
fn multi_wake_from_other_threads() {
    let threads = start_threads();
    let handles: Arc<Mutex<Vec<CoHandle>>> = Arc::default();
    let ends = Arc::new(AtomicUsize::new(0));
    for t in &threads {
        for _ in 0..20 {
            let (h, e) = (handles.clone(), ends.clone());
            t.context().run_in(move || {
                let home = std::thread::current().id();
                let co = Coroutine::new(move || {
                    yield_now();
                    assert_eq!(std::thread::current().id(), home);
                    e.fetch_add(1, SeqCst);
                });
                co.enter();
                h.locked().push(co.handle());
            });
        }
    }
    let all = std::mem::take(&mut *handles.locked());
    let wakers: Vec<_> = all
        .chunks(25)
        .map(|c| {
            let c = c.to_vec();
            std::thread::spawn(move || c.iter().for_each(CoHandle::wake))
        })
        .collect();
    for w in wakers {
        join_within(w, "w");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ends.load(SeqCst) < NUM_CONTEXTS * 20 {
        assert!(Instant::now() < deadline, "a wake was lost");
        std::thread::sleep(Duration::from_millis(1));
    }
    for t in threads {
        join_iothread(t, "t");
    }
}
