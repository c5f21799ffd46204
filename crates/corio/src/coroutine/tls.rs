//! The library's own thread-locals, behind accessors that cannot be cached
//! across a coroutine switch.
//!
//! LLVM may keep a thread-local's address in a register across a call
//! (llvm/llvm-project#98479). A coroutine that migrates to another thread
//! while suspended inside such a function would then touch the old thread's
//! variable. QEMU wraps its thread-locals in `QEMU_DEFINE_CO_TLS` for the same
//! reason. Our rule: every access goes through a function marked
//! `#[inline(never)]`, so the address is computed afresh in a frame that
//! never spans a switch. The switch functions themselves (`enter`,
//! `yield_now`) are not inlined either, and do no thread-local access after
//! the switch returns inside the coroutine.

use std::cell::{Cell, RefCell};
use std::ptr;

use super::CoInner;
use crate::aio::AioContext;

thread_local! {
    /// The running coroutine (null outside one). Its address doubles as the
    /// thread's token: unique among live threads.
    static CURRENT_CO: Cell<*const CoInner> = const { Cell::new(ptr::null()) };
    static CURRENT_CTX: RefCell<Option<AioContext>> = const { RefCell::new(None) };
}

/// The switch functions' access: the cell of the running coroutine.
///
/// Inlined on purpose, so only for frames that never span a switch: `enter`
/// (the resumer's frame: its thread cannot change while it runs) and
/// `yield_now` before it suspends. Everything else uses the functions below.
#[inline(always)]
pub(super) fn with_current_cell<R>(f: impl FnOnce(&Cell<*const CoInner>) -> R) -> R {
    CURRENT_CO.with(f)
}

/// The running coroutine on this thread, or null.
#[inline(never)]
pub(crate) fn current_co() -> *const CoInner {
    CURRENT_CO.with(Cell::get)
}

/// A number that identifies the calling thread among live threads: the
/// address of one of its thread-locals.
#[inline(never)]
pub(crate) fn thread_token() -> usize {
    CURRENT_CO.with(|c| c as *const Cell<*const CoInner> as usize)
}

/// This thread's current AioContext, if it has one.
#[inline(never)]
pub(crate) fn current_ctx() -> Option<AioContext> {
    CURRENT_CTX.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// Makes `ctx` this thread's current context if it has none yet.
#[inline(never)]
pub(crate) fn set_current_ctx_if_none(ctx: &AioContext) {
    let _ = CURRENT_CTX.try_with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(ctx.clone());
        }
    });
}

/// Replaces this thread's current context; returns the old one.
#[inline(never)]
pub(crate) fn replace_current_ctx(ctx: Option<AioContext>) -> Option<AioContext> {
    CURRENT_CTX
        .try_with(|c| std::mem::replace(&mut *c.borrow_mut(), ctx))
        .ok()
        .flatten()
}
