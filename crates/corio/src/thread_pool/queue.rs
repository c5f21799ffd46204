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
//! loom models below check that no request is left queued with every worker
//! asleep (loom's `wait_timeout` never times out, so a lost wake-up is a
//! deadlock there).
//!
//! # Starting workers
//!
//! A thread is never created under the mutex (QEMU creates its workers
//! from a bottom half, `spawn_thread_bh_fn`, so that the submitter does not
//! pay for it under the lock). The decision is taken under the lock: the
//! new worker is counted in `cur`, `starting` and `spawning` at once, and
//! the caller creates the thread after unlocking ([`Wake::Spawn`]). While a
//! worker is `starting` (created, not yet at its loop) it counts as a worker
//! on its way: a submission starts no other, and the new worker, when it
//! takes its first request, wakes or starts the next one if more wait
//! (QEMU's `pending_threads`, whose new worker calls `do_spawn_thread`);
//! a worker that starts one goes on starting, back to back, as many as the
//! queued requests still need (QEMU's backlog, `new_threads`). So a burst
//! of submissions costs the submitter at most one thread creation, and the
//! others are created by one worker in a row rather than each by the
//! previous new one, which would wait for every new thread to be scheduled.
//!
//! # Stopping
//!
//! [`WorkQueue::stop`] (the pool's drop) sets `stopping`, takes every
//! request that has not started and wakes the workers, which exit once
//! their running request returns; no worker is started from then on.
//! [`WorkQueue::wait_spawned`] then waits until every thread creation
//! decided before the stop has settled (`spawning` is 0), so that the
//! caller knows every thread it must join.

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
    /// Workers counted in `cur` whose thread has not reached its loop yet
    /// (decremented by the new worker): a worker on its way, like
    /// `signalled`.
    starting: usize,
    /// Thread creations decided and not yet settled (decremented by the
    /// thread that creates the worker, once the creation returned and the
    /// pool has what it needs to join the thread).
    spawning: usize,
    /// The pool's owner is gone: workers exit once their running request
    /// returns (the queue was emptied), and none is started.
    pub(super) stopping: bool,
}

/// What the caller of a queue operation does once the lock is released.
#[must_use]
pub(super) enum Wake {
    /// A worker is on its way, or none is needed.
    Nothing,
    /// Notify one sleeping worker (its `signalled` is counted).
    Notify,
    /// Create a worker thread (it is counted in `cur`, `starting` and
    /// `spawning`): see [`WorkQueue::act`].
    Spawn,
}

/// The request queue shared by the submitter and the workers.
pub(super) struct WorkQueue<J> {
    state: Mutex<QueueState<J>>,
    /// `state.queue.len()`, for the spinning worker to watch unlocked.
    queued: AtomicUsize,
    /// Signalled when work is queued or the pool stops.
    work: Condvar,
    /// Signalled when a thread creation settles (`spawning` drops).
    settled: Condvar,
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
                starting: 0,
                spawning: 0,
                stopping: false,
            }),
            queued: AtomicUsize::new(0),
            work: Condvar::new(),
            settled: Condvar::new(),
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

    /// Queues `job` and makes sure a worker will take it; `spawn` creates a
    /// worker thread if one must start (called unlocked, see
    /// [`act`](Self::act)).
    pub(super) fn push(&self, job: J, spawn: impl FnOnce() -> std::io::Result<()>) {
        let mut st = self.lock();
        st.queue.push_back(job);
        self.queued.store(st.queue.len(), Relaxed);
        let wake = Self::wake_or_spawn(&mut st);
        drop(st);
        self.act(wake, spawn);
    }

    /// Does what `wake` says, the lock released. For [`Wake::Spawn`]:
    /// `spawn` creates the thread, which runs [`work`](Self::work); if it
    /// cannot, the worker is uncounted and a sleeping worker, if any, is
    /// woken instead. With no worker left and requests queued, nothing
    /// would ever run them: that is a panic.
    ///
    /// # Panics
    /// If no worker can be started while none runs.
    pub(super) fn act(&self, wake: Wake, spawn: impl FnOnce() -> std::io::Result<()>) {
        match wake {
            Wake::Nothing => {}
            Wake::Notify => self.work.notify_one(),
            Wake::Spawn => {
                let res = spawn();
                let mut st = self.lock();
                st.spawning -= 1;
                let mut notify = false;
                if let Err(e) = &res {
                    st.cur -= 1;
                    st.starting -= 1;
                    if st.cur == 0 && !st.queue.is_empty() && !st.stopping {
                        drop(st);
                        self.settled.notify_all();
                        panic!("thread pool: cannot start a worker: {e}");
                    }
                    // Out of threads: the queued work waits for a running
                    // worker, as it would at `max`. A submission that
                    // counted on this one woke nobody: wake a sleeper now.
                    notify = Self::wake_sleeper(&mut st);
                }
                drop(st);
                self.settled.notify_all();
                if notify {
                    self.work.notify_one();
                }
            }
        }
    }

    /// Counts a new worker (it is started by [`act`](Self::act) with
    /// [`Wake::Spawn`]).
    fn reserve_worker(st: &mut QueueState<J>) -> Wake {
        st.cur += 1;
        st.starting += 1;
        st.spawning += 1;
        Wake::Spawn
    }

    /// Reserves one more worker if the requests queued outnumber the
    /// workers on their way to them (starting, signalled, spinning) and
    /// none sleeps unsignalled; for a worker that just started one
    /// ([`work`](Self::work)), so that a burst's workers are created one
    /// after another by one thread, not each by the previous new one
    /// (a chain that waits for every new thread to be scheduled).
    fn grow_for_backlog(&self) -> Wake {
        let mut st = self.lock();
        let on_the_way = st.starting + st.signalled + usize::from(st.spinning);
        if st.queue.len() > on_the_way && st.idle <= st.signalled && st.cur < st.max && !st.stopping
        {
            Self::reserve_worker(&mut st)
        } else {
            Wake::Nothing
        }
    }

    /// Reserves one worker below `min` (QEMU's `thread_pool_update_params`);
    /// the caller calls [`act`](Self::act) and again until it gets
    /// [`Wake::Nothing`].
    pub(super) fn grow_to_min(&self) -> Wake {
        let mut st = self.lock();
        if st.cur < st.min && !st.stopping {
            Self::reserve_worker(&mut st)
        } else {
            Wake::Nothing
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

    /// After [`stop`](Self::stop): waits until no thread creation is in
    /// progress, so that every worker thread ever created is known to the
    /// pool. Creations never wait for a worker, so this cannot deadlock.
    pub(super) fn wait_spawned(&self) {
        let mut st = self.lock();
        debug_assert!(st.stopping);
        while st.spawning > 0 {
            st = self.settled.wait(st).unwrap_or_else(|e| e.into_inner());
        }
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

    /// Nothing if a worker is on its way to the queue (spinning, signalled
    /// and not yet awake, or starting: it will call this again when it
    /// takes a request); else wake a sleeping worker, else start one below
    /// `max`. The caller passes the result to [`act`](Self::act) after
    /// unlocking.
    fn wake_or_spawn(st: &mut QueueState<J>) -> Wake {
        if !Self::needs_worker(st) {
            Wake::Nothing
        } else if st.idle > st.signalled {
            st.signalled += 1;
            Wake::Notify
        } else if st.cur < st.max && !st.stopping {
            Self::reserve_worker(st)
        } else {
            Wake::Nothing
        }
    }

    /// Requests wait and no worker is on its way to them.
    fn needs_worker(st: &QueueState<J>) -> bool {
        !st.queue.is_empty() && !st.spinning && st.signalled == 0 && st.starting == 0
    }

    /// [`wake_or_spawn`](Self::wake_or_spawn) without the spawn: counts a
    /// wake-up of a sleeping worker if one is needed; returns whether the
    /// caller must notify one.
    fn wake_sleeper(st: &mut QueueState<J>) -> bool {
        let wake = Self::needs_worker(st) && st.idle > st.signalled;
        if wake {
            st.signalled += 1;
        }
        wake
    }

    /// A new worker thread's loop (the worker was counted by
    /// [`reserve_worker`](Self::reserve_worker)); `spawn` creates the next
    /// worker when this one must start it. Returns when the worker exits
    /// (it is no longer counted in `cur`).
    pub(super) fn work(&self, w: &mut impl Worker<J>, spawn: impl Fn() -> std::io::Result<()>) {
        let mut st = self.lock();
        st.starting -= 1;
        // Whether this worker spun since it last ran a request: then it
        // sleeps.
        let mut spun = false;
        loop {
            if let Some(job) = st.queue.pop_front() {
                self.queued.store(st.queue.len(), Relaxed);
                let mut wake = Self::wake_or_spawn(&mut st);
                drop(st);
                // Having started one worker, start the others the queue
                // needs, back to back (QEMU's backlog, `new_threads`).
                while let Wake::Spawn = wake {
                    self.act(wake, &spawn);
                    wake = self.grow_for_backlog();
                }
                self.act(wake, &spawn);
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::sync::Arc;

    /// Review finding: a submitter never creates a thread under the queue
    /// lock, and a burst of submissions on an empty pool creates one
    /// thread, not one per request: the new worker starts the next when it
    /// takes a request (QEMU's `pending_threads`). Here the thread is never
    /// created (as if creating it were slow), so every push sees it
    /// `starting`. Before the change, each of the ten pushes created a
    /// thread, under the lock.
    #[test]
    fn burst_spawns_once_outside_the_lock() {
        let q = WorkQueue::<usize>::new(64, Duration::from_secs(10));
        let spawns = Cell::new(0);
        for j in 0..10 {
            q.push(j, || {
                assert!(
                    q.state.try_lock().is_ok(),
                    "a thread is created under the queue lock"
                );
                spawns.set(spawns.get() + 1);
                Ok(())
            });
        }
        assert_eq!(spawns.get(), 1);
        let st = q.lock();
        assert_eq!((st.cur, st.starting, st.spawning), (1, 1, 0));
        assert_eq!(st.queue.len(), 10);
    }

    /// Records, for each request it runs, how many threads had been
    /// created by then.
    struct Recording {
        spawns: Arc<AtomicUsize>,
        seen: std::sync::mpsc::Sender<usize>,
    }

    impl Worker<usize> for Recording {
        fn run(&mut self, _job: usize) {
            self.seen.send(self.spawns.load(Relaxed)).unwrap();
        }

        fn spin(&mut self, _queued: &AtomicUsize) {}
    }

    /// A worker that starts one for a burst starts the rest the queue
    /// needs right away, before it runs its own request (QEMU's backlog),
    /// rather than leaving each to the previous new one. Five requests:
    /// the submitter starts one worker; that worker, taking request 0,
    /// starts four more before it runs it. The four are never created
    /// here (their threads would only take requests), so the first worker
    /// runs the rest; then the queue is stopped and it exits.
    #[test]
    fn a_worker_starts_the_backlog_back_to_back() {
        let q = Arc::new(WorkQueue::<usize>::new(64, Duration::from_secs(10)));
        let spawns = Arc::new(AtomicUsize::new(0));
        let count = || {
            spawns.fetch_add(1, Relaxed);
            Ok(())
        };
        for j in 0..5 {
            q.push(j, count);
        }
        assert_eq!(spawns.load(Relaxed), 1, "the submitter started one");
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = {
            let (q, spawns) = (q.clone(), spawns.clone());
            std::thread::spawn(move || {
                let mut w = Recording {
                    spawns: spawns.clone(),
                    seen: tx,
                };
                q.work(&mut w, || {
                    spawns.fetch_add(1, Relaxed);
                    Ok(())
                });
            })
        };
        let deadline = Duration::from_secs(60);
        let seen: Vec<usize> = (0..5)
            .map(|_| {
                rx.recv_timeout(deadline)
                    .expect("the worker runs every request")
            })
            .collect();
        assert_eq!(seen[0], 5, "four started before the first request ran");
        assert!(seen.iter().all(|&n| n == 5), "none started later: {seen:?}");
        assert!(q.stop().is_empty());
        worker.join().unwrap();
    }

    /// A thread that cannot be created is uncounted; with no worker at all
    /// the submission panics (nothing would ever run its request), and the
    /// counts are left consistent.
    #[test]
    fn failed_spawn_with_no_worker_panics_and_uncounts() {
        let q = WorkQueue::<usize>::new(64, Duration::from_secs(10));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            q.push(0, || Err(std::io::Error::other("no threads left")));
        }));
        let msg = r.expect_err("a pool with no worker cannot run the request");
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("cannot start a worker"), "{msg}");
        let st = q.lock();
        assert_eq!((st.cur, st.starting, st.spawning), (0, 0, 0));
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

    fn no_spawn() -> std::io::Result<()> {
        panic!("the model starts its workers itself");
    }

    fn model(jobs: usize) {
        loom::model(move || {
            let q = Arc::new(WorkQueue::<usize>::new(2, Duration::from_secs(1)));
            {
                let mut st = q.lock();
                st.cur = 2;
                st.starting = 2; // as if reserved by `reserve_worker`
            }
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

    /// The workers of [`loom_pool_spawn_chain`]: the queue, what ran, and
    /// the threads started (to join).
    struct Spawning {
        q: WorkQueue<usize>,
        ran: Arc<Ran>,
        threads: Mutex<Vec<thread::JoinHandle<()>>>,
    }

    /// Request 0 blocks until request 1 has run: both need a worker at
    /// once, as two requests that wait for each other would.
    struct Blocking(Arc<Ran>);

    impl Worker<usize> for Blocking {
        fn run(&mut self, job: usize) {
            let mut n = self.0.n.lock().unwrap();
            if job == 0 {
                while *n == 0 {
                    n = self.0.cv.wait(n).unwrap();
                }
            }
            *n += 1;
            self.0.cv.notify_all();
        }

        fn spin(&mut self, queued: &AtomicUsize) {
            let _ = queued.load(Relaxed);
            thread::yield_now();
        }
    }

    /// The pool's `spawn_worker`: a thread that runs `work` with the
    /// worker `make` builds and can start the next worker itself.
    fn start_with<W: Worker<usize> + 'static>(
        m: &Arc<Spawning>,
        make: fn(Arc<Ran>) -> W,
    ) -> std::io::Result<()> {
        let m2 = m.clone();
        let h = thread::spawn(move || {
            let m3 = m2.clone();
            m2.q.work(&mut make(m2.ran.clone()), move || start_with(&m3, make));
        });
        m.threads.lock().unwrap().push(h);
        Ok(())
    }

    /// [`start_with`] with workers that wait for each other.
    fn start(m: &Arc<Spawning>) -> std::io::Result<()> {
        start_with(m, Blocking)
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

    /// The pool's drop while a worker is being started: two requests on an
    /// empty pool, then at once a stop, which takes what has not started;
    /// the rest run. Whatever the interleaving, every request either ran
    /// or came back from `stop`, and once `wait_spawned` returned the
    /// caller knows, and joins, every thread. Checked by mutation: a
    /// `wait_spawned` that does not wait leaves a thread unjoined (a
    /// worker that took request 0 was still creating the next one).
    #[test]
    fn loom_pool_stop_while_spawning() {
        loom::model(|| {
            let m = submit_two(start_counting);
            let cancelled = m.q.stop().len();
            join_all(&m);
            assert!(
                m.threads.lock().unwrap().is_empty(),
                "a thread was not joined"
            );
            let st = m.q.lock();
            assert_eq!((st.cur, st.starting, st.spawning), (0, 0, 0));
            assert_eq!(*m.ran.n.lock().unwrap() + cancelled, 2);
        });
    }

    /// A pool of at most two workers, none started, given two requests
    /// whose submissions start workers with `start`.
    fn submit_two(start: fn(&Arc<Spawning>) -> std::io::Result<()>) -> Arc<Spawning> {
        let m = Arc::new(Spawning {
            q: WorkQueue::new(2, Duration::from_secs(1)),
            ran: Arc::new(Ran::default()),
            threads: Mutex::new(Vec::new()),
        });
        for j in 0..2 {
            m.q.push(j, || start(&m));
        }
        m
    }

    /// Waits for every worker creation to settle, then joins each thread.
    fn join_all(m: &Spawning) {
        m.q.wait_spawned();
        let threads = std::mem::take(&mut *m.threads.lock().unwrap());
        for t in threads {
            t.join().unwrap();
        }
    }

    /// [`start_with`] with workers that only count.
    fn start_counting(m: &Arc<Spawning>) -> std::io::Result<()> {
        start_with(m, Counting)
    }

    /// Workers started on demand, outside the lock: two requests on an
    /// empty pool (`max` 2), the first of which waits for the second. The
    /// first submission starts a worker; the second sees it `starting` and
    /// starts none; the new worker takes a request and starts or wakes the
    /// next one if one is left, so both run at once. Then a
    /// stop waits for every creation to settle and joins each thread.
    /// Checked by mutation: a worker that does not chain when it takes a
    /// request deadlocks.
    #[test]
    fn loom_pool_spawn_chain() {
        loom::model(|| {
            let m = submit_two(start);
            let mut n = m.ran.n.lock().unwrap();
            while *n < 2 {
                n = m.ran.cv.wait(n).unwrap();
            }
            drop(n);
            assert!(m.q.stop().is_empty());
            join_all(&m);
            let st = m.q.lock();
            assert_eq!((st.cur, st.starting, st.spawning), (0, 0, 0));
        });
    }
}
