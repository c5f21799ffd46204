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

/// Review finding: a coroutine rescheduled before any context existed, on a
/// thread that exits without ever creating one, can never run again (its
/// home thread is gone). At that thread's exit it is dropped there, on its
/// home thread: unwound from its yield point, so its destructors run on the
/// right thread and nothing leaks. The drop is counted
/// (`coroutine::orphans_dropped`) and traced (`coroutine_orphan_dropped`).
#[test]
fn orphan_dropped_at_thread_exit_is_unwound_at_home_and_counted() {
    struct OnDrop(std::sync::mpsc::Sender<std::thread::ThreadId>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            let _ = self.0.send(std::thread::current().id());
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let before = coroutine::orphans_dropped();
    let home = std::thread::spawn(move || {
        let a = Coroutine::new(move || {
            let _guard = OnDrop(tx);
            coroutine::yield_now();
            unreachable!("an orphan never runs again");
        });
        a.enter();
        let a2 = a.clone();
        drop(a); // the wake list, then the orphan list, hold it from now on
        let b = Coroutine::new(move || {
            a2.wake();
            panic!("B fails before it yields");
        });
        assert!(catch_unwind(AssertUnwindSafe(|| b.enter())).is_err());
        std::thread::current().id()
        // The thread exits with no context ever created.
    });
    let home_id = home.join().expect("the home thread exits cleanly");
    let dropped_on = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the orphan's destructors ran");
    assert_eq!(dropped_on, home_id, "destructors run on the home thread");
    assert_eq!(coroutine::orphans_dropped() - before, 1);
}
