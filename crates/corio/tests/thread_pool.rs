//! QEMU's tests/unit/test-thread-pool.c: /thread-pool/submit-no-complete,
//! submit-aio, submit-co, submit-many, cancel, cancel-async; plus panics,
//! bounds, the idle timeout and a context dropped with work in flight.
//!
//! Where QEMU's jobs sleep for seconds, ours wait on a gate that the test
//! opens: every assertion is on states, none on timings.

mod helpers;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::ThreadId;

use corio::thread_pool::{PoolError, PoolRequest};
use corio::{AioContext, Coroutine, IoThread, ThreadPool};
use helpers::{
    join_iothread, poll_blocking_until, recv_within, wait_cv, wait_until, JoinExt, LockExt,
};

/// A gate that jobs wait on until the test opens it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}
impl Gate {
    fn wait(&self) {
        drop(wait_cv(&self.cv, &self.open, "the gate to open", |o| *o));
    }
    fn open(&self) {
        *self.open.locked() = true;
        self.cv.notify_all();
    }
}

/// /thread-pool/submit-no-complete: a request whose completion does nothing
/// still runs while the context polls.
#[test]
fn submit_no_complete() {
    let ctx = AioContext::new().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    ctx.thread_pool().submit_aio(
        move || {
            n2.fetch_add(1, SeqCst);
        },
        |_| {},
    );
    poll_blocking_until(&ctx, "n.load(SeqCst) != 0", || n.load(SeqCst) != 0);
    assert_eq!(n.load(SeqCst), 1);
}

/// /thread-pool/submit-aio: the completion is not called before the first
/// poll; afterwards ret is 0, the work ran once, the completion once.
#[test]
fn submit_aio() {
    let ctx = AioContext::new().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let ret = Arc::new(AtomicI32::new(-1));
    let calls = Arc::new(AtomicUsize::new(0));
    let home = std::thread::current().id();
    let (n2, r2, c2) = (n.clone(), ret.clone(), calls.clone());
    let req = ctx.thread_pool().submit_aio(
        move || {
            assert_ne!(std::thread::current().id(), home, "work runs on a worker");
            n2.fetch_add(1, SeqCst);
        },
        move |r: Result<(), PoolError>| {
            assert_eq!(
                std::thread::current().id(),
                home,
                "completion in the context"
            );
            r2.store(r.map_or_else(|e| e.errno(), |()| 0), SeqCst);
            c2.fetch_add(1, SeqCst);
        },
    );
    assert_eq!(calls.load(SeqCst), 0, "not before the first poll");
    poll_blocking_until(&ctx, "req.is_completed()", || req.is_completed());
    assert_eq!(ret.load(SeqCst), 0);
    assert_eq!(n.load(SeqCst), 1);
    assert_eq!(calls.load(SeqCst), 1);
}

/// /thread-pool/submit-co: the coroutine sleeps until the worker finished,
/// and resumes from the context's poll.
#[test]
fn submit_co() {
    let ctx = AioContext::new().unwrap();
    let gate = Arc::new(Gate::default());
    let got = Rc::new(RefCell::new(None));
    let (g, gt) = (got.clone(), gate.clone());
    let co = Coroutine::new(move || {
        let v = corio::thread_pool::submit_co(move || {
            gt.wait();
            7
        });
        *g.borrow_mut() = Some(v);
    });
    co.enter();
    assert!(!co.is_terminated(), "suspended while the worker runs");
    assert_eq!(*got.borrow(), None);
    gate.open();
    poll_blocking_until(&ctx, "co.is_terminated()", || co.is_terminated());
    assert_eq!(*got.borrow(), Some(Ok(7)));
}

/// /thread-pool/submit-many: 100 requests (more than the 64 workers) and 100
/// coroutine submissions all complete with ret 0.
#[test]
fn submit_many() {
    let ctx = AioContext::new().unwrap();
    let pool = ctx.thread_pool();
    let n = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let reqs: Vec<PoolRequest> = (0..100)
        .map(|_| {
            let (n, d) = (n.clone(), done.clone());
            pool.submit_aio(
                move || {
                    n.fetch_add(1, SeqCst);
                },
                move |r| {
                    assert_eq!(r, Ok(()));
                    d.fetch_add(1, SeqCst);
                },
            )
        })
        .collect();
    let cos: Vec<Coroutine> = (0..100)
        .map(|i| {
            let p = pool.clone();
            let co = Coroutine::new(move || assert_eq!(p.submit_co(move || i * 2), Ok(i * 2)));
            co.enter();
            co
        })
        .collect();
    poll_blocking_until(
        &ctx,
        "every request completed and every coroutine ended",
        || reqs.iter().all(PoolRequest::is_completed) && cos.iter().all(Coroutine::is_terminated),
    );
    assert_eq!(n.load(SeqCst), 100);
    assert_eq!(done.load(SeqCst), 100);
    assert!(pool.threads() <= corio::thread_pool::DEFAULT_MAX_THREADS);
}

/// Review finding (workers started outside the queue lock, one from
/// another): a burst of blocking requests on an empty pool still gets a
/// worker per request, so none waits for a busy worker while another could
/// start (QEMU's rule).
#[test]
fn burst_on_an_empty_pool_starts_a_worker_per_request() {
    let ctx = AioContext::new().unwrap();
    let pool = ctx.thread_pool();
    let gate = Arc::new(Gate::default());
    let (tx, rx) = mpsc::channel();
    let reqs: Vec<PoolRequest> = (0..8)
        .map(|_| {
            let (g, tx) = (gate.clone(), tx.clone());
            pool.submit_aio(
                move || {
                    tx.send(std::thread::current().id()).unwrap();
                    g.wait();
                },
                |_| {},
            )
        })
        .collect();
    let mut ids: Vec<ThreadId> = (0..8)
        .map(|_| recv_within(&rx, "every request running at once"))
        .collect();
    ids.sort_unstable_by_key(|id| format!("{id:?}"));
    ids.dedup();
    assert_eq!(ids.len(), 8, "each blocked request has its own worker");
    assert_eq!(pool.threads(), 8);
    gate.open();
    poll_blocking_until(&ctx, "every request completed", || {
        reqs.iter().all(PoolRequest::is_completed)
    });
}

struct CancelJob {
    req: PoolRequest,
    started: Arc<AtomicBool>,
    finished: Arc<AtomicBool>,
    ret: Arc<Mutex<Option<Result<(), PoolError>>>>,
}

/// QEMU's do_test_cancel: submit-many, then 100 jobs that block (QEMU: sleep
/// 2 s). Once every worker is busy the rest are queued; cancelling completes
/// the queued ones with ECANCELED and the running ones with 0, never
/// interrupting one mid-run.
fn do_test_cancel(sync: bool) {
    let ctx = AioContext::new().unwrap();
    let pool = ctx.thread_pool();
    let max = 16;
    pool.set_params(0, max);
    let gate = Arc::new(Gate::default());
    let running = Arc::new(AtomicUsize::new(0));
    let jobs: Vec<CancelJob> = (0..100)
        .map(|_| {
            let started = Arc::new(AtomicBool::new(false));
            let finished = Arc::new(AtomicBool::new(false));
            let ret = Arc::new(Mutex::new(None));
            let (s, f, g, r, run) = (
                started.clone(),
                finished.clone(),
                gate.clone(),
                ret.clone(),
                running.clone(),
            );
            let req = pool.submit_aio(
                move || {
                    s.store(true, SeqCst);
                    run.fetch_add(1, SeqCst);
                    g.wait();
                    f.store(true, SeqCst);
                },
                move |res| *r.locked() = Some(res),
            );
            CancelJob {
                req,
                started,
                finished,
                ret,
            }
        })
        .collect();
    // Every worker takes one job and blocks: exactly `max` run, the rest
    // stay queued (no worker is free to start them).
    wait_until("every worker to start a job", || {
        running.load(SeqCst) >= max
    });
    assert_eq!(pool.queued(), 100 - max);
    assert!(100 - max > 50, "more than half still to run, as in QEMU");
    let mut cancelled = 0;
    for j in &jobs {
        if !j.started.load(SeqCst) {
            let ok = if sync {
                j.req.cancel()
            } else {
                j.req.cancel_async()
            };
            assert!(ok, "a queued job can be cancelled");
            cancelled += 1;
            if sync {
                assert!(j.req.is_completed(), "cancel returns after the completion");
                assert_eq!(*j.ret.locked(), Some(Err(PoolError::Canceled)));
            }
        }
    }
    assert_eq!(cancelled, 100 - max);
    assert_eq!(pool.queued(), 0);
    if !sync {
        // As QEMU's case: cancel_async on the jobs that are RUNNING (each
        // blocks on the gate): refused, and the job goes on to complete
        // normally, once.
        for j in jobs.iter().filter(|j| j.started.load(SeqCst)) {
            assert!(!j.req.cancel_async(), "a running job cannot be cancelled");
            assert!(!j.req.is_completed(), "still running");
        }
        // This poll runs the cancelled jobs' completions, not the running
        // jobs' ones.
        ctx.poll(false);
        assert!(
            jobs.iter()
                .filter(|j| j.started.load(SeqCst))
                .all(|j| j.ret.locked().is_none()),
            "a refused cancel_async completed a running job"
        );
    }
    gate.open();
    for j in &jobs {
        if sync {
            j.req.cancel(); // a running job is waited for
            assert!(j.req.is_completed());
        }
    }
    poll_blocking_until(&ctx, "every job completed", || {
        jobs.iter().all(|j| j.req.is_completed())
    });
    for j in &jobs {
        let ret = j.ret.locked().clone().expect("every job completed");
        if j.started.load(SeqCst) {
            assert_eq!(ret, Ok(()));
            assert!(j.finished.load(SeqCst), "a running job is never aborted");
        } else {
            assert_eq!(ret.unwrap_err().errno(), -125);
            assert!(!j.finished.load(SeqCst));
        }
    }
}

/// /thread-pool/cancel
#[test]
fn cancel() {
    do_test_cancel(true);
}

/// /thread-pool/cancel-async
#[test]
fn cancel_async() {
    do_test_cancel(false);
}

/// Bad use: a work function that panics reaches the submitter as an error,
/// and the pool (and its worker) carries on.
#[test]
fn panic_in_work_reaches_submitter() {
    let ctx = AioContext::new().unwrap();
    let pool = ctx.thread_pool();
    pool.set_params(1, 1);
    let (tx, rx) = mpsc::channel::<(Result<ThreadId, PoolError>, bool)>();
    let tx2 = tx.clone();
    let r1 = pool.submit_aio(
        || -> ThreadId { panic!("boom in a worker") },
        move |r| tx2.send((r, true)).unwrap(),
    );
    let r2 = pool.submit_aio(
        || std::thread::current().id(),
        move |r| tx.send((r, false)).unwrap(),
    );
    poll_blocking_until(&ctx, "r1.is_completed() && r2.is_completed()", || {
        r1.is_completed() && r2.is_completed()
    });
    let (a, b) = (recv_within(&rx, "rx"), recv_within(&rx, "rx"));
    let (bad, good) = if a.1 { (a.0, b.0) } else { (b.0, a.0) };
    match bad {
        Err(PoolError::Panicked(m)) => assert!(m.contains("boom in a worker"), "{m}"),
        other => panic!("expected a panic error, got {other:?}"),
    }
    assert!(good.is_ok());
    assert_eq!(pool.threads(), 1, "the worker survived");
    // And from a coroutine.
    let p = pool.clone();
    let co = Coroutine::new(move || {
        let r: Result<(), PoolError> = p.submit_co(|| panic!("co boom"));
        assert!(matches!(r, Err(PoolError::Panicked(m)) if m.contains("co boom")));
    });
    co.enter();
    poll_blocking_until(&ctx, "co.is_terminated()", || co.is_terminated());
}

/// Completions run in the submitting context: a pool on an IOThread
/// completes on that thread.
#[test]
fn completion_runs_in_submitting_iothread() {
    let t = IoThread::new().unwrap();
    let ctx = t.context().clone();
    let (tx, rx) = mpsc::channel();
    let iothread = t.context().run_in(|| std::thread::current().id());
    t.context().run_in(move || {
        let tx2 = tx.clone();
        ctx.thread_pool().submit_aio(
            || std::thread::current().id(),
            move |r| tx2.send((r.unwrap(), std::thread::current().id())).unwrap(),
        );
        Coroutine::new(move || {
            let worker = ThreadPool::current()
                .submit_co(|| std::thread::current().id())
                .unwrap();
            tx.send((worker, std::thread::current().id())).unwrap();
        })
        .enter();
    });
    for _ in 0..2 {
        let (worker, completion) = recv_within(&rx, "rx");
        assert_eq!(completion, iothread);
        assert_ne!(worker, iothread);
    }
    join_iothread(t, "t");
}

/// min threads start at once; with a short idle timeout, idle workers above
/// min exit (eventually: no timing is asserted).
#[test]
fn min_max_and_idle_timeout() {
    let ctx = AioContext::new().unwrap();
    let pool = ctx.thread_pool();
    pool.set_idle_timeout(std::time::Duration::from_millis(5));
    pool.set_params(2, 4);
    assert_eq!(pool.threads(), 2);
    let gate = Arc::new(Gate::default());
    let reqs: Vec<_> = (0..6)
        .map(|_| {
            let g = gate.clone();
            pool.submit_aio(move || g.wait(), |_| {})
        })
        .collect();
    assert!(pool.threads() <= 4, "never more than max");
    gate.open();
    poll_blocking_until(&ctx, "every request completed", || {
        reqs.iter().all(PoolRequest::is_completed)
    });
    pool.set_params(0, 4);
    wait_until("the idle workers to exit", || pool.threads() == 0);
}

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// Opens its gate when dropped.
struct OpenOnDrop(Arc<Gate>);
impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

thread_local! {
    /// Set by a job on its worker thread: the flag is raised when that
    /// thread's thread-locals are destroyed, that is when it has exited.
    static ON_THREAD_EXIT: RefCell<Option<DropFlag>> = const { RefCell::new(None) };
}

/// Raises `flag` when the calling thread exits.
fn flag_thread_exit(flag: Arc<AtomicBool>) {
    ON_THREAD_EXIT.with(|f| *f.borrow_mut() = Some(DropFlag(flag)));
}

/// Review finding (QEMU's `thread_pool_free`): dropping a context with its
/// pool busy cancels the request that has not started (its work never runs,
/// its completion is dropped uncalled), lets the running one finish (its
/// completion is dropped uncalled too: the context is gone) and joins the
/// worker thread before the drop returns. The queued request's work, when
/// dropped, opens the gate the running one waits on: so the running one can
/// only finish if the drop cancels the queued one first.
#[test]
fn context_dropped_with_work_in_flight() {
    let gate = Arc::new(Gate::default());
    let flags: Vec<Arc<AtomicBool>> = (0..7).map(|_| Arc::default()).collect();
    let [a_ran, a_completed, a_done_dropped, b_ran, b_completed, b_done_dropped, worker_exited] =
        <[_; 7]>::try_from(flags.clone()).unwrap();
    let weak = {
        let flags = flags.clone();
        let gate = gate.clone();
        std::thread::spawn(move || {
            let [a_ran, a_completed, a_done_dropped, b_ran, b_completed, b_done_dropped, exited] =
                <[_; 7]>::try_from(flags).unwrap();
            let ctx = AioContext::new().unwrap();
            let pool = ctx.thread_pool();
            pool.set_params(0, 1); // one worker: B waits behind A
            let (started_tx, started_rx) = mpsc::channel();
            let (g, flag) = (gate.clone(), DropFlag(a_done_dropped));
            pool.submit_aio(
                move || {
                    flag_thread_exit(exited);
                    started_tx.send(()).unwrap();
                    g.wait();
                    a_ran.store(true, SeqCst);
                },
                move |_| {
                    let _f = flag;
                    a_completed.store(true, SeqCst);
                },
            );
            recv_within(&started_rx, "request A to start");
            let (opener, flag) = (OpenOnDrop(gate), DropFlag(b_done_dropped));
            pool.submit_aio(
                move || {
                    let _o = opener;
                    b_ran.store(true, SeqCst);
                },
                move |_| {
                    let _f = flag;
                    b_completed.store(true, SeqCst);
                },
            );
            assert_eq!(pool.queued(), 1, "B waits behind A");
            ctx.downgrade()
            // The thread exits: its (current) context goes with it.
        })
        .joined()
    };
    assert!(
        weak.upgrade().is_none(),
        "the pool does not keep the context alive"
    );
    assert!(
        worker_exited.load(SeqCst),
        "the worker thread was joined before the drop returned"
    );
    assert!(a_ran.load(SeqCst), "the running request finished");
    assert!(!b_ran.load(SeqCst), "the queued request was cancelled");
    assert!(!a_completed.load(SeqCst) && !b_completed.load(SeqCst));
    assert!(a_done_dropped.load(SeqCst) && b_done_dropped.load(SeqCst));
}

/// The last reference to a context dropped on one of its own pool's
/// workers (by a work function): the drop cancels the queued request and
/// does not join the worker it runs on (that would deadlock); the worker
/// exits once its request returns.
#[test]
fn context_dropped_on_its_own_worker() {
    let _current = AioContext::current(); // so that `ctx` is not the thread's current one
    let ctx = AioContext::new().unwrap();
    let pool = ctx.thread_pool();
    pool.set_params(0, 1);
    let gate = Arc::new(Gate::default());
    let (dropped_on, b_ran, b_done_dropped, exited) = (
        Arc::new(Mutex::new(None::<ThreadId>)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (g, c, d, e) = (
        gate.clone(),
        ctx.clone(),
        dropped_on.clone(),
        exited.clone(),
    );
    pool.submit_aio(
        move || {
            flag_thread_exit(e);
            g.wait();
            drop(c); // the last reference: the pool is dropped here
            *d.locked() = Some(std::thread::current().id());
        },
        |_| panic!("no completion runs once the context is gone"),
    );
    let (r, flag) = (b_ran.clone(), DropFlag(b_done_dropped.clone()));
    pool.submit_aio(
        move || r.store(true, SeqCst),
        move |_| {
            let _f = flag;
            panic!("no completion runs once the context is gone");
        },
    );
    let weak = ctx.downgrade();
    drop(ctx);
    gate.open();
    wait_until("the worker to exit", || exited.load(SeqCst));
    assert!(weak.upgrade().is_none());
    assert!(
        dropped_on.locked().is_some(),
        "the job returned from the drop"
    );
    assert!(!b_ran.load(SeqCst), "the queued request was cancelled");
    assert!(b_done_dropped.load(SeqCst));
    assert_eq!(pool.threads(), 0);
    assert_eq!(pool.queued(), 0);
}

/// Review finding: when one completion panics, the completions batched with
/// it are not lost; they run from a later poll.
#[test]
fn completion_panic_does_not_lose_the_batch() {
    let ctx = AioContext::new().unwrap();
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let mut reqs = Vec::new();
    for i in 0..8 {
        let (g, d) = (gate.clone(), done.clone());
        reqs.push(ctx.thread_pool().submit_aio(
            move || {
                let (m, c) = &*g;
                drop(wait_cv(c, m, "the gate to open", |open| *open));
            },
            move |_r: Result<(), PoolError>| {
                if i == 0 {
                    panic!("completion 0 fails");
                }
                d.fetch_add(1, SeqCst);
            },
        ));
    }
    {
        let (m, c) = &*gate;
        *m.locked() = true;
        c.notify_all();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut panics = 0;
    // Workers finish in any order: completion 0 (the panicking one) may
    // come after the seven others.
    while done.load(SeqCst) < 7 || panics == 0 {
        assert!(std::time::Instant::now() < deadline, "completions lost");
        // Non-blocking, so that lost completions fail the deadline instead
        // of sleeping forever.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.poll(false))) {
            Err(_) => panics += 1,
            Ok(false) => std::thread::sleep(std::time::Duration::from_millis(1)),
            Ok(true) => {}
        }
    }
    assert_eq!(panics, 1);
    assert!(reqs.iter().all(PoolRequest::is_completed));
}
