//! Each thread's current context (QEMU's `qemu_get_current_aio_context`).
//!
//! A thread-local, behind accessors marked `#[inline(never)]` so that its
//! address is never cached across a coroutine switch (the rule of
//! `coroutine/tls.rs`, which holds the coroutine layer's own thread-locals).

use std::cell::RefCell;

use super::AioContext;

thread_local! {
    static CURRENT_CTX: RefCell<Option<AioContext>> = const { RefCell::new(None) };
}

/// This thread's current AioContext, if it has one.
#[inline(never)]
pub(crate) fn current_ctx() -> Option<AioContext> {
    CURRENT_CTX.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// Whether this thread's current-context slot is destroyed or being
/// destroyed (the thread is exiting).
#[inline(never)]
pub(super) fn current_ctx_destroyed() -> bool {
    CURRENT_CTX.try_with(|_| ()).is_err()
}

/// Makes `ctx` this thread's current context if it has none yet; returns
/// whether it did.
#[inline(never)]
pub(super) fn set_current_ctx_if_none(ctx: &AioContext) -> bool {
    CURRENT_CTX
        .try_with(|c| {
            let mut c = c.borrow_mut();
            let none = c.is_none();
            if none {
                *c = Some(ctx.clone());
            }
            none
        })
        .unwrap_or(false)
}

/// Replaces this thread's current context; returns the old one.
#[inline(never)]
pub(super) fn replace_current_ctx(ctx: Option<AioContext>) -> Option<AioContext> {
    CURRENT_CTX
        .try_with(|c| std::mem::replace(&mut *c.borrow_mut(), ctx))
        .ok()
        .flatten()
}
