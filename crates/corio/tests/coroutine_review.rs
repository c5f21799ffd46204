//! Regression tests for defects a review of the coroutine core found: a
//! never-entered closure dropped off its home thread, and a queued double
//! wake that resumed a coroutine twice.

mod helpers;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corio::{coroutine, AioContext, Coroutine};
use helpers::{join_iothread, join_within, recv_within, JoinExt, LockExt};

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

/// Records the name of the thread that drops it.
struct DroppedOn(Arc<Mutex<Option<String>>>);
impl Drop for DroppedOn {
    fn drop(&mut self) {
        *self.0.locked() = std::thread::current().name().map(str::to_owned);
    }
}

/// A coroutine created and dropped on thread A, never entered, whose last
/// handle drops on thread B: its closure (not `Send`) is dropped on A.
#[test]
fn never_entered_closure_dropped_on_home_thread() {
    let dropped = Arc::new(Mutex::new(None));
    let (h_tx, h_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let d = dropped.clone();
    let a = std::thread::Builder::new()
        .name("home-a".into())
        .spawn(move || {
            let ctx = AioContext::new().unwrap();
            let guard = DroppedOn(d.clone());
            let not_send = Rc::new(());
            let co = Coroutine::new(move || {
                let _keep = (&guard, &not_send);
            });
            h_tx.send(co.handle()).unwrap();
            drop(co);
            recv_within(&go_rx, "go_rx"); // B has dropped the last handle
            let deadline = Instant::now() + Duration::from_secs(10);
            while d.locked().is_none() {
                assert!(Instant::now() < deadline, "the closure never came home");
                ctx.poll(false);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .unwrap();
    let h = recv_within(&h_rx, "h_rx");
    std::thread::Builder::new()
        .name("b".into())
        .spawn(move || drop(h))
        .unwrap()
        .joined();
    go_tx.send(()).unwrap();
    join_within(a, "a");
    assert_eq!(dropped.locked().as_deref(), Some("home-a"));
}

/// Waking a suspended coroutine twice from another coroutine on the same
/// thread panics (QEMU's "already scheduled") instead of resuming it twice;
/// it is still resumed once.
#[test]
fn double_wake_same_thread_panics() {
    let ctx = AioContext::new().unwrap();
    let resumed = Rc::new(Cell::new(0));
    let r = resumed.clone();
    let b = Coroutine::new(move || {
        coroutine::yield_now();
        r.set(r.get() + 1);
    });
    b.enter();
    let b2 = b.clone();
    let a = Coroutine::new(move || {
        b2.wake();
        b2.wake();
    });
    let err = catch_unwind(AssertUnwindSafe(|| a.enter())).expect_err("second wake must panic");
    assert!(
        panic_text(&*err).contains("Co-routine was already scheduled in 'aio_co_wake'"),
        "{}",
        panic_text(&*err)
    );
    // The first wake is not lost: it runs from the context.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.is_terminated() {
        assert!(Instant::now() < deadline, "the queued wake was lost");
        ctx.poll(false);
    }
    assert_eq!(resumed.get(), 1);
}

/// The same from another thread: a cross-thread wake of a coroutine whose
/// local wake is still queued panics in the waker's thread.
#[test]
fn double_wake_other_thread_panics() {
    let _ctx = AioContext::new().unwrap();
    let resumed = Rc::new(Cell::new(0));
    let r = resumed.clone();
    let b = Coroutine::new(move || {
        coroutine::yield_now();
        r.set(r.get() + 1);
    });
    b.enter();
    let b2 = b.clone();
    let remote = Rc::new(Cell::new(String::new()));
    let rem = remote.clone();
    let a = Coroutine::new(move || {
        b2.wake(); // queued behind `a`
        let h = b2.handle();
        let e = std::thread::spawn(move || h.wake())
            .join_result()
            .expect_err("the remote wake must panic");
        rem.set(panic_text(&*e));
    });
    a.enter(); // b runs when a ends
    assert!(remote
        .take()
        .contains("Co-routine was already scheduled in 'aio_co_wake'"),);
    assert!(b.is_terminated());
    assert_eq!(resumed.get(), 1);
}

/// A bottom half run by a poll nested on a coroutine's stack cannot migrate
/// that coroutine: the poll's frames would go on running on another thread.
#[test]
fn migration_refused_inside_nested_poll() {
    let ctx = AioContext::new().unwrap();
    let other = corio::IoThread::new().unwrap();
    let target = other.context().clone();
    let inner = ctx.clone();
    let co = Coroutine::new(move || {
        let target = target.clone();
        inner.bh_schedule_oneshot(move || {
            // SAFETY: the coroutine holds only Send values; the call is
            // refused anyway.
            unsafe { corio::co_reschedule_self(&target) };
        });
        inner.poll(false);
    });
    let err = catch_unwind(AssertUnwindSafe(|| co.enter())).expect_err("must be refused");
    assert!(
        panic_text(&*err).contains("inside AioContext::poll"),
        "{}",
        panic_text(&*err)
    );
    join_iothread(other, "other");
}

/// A destructor that waits while its coroutine is being dropped cannot be
/// resumed: the process aborts (a panic during unwinding), but first says
/// which coroutine and why, instead of "CoMutex::lock outside a coroutine".
/// Runs in a child process, since it aborts.
#[test]
fn waiting_destructor_of_dropped_coroutine_says_why() {
    if std::env::var_os("CORIO_REVIEW_CHILD").is_some() {
        let _ctx = AioContext::new().unwrap();
        let m = Rc::new(corio::sync::CoMutex::new(()));
        let m1 = m.clone();
        // Holds the mutex and stays suspended.
        let holder = Coroutine::new(move || {
            let _g = m1.lock();
            coroutine::yield_now();
        });
        holder.enter();
        struct LockOnDrop(Rc<corio::sync::CoMutex<()>>);
        impl Drop for LockOnDrop {
            fn drop(&mut self) {
                drop(self.0.lock());
            }
        }
        let m2 = m.clone();
        let victim = Coroutine::new(move || {
            let _d = LockOnDrop(m2);
            coroutine::yield_now();
        });
        victim.enter();
        drop(victim); // last handle: unwound here, its destructor waits
        unreachable!("the process aborts above");
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "waiting_destructor_of_dropped_coroutine_says_why",
            "--nocapture",
        ])
        .env("CORIO_REVIEW_CHILD", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("CoMutex::lock: coroutine") && err.contains("is being dropped"),
        "{err}"
    );
}

/// The same for a cancelled spawned coroutine: the message says so.
#[test]
fn waiting_destructor_of_cancelled_coroutine_says_why() {
    if std::env::var_os("CORIO_REVIEW_CHILD").is_some() {
        let ctx = AioContext::new().unwrap();
        let m = Arc::new(corio::sync::CoMutex::new(()));
        let m1 = m.clone();
        let holder = ctx.spawn(move || {
            let _g = m1.lock();
            let q = corio::sync::CoQueue::new();
            q.wait();
        });
        struct LockOnDrop(Arc<corio::sync::CoMutex<()>>);
        impl Drop for LockOnDrop {
            fn drop(&mut self) {
                drop(self.0.lock());
            }
        }
        let m2 = m.clone();
        let victim = ctx.spawn(move || {
            let _d = LockOnDrop(m2);
            corio::sync::CoQueue::new().wait();
        });
        for _ in 0..10 {
            ctx.poll(false);
        }
        victim.abort();
        drop(holder);
        unreachable!("the process aborts above");
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "waiting_destructor_of_cancelled_coroutine_says_why",
            "--nocapture",
        ])
        .env("CORIO_REVIEW_CHILD", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("CoMutex::lock: coroutine") && err.contains("is being cancelled"),
        "{err}"
    );
}
