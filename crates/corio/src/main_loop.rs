//! The main loop's context: QEMU's `qemu_get_aio_context()` and GLib's
//! default main context, which QIOTask (and the TLS and WebSocket
//! handshakes) complete on when given no context.
//!
//! corio has no hidden main-loop thread: the thread that runs your main loop
//! says so with [`init`], and must poll the context for completions aimed at
//! the main loop to run (for example `loop { main_context().poll(true); }`).
//!
//! The main loop is never bound implicitly from any other thread. Asking for
//! it ([`main_context`], or a `None` context in
//! [`Task::run_in_thread`](crate::io::task::Task::run_in_thread)) before
//! [`init`] binds it to the caller only if the caller is the process's main
//! thread, the one QEMU's main loop runs on; from any other thread, an
//! IoThread for instance, it panics and names [`init`]. (Binding to whoever
//! asks first made an IoThread the process-wide main loop when it was first
//! to start a task.)
//!
//! # Examples
//!
//! ```
//! use corio::main_loop;
//!
//! let main = main_loop::init(); // binds this thread's context
//! assert!(main.in_home_thread());
//! assert!(main_loop::main_context().ptr_eq(&main));
//! std::thread::spawn(move || {
//!     // Other threads get the same context; its completions run here.
//!     assert!(main_loop::main_context().ptr_eq(&main));
//! })
//! .join()
//! .unwrap();
//! ```

use std::sync::OnceLock;

use crate::aio::AioContext;

static MAIN: OnceLock<AioContext> = OnceLock::new();

/// Makes the calling thread's current context (created if the thread has
/// none) the main loop's, and returns it; if the main loop is bound already,
/// returns that context, which must then be this thread's.
///
/// # Thread context
/// The thread that will poll the main loop.
///
/// # Panics
/// If the main loop is already bound to another thread's context.
pub fn init() -> AioContext {
    let main = MAIN.get_or_init(AioContext::current).clone();
    assert!(
        main.in_home_thread(),
        "main_loop::init: the main loop is already bound to another thread's context"
    );
    main
}

/// The main loop's context. Before [`init`], the process's main thread binds
/// it to its own current context (QEMU's main loop runs there); any other
/// thread panics.
///
/// # Thread context
/// Any thread, once [`init`] ran.
///
/// # Panics
/// If no main loop is bound and the caller is not the process's main
/// thread: call [`init`] on the thread that runs the main loop first, or
/// give the function that asked an explicit context.
pub fn main_context() -> AioContext {
    if let Some(main) = MAIN.get() {
        return main.clone();
    }
    assert!(
        is_process_main_thread(),
        "main_loop::main_context: no main loop yet; call corio::main_loop::init() on \
         the thread that will poll it, or pass an explicit context (thread {:?})",
        std::thread::current().name().unwrap_or("<unnamed>")
    );
    init()
}

/// Whether the caller is the thread the process started on (Linux: its
/// thread id is the process id).
fn is_process_main_thread() -> bool {
    rustix::thread::gettid() == rustix::process::getpid()
}

/// Makes `ctx` the main loop's context, unless one is bound already; then
/// that one is returned as the error. Unlike [`init`] this may be called
/// from any thread: the thread that polls `ctx` runs the main loop.
///
/// # Errors
/// The context already bound.
pub fn set_main_context(ctx: &AioContext) -> Result<(), AioContext> {
    let mut set = false;
    let bound = MAIN.get_or_init(|| {
        set = true;
        ctx.clone()
    });
    if set || bound.ptr_eq(ctx) {
        Ok(())
    } else {
        Err(bound.clone())
    }
}

/// The main loop's context, if one is bound; never binds one.
pub fn try_main_context() -> Option<AioContext> {
    MAIN.get().cloned()
}
