//! A coroutine's home chosen late: a wakeup that a panic cut off is
//! rescheduled on the thread's context, even when no context existed yet
//! when it was rescheduled (it then waits for the thread's first one).

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use corio::{coroutine, AioContext, Coroutine};

/// A wakes up from a wakeup list that B's panic interrupted; nothing had
/// given A a context before (nextest runs this in a process of its own, so
/// no context exists at all until `AioContext::current` below).
#[test]
fn interrupted_wakeup_runs_in_the_threads_first_context() {
    let resumed = Rc::new(Cell::new(false));
    let r = resumed.clone();
    let a = Coroutine::new(move || {
        coroutine::yield_now();
        r.set(true);
    });
    a.enter();
    let a2 = a.clone();
    let b = Coroutine::new(move || {
        a2.wake(); // queued behind B, on B's wakeup list
        panic!("B fails before it yields");
    });
    let err =
        catch_unwind(AssertUnwindSafe(|| b.enter())).expect_err("B's panic reaches its enterer");
    assert_eq!(
        err.downcast_ref::<&str>(),
        Some(&"B fails before it yields")
    );
    assert!(!resumed.get(), "A must not run inside the unwinding");

    let ctx = AioContext::current();
    for _ in 0..10 {
        if resumed.get() {
            break;
        }
        ctx.poll(false);
    }
    assert!(
        resumed.get(),
        "A was lost: its rescheduled wakeup never reached the thread's context"
    );
    assert!(a.is_terminated());
    assert!(a.context().ptr_eq(&ctx), "A's home is the thread's context");
}
