//! The threads that run QIOTask workers ([`super::Task::run_in_thread`]).
//!
//! QEMU starts a thread per task. Here a task's worker runs on a thread of
//! its own too, but the thread may be one that finished an earlier task: a
//! finished thread parks itself as idle, and a new task goes to an idle
//! thread if there is one, or to a new thread. A task never waits for a
//! thread that runs another task's worker (each idle thread takes exactly
//! one task, handed to it directly, not through a shared queue), so a worker
//! that blocks in `connect` or a TLS handshake delays nobody; the threads
//! grow while all are busy, as QEMU's would.
//!
//! An idle thread first spins briefly for its next task (so that tasks
//! started one after another pay no thread wake-up), then sleeps; it exits
//! after [`IDLE_TIMEOUT`] without a task, and at once if [`MAX_IDLE`]
//! threads are already idle.
//!
//! # Thread-locals between tasks
//!
//! QEMU's worker starts on a fresh thread; a reused thread here would keep
//! its thread-locals from one task to the next. corio's own are emptied
//! after every task, as the thread's exit would empty them
//! ([`reset_corio_thread_locals`]): the current `AioContext` (one a worker
//! made, for example through `AioContext::current`, is dropped unless
//! something else holds it), the coroutines woken there before any context
//! existed, and the per-thread coroutine and stack caches. So no corio state
//! reaches the next task. Other thread-locals (the worker's own, other
//! crates') are not touched: a worker must not rely on finding them fresh,
//! nor on finding them again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A task's worker, with its completion hand-off.
pub(super) type Job = Box<dyn FnOnce() + Send>;

/// How long an idle thread waits for a task before it exits.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle threads kept at most; a thread finishing beyond that exits.
pub const MAX_IDLE: usize = 64;
/// How long an idle thread spins for its next task before it sleeps.
const SPIN: Duration = Duration::from_micros(50);

/// One idle thread's mailbox.
struct Idle {
    slot: Mutex<Slot>,
    /// `slot.job.is_some()`, for the spin to watch without the lock.
    has_job: AtomicBool,
    wake: Condvar,
}

#[derive(Default)]
struct Slot {
    job: Option<Job>,
    /// The thread waits on `wake`: a hand-off must notify it.
    sleeping: bool,
}

/// Idle threads, the most recently idle last (it is the likeliest to
/// still spin, and its stack is warm).
static IDLE: Mutex<Vec<Arc<Idle>>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `job` on an idle thread, or on a new one.
///
/// # Errors
/// If no thread is idle and none can be started.
pub(super) fn run(job: Job) -> std::io::Result<()> {
    let idle = lock(&IDLE).pop();
    match idle {
        Some(w) => {
            let mut slot = lock(&w.slot);
            slot.job = Some(job);
            w.has_job.store(true, Ordering::Release);
            if slot.sleeping {
                w.wake.notify_one();
            }
            Ok(())
        }
        None => std::thread::Builder::new()
            .name("qio-task-worker".to_owned())
            .spawn(move || thread_main(job))
            .map(drop),
    }
}

fn thread_main(first: Job) {
    first();
    reset_corio_thread_locals();
    let me = Arc::new(Idle {
        slot: Mutex::new(Slot::default()),
        has_job: AtomicBool::new(false),
        wake: Condvar::new(),
    });
    while let Some(job) = next_job(&me) {
        job();
        reset_corio_thread_locals();
    }
}

/// Empties corio's thread-locals after a task, before the thread takes
/// another: the next task starts, as far as corio goes, as on a fresh
/// thread. The context first: its drop may unwind coroutines, which puts
/// their objects and stacks in the caches emptied next.
fn reset_corio_thread_locals() {
    drop(crate::aio::take_current_ctx());
    crate::coroutine::reset_thread_locals();
}

/// Parks `me` as idle and waits for a task; `None` when the thread should
/// exit (too many idle threads, or none came within the idle timeout).
fn next_job(me: &Arc<Idle>) -> Option<Job> {
    {
        let mut idle = lock(&IDLE);
        if idle.len() >= MAX_IDLE {
            return None;
        }
        idle.push(me.clone());
    }
    let end = Instant::now() + SPIN;
    'spin: loop {
        for _ in 0..64 {
            if me.has_job.load(Ordering::Acquire) {
                break 'spin;
            }
            std::hint::spin_loop();
        }
        if Instant::now() >= end {
            break;
        }
        std::thread::yield_now();
    }
    let mut slot = lock(&me.slot);
    let deadline = Instant::now() + IDLE_TIMEOUT;
    while slot.job.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            drop(slot);
            // Leave the idle list, unless a submitter already took us from
            // it: then its job is on the way (it hands over under `slot`).
            let mut idle = lock(&IDLE);
            if let Some(i) = idle.iter().position(|w| Arc::ptr_eq(w, me)) {
                idle.swap_remove(i);
                return None;
            }
            drop(idle);
            slot = lock(&me.slot);
            continue;
        }
        slot.sleeping = true;
        slot = me
            .wake
            .wait_timeout(slot, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        slot.sleeping = false;
    }
    me.has_job.store(false, Ordering::Relaxed);
    slot.job.take()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::mpsc;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// A worker that blocks does not delay the next task's: with every
    /// earlier thread blocked, a new task still runs at once (on a new
    /// thread), and finished threads take later tasks.
    #[test]
    fn blocked_worker_never_delays_another() {
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let gate_rx = Arc::new(Mutex::new(gate_rx));
        let (started_tx, started_rx) = mpsc::channel();
        // Four workers that block until the gate opens.
        for _ in 0..4 {
            let (g, s) = (gate_rx.clone(), started_tx.clone());
            run(Box::new(move || {
                s.send(()).unwrap();
                let _ = lock(&g).recv_timeout(DEADLINE);
            }))
            .unwrap();
        }
        for _ in 0..4 {
            started_rx
                .recv_timeout(DEADLINE)
                .expect("every blocking worker started");
        }
        // Twenty more tasks, one after another, while those four block.
        let (done_tx, done_rx) = mpsc::channel();
        for i in 0..20 {
            let d = done_tx.clone();
            run(Box::new(move || d.send(i).unwrap())).unwrap();
            assert_eq!(
                done_rx.recv_timeout(DEADLINE),
                Ok(i),
                "task {i} waited for a blocked worker"
            );
        }
        drop(gate_tx); // opens the gate: the blocked workers return
    }

    /// A thread parked as idle takes the next task handed to it, whether it
    /// still spins or already sleeps.
    #[test]
    fn idle_thread_takes_a_task_after_sleeping() {
        let (tx, rx) = mpsc::channel();
        let t = tx.clone();
        run(Box::new(move || t.send(()).unwrap())).unwrap();
        rx.recv_timeout(DEADLINE).expect("first task ran");
        // Past the spin: the idle thread sleeps on its condvar now.
        std::thread::sleep(SPIN * 4);
        run(Box::new(move || tx.send(()).unwrap())).unwrap();
        rx.recv_timeout(DEADLINE).expect("second task ran");
    }
}
