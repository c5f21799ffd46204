//! IOThreads: a thread that owns an AioContext and polls it (QEMU's
//! iothread.c and tests/unit/iothread.c).

use std::io;
use std::sync::atomic::{
    AtomicBool,
    Ordering::{Acquire, Release},
};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::aio::AioContext;

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
    thread: Option<JoinHandle<()>>,
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
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let running = Arc::new(AtomicBool::new(true));
        let run = running.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let ctx = match AioContext::new() {
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
                    ctx.poll(true);
                }
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

    /// Stops the loop and joins the thread (QEMU's `iothread_join`).
    ///
    /// # Panics
    /// If a callback on the thread panicked: the panic resumes here.
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
