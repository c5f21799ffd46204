//! The thread pool: QEMU's `util/thread-pool.c`.
//!
//! Every [`AioContext`] has one pool, created on first use
//! ([`AioContext::thread_pool`], [`ThreadPool::for_context`]). Work runs on the
//! pool's worker threads; its completion always runs back in the submitting
//! context, from a bottom half on the context's home thread:
//!
//! * [`ThreadPool::submit_aio`]`(f, done)`: `done(result)` runs in the
//!   context; the returned [`PoolRequest`] cancels a request that has not
//!   started;
//! * [`ThreadPool::submit_co`]`(f)`: from a coroutine, yields until `f` has
//!   run and returns its value.
//!
//! Workers are started on demand while none is idle, up to `max` (64 by
//! default, as QEMU); a worker idle for the idle timeout (10 s by default)
//! exits while more than `min` (0) run. A worker that runs out of work first
//! spins briefly for the next request (one at a time), and a submission wakes
//! at most one sleeping worker, which wakes the next while requests wait
//! (`thread_pool/queue.rs`). A panic in `f` reaches the submitter as
//! [`PoolError::Panicked`]; the worker survives it.
//!
//! # Completion path
//!
//! A worker stores the result in the request, pushes the request onto the
//! pool's `done` list and, if the list was empty, schedules one bottom half in
//! the context that completes the whole list. The pool holds the context
//! weakly, so that a pending completion never keeps the context alive.
//!
//! # Teardown
//!
//! The pool goes with its context (QEMU's `thread_pool_free` from
//! `aio_context_finalize`), and its drop is deterministic:
//!
//! * requests that have not started are cancelled: their work function is
//!   dropped unrun and their completion is dropped uncalled (QEMU asserts
//!   that no request is left at that point; with no context there is
//!   nowhere to run a completion, not even one with `-ECANCELED`);
//! * running requests finish; their results and completions are dropped
//!   on the worker thread, uncalled;
//! * every worker thread is joined (its thread-locals destroyed) before
//!   the drop returns. So the drop blocks while a running request blocks:
//!   a work function must not wait for its context's thread once the
//!   context may be dropped, as in QEMU. That includes a thread's exit,
//!   which drops its current context: a request that never returns keeps
//!   the thread from exiting.
//!
//! One exception: the process's exit. Once `main` returns, `exit` destroys
//! the main thread's thread-locals and with them its current context;
//! that drop cancels the queued requests but neither waits for the running
//! ones nor joins (the workers end with the process, as QEMU's do: it never
//! frees its main context's pool). A thread other than the main one that
//! calls `std::process::exit` with its current context's requests
//! running still waits for them.
//!
//! A context may be dropped on one of its own pool's workers (the last
//! reference held by a work function, or by the worker that was scheduling
//! a completion when the home thread let go). That worker is not joined
//! (it cannot join itself): the drop joins the other workers and returns,
//! and the worker exits once its request returns, its thread detached.
//!
//! # Examples
//!
//! ```
//! use corio::{AioContext, Coroutine};
//! use std::{cell::Cell, rc::Rc};
//!
//! let ctx = AioContext::new().unwrap();
//! let pool = ctx.thread_pool();
//! let got = Rc::new(Cell::new(0));
//! let g = got.clone();
//! let co = Coroutine::new(move || {
//!     let v = pool.submit_co(|| 6 * 7).unwrap(); // runs on a worker thread
//!     g.set(v);
//! });
//! co.enter();
//! while !co.is_terminated() {
//!     ctx.poll(true); // the completion resumes the coroutine here
//! }
//! assert_eq!(got.get(), 42);
//! ```

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod done;
mod queue;

use self::done::DoneList;
use self::queue::{Queued, Wake, WorkQueue, Worker};
use crate::aio::{AioContext, WeakAioContext};
use crate::coroutine::{yield_now, CoHandle, Coroutine};
use crate::trace;

/// QEMU's default upper bound on worker threads.
pub const DEFAULT_MAX_THREADS: usize = 64;
/// QEMU's idle timeout: an idle worker above `min` exits after it.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

const ECANCELED: i32 = 125;
const EIO: i32 = 5;

/// Why a request produced no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// Cancelled before a worker started it (QEMU's `-ECANCELED`).
    #[error("thread pool request cancelled before it started")]
    Canceled,
    /// The work function panicked; the message is the panic's.
    #[error("thread pool work function panicked: {0}")]
    Panicked(String),
}

impl PoolError {
    /// The negative errno QEMU's completion would receive.
    pub fn errno(&self) -> i32 {
        match self {
            PoolError::Canceled => -ECANCELED,
            PoolError::Panicked(_) => -EIO,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The text of a panic payload (`&str` or `String`), for errors that carry a
/// worker's panic to the submitter (here and in `io::task`).
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

// ----- requests -----

/// Request states (QEMU's `ThreadPoolElementState`). Each moves only
/// forward: QUEUED -> RUNNING -> DONE -> COMPLETED, or QUEUED -> DONE on cancel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Queued,
    Running,
    /// The result is stored; the completion has not run yet.
    Done,
    /// The completion ran (or the coroutine was woken).
    Completed,
}

/// What the completion does.
enum OnDone<D> {
    Callback(D),
    Wake(CoHandle),
}

struct ReqInner<F, R, D> {
    state: State,
    func: Option<F>,
    result: Option<Result<R, PoolError>>,
    done: Option<OnDone<D>>,
}

struct Request<F, R, D> {
    /// All fields together; held only briefly, never while `f` or the
    /// completion runs.
    inner: Mutex<ReqInner<F, R, D>>,
}

/// The type-erased request the pool queues.
trait Job: Send + Sync {
    /// Worker thread: runs `f` unless cancelled; true if the result is ready.
    fn run(&self) -> bool;
    /// Home thread, from the completion bottom half.
    fn complete(&self, pool: *const ());
    /// Home thread: a queued request becomes DONE with `Canceled`.
    fn cancel(&self) -> bool;
    /// The pool is dropped: a queued request is cancelled and its
    /// completion dropped uncalled.
    fn discard(&self);
    fn state(&self) -> State;
    fn as_ptr(&self) -> *const ();
}

impl<F, R, D> Job for Request<F, R, D>
where
    F: FnOnce() -> R + Send,
    R: Send,
    D: FnOnce(Result<R, PoolError>) + Send,
{
    fn run(&self) -> bool {
        let f = {
            let mut i = lock(&self.inner);
            if i.state != State::Queued {
                return false; // cancelled while queued
            }
            i.state = State::Running;
            i.func.take()
        };
        let Some(f) = f else { return false };
        let r =
            catch_unwind(AssertUnwindSafe(f)).map_err(|p| PoolError::Panicked(panic_message(&*p)));
        let mut i = lock(&self.inner);
        i.result = Some(r);
        i.state = State::Done;
        true
    }

    fn complete(&self, pool: *const ()) {
        let mut i = lock(&self.inner);
        if i.state != State::Done {
            return;
        }
        i.state = State::Completed;
        let ret = match &i.result {
            Some(Err(e)) => e.errno(),
            _ => 0,
        };
        trace::thread_pool_complete_aio(pool, self.as_ptr(), std::ptr::null(), ret);
        match i.done.take() {
            Some(OnDone::Callback(d)) => {
                let r = i.result.take().expect("a DONE request has a result");
                drop(i);
                d(r);
            }
            Some(OnDone::Wake(h)) => {
                drop(i);
                h.wake(); // the coroutine takes the result itself
            }
            None => {}
        }
    }

    fn cancel(&self) -> bool {
        let f = {
            let mut i = lock(&self.inner);
            if i.state != State::Queued {
                return false;
            }
            i.state = State::Done;
            i.result = Some(Err(PoolError::Canceled));
            i.func.take()
        };
        drop(f); // outside the lock: the closure's destructors may do anything
        true
    }

    fn discard(&self) {
        self.cancel();
        let done = lock(&self.inner).done.take();
        drop(done); // outside the lock, as in `cancel`
    }

    fn state(&self) -> State {
        lock(&self.inner).state
    }

    fn as_ptr(&self) -> *const () {
        self as *const Self as *const ()
    }
}

// ----- the pool -----

struct PoolShared {
    ctx: WeakAioContext,
    /// Requests and workers (the wake-up protocol is in
    /// `thread_pool/queue.rs`).
    queue: WorkQueue<Arc<dyn Job>>,
    /// Finished requests for the context (the hand-off protocol is in
    /// `thread_pool/done.rs`).
    done: DoneList<Arc<dyn Job>>,
    /// The worker threads started, for the drop to join (those that exited
    /// on their idle timeout are pruned when the next one starts).
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl PoolShared {
    /// Creates a worker thread (counted by the queue already) and keeps its
    /// handle for the drop to join.
    fn spawn_worker(self: &Arc<Self>) -> std::io::Result<()> {
        let shared = self.clone();
        let handle = std::thread::Builder::new()
            .name("worker".to_owned())
            .spawn(move || worker(&shared))?;
        let mut threads = lock(&self.threads);
        // Workers that exited on their idle timeout need no join.
        threads.retain(|t| !t.is_finished());
        threads.push(handle);
        Ok(())
    }

    /// The pool's teardown (see the module docs): cancels what has not
    /// started, lets the running requests finish and joins every worker
    /// but the calling thread.
    ///
    /// # Thread context
    /// Any thread (the thread that drops the context).
    fn shut_down(&self) {
        for job in self.queue.stop() {
            trace::thread_pool_cancel_aio(job.as_ptr(), std::ptr::null());
            job.discard();
        }
        if process_exiting() {
            // The workers die with the process; waiting for a request
            // that may never return would only keep it from exiting.
            return;
        }
        self.queue.wait_spawned();
        let threads = std::mem::take(&mut *lock(&self.threads));
        let me = std::thread::current().id();
        for t in threads {
            if t.thread().id() != me {
                // A worker's panic was its own (requests catch theirs).
                let _ = t.join();
            }
        }
    }
}

/// Whether the process is exiting: the calling thread is the process's
/// main thread and its thread-locals are being destroyed, which `exit`
/// does after `main` returns (glibc runs the calling thread's
/// thread-local destructors there).
fn process_exiting() -> bool {
    crate::aio::thread_exiting() && rustix::thread::gettid() == rustix::process::getpid()
}

/// A worker thread's part: runs requests, spins for the next one.
struct PoolWorker<'a>(&'a Arc<PoolShared>);

impl Worker<Arc<dyn Job>> for PoolWorker<'_> {
    fn run(&mut self, job: Arc<dyn Job>) {
        if job.run() {
            push_done(self.0, job);
        }
    }

    /// Watches `queued` for up to [`SPIN`], yielding the CPU between
    /// rounds.
    fn spin(&mut self, queued: &Queued) {
        let end = Instant::now() + SPIN;
        loop {
            for _ in 0..64 {
                if queued.load(Relaxed) != 0 {
                    return;
                }
                std::hint::spin_loop();
            }
            if Instant::now() >= end {
                return;
            }
            std::thread::yield_now();
        }
    }
}

/// How long a worker that ran out of work spins for the next request
/// before it sleeps (one worker at a time): a submitter that sends
/// requests one after another then never waits for a thread wake-up.
const SPIN: Duration = Duration::from_micros(50);

/// A context's thread pool (QEMU's `ThreadPoolAio`). Cloning gives another
/// handle to the same pool.
///
/// # Thread context
/// Submitting and cancelling: the context's home thread (completions run
/// there). Changing the parameters: any thread.
#[derive(Clone)]
pub struct ThreadPool {
    shared: Arc<PoolShared>,
}

/// Owned by the context (its pool slot): tears the pool down when the
/// context is dropped (see the module docs, "Teardown").
pub(crate) struct PoolOwner(ThreadPool);

impl Drop for PoolOwner {
    fn drop(&mut self) {
        self.0.shared.shut_down();
    }
}

impl AioContext {
    /// This context's thread pool, created on first use (QEMU's
    /// `aio_get_thread_pool`).
    ///
    /// # Thread context
    /// Any thread.
    pub fn thread_pool(&self) -> ThreadPool {
        ThreadPool::for_context(self)
    }
}

impl ThreadPool {
    /// The pool of `ctx`, created on first use.
    ///
    /// # Thread context
    /// Any thread.
    pub fn for_context(ctx: &AioContext) -> ThreadPool {
        ctx.thread_pool_slot()
            .get_or_init(|| {
                PoolOwner(ThreadPool {
                    shared: Arc::new(PoolShared {
                        ctx: ctx.downgrade(),
                        queue: WorkQueue::new(DEFAULT_MAX_THREADS, DEFAULT_IDLE_TIMEOUT),
                        done: DoneList::new(),
                        threads: Mutex::new(Vec::new()),
                    }),
                })
            })
            .0
            .clone()
    }

    /// The pool of the calling thread's current context.
    pub fn current() -> ThreadPool {
        ThreadPool::for_context(&AioContext::current())
    }

    fn ptr(&self) -> *const () {
        Arc::as_ptr(&self.shared).cast()
    }

    /// Sets the bounds on worker threads (QEMU's
    /// `aio_context_set_thread_pool_params`), starting workers up to `min`.
    ///
    /// # Panics
    /// If `max` is 0 or `min > max`.
    pub fn set_params(&self, min: usize, max: usize) {
        assert!(
            max > 0 && min <= max,
            "thread pool: need 0 < max and min <= max"
        );
        let mut st = self.shared.queue.lock();
        st.min = min;
        st.max = max;
        drop(st);
        // Threads are created unlocked, one at a time.
        loop {
            match self.shared.queue.grow_to_min() {
                Wake::Nothing => break,
                w => self.shared.queue.act(w, || self.shared.spawn_worker()),
            }
        }
        // Workers above a lowered `max` or `min` re-check when they wake.
        self.shared.queue.notify_all();
    }

    /// Sets how long an idle worker above `min` waits before it exits.
    pub fn set_idle_timeout(&self, timeout: Duration) {
        self.shared.queue.lock().idle_timeout = timeout;
        self.shared.queue.notify_all();
    }

    /// Worker threads alive now. A snapshot, for tests and statistics.
    pub fn threads(&self) -> usize {
        self.shared.queue.lock().cur
    }

    /// Requests queued and not yet started. A snapshot.
    pub fn queued(&self) -> usize {
        self.shared.queue.lock().queue.len()
    }

    /// Runs `f` on a worker thread, then `done(result)` in this pool's
    /// context (QEMU's `thread_pool_submit_aio`). `done` runs from a bottom
    /// half of the context, never before the caller returns to the loop;
    /// `result` is `f`'s value, [`PoolError::Canceled`] if the request was
    /// cancelled before it started, or [`PoolError::Panicked`].
    ///
    /// # Thread context
    /// The context's home thread.
    ///
    /// # Panics
    /// On another thread, or if the context has been dropped.
    pub fn submit_aio<R, F, D>(&self, f: F, done: D) -> PoolRequest
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
        D: FnOnce(Result<R, PoolError>) + Send + 'static,
    {
        let job: Arc<dyn Job> = Arc::new(Request {
            inner: Mutex::new(ReqInner {
                state: State::Queued,
                func: Some(f),
                result: None,
                done: Some(OnDone::Callback(done)),
            }),
        });
        self.enqueue(job.clone());
        PoolRequest {
            job,
            pool: self.clone(),
        }
    }

    /// Runs `f` on a worker thread while the calling coroutine sleeps, and
    /// returns its value once the coroutine resumes in its context (QEMU's
    /// `thread_pool_submit_co`).
    ///
    /// # Errors
    /// [`PoolError::Panicked`] if `f` panicked.
    ///
    /// # Thread context
    /// Coroutine only, on the context's home thread.
    ///
    /// # Panics
    /// Outside a coroutine or on another thread.
    pub fn submit_co<R, F>(&self, f: F) -> Result<R, PoolError>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let me = crate::coroutine::current_for("ThreadPool::submit_co");
        let req = Arc::new(Request::<F, R, fn(Result<R, PoolError>)> {
            inner: Mutex::new(ReqInner {
                state: State::Queued,
                func: Some(f),
                result: None,
                done: Some(OnDone::Wake(me.handle())),
            }),
        });
        drop(me);
        self.enqueue(req.clone());
        // A stray wakeup must not return early: sleep until completed. One
        // lock per wakeup: the state and the result together.
        loop {
            yield_now();
            let mut i = lock(&req.inner);
            if i.state == State::Completed {
                return i.result.take().expect("a completed request has a result");
            }
        }
    }

    fn enqueue(&self, job: Arc<dyn Job>) {
        let ctx = self
            .shared
            .ctx
            .upgrade()
            .expect("thread pool: its AioContext was dropped");
        ctx.assert_home("submit to its thread pool");
        trace::thread_pool_submit_aio(self.ptr(), job.as_ptr(), std::ptr::null());
        self.shared.queue.push(job, || self.shared.spawn_worker());
    }
}

fn worker(pool: &Arc<PoolShared>) {
    pool.queue
        .work(&mut PoolWorker(pool), || pool.spawn_worker());
}

/// Worker thread: hands a finished request to the context.
fn push_done(pool: &Arc<PoolShared>, job: Arc<dyn Job>) {
    if let Some(ctx) = pool.done.push(job, || pool.ctx.upgrade()) {
        schedule_completion(&ctx, pool);
    }
}

/// Schedules the bottom half that completes the `done` list. It holds the
/// pool only while pending; the pool holds the context weakly, so there is
/// no cycle to keep a dropped context alive.
fn schedule_completion(ctx: &AioContext, pool: &Arc<PoolShared>) {
    let pool = pool.clone();
    ctx.bh_schedule_oneshot(move || {
        let list = pool.done.take();
        let ptr = Arc::as_ptr(&pool).cast();
        let mut rest = Rest {
            pool: pool.clone(),
            jobs: list.into_iter(),
        };
        for job in rest.jobs.by_ref() {
            job.complete(ptr);
        }
    });
}

/// The completions not yet run: if one panics, the rest go back to the
/// front of the `done` list and the completion BH is scheduled again, so no
/// request is left done-but-never-completed.
struct Rest {
    pool: Arc<PoolShared>,
    jobs: std::vec::IntoIter<Arc<dyn Job>>,
}

impl Drop for Rest {
    fn drop(&mut self) {
        let rest: Vec<_> = self.jobs.by_ref().collect();
        if rest.is_empty() {
            return;
        }
        if let Some(ctx) = self
            .pool
            .done
            .requeue_front(rest, || self.pool.ctx.upgrade())
        {
            schedule_completion(&ctx, &self.pool);
        }
    }
}

impl fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.queue.lock();
        f.debug_struct("ThreadPool")
            .field("threads", &st.cur)
            .field("idle", &st.idle)
            .field("queued", &st.queue.len())
            .field("min", &st.min)
            .field("max", &st.max)
            .finish()
    }
}

/// A submitted request (QEMU's `BlockAIOCB` from `thread_pool_submit_aio`):
/// cancels it if it has not started.
pub struct PoolRequest {
    job: Arc<dyn Job>,
    pool: ThreadPool,
}

impl PoolRequest {
    /// Asks for cancellation and returns at once (QEMU's
    /// `bdrv_aio_cancel_async`). A request still queued will not run: its
    /// completion gets [`PoolError::Canceled`] from the context's next
    /// poll. A running or finished request completes normally. Returns
    /// whether the request was cancelled.
    ///
    /// # Thread context
    /// The context's home thread.
    pub fn cancel_async(&self) -> bool {
        trace::thread_pool_cancel_aio(self.job.as_ptr(), std::ptr::null());
        if !self.job.cancel() {
            return false;
        }
        self.pool.shared.queue.remove(|j| Arc::ptr_eq(j, &self.job));
        push_done(&self.pool.shared, self.job.clone());
        true
    }

    /// Cancels like [`cancel_async`](Self::cancel_async), then polls the
    /// context until the request's completion has run (QEMU's
    /// `bdrv_aio_cancel`): a running request is waited for.
    ///
    /// # Thread context
    /// The context's home thread (it polls the context).
    ///
    /// # Panics
    /// If the context has been dropped.
    pub fn cancel(&self) -> bool {
        let cancelled = self.cancel_async();
        let ctx = self
            .pool
            .shared
            .ctx
            .upgrade()
            .expect("thread pool: its AioContext was dropped");
        while !self.is_completed() {
            ctx.poll(true);
        }
        cancelled
    }

    /// Whether the completion has run.
    pub fn is_completed(&self) -> bool {
        self.job.state() == State::Completed
    }
}

impl fmt::Debug for PoolRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolRequest")
            .field("state", &self.job.state())
            .finish()
    }
}

/// Submits to the calling thread's context's pool (QEMU's
/// `thread_pool_submit_aio`). See [`ThreadPool::submit_aio`].
pub fn submit_aio<R, F, D>(f: F, done: D) -> PoolRequest
where
    R: Send + 'static,
    F: FnOnce() -> R + Send + 'static,
    D: FnOnce(Result<R, PoolError>) + Send + 'static,
{
    ThreadPool::current().submit_aio(f, done)
}

/// Runs `f` on the pool of the calling coroutine's context and returns its
/// value (QEMU's `thread_pool_submit_co`). See [`ThreadPool::submit_co`].
///
/// # Errors
/// [`PoolError::Panicked`] if `f` panicked.
///
/// # Panics
/// Outside a coroutine.
pub fn submit_co<R, F>(f: F) -> Result<R, PoolError>
where
    R: Send + 'static,
    F: FnOnce() -> R + Send + 'static,
{
    let ctx = Coroutine::current()
        .expect("thread_pool::submit_co outside a coroutine")
        .context();
    ThreadPool::for_context(&ctx).submit_co(f)
}
