//! QIOTask: QEMU's `io/task.c`.
//!
//! A [`Task`] carries an asynchronous operation's source object, its result or
//! error, and the completion to run when it ends. Either the caller finishes
//! it itself ([`Task::complete`]), or [`Task::run_in_thread`] runs a blocking
//! worker on a thread of its own (as QEMU, one thread per task at a time: a
//! worker that blocks in `connect` or a TLS handshake never delays another
//! task's; threads that finished a task are reused, see `task/workers.rs`)
//! and then runs the completion on the given context's thread, the main
//! loop's ([`main_context`]) when none is given.
//!
//! Data the completion needs is captured by its closure, which is dropped
//! exactly once: after it ran, or with the task if it never runs (QEMU's
//! `destroy` notify).
//!
//! # Examples
//!
//! ```
//! use corio::io::task::Task;
//! use corio::AioContext;
//! use std::sync::mpsc;
//!
//! let ctx = AioContext::new().unwrap();
//! let (tx, rx) = mpsc::channel();
//! let task = Task::new("example.com:80", move |t| {
//!     let addr = t.take_result::<u16>().unwrap(); // Err only for a wrong type
//!     tx.send((t.source().to_string(), addr, t.propagate_error().is_ok())).unwrap();
//! });
//! task.run_in_thread(|t| t.set_result(80u16), Some(&ctx)); // worker thread
//! let got = loop {
//!     ctx.poll(true); // the completion runs here
//!     if let Ok(got) = rx.try_recv() {
//!         break got;
//!     }
//! };
//! assert_eq!(got, ("example.com:80".to_string(), Some(80), true));
//! ```

use std::any::Any;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::aio::AioContext;
use crate::main_loop::main_context;
use crate::trace;

mod workers;

/// A task's error: any error that may cross threads.
pub type TaskError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Asking a task for its result as a type other than the one stored: a bug
/// in the caller, reported rather than answered with "no result".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("QIOTask result is a {stored}, not the {expected} asked for")]
pub struct WrongResultType {
    /// The type asked for.
    pub expected: &'static str,
    /// The type stored by [`Task::set_result`].
    pub stored: &'static str,
}

/// The error a task gets when its worker panicked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("QIOTask worker panicked: {0}")]
pub struct WorkerPanicked(pub String);

type Completion<S> = Box<dyn FnOnce(&mut Task<S>) + Send>;

struct Inner<S: Send + 'static> {
    source: S,
    /// Taken (and dropped after its call) by `complete`.
    completion: Option<Completion<S>>,
    error: Option<TaskError>,
    /// The result and its type's name (for [`WrongResultType`]).
    result: Option<(Box<dyn Any + Send>, &'static str)>,
}

/// An asynchronous operation on a source object (QEMU's `QIOTask`).
///
/// # Thread context
/// A task is `Send` (when `S` is): built on one thread, worked on in a
/// worker thread, completed on a context's thread.
pub struct Task<S: Send + 'static> {
    /// Boxed so that the task keeps one address (for traces) as it moves.
    inner: Box<Inner<S>>,
}

impl<S: Send + 'static> Task<S> {
    /// Creates a task on `source`, to finish with `completion` (QEMU's
    /// `qio_task_new`). The completion gets the task: its source, error and
    /// result.
    pub fn new(source: S, completion: impl FnOnce(&mut Task<S>) + Send + 'static) -> Task<S> {
        let completion: Completion<S> = Box::new(completion);
        let task = Task {
            inner: Box::new(Inner {
                source,
                completion: None,
                error: None,
                result: None,
            }),
        };
        trace::qio_task_new(
            task.ptr(),
            &task.inner.source as *const S as *const (),
            &*completion as *const _ as *const (),
            std::ptr::null(),
        );
        let mut task = task;
        task.inner.completion = Some(completion);
        task
    }

    fn ptr(&self) -> *const () {
        &*self.inner as *const Inner<S> as *const ()
    }

    /// The source object (QEMU's `qio_task_get_source`).
    pub fn source(&self) -> &S {
        &self.inner.source
    }

    /// Mutable access to the source object.
    pub fn source_mut(&mut self) -> &mut S {
        &mut self.inner.source
    }

    /// Records a failure (QEMU's `qio_task_set_error`). As with QEMU's
    /// `error_propagate`, the first error is kept and later ones dropped.
    pub fn set_error(&mut self, err: impl Into<TaskError>) {
        if self.inner.error.is_none() {
            self.inner.error = Some(err.into());
        }
    }

    /// Whether an error is recorded.
    pub fn has_error(&self) -> bool {
        self.inner.error.is_some()
    }

    /// Takes the recorded error (QEMU's `qio_task_propagate_error`).
    ///
    /// # Errors
    /// The error set with [`set_error`](Self::set_error), if any.
    pub fn propagate_error(&mut self) -> Result<(), TaskError> {
        match self.inner.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Stores the operation's result (QEMU's `qio_task_set_result_pointer`),
    /// replacing any earlier one.
    pub fn set_result<T: Any + Send>(&mut self, result: T) {
        self.inner.result = Some((Box::new(result), std::any::type_name::<T>()));
    }

    /// The stored result (QEMU's `qio_task_get_result_pointer`): `Ok(None)`
    /// if none was set.
    ///
    /// # Errors
    /// [`WrongResultType`] if the result stored is not a `T`.
    ///
    /// ```
    /// use corio::io::Task;
    /// let mut t = Task::new((), |_| {});
    /// assert_eq!(t.result::<u32>(), Ok(None));
    /// t.set_result(7u32);
    /// assert_eq!(t.result::<u32>(), Ok(Some(&7)));
    /// assert!(t.result::<u64>().is_err()); // not silently "no result"
    /// ```
    pub fn result<T: Any>(&self) -> Result<Option<&T>, WrongResultType> {
        match &self.inner.result {
            None => Ok(None),
            Some((r, stored)) => r
                .downcast_ref()
                .map(Some)
                .ok_or_else(|| wrong_type::<T>(stored)),
        }
    }

    /// Takes the stored result: `Ok(None)` if none was set.
    ///
    /// # Errors
    /// [`WrongResultType`] if the result stored is not a `T`; it then stays
    /// stored.
    pub fn take_result<T: Any>(&mut self) -> Result<Option<T>, WrongResultType> {
        let Some((r, stored)) = self.inner.result.take() else {
            return Ok(None);
        };
        match r.downcast::<T>() {
            Ok(t) => Ok(Some(*t)),
            Err(r) => {
                self.inner.result = Some((r, stored));
                Err(wrong_type::<T>(stored))
            }
        }
    }

    /// Runs the completion now, on the calling thread, then frees the task
    /// (QEMU's `qio_task_complete`).
    pub fn complete(mut self) {
        trace::qio_task_complete(self.ptr());
        if let Some(f) = self.inner.completion.take() {
            f(&mut self);
        }
    }

    /// Runs `worker` on a thread of its own (a new one, or one idle after
    /// an earlier task's worker), then the completion on `ctx`'s home
    /// thread, or the main loop's when `ctx` is `None` (QEMU's
    /// `qio_task_run_in_thread`). A panic in the worker becomes the task's
    /// error ([`WorkerPanicked`]). If the context is dropped before the
    /// completion runs, the completion is dropped unrun.
    ///
    /// A reused thread starts the worker with corio's own thread-locals
    /// empty, as a new thread would (no current context, no cached
    /// coroutines or stacks from the earlier task); any other thread-local
    /// may still hold what an earlier worker left there, so a worker must
    /// not rely on finding those fresh.
    ///
    /// The returned handle may be dropped (the usual case) or used to
    /// [`wait_thread`](TaskThread::wait_thread). The completion runs only
    /// when that context is polled: with `None`, someone must poll the main
    /// loop ([`crate::main_loop`]).
    ///
    /// # Thread context
    /// Any thread.
    ///
    /// # Panics
    /// If no thread can be started; with `ctx` `None`, if no main loop is
    /// bound and the caller is not the process's main thread (see
    /// [`main_context`]).
    pub fn run_in_thread(
        self,
        worker: impl FnOnce(&mut Task<S>) + Send + 'static,
        ctx: Option<&AioContext>,
    ) -> TaskThread<S> {
        let ctx = ctx.cloned().unwrap_or_else(main_context);
        let task_ptr = self.ptr() as usize;
        trace::qio_task_thread_start(
            task_ptr as *const (),
            &worker as *const _ as *const (),
            std::ptr::null(),
        );
        let shared = Arc::new(ThreadShared {
            slot: Mutex::new(Slot::Running),
            ended: Condvar::new(),
            waiting: std::sync::atomic::AtomicBool::new(false),
            ctx: ctx.as_ptr() as usize,
        });
        let s = shared.clone();
        let weak = ctx.downgrade();
        drop(ctx); // the worker must not keep the context alive
        let mut task = self;
        workers::run(Box::new(move || {
            trace::qio_task_thread_run(task.ptr());
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| worker(&mut task))) {
                task.set_error(WorkerPanicked(crate::thread_pool::panic_message(&*p)));
            }
            trace::qio_task_thread_exit(task.ptr());
            let mut slot = s.lock();
            *slot = Slot::Finished(task);
            // Read under the lock that `wait_thread` sets it under: no
            // system call when nobody waits (the usual case).
            let waited = s.waiting.load(std::sync::atomic::Ordering::Relaxed);
            drop(slot);
            if waited {
                s.ended.notify_all();
            }
            if let Some(ctx) = weak.upgrade() {
                trace::qio_task_thread_source_attach(task_ptr as *const (), ctx.as_ptr());
                let s2 = s.clone();
                ctx.bh_schedule_oneshot(move || s2.complete_from_context());
            }
            // Otherwise the context is gone: the task stays in the slot
            // and is freed with the last handle, its completion unrun.
        }))
        .expect("QIOTask: cannot start a worker thread");
        TaskThread { shared }
    }
}

fn wrong_type<T>(stored: &'static str) -> WrongResultType {
    WrongResultType {
        expected: std::any::type_name::<T>(),
        stored,
    }
}

impl<S: Send + fmt::Debug + 'static> fmt::Debug for Task<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("source", &self.inner.source)
            .field("error", &self.inner.error)
            .field("has_result", &self.inner.result.is_some())
            .finish()
    }
}

enum Slot<S: Send + 'static> {
    /// The worker has the task.
    Running,
    /// The worker ended; the completion has not run.
    Finished(Task<S>),
    /// The completion ran (from the context or `wait_thread`).
    Taken,
}

struct ThreadShared<S: Send + 'static> {
    slot: Mutex<Slot<S>>,
    /// Signalled when the worker ends, if `waiting`.
    ended: Condvar,
    /// A `wait_thread` waits on `ended` (set under `slot`'s lock).
    waiting: std::sync::atomic::AtomicBool,
    /// The completion context's address, for traces only.
    ctx: usize,
}

impl<S: Send + 'static> ThreadShared<S> {
    fn lock(&self) -> MutexGuard<'_, Slot<S>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_finished(&self) -> Option<Task<S>> {
        let mut slot = self.lock();
        match std::mem::replace(&mut *slot, Slot::Taken) {
            Slot::Finished(t) => Some(t),
            other => {
                *slot = other;
                None
            }
        }
    }

    /// The context's bottom half (QEMU's idle source `qio_task_thread_result`).
    fn complete_from_context(&self) {
        if let Some(task) = self.take_finished() {
            trace::qio_task_thread_result(task.ptr());
            task.complete();
        }
    }
}

/// The thread of a task started by [`Task::run_in_thread`].
pub struct TaskThread<S: Send + 'static> {
    shared: Arc<ThreadShared<S>>,
}

impl<S: Send + 'static> TaskThread<S> {
    /// Waits for the worker to end, then runs the completion now on the
    /// calling thread instead of in the context (QEMU's
    /// `qio_task_wait_thread`). Does nothing more if the context already
    /// ran it.
    ///
    /// # Thread context
    /// Any thread; it blocks.
    pub fn wait_thread(self) {
        let mut slot = self.shared.lock();
        self.shared
            .waiting
            .store(true, std::sync::atomic::Ordering::Relaxed);
        while matches!(*slot, Slot::Running) {
            slot = self
                .shared
                .ended
                .wait(slot)
                .unwrap_or_else(|e| e.into_inner());
        }
        drop(slot);
        if let Some(task) = self.shared.take_finished() {
            trace::qio_task_thread_source_cancel(task.ptr(), self.shared.ctx as *const ());
            task.complete();
        }
    }

    /// Whether the worker has ended.
    pub fn is_finished(&self) -> bool {
        !matches!(*self.shared.lock(), Slot::Running)
    }
}

impl<S: Send + 'static> fmt::Debug for TaskThread<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskThread")
            .field("finished", &self.is_finished())
            .finish()
    }
}
