//! The context as the coroutine layer sees it: a coroutine's [`Home`] ("a
//! place to wake me") and the [`MoveTarget`] of `co_reschedule_self`; and
//! the coroutine methods that name an `AioContext`, which live here because
//! the coroutine layer sits below this one and does not know the type.

use std::any::Any;
use std::sync::Arc;

use super::{AioContext, Shared};
use crate::coroutine::{self, CoHandle, CoInner, Coroutine, Home, MoveTarget};

impl Home for Shared {
    fn push_scheduled(self: Arc<Self>, co: Arc<CoInner>) {
        AioContext { shared: self }.push_scheduled(co);
    }

    fn run_at_home(self: Arc<Self>, f: Box<dyn FnOnce() + Send>) {
        AioContext { shared: self }.bh_schedule_oneshot(f);
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

impl MoveTarget for AioContext {
    fn take_in(&self, co: Arc<CoInner>) {
        co.set_home(self.as_home(), self.home_token());
        self.push_scheduled(co);
    }
}

impl AioContext {
    /// This context as a coroutine's home.
    pub(crate) fn as_home(&self) -> Arc<dyn Home> {
        self.shared.clone()
    }

    /// The context behind a coroutine's home: every home is a context's
    /// `Shared`, since this module is the only implementer of [`Home`].
    fn from_home(home: Arc<dyn Home>) -> AioContext {
        match home.into_any().downcast::<Shared>() {
            Ok(shared) => AioContext { shared },
            Err(_) => unreachable!("a coroutine's home is always an AioContext"),
        }
    }

    /// Whether `home` is this context.
    pub(super) fn is_home_of(&self, home: &Arc<dyn Home>) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(home), Arc::as_ptr(&self.shared))
    }

    /// Gives this thread's coroutines that were rescheduled before any
    /// context existed (`coroutine::take_orphans`) to `self`, the thread's
    /// first context.
    pub(super) fn adopt_orphans(&self) {
        for co in coroutine::take_orphans() {
            co.home_or_insert_with(|| self.as_home()).push_scheduled(co);
        }
    }
}

/// The calling thread's current context as a home, created on first use:
/// what the coroutine layer calls to give a coroutine its home (installed by
/// `AioContext::new`).
pub(super) fn current_home() -> Arc<dyn Home> {
    AioContext::current().as_home()
}

/// The home context of `co`, chosen now if it has none: the caller's
/// current context (the caller must be on `co`'s home thread then).
pub(super) fn home_context(co: &CoInner) -> AioContext {
    AioContext::from_home(co.home_or_insert_with(current_home))
}

impl Coroutine {
    /// A `Send` handle for waking this coroutine from other threads. Gives the
    /// home thread an [`AioContext`] if it has none yet.
    pub fn handle(&self) -> CoHandle {
        self.inner().home_or_insert_with(current_home);
        CoHandle {
            inner: Arc::clone(self.inner()),
        }
    }

    /// The coroutine's home context (QEMU's `qemu_coroutine_get_aio_context`).
    pub fn context(&self) -> AioContext {
        home_context(self.inner())
    }

    /// Makes `ctx` the coroutine's home context. `ctx` must belong to the
    /// coroutine's home thread (checked): this changes where wakes go, not
    /// the thread.
    pub(crate) fn set_home_context(&self, ctx: &AioContext) {
        assert_eq!(ctx.home_token(), self.inner().home_token());
        self.inner().replace_home(ctx.as_home());
    }
}

impl CoHandle {
    /// The coroutine's home context.
    pub fn context(&self) -> AioContext {
        AioContext::from_home(
            self.inner
                .home()
                .expect("CoHandle always has a home context"),
        )
    }
}
