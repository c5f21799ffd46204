//! QEMU's tests/unit/test-aio-multithread.c, mutex cases:
//! /aio/multi/mutex/contended, /aio/multi/mutex/handoff,
//! /aio/multi/mutex/mcs and /aio/multi/mutex/pthread.
//!
//! One coroutine per IOThread loops: lock, increment the shared counter
//! (a plain, non-atomic increment under the lock), unlock, then count the
//! completed section in an atomic. At the end both counts must be equal:
//! a lost update means two holders at once, a hang means a lost wakeup.
//! Quick by default (1 s per case); `CORIO_TEST_THOROUGH=1` runs 10 s.

mod helpers;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corio::sync::CoMutex;
use corio::{Coroutine, IoThread};
use helpers::{join_iothread, wait_until, LockExt};

const NUM_CONTEXTS: usize = 5;

/// Sets the flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

fn duration() -> Duration {
    helpers::quick_or_thorough(Duration::from_secs(1), Duration::from_secs(10))
}

/// Runs `section` in a loop in one coroutine on each of `threads`
/// IOThreads for `duration()`, then checks that the counter (`read`) equals
/// the completed sections.
fn run_multi(threads: usize, section: Arc<dyn Fn() + Send + Sync>, read: impl Fn() -> u64) {
    run_multi_for(threads, duration(), section, read, ("nothing", || true));
}

/// [`run_multi`] for `duration`, and then on until `enough` (with a
/// deadline).
fn run_multi_for(
    threads: usize,
    duration: Duration,
    section: Arc<dyn Fn() + Send + Sync>,
    read: impl Fn() -> u64,
    (what, enough): (&str, impl FnMut() -> bool),
) {
    let iothreads: Vec<IoThread> = (0..threads)
        .map(|i| IoThread::with_name(&format!("iothread{i}")).unwrap())
        .collect();
    let stopping = Arc::new(AtomicBool::new(false));
    // Dropped before `iothreads` (declared later): a failing check still
    // stops the loops, so that joining the IOThreads does not hang.
    let _stop = StopOnDrop(stopping.clone());
    let running = Arc::new(AtomicUsize::new(threads));
    let completed = Arc::new(AtomicU64::new(0));
    for t in &iothreads {
        let (stop, run, done, section) = (
            stopping.clone(),
            running.clone(),
            completed.clone(),
            section.clone(),
        );
        t.context().bh_schedule_oneshot(move || {
            Coroutine::new(move || {
                // SeqCst: pairs with the store in the main thread; a late
                // view only runs a few more sections.
                while !stop.load(SeqCst) {
                    section();
                    // Counted after the unlock, as in QEMU: the woken
                    // waiter may still have to run when we stop.
                    done.fetch_add(1, Relaxed);
                }
                run.fetch_sub(1, SeqCst);
            })
            .enter();
        });
    }
    std::thread::sleep(duration);
    wait_until(what, enough);
    stopping.store(true, SeqCst);
    wait_until("every coroutine to stop", || running.load(SeqCst) == 0);
    for t in iothreads {
        join_iothread(t, "t");
    }
    let (n, c) = (completed.load(SeqCst), read());
    eprintln!(
        "{threads} threads: {n} critical sections, {:.0}/s",
        n as f64 / duration.as_secs_f64()
    );
    assert!(n > 0);
    assert_eq!(c, n, "the counter equals the completed critical sections");
}

/// One CoMutex shared by `threads` IOThreads for `duration`; with
/// `need_handoff`, the run goes on until the mutex has handed over at
/// least once.
fn co_mutex_case(threads: usize, duration: Duration, need_handoff: bool) {
    let m = Arc::new(CoMutex::new(0u64));
    let (m2, m3) = (m.clone(), m.clone());
    run_multi_for(
        threads,
        duration,
        Arc::new(move || {
            let mut g = m2.lock();
            *g += 1;
        }),
        move || *m.try_lock().expect("free at the end"),
        ("the CoMutex to hand over (the handoff path)", move || {
            !need_handoff || m3.handoffs() > 0
        }),
    );
}

/// /aio/multi/mutex/contended: five IOThreads contend for one CoMutex.
#[test]
fn multi_mutex_contended() {
    co_mutex_case(NUM_CONTEXTS, duration(), false);
}

/// /aio/multi/mutex/handoff: as QEMU, two IOThreads, so that the holder
/// often unlocks while the other is queued or on its way: the handoff path
/// (an unlock that leaves the mutex locked for a starving waiter) must run,
/// as the mutex's handoff count shows. QEMU runs 3 s (30 s with -m slow);
/// quick mode 1 s, `CORIO_TEST_THOROUGH=1` 3 s. If no handoff happened
/// by then, the run goes on until one does (within the deadline).
#[test]
fn multi_mutex_handoff() {
    let duration = helpers::quick_or_thorough(Duration::from_secs(1), Duration::from_secs(3));
    co_mutex_case(2, duration, true);
}

/// A fair ticket lock: QEMU's case uses a futex-based MCS lock, ours spins
/// (yielding the thread) on a ticket, which gives the same FIFO order
/// without unsafe code.
struct TicketLock {
    next: AtomicU64,
    serving: AtomicU64,
}
impl TicketLock {
    fn lock(&self) {
        let me = self.next.fetch_add(1, Relaxed);
        // Acquire: pairs with the Release in `unlock`.
        while self.serving.load(std::sync::atomic::Ordering::Acquire) != me {
            std::thread::yield_now();
        }
    }
    fn unlock(&self) {
        // Release: publishes the critical section to the next ticket.
        self.serving
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }
}

/// /aio/multi/mutex/mcs: the same loop with a fair thread lock in the coroutines.
#[test]
fn multi_mutex_mcs() {
    let lock = Arc::new(TicketLock {
        next: AtomicU64::new(0),
        serving: AtomicU64::new(0),
    });
    // A non-atomic increment: a separate load and store under the lock.
    let counter = Arc::new(AtomicU64::new(0));
    let (l, c) = (lock.clone(), counter.clone());
    run_multi(
        NUM_CONTEXTS,
        Arc::new(move || {
            l.lock();
            c.store(c.load(Relaxed) + 1, Relaxed);
            l.unlock();
        }),
        move || counter.load(SeqCst),
    );
}

/// /aio/multi/mutex/pthread: the same loop with a std (pthread-style) mutex.
#[test]
fn multi_mutex_pthread() {
    let m = Arc::new(Mutex::new(0u64));
    let m2 = m.clone();
    run_multi(
        NUM_CONTEXTS,
        Arc::new(move || *m2.locked() += 1),
        move || *m.locked(),
    );
}
