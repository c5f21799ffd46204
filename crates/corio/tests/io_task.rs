//! QEMU's tests/unit/test-io-task.c: /crypto/task/complete, datafree,
//! failure, thread_complete, thread_failure; the seed's observation (four
//! workers on four threads, every completion on the one main-loop thread);
//! wait_thread; a panicking worker; a context dropped before the completion.
//!
//! Tests that complete on the main loop share one process-wide main-loop
//! thread, started by `main_loop()`: under `cargo test` all tests run in one
//! process, and the main context is bound once.

mod helpers;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Barrier, Condvar, Mutex, OnceLock};
use std::thread::ThreadId;

use corio::io::task::{Task, TaskError, WorkerPanicked};
use corio::AioContext;
use helpers::{poll_blocking_until, recv_within, wait_cv, wait_until, JoinExt, LockExt};

/// The main-loop thread: binds the main context and polls it forever.
fn main_loop() -> ThreadId {
    static MAIN: OnceLock<ThreadId> = OnceLock::new();
    *MAIN.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("main-loop".to_owned())
            .spawn(move || {
                // Explicitly: the main loop is never bound implicitly from a
                // thread other than the process's main thread.
                let ctx = corio::main_loop::init();
                assert!(ctx.in_home_thread(), "nobody bound the main context before");
                tx.send(std::thread::current().id()).unwrap();
                // The main loop of this process: it waits for work without
                // end (a daemon thread), so its polls have no deadline.
                loop {
                    ctx.poll(true);
                }
            })
            .unwrap();
        recv_within(&rx, "rx")
    })
}

/// The source object: QEMU's tests use a dummy QOM object.
#[derive(Debug)]
struct Source(u32);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("testing task failure: {0}")]
struct TestError(u32);

struct DropCount(Arc<AtomicUsize>);
impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// /crypto/task/complete: the completion gets the source and no error.
#[test]
fn complete() {
    let src = Arc::new(Source(7));
    let called = Arc::new(AtomicBool::new(false));
    let (s, c) = (src.clone(), called.clone());
    let task = Task::new(src.clone(), move |t: &mut Task<Arc<Source>>| {
        assert!(Arc::ptr_eq(t.source(), &s));
        assert!(t.propagate_error().is_ok());
        c.store(true, SeqCst);
    });
    assert!(!called.load(SeqCst));
    task.complete();
    assert!(called.load(SeqCst));
    assert_eq!(Arc::strong_count(&src), 1, "the task released its source");
}

/// /crypto/task/datafree: the completion's data is freed on completion,
/// exactly once; a task dropped without completing frees it too.
#[test]
fn datafree() {
    let freed = Arc::new(AtomicUsize::new(0));
    let data = DropCount(freed.clone());
    let task = Task::new(Source(1), move |_t| {
        let _keep = &data;
    });
    assert_eq!(freed.load(SeqCst), 0);
    task.complete();
    assert_eq!(freed.load(SeqCst), 1);

    let data = DropCount(freed.clone());
    let task = Task::new(Source(2), move |_t| {
        let _keep = &data;
        unreachable!("never completed");
    });
    drop(task);
    assert_eq!(freed.load(SeqCst), 2);
}

/// /crypto/task/failure: the error set on the task reaches the completion.
#[test]
fn failure() {
    let got = Arc::new(Mutex::new(None));
    let g = got.clone();
    let mut task = Task::new(Source(3), move |t| {
        let e: TaskError = t.propagate_error().unwrap_err();
        *g.locked() = e.downcast_ref::<TestError>().map(|e| e.0);
        assert!(t.propagate_error().is_ok(), "propagating takes the error");
    });
    task.set_error(TestError(42));
    task.set_error(TestError(43)); // the first error wins
    task.complete();
    assert_eq!(*got.locked(), Some(42));
}

/// /crypto/task/thread_complete: the worker runs in a thread other than the
/// main loop's, the completion on the main-loop thread.
#[test]
fn thread_complete() {
    let main = main_loop();
    let (tx, rx) = mpsc::channel();
    let task = Task::new(Source(4), move |t| {
        let worker: ThreadId = t.take_result().unwrap().unwrap();
        tx.send((worker, std::thread::current().id(), t.has_error()))
            .unwrap();
    });
    task.run_in_thread(|t| t.set_result(std::thread::current().id()), None);
    let (worker, completion, err) = recv_within(&rx, "rx");
    assert_ne!(worker, main);
    assert_ne!(worker, std::thread::current().id());
    assert_eq!(completion, main);
    assert!(!err);
}

/// /crypto/task/thread_failure: the error set in the worker reaches the
/// completion, on the main-loop thread.
#[test]
fn thread_failure() {
    let main = main_loop();
    let (tx, rx) = mpsc::channel();
    let task = Task::new(Source(5), move |t| {
        let e = t.propagate_error().unwrap_err();
        tx.send((e.to_string(), std::thread::current().id()))
            .unwrap();
    });
    task.run_in_thread(|t| t.set_error(TestError(5)), None);
    let (msg, completion) = recv_within(&rx, "rx");
    assert_eq!(msg, "testing task failure: 5");
    assert_eq!(completion, main);
}

/// Seed 002's observation: four tasks run in thread; their workers run on
/// four distinct threads, at the same time (each waits for all four, so a
/// worker blocked in its task never delays another's); every completion runs
/// on the one main-loop thread, in whatever order.
#[test]
fn four_workers_distinct_threads_completions_on_main_loop() {
    let main = main_loop();
    let all_running = Arc::new(Barrier::new(4));
    let (tx, rx) = mpsc::channel();
    for i in 0..4u32 {
        let tx = tx.clone();
        let task = Task::new(Source(i), move |t: &mut Task<Source>| {
            let worker: ThreadId = t.take_result().unwrap().unwrap();
            tx.send((t.source().0, worker, std::thread::current().id()))
                .unwrap();
        });
        let b = all_running.clone();
        task.run_in_thread(
            move |t| {
                b.wait(); // all four workers block here together
                t.set_result(std::thread::current().id());
            },
            None,
        );
    }
    let results: Vec<_> = (0..4).map(|_| recv_within(&rx, "rx")).collect();
    let sources: HashSet<u32> = results.iter().map(|r| r.0).collect();
    assert_eq!(sources, HashSet::from([0, 1, 2, 3]));
    let workers: HashSet<ThreadId> = results.iter().map(|r| r.1).collect();
    assert_eq!(workers.len(), 4, "four distinct worker threads");
    assert!(!workers.contains(&main));
    assert!(
        results.iter().all(|r| r.2 == main),
        "every completion on the main loop"
    );
}

/// wait_thread runs the completion synchronously on the caller once the
/// worker ended, and the context does not run it again.
#[test]
fn wait_thread_completes_synchronously() {
    let ctx = AioContext::new().unwrap(); // never polled before wait_thread
    let calls = Arc::new(AtomicUsize::new(0));
    let on = Arc::new(Mutex::new(None));
    let (c, o) = (calls.clone(), on.clone());
    let task = Task::new(Source(6), move |t| {
        assert_eq!(t.result::<u32>(), Ok(Some(&99)));
        c.fetch_add(1, SeqCst);
        *o.locked() = Some(std::thread::current().id());
    });
    let th = task.run_in_thread(|t| t.set_result(99u32), Some(&ctx));
    th.wait_thread();
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(*on.locked(), Some(std::thread::current().id()));
    // The bottom half the worker scheduled finds nothing left to do.
    while ctx.poll(false) {}
    assert_eq!(calls.load(SeqCst), 1);
}

/// Bad use: a worker that panics. The completion still runs, with the panic
/// as the task's error.
#[test]
fn worker_panic_becomes_error() {
    let ctx = AioContext::new().unwrap();
    let got = Arc::new(Mutex::new(None));
    let g = got.clone();
    let task = Task::new(Source(8), move |t| {
        let e = t.propagate_error().unwrap_err();
        *g.locked() = e.downcast_ref::<WorkerPanicked>().cloned();
    });
    task.run_in_thread(|_| panic!("worker exploded"), Some(&ctx));
    poll_blocking_until(&ctx, "the task's completion", || got.locked().is_some());
    let e = got.locked().clone().unwrap();
    assert!(e.0.contains("worker exploded"), "{e}");
}

/// Bad use: the completion's context is dropped before the worker ends.
/// The completion never runs, its data is freed exactly once, nothing hangs.
#[test]
fn context_dropped_before_completion() {
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let freed = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicBool::new(false));
    let (g, f, c) = (gate.clone(), freed.clone(), completed.clone());
    let (weak, th) = std::thread::spawn(move || {
        let ctx = AioContext::new().unwrap();
        let data = DropCount(f);
        let task = Task::new(Source(9), move |_t| {
            let _keep = &data;
            c.store(true, SeqCst);
        });
        let th = task.run_in_thread(
            move |_t| {
                let (m, cv) = &*g;
                drop(wait_cv(cv, m, "the gate to open", |open| *open));
            },
            Some(&ctx),
        );
        (ctx.downgrade(), th)
        // The thread exits: its context goes with it.
    })
    .joined();
    assert!(
        weak.upgrade().is_none(),
        "the task does not keep the context alive"
    );
    {
        let (m, cv) = &*gate;
        *m.locked() = true;
        cv.notify_all();
    }
    wait_until("the task's worker thread to finish", || th.is_finished());
    assert_eq!(freed.load(SeqCst), 0, "held by the handle until it goes");
    drop(th);
    // The worker thread may hold the task a moment longer, until it exits.
    wait_until("the task to be freed", || freed.load(SeqCst) != 0);
    assert_eq!(freed.load(SeqCst), 1);
    assert!(!completed.load(SeqCst));
}

/// A result asked for as the wrong type is an error naming both types, and
/// stays stored; no result at all is `Ok(None)` (it used to be `None` for
/// both).
#[test]
fn result_of_wrong_type_is_an_error() {
    let (tx, rx) = mpsc::channel();
    let task = Task::new(Source(9), move |t| {
        assert_eq!(t.take_result::<u32>(), Ok(None));
        t.set_result(5u64);
        let err = t.take_result::<u32>().unwrap_err();
        assert_eq!((err.expected, err.stored), ("u32", "u64"));
        assert!(err.to_string().contains("u64"), "{err}");
        assert!(t.result::<String>().is_err());
        tx.send(t.take_result::<u64>()).unwrap();
    });
    task.complete();
    assert_eq!(recv_within(&rx, "rx"), Ok(Some(5)));
}

/// Review finding: QIOTask threads are reused (QEMU starts one per task),
/// but corio's own thread-locals do not pass from one task to the next. A
/// first task makes itself a current context (`AioContext::current`) and
/// leaves a finished coroutine in the thread's pool; a later task on the
/// same thread finds no current context and an empty pool, and the first
/// task's context is dropped.
#[test]
fn reused_worker_thread_starts_without_corio_thread_locals() {
    main_loop();
    let (tx, rx) = mpsc::channel();
    Task::new(Source(1), |_: &mut Task<Source>| {}).run_in_thread(
        move |_| {
            let ctx = AioContext::current();
            let co = corio::Coroutine::new(|| {});
            co.enter();
            drop(co);
            let local = corio::coroutine::pooled().0;
            tx.send((std::thread::current().id(), ctx.downgrade(), local))
                .unwrap();
        },
        None,
    );
    let (first, weak, local) = recv_within(&rx, "the first task's report");
    assert!(local > 0, "the first task left a pooled coroutine");
    // The thread parks as idle after its task; later tasks go to it (one
    // at a time), or to a new thread if it is not idle yet.
    let deadline = std::time::Instant::now() + helpers::DEADLINE;
    loop {
        let (tx, rx) = mpsc::channel();
        Task::new(Source(2), |_: &mut Task<Source>| {}).run_in_thread(
            move |_| {
                let has_ctx = AioContext::try_current().is_some();
                let local = corio::coroutine::pooled().0;
                tx.send((std::thread::current().id(), has_ctx, local))
                    .unwrap();
            },
            None,
        );
        let (t, has_ctx, local) = recv_within(&rx, "a later task's report");
        if t == first {
            assert!(!has_ctx, "the previous task's current context leaked");
            assert_eq!(local, 0, "the previous task's pooled coroutines leaked");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no later task ran on the first task's thread"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    wait_until("the first task's context to be dropped", || {
        weak.upgrade().is_none()
    });
}
