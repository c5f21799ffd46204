//! The main loop's context: QEMU's `qemu_get_aio_context()` and GLib's
//! default main context, which QIOTask completes on when given no context.
//!
//! corio has no hidden main-loop thread. The process-wide main context is
//! bound to the first thread that asks for it ([`main_context`]), or set
//! explicitly with [`set_main_context`]; that thread must poll it (for
//! example `loop { main_context().poll(true); }`) for completions aimed at
//! the main loop to run. Ask for it first from the thread that will run your
//! main loop.
//!
//! # Examples
//!
//! ```
//! use corio::main_loop::main_context;
//!
//! let main = main_context(); // binds to this thread
//! assert!(main.in_home_thread());
//! assert!(main_context().ptr_eq(&main));
//! ```

use std::sync::OnceLock;

use crate::aio::AioContext;

static MAIN: OnceLock<AioContext> = OnceLock::new();

/// The main loop's context. The first call binds it to the calling thread's
/// current context (created if the thread has none); later calls from any
/// thread return the same context.
///
/// # Thread context
/// Any thread (the first call decides the main-loop thread).
pub fn main_context() -> AioContext {
    MAIN.get_or_init(AioContext::current).clone()
}

/// Makes `ctx` the main loop's context, unless one is bound already; then
/// that one is returned as the error.
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

/// The main loop's context, if one is bound.
pub fn try_main_context() -> Option<AioContext> {
    MAIN.get().cloned()
}
