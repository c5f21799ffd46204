//! A corosensei coroutine together with the stack it runs on.
//!
//! corosensei's coroutine owns its stack: giving a finished coroutine's stack
//! to a new one means `into_stack` (moving the whole coroutine out and the
//! stack back in) and `with_stack` (moving the stack in again). A pooled
//! coroutine object does that on every `Coroutine::new`. Here the stack is
//! owned next to the coroutine, which runs on a [`StackView`] of it, so a
//! new coroutine starts on the same stack in place ([`Running::renew`]).

use std::ops::{Deref, DerefMut};

use corosensei::stack::{DefaultStack, Stack, StackPointer};
use corosensei::Yielder;

/// The corosensei coroutine of a [`Running`].
pub(super) type RawCo = corosensei::Coroutine<(), (), (), StackView>;

/// The bounds of the stack that the [`Running`] holding this view owns.
#[derive(Clone, Copy)]
pub(super) struct StackView {
    base: StackPointer,
    limit: StackPointer,
}

impl StackView {
    fn of(stack: &DefaultStack) -> StackView {
        StackView {
            base: stack.base(),
            limit: stack.limit(),
        }
    }
}

// SAFETY: `Stack`'s contract is that the memory between `limit` and `base`
// is a usable stack (with its guard page below `limit`), aligned as
// `STACK_ALIGNMENT` requires, for as long as the coroutine that uses it
// exists. A view's bounds are copied from a `DefaultStack`, which satisfies
// the same contract for as long as it is not dropped; a view is only made
// (`Running::new`, `Running::renew`) for the coroutine stored in the same
// `Running` as that `DefaultStack`, and `Running` never lets the stack go
// first: its `co` field is declared before `stack`, so it drops first, and
// `into_stack` drops the coroutine before it returns the stack.
unsafe impl Stack for StackView {
    #[inline]
    fn base(&self) -> StackPointer {
        self.base
    }

    #[inline]
    fn limit(&self) -> StackPointer {
        self.limit
    }
}

/// A corosensei coroutine and the stack it runs on. Dereferences to the
/// coroutine.
pub(super) struct Running {
    /// Runs on `view`. Declared first: dropped first.
    co: RawCo,
    /// `stack`'s bounds, kept for `renew` and the size check.
    view: StackView,
    stack: DefaultStack,
}

impl Running {
    /// A coroutine that will run `body` on `stack`.
    #[inline(always)]
    pub(super) fn new<F>(stack: DefaultStack, body: F) -> Running
    where
        F: FnOnce(&Yielder<(), ()>, ()) + 'static,
    {
        let view = StackView::of(&stack);
        Running {
            co: RawCo::with_stack(view, body),
            view,
            stack,
        }
    }

    /// Replaces a finished coroutine with a new one running `body` on the
    /// same stack.
    #[inline(always)]
    pub(super) fn renew<F>(&mut self, body: F)
    where
        F: FnOnce(&Yielder<(), ()>, ()) + 'static,
    {
        debug_assert!(
            self.co.done(),
            "only a finished coroutine's stack is reused"
        );
        // The new coroutine's first frame is written at the top of the
        // stack, where nothing of the finished one is alive any more.
        let done = std::mem::replace(&mut self.co, RawCo::with_stack(self.view, body));
        if cfg!(feature = "sanitizer") {
            // Its drop clears the sanitizer's poisoning of the stack.
            drop(done);
        } else {
            // Dropping a finished corosensei coroutine does nothing else
            // (there is nothing to unwind, and its stack is a view): a
            // check spared.
            std::mem::forget(done);
        }
    }

    /// The size of the stack, in bytes.
    #[inline(always)]
    pub(super) fn stack_len(&self) -> usize {
        self.view.base.get() - self.view.limit.get()
    }

    /// Drops the coroutine (a finished one: nothing runs), then gives its
    /// stack back.
    pub(super) fn into_stack(self) -> DefaultStack {
        debug_assert!(self.co.done(), "a stack is taken from a finished coroutine");
        let Running { co, stack, .. } = self;
        drop(co);
        stack
    }
}

impl Deref for Running {
    type Target = RawCo;

    #[inline(always)]
    fn deref(&self) -> &RawCo {
        &self.co
    }
}

impl DerefMut for Running {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut RawCo {
        &mut self.co
    }
}
