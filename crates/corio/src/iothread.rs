//! IOThreads: a thread that owns an AioContext and polls it (QEMU's
//! iothread.c and tests/unit/iothread.c).

use std::any::Any;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{
    AtomicBool,
    Ordering::{Acquire, Release},
};
use std::sync::Arc;

use crate::aio::{AioContext, FdMon};
use crate::spawn::JoinHandle;

/// QEMU's default `poll-max-ns` for IOThreads.
pub const DEFAULT_POLL_MAX_NS: i64 = 32_768;

/// A thread running `poll(true)` on its own context until joined. Its
/// context polls adaptively for up to [`DEFAULT_POLL_MAX_NS`] before it
/// sleeps, as QEMU's IOThreads do; change it with
/// `t.context().run_in(|| AioContext::current().set_poll_params(..))`.
///
/// # Examples
///
/// ```
/// use corio::{AioContext, IoThread};
///
/// let t = IoThread::new().unwrap();
/// let on_it = t.context().run_in(|| std::thread::current().name().map(str::to_owned));
/// assert_eq!(on_it.as_deref(), Some("iothread"));
/// assert!(!t.context().in_home_thread());
/// t.join();
/// ```
#[derive(Debug)]
pub struct IoThread {
    ctx: AioContext,
    running: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl IoThread {
    /// Starts a thread named `iothread` and returns once its context exists
    /// (QEMU's test helper `iothread_new`).
    ///
    /// # Errors
    /// If the thread or its context cannot be created.
    pub fn new() -> io::Result<IoThread> {
        IoThread::with_name("iothread")
    }

    /// Like [`new`](Self::new), with a thread name.
    ///
    /// # Errors
    /// If the thread or its context cannot be created.
    pub fn with_name(name: &str) -> io::Result<IoThread> {
        IoThread::with_fd_monitor(name, FdMon::from_env())
    }

    /// Like [`with_name`](Self::with_name), with the context's fd monitor
    /// chosen here instead of by `CORIO_FDMON`
    /// ([`AioContext::with_fd_monitor`], which says what happens when the
    /// kernel refuses io_uring).
    ///
    /// # Errors
    /// If the thread or its context cannot be created.
    ///
    /// # Examples
    ///
    /// ```
    /// use corio::{FdMon, IoThread};
    ///
    /// let t = IoThread::with_fd_monitor("ring", FdMon::Epoll).unwrap();
    /// assert_eq!(t.context().run_in(|| corio::AioContext::current().fd_monitor()), FdMon::Epoll);
    /// t.join();
    /// ```
    pub fn with_fd_monitor(name: &str, fdmon: FdMon) -> io::Result<IoThread> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let running = Arc::new(AtomicBool::new(true));
        let run = running.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let ctx = match AioContext::with_fd_monitor(fdmon) {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                // QEMU's IOThread default: poll-max-ns 32768, grow and
                // shrink 0 (double; drop to nothing).
                ctx.set_poll_params(DEFAULT_POLL_MAX_NS, 0, 0);
                let _ = tx.send(Ok(ctx.clone()));
                // Acquire pairs with the Release store in `stop`.
                while run.load(Acquire) {
                    // A callback's panic is reported and the loop goes on:
                    // the other clients of this thread keep being served.
                    if let Err(p) = catch_unwind(AssertUnwindSafe(|| ctx.poll(true))) {
                        report_panic(&ctx, &*p);
                    }
                }
                ctx.shutdown();
            })?;
        let ctx = rx
            .recv()
            .map_err(|_| io::Error::other("iothread exited during start-up"))??;
        Ok(IoThread {
            ctx,
            running,
            thread: Some(thread),
        })
    }

    /// The thread's context (QEMU's `iothread_get_aio_context`).
    pub fn context(&self) -> &AioContext {
        &self.ctx
    }

    /// Runs `f` in a new coroutine on this thread ([`AioContext::spawn`]).
    ///
    /// # Thread context
    /// Any thread.
    pub fn spawn<T, F>(&self, f: F) -> JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.ctx.spawn(f)
    }

    /// Stops the loop, shuts the context down and joins the thread (QEMU's
    /// `iothread_join`). In order: the loop ends after its current poll;
    /// [`AioContext::shutdown`] cancels the coroutines spawned here that
    /// have not finished (they unwind, running their destructors, so the
    /// channels they hold close), runs what that scheduled, and removes the
    /// context's fd handlers and timers; then the thread exits and its
    /// thread-locals (its current context, pooled coroutines and stacks)
    /// are dropped.
    ///
    /// A panic in a bottom half, fd handler or timer on the thread does not
    /// end it: it is reported (see [`set_panic_hook`]) and the loop goes on.
    /// Panics inside [spawned](Self::spawn) coroutines go to their handles.
    ///
    /// # Panics
    /// If the thread itself died (a panic escaped the shutdown).
    pub fn join(mut self) {
        if let Err(p) = self.stop() {
            std::panic::resume_unwind(p);
        }
    }

    fn stop(&mut self) -> std::thread::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        // Release pairs with the Acquire load in the loop; the oneshot BH
        // wakes the blocking poll so that the loop sees the store.
        self.running.store(false, Release);
        self.ctx.bh_schedule_oneshot(|| {});
        thread.join()
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        let r = self.stop();
        if r.is_err() && !std::thread::panicking() {
            panic!("iothread panicked");
        }
    }
}

/// Whether the calling thread is the home of `ctx` (QEMU's `qemu_in_iothread`
/// asks the same of the current thread's context).
pub fn in_iothread(ctx: &AioContext) -> bool {
    ctx.in_home_thread()
}

/// What runs when a callback on an IoThread panics: the context and the
/// panic payload. The default writes one line to stderr (after the standard
/// panic hook's own message).
pub type PanicHook = Box<dyn Fn(&AioContext, &(dyn Any + Send)) + Send + Sync>;

static PANIC_HOOK: std::sync::RwLock<Option<PanicHook>> = std::sync::RwLock::new(None);

/// Replaces what an IoThread does with a panic that escaped one of its
/// callbacks (a bottom half, an fd handler, a timer, or a coroutine that
/// was not spawned) before its loop goes on. `None` restores the default.
///
/// # Thread context
/// Any thread; the hook runs on the IoThread.
pub fn set_panic_hook(hook: Option<PanicHook>) {
    *PANIC_HOOK.write().unwrap_or_else(|e| e.into_inner()) = hook;
}

fn report_panic(ctx: &AioContext, p: &(dyn Any + Send)) {
    crate::trace::iothread_callback_panic(ctx.as_ptr());
    let hook = PANIC_HOOK.read().unwrap_or_else(|e| e.into_inner());
    match &*hook {
        Some(h) => h(ctx, p),
        None => {
            let msg = p
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| p.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("<non-string payload>");
            let name = std::thread::current()
                .name()
                .unwrap_or("iothread")
                .to_owned();
            eprintln!("corio: a callback on {name} panicked ({msg}); its loop goes on");
        }
    }
}
