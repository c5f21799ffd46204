//! The pool's request queue and how workers are woken (QEMU's
//! `request_list`, `idle_threads`, `spawn_thread` and `worker_thread`).
//!
//! Requests wait in a FIFO under one mutex, with the worker counts. A
//! submission never wakes more than one worker, and none when a worker is
//! already on its way:
//!
//! * one worker at a time that ran out of work spins for a while
//!   (`spinning`) and takes the next request without being woken;
//! * otherwise one sleeping worker is signalled (`signalled`); it takes a
//!   request and, if more are queued and nobody else is on the way, wakes
//!   the next one (or starts one below `max`, as QEMU starts a thread when
//!   none is idle). So the workers in use grow while requests wait, and a
//!   burst of submissions costs the submitter no system call per request.
//!
//! Every decision is taken under the mutex; `queued` (the queue length) is
//! only a hint for the spinning worker, which re-checks under the lock. The
//! loom model below checks that no request is left queued with every worker
//! asleep (loom's `wait_timeout` never times out, so a lost wake-up is a
//! deadlock there).

use std::collections::VecDeque;
use std::time::Duration;

#[cfg(loom)]
use loom::sync::{atomic::AtomicUsize, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
use std::sync::{atomic::AtomicUsize, Condvar, Mutex, MutexGuard};

use std::sync::atomic::Ordering::Relaxed;

/// The queue-length hint's type (loom's atomic in the models).
pub(super) type Queued = AtomicUsize;

/// The queue and the worker counts.
pub(super) struct QueueState<J> {
    /// Requests not yet taken by a worker, oldest first.
    pub(super) queue: VecDeque<J>,
    /// Worker threads alive.
    pub(super) cur: usize,
    /// Workers asleep on `work` (counted while inside the wait).
    pub(super) idle: usize,
    /// Notifications sent to sleeping workers and not yet consumed.
    signalled: usize,
    /// A worker is spinning for work (at most one).
    spinning: bool,
    pub(super) min: usize,
    pub(super) max: usize,
    pub(super) idle_timeout: Duration,
    /// The pool's owner is gone: workers exit once their running request
    /// returns (the queue was emptied), and none is started.
    pub(super) stopping: bool,
}

/// The request queue shared by the submitter and the workers.
pub(super) struct WorkQueue<J> {
    state: Mutex<QueueState<J>>,
    /// `state.queue.len()`, for the spinning worker to watch unlocked.
    queued: AtomicUsize,
    /// Signalled when work is queued or the pool stops.
    work: Condvar,
}

/// What a worker does with the queue's help: run a request, spin for one,
/// start another worker.
pub(super) trait Worker<J> {
    /// Runs one request (unlocked).
    fn run(&mut self, job: J);
    /// Spins for a while; returns early once `queued` is not 0.
    fn spin(&mut self, queued: &AtomicUsize);
}

impl<J> WorkQueue<J> {
    pub(super) fn new(max: usize, idle_timeout: Duration) -> WorkQueue<J> {
        WorkQueue {
            state: Mutex::new(QueueState {
                queue: VecDeque::new(),
                cur: 0,
                idle: 0,
                signalled: 0,
                spinning: false,
                min: 0,
                max,
                idle_timeout,
                stopping: false,
            }),
            queued: AtomicUsize::new(0),
            work: Condvar::new(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, QueueState<J>> {
        // Nothing panics between two related writes under this lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every worker (to re-check `stopping`, `max`, the timeout).
    pub(super) fn notify_all(&self) {
        self.work.notify_all();
    }

    /// Queues `job` and makes sure a worker will take it; `spawn` starts a
    /// worker (it counts it in `cur` if it started).
    pub(super) fn push(&self, job: J, spawn: impl FnOnce(&mut QueueState<J>)) {
        let mut st = self.lock();
        st.queue.push_back(job);
        self.queued.store(st.queue.len(), Relaxed);
        let wake = Self::wake_or_spawn(&mut st, spawn);
        drop(st);
        if wake {
            self.work.notify_one();
        }
    }

    /// Stops the queue: no request is taken and no worker started from now
    /// on; the workers exit once their running request returns. Returns the
    /// requests that had not started, for the caller to cancel.
    pub(super) fn stop(&self) -> VecDeque<J> {
        let mut st = self.lock();
        st.stopping = true;
        let left = std::mem::take(&mut st.queue);
        self.queued.store(0, Relaxed);
        drop(st);
        self.work.notify_all();
        left
    }

    /// Removes the first queued request that `matches` (a cancel); returns
    /// whether one was queued.
    pub(super) fn remove(&self, matches: impl Fn(&J) -> bool) -> bool {
        let mut st = self.lock();
        let Some(i) = st.queue.iter().position(matches) else {
            return false;
        };
        st.queue.remove(i);
        self.queued.store(st.queue.len(), Relaxed);
        true
    }

    /// Nothing if a worker is on its way to the queue (spinning, or
    /// signalled and not yet awake: it will call this again when it takes
    /// a request); else wake a sleeping worker (returns true: the caller
    /// notifies after unlocking), else start one below `max`.
    fn wake_or_spawn(st: &mut QueueState<J>, spawn: impl FnOnce(&mut QueueState<J>)) -> bool {
        if st.queue.is_empty() || st.spinning || st.signalled > 0 {
            return false;
        }
        if st.idle > st.signalled {
            st.signalled += 1;
            return true;
        }
        if st.cur < st.max && !st.stopping {
            spawn(st);
        }
        false
    }

    /// A worker thread's loop; returns when the worker exits (it is no
    /// longer counted in `cur`).
    pub(super) fn work(&self, w: &mut impl Worker<J>, spawn: impl Fn(&mut QueueState<J>)) {
        let mut st = self.lock();
        // Whether this worker spun since it last ran a request: then it
        // sleeps.
        let mut spun = false;
        loop {
            if let Some(job) = st.queue.pop_front() {
                self.queued.store(st.queue.len(), Relaxed);
                let wake = Self::wake_or_spawn(&mut st, &spawn);
                drop(st);
                if wake {
                    self.work.notify_one();
                }
                w.run(job);
                spun = false;
                st = self.lock();
                continue;
            }
            if st.stopping || st.cur > st.max {
                break;
            }
            if !spun && !st.spinning {
                st.spinning = true;
                drop(st);
                w.spin(&self.queued);
                st = self.lock();
                st.spinning = false;
                spun = true;
                continue;
            }
            st.idle += 1;
            let timeout = st.idle_timeout;
            let (g, res) = self
                .work
                .wait_timeout(st, timeout)
                .unwrap_or_else(|e| e.into_inner());
            st = g;
            st.idle -= 1;
            st.signalled = st.signalled.saturating_sub(1);
            spun = false;
            if res.timed_out() && st.queue.is_empty() && st.cur > st.min {
                break;
            }
        }
        st.cur -= 1;
    }
}

/// loom models of the wake-up protocol on the real [`WorkQueue`]: two
/// workers already running (`cur == max`, so nothing is spawned), requests
/// submitted from the main thread. A request left queued while both
/// workers sleep is a deadlock for loom.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// Counts the requests run; the model's main thread waits on it (a
    /// condvar, so that a lost wake-up leaves every thread blocked).
    #[derive(Default)]
    struct Ran {
        n: Mutex<usize>,
        cv: Condvar,
    }

    struct Counting(Arc<Ran>);

    impl Worker<usize> for Counting {
        fn run(&mut self, _job: usize) {
            *self.0.n.lock().unwrap() += 1;
            self.0.cv.notify_all();
        }

        fn spin(&mut self, queued: &AtomicUsize) {
            // One look: the spin's length does not matter to the protocol.
            let _ = queued.load(Relaxed);
            thread::yield_now();
        }
    }

    fn no_spawn(_: &mut QueueState<usize>) {
        panic!("the model starts its workers itself");
    }

    fn model(jobs: usize) {
        loom::model(move || {
            let q = Arc::new(WorkQueue::<usize>::new(2, Duration::from_secs(1)));
            q.lock().cur = 2;
            let ran = Arc::new(Ran::default());
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let (q, ran) = (q.clone(), ran.clone());
                    thread::spawn(move || q.work(&mut Counting(ran), no_spawn))
                })
                .collect();
            for j in 0..jobs {
                q.push(j, no_spawn);
            }
            let mut n = ran.n.lock().unwrap();
            while *n < jobs {
                n = ran.cv.wait(n).unwrap();
            }
            assert_eq!(*n, jobs, "a request ran twice");
            drop(n);
            assert!(q.stop().is_empty());
            for w in workers {
                w.join().unwrap();
            }
            assert_eq!(q.lock().cur, 0);
        });
    }

    /// One request: taken by the spinning worker or by a woken one, never
    /// lost between the spin's end and the sleep. Checked by mutation: a
    /// worker that sleeps without re-checking the queue after its spin, or
    /// a push that skips the wake when nobody spins, fails it.
    #[test]
    fn loom_pool_wake_one() {
        model(1);
    }

    /// Two requests in a row: the second is covered by the chain (the
    /// worker that takes the first wakes the next one) or by the spinner.
    #[test]
    fn loom_pool_wake_chain() {
        model(2);
    }
}
