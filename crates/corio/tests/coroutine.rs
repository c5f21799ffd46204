//! QEMU's tests/unit/test-coroutine.c (the basic/* cases), ported case by
//! case; plus panic propagation and the misuse panics.

mod helpers;

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use corio::{coroutine, in_coroutine, yield_now, AioContext, Coroutine};
use helpers::{join_iothread, join_within, poll_blocking, JoinExt};

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// /basic/no-dangling-access: c2 was entered by c1; c1 terminates and is
/// dropped, its stack is handed to a new coroutine that scribbles 0xff
/// over it (QEMU overwrites c1's memory); entering c2 again must not go
/// back through c1 (the caller is not kept across a yield).
#[test]
fn basic_no_dangling_access() {
    let c2 = Coroutine::new(|| {
        yield_now();
        yield_now();
    });
    let c2b = c2.clone();
    let c1_stack = Rc::new(Cell::new(0usize));
    let at = c1_stack.clone();
    let c1 = Coroutine::new(move || {
        let here = 0u8;
        at.set(std::hint::black_box(&here) as *const u8 as usize);
        c2b.enter();
    });
    c1.enter();
    assert!(c1.is_terminated());
    assert!(!c2.entered());
    drop(c1); // its object and stack go back to this thread's pool
              // The pool hands c1's stack out again: fill it with 0xff.
    let scribbler_stack = Rc::new(Cell::new(0usize));
    let at = scribbler_stack.clone();
    let scribbler = Coroutine::new(move || {
        let junk = [0xffu8; 64 << 10];
        at.set(std::hint::black_box(&junk) as *const [u8] as *const u8 as usize);
        yield_now();
    });
    scribbler.enter();
    let distance = c1_stack.get().abs_diff(scribbler_stack.get());
    assert!(
        distance < 256 << 10,
        "the scribbler did not get c1's stack (locals {distance} bytes apart): c1's memory was not reused"
    );
    c2.enter(); // yields back here, not into the dead c1
    assert!(!c2.is_terminated());
    c2.enter();
    assert!(c2.is_terminated());
    scribbler.enter();
}

/// /basic/lifecycle: create + enter runs the body to completion, twice.
#[test]
fn basic_lifecycle() {
    for _ in 0..2 {
        let done = Rc::new(Cell::new(false));
        let d = done.clone();
        let co = Coroutine::new(move || d.set(true));
        co.enter();
        assert!(done.get());
        assert!(co.is_terminated());
    }
}

/// /basic/yield: a coroutine that yields 5 times needs 6 enters.
#[test]
fn basic_yield() {
    let co = Coroutine::new(|| {
        for _ in 0..5 {
            yield_now();
        }
    });
    let mut enters = 0;
    while !co.is_terminated() {
        assert!(enters < 6, "the coroutine did not end after 6 enters");
        co.enter();
        enters += 1;
    }
    assert_eq!(enters, 6);
}

/// /basic/nesting: 128 nested create + enter levels.
#[test]
fn basic_nesting() {
    #[derive(Default)]
    struct Counts {
        enter: Cell<u32>,
        ret: Cell<u32>,
    }
    fn nest(c: Rc<Counts>, max: u32) {
        c.enter.set(c.enter.get() + 1);
        if c.enter.get() < max {
            let c2 = c.clone();
            Coroutine::new(move || nest(c2, max)).enter();
        }
        c.ret.set(c.ret.get() + 1);
    }
    let c = Rc::new(Counts::default());
    let c2 = c.clone();
    Coroutine::new(move || nest(c2, 128)).enter();
    assert_eq!(c.enter.get(), 128);
    assert_eq!(c.ret.get(), 128);
}

/// /basic/self: `Coroutine::current()` inside is the created coroutine.
#[test]
fn basic_self() {
    let slot: Rc<RefCell<Option<Coroutine>>> = Rc::default();
    let s = slot.clone();
    let co = Coroutine::new(move || *s.borrow_mut() = Coroutine::current());
    co.enter();
    assert!(slot.borrow().as_ref().unwrap().ptr_eq(&co));
    assert!(Coroutine::current().is_none());
}

/// /basic/entered: false before the first enter and after a yield; true for
/// the running coroutine and its caller chain.
#[test]
fn basic_entered() {
    let outer_seen = Rc::new(Cell::new(false));
    let inner_seen = Rc::new(Cell::new(false));
    let holder: Rc<RefCell<Option<Coroutine>>> = Rc::default();
    let (o, i, h) = (outer_seen.clone(), inner_seen.clone(), holder.clone());
    let outer = Coroutine::new(move || {
        let me = Coroutine::current().unwrap();
        o.set(me.entered());
        let me2 = me.clone();
        let i2 = i.clone();
        let inner = Coroutine::new(move || {
            // Both the running coroutine and its caller are entered.
            i2.set(Coroutine::current().unwrap().entered() && me2.entered());
        });
        assert!(!inner.entered());
        inner.enter();
        assert!(!inner.entered());
        *h.borrow_mut() = Some(inner);
        yield_now();
    });
    assert!(!outer.entered());
    outer.enter();
    assert!(outer_seen.get());
    assert!(inner_seen.get());
    assert!(!outer.entered(), "not entered after a yield");
    outer.enter();
    assert!(holder.borrow().as_ref().unwrap().is_terminated());
}

/// /basic/in_coroutine.
#[test]
fn basic_in_coroutine() {
    assert!(!in_coroutine());
    let inside = Rc::new(Cell::new(false));
    let i = inside.clone();
    Coroutine::new(move || i.set(in_coroutine())).enter();
    assert!(inside.get());
    assert!(!in_coroutine());
}

/// /basic/order: exact interleaving of caller and coroutine.
#[test]
fn basic_order() {
    let log: Rc<RefCell<Vec<(u8, u8)>>> = Rc::default();
    let l = log.clone();
    let co = Coroutine::new(move || {
        l.borrow_mut().push((2, 1));
        yield_now();
        l.borrow_mut().push((2, 2));
    });
    log.borrow_mut().push((1, 1));
    co.enter();
    log.borrow_mut().push((1, 2));
    co.enter();
    log.borrow_mut().push((1, 3));
    assert_eq!(*log.borrow(), [(1, 1), (2, 1), (1, 2), (2, 2), (1, 3)]);
}

/// A panic inside a coroutine reaches the enter() that resumed it; the
/// coroutine is terminated and the pool keeps working.
#[test]
fn panic_reaches_enterer() {
    let co = Coroutine::new(|| {
        yield_now();
        panic!("boom in coroutine");
    });
    co.enter();
    let err = catch_unwind(AssertUnwindSafe(|| co.enter())).unwrap_err();
    assert_eq!(panic_message(err), "boom in coroutine");
    assert!(co.is_terminated());
    assert!(
        !in_coroutine(),
        "current coroutine restored after the panic"
    );
    // Nested: the panic crosses two coroutine boundaries.
    let outer = Coroutine::new(|| Coroutine::new(|| panic!("deep")).enter());
    let err = catch_unwind(AssertUnwindSafe(|| outer.enter())).unwrap_err();
    assert_eq!(panic_message(err), "deep");
    basic_lifecycle();
}

#[test]
fn reenter_running_coroutine_panics() {
    let slot: Rc<RefCell<Option<Coroutine>>> = Rc::default();
    let s = slot.clone();
    let co = Coroutine::new(move || {
        let me = s.borrow().clone().unwrap();
        me.enter();
    });
    *slot.borrow_mut() = Some(co.clone());
    let err = catch_unwind(AssertUnwindSafe(|| co.enter())).unwrap_err();
    assert_eq!(panic_message(err), "Co-routine re-entered recursively");
    slot.borrow_mut().take();
}

#[test]
fn enter_terminated_coroutine_panics() {
    let co = Coroutine::new(|| {});
    co.enter();
    let err = catch_unwind(AssertUnwindSafe(|| co.enter())).unwrap_err();
    assert_eq!(panic_message(err), "Co-routine entered after it terminated");
}

#[test]
fn yield_outside_coroutine_panics() {
    let err = catch_unwind(yield_now).unwrap_err();
    assert_eq!(panic_message(err), "Co-routine is yielding to no one");
}

/// Scheduling twice panics as in QEMU; entering a scheduled coroutine too.
/// The first schedule stays valid: the coroutine runs once from poll.
#[test]
fn double_schedule_panics() {
    let ctx = AioContext::new().unwrap();
    let runs = Rc::new(Cell::new(0));
    let r = runs.clone();
    let co = Coroutine::new(move || {
        yield_now();
        r.set(r.get() + 1);
    });
    co.enter();
    let h = co.handle();
    ctx.co_schedule(&h);
    let err = catch_unwind(AssertUnwindSafe(|| ctx.co_schedule(&h))).unwrap_err();
    assert_eq!(
        panic_message(err),
        "Co-routine was already scheduled in 'aio_co_schedule'"
    );
    let err = catch_unwind(AssertUnwindSafe(|| co.enter())).unwrap_err();
    assert_eq!(
        panic_message(err),
        "Co-routine was already scheduled in 'aio_co_schedule'"
    );
    let err = catch_unwind(AssertUnwindSafe(|| h.wake())).unwrap_err();
    assert!(panic_message(err).contains("already scheduled"));
    assert!(poll_blocking(&ctx));
    assert_eq!(runs.get(), 1);
    assert!(co.is_terminated());
    assert!(!ctx.poll(false));
}

/// Scheduling onto a context that is not the coroutine's home needs the
/// unsafe migrating form.
#[test]
fn co_schedule_to_foreign_context_panics() {
    let _home = AioContext::new().unwrap();
    let co = Coroutine::new(yield_now);
    co.enter();
    let other = corio::IoThread::new().unwrap();
    let err = catch_unwind(AssertUnwindSafe(|| {
        other.context().co_schedule(&co.handle())
    }))
    .unwrap_err();
    assert!(panic_message(err).contains("co_schedule_migrate"));
    join_iothread(other, "other");
    co.enter();
}

/// A `CoHandle` gives the coroutine back only on its home thread.
#[test]
fn handle_local_only_at_home() {
    let _ctx = AioContext::new().unwrap();
    let co = Coroutine::new(|| {});
    let h = co.handle();
    assert!(h.local().is_some());
    let h2 = h.clone();
    assert!(std::thread::spawn(move || h2.local().is_none()).joined());
    co.enter();
}

/// Dropping the last handle of a suspended coroutine on its home thread
/// unwinds its stack: its destructors run.
#[test]
fn dropping_suspended_coroutine_runs_destructors() {
    struct Flag(Arc<AtomicUsize>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicUsize::new(0));
    let f = Flag(dropped.clone());
    let co = Coroutine::new(move || {
        let _f = f;
        yield_now();
        unreachable!("never resumed");
    });
    co.enter();
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    drop(co);
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    // A coroutine that never started drops its closure.
    let f = Flag(dropped.clone());
    drop(Coroutine::new(move || drop(f)));
    assert_eq!(dropped.load(Ordering::SeqCst), 2);
}

/// Terminated coroutines give their stacks to the pool when their last
/// handle drops (the object and its stack are pooled together), and new ones
/// reuse them.
#[test]
fn stacks_are_pooled() {
    for _ in 0..4 {
        Coroutine::new(|| {}).enter();
    }
    let (local, _) = coroutine::pooled();
    assert!(local >= 1, "a terminated coroutine's stack is cached");
    let before = coroutine::pooled().0;
    let co = Coroutine::new(yield_now);
    assert_eq!(
        coroutine::pooled().0,
        before - 1,
        "create takes from the cache"
    );
    co.enter();
    co.enter();
    assert!(co.is_terminated());
    let keep = co.clone();
    drop(co);
    assert_eq!(
        coroutine::pooled().0,
        before - 1,
        "a handle still names the terminated coroutine: its object is not reused"
    );
    assert!(keep.is_terminated());
    drop(keep);
    assert_eq!(coroutine::pooled().0, before);
}

/// Keeping the handles of many finished coroutines does not keep as many
/// stacks mapped: beyond a small per-thread number, a terminating
/// coroutine gives its stack back at once (else 40000 kept handles would
/// need 80000 mappings, past vm.max_map_count's default 65530).
#[test]
fn kept_terminated_handles_do_not_hold_stacks() {
    fn mappings() -> usize {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .count()
    }
    let before = mappings();
    let kept: Vec<Coroutine> = (0..40_000)
        .map(|_| {
            let co = Coroutine::new(|| {});
            co.enter();
            co
        })
        .collect();
    assert!(kept.iter().all(Coroutine::is_terminated));
    let grown = mappings().saturating_sub(before);
    assert!(
        grown < 2_000,
        "{grown} new mappings for 40000 finished coroutines"
    );
    drop(kept);
    // New coroutines still run, and reuse what was given back.
    let co = Coroutine::new(|| {});
    co.enter();
    assert!(co.is_terminated());
}

/// A pooled object is reused: same address, fresh state (not entered, not
/// terminated, not scheduled, a new home context), and the old handles are
/// all gone before that can happen.
#[test]
fn pooled_object_is_reused_fresh() {
    let ctx = AioContext::new().unwrap();
    let co = Coroutine::new(|| {});
    let _ = co.handle(); // gives it a home context
    let addr = co.as_ptr();
    co.enter();
    drop(co);
    let ran = Rc::new(Cell::new(0));
    let r = ran.clone();
    let co2 = Coroutine::new(move || {
        r.set(r.get() + 1);
        yield_now();
        r.set(r.get() + 1);
    });
    assert_eq!(co2.as_ptr(), addr, "the object came from the pool");
    assert!(!co2.entered() && !co2.is_terminated());
    co2.enter();
    assert_eq!(ran.get(), 1);
    let h = co2.handle();
    assert!(h.context() == ctx);
    // Scheduling works on the reused object.
    ctx.co_schedule(&h);
    assert!(poll_blocking(&ctx));
    assert_eq!(ran.get(), 2);
    assert!(co2.is_terminated());
}

/// A `CoHandle` that outlives its coroutine and is dropped on another thread
/// frees the object there (it is not that thread's to pool); the home
/// thread's pool keeps working, and a handle dropped last at home pools it.
#[test]
fn pooled_object_after_handle_outlived_coroutine_on_another_thread() {
    let _ctx = AioContext::new().unwrap();
    for _ in 0..16 {
        let co = Coroutine::new(|| {});
        co.enter();
        let h = co.handle();
        drop(co);
        std::thread::spawn(move || {
            assert!(h.local().is_none());
            drop(h);
            // This thread's pool did not take the foreign object.
            Coroutine::new(|| {}).enter();
        })
        .joined();
    }
    // The last reference is a handle dropped at home: pooled.
    let co = Coroutine::new(|| {});
    let addr = co.as_ptr();
    co.enter();
    let h = co.handle();
    drop(co);
    let before = coroutine::pooled().0;
    drop(h);
    assert_eq!(coroutine::pooled().0, before + 1);
    assert_eq!(Coroutine::new(|| {}).as_ptr(), addr);
    // Many handles alive on other threads while coroutines come and go here.
    let handles: Vec<_> = (0..64)
        .map(|_| {
            let co = Coroutine::new(yield_now);
            co.enter();
            co.enter();
            co.handle()
        })
        .collect();
    let t = std::thread::spawn(move || drop(handles));
    for _ in 0..256 {
        let co = Coroutine::new(yield_now);
        co.enter();
        co.enter();
        assert!(co.is_terminated());
    }
    join_within(t, "t");
}

/// The per-thread object pool is bounded, and a thread's pool is released
/// when the thread exits (its stacks go to the shared pool, or are unmapped).
#[test]
fn object_pool_bounded_and_freed_at_thread_exit() {
    std::thread::spawn(|| {
        let base = coroutine::pooled().0;
        let many: Vec<_> = (0..1000)
            .map(|_| {
                let co = Coroutine::new(|| {});
                co.enter();
                co
            })
            .collect();
        drop(many);
        let (local, _) = coroutine::pooled();
        // At most one batch of objects and two batches of free stacks.
        assert!(local <= base + 3 * 64, "local pool unbounded: {local}");
        assert!(local >= 1);
    })
    .joined();
    // The exiting thread's pool moved to the shared pool within its bound.
    let (_, shared) = coroutine::pooled();
    assert!(shared <= coroutine::pool_max(), "{shared}");
}

/// A coroutine that panics is terminated; its pooled object is reused by a
/// healthy coroutine.
#[test]
fn pooled_object_after_panic() {
    let co = Coroutine::new(|| panic!("boom"));
    let addr = co.as_ptr();
    assert!(catch_unwind(AssertUnwindSafe(|| co.enter())).is_err());
    assert!(co.is_terminated());
    assert!(!co.entered());
    assert!(!in_coroutine());
    drop(co);
    let ok = Rc::new(Cell::new(false));
    let o = ok.clone();
    let co = Coroutine::new(move || o.set(true));
    assert_eq!(co.as_ptr(), addr);
    co.enter();
    assert!(ok.get() && co.is_terminated());
}

/// Wakeups made from inside a coroutine run after it yields, in order.
#[test]
fn wakeups_are_queued_in_order() {
    let log: Rc<RefCell<Vec<&str>>> = Rc::default();
    let (la, lb) = (log.clone(), log.clone());
    let a = Coroutine::new(move || {
        la.borrow_mut().push("a");
    });
    let b = Coroutine::new(move || {
        lb.borrow_mut().push("b");
    });
    let (a2, b2, l) = (a.clone(), b.clone(), log.clone());
    let waker = Coroutine::new(move || {
        a2.wake();
        b2.wake();
        l.borrow_mut().push("waker yields");
        yield_now();
    });
    waker.enter();
    assert_eq!(*log.borrow(), ["waker yields", "a", "b"]);
    assert!(a.is_terminated() && b.is_terminated());
    waker.enter();
}

/// A coroutine that wakes another and then panics: the wakeup is not lost;
/// it runs from the context's next poll.
#[test]
fn wakeup_survives_panic_of_waker() {
    let ctx = AioContext::new().unwrap();
    let resumed = Rc::new(Cell::new(false));
    let r = resumed.clone();
    let sleeper = Coroutine::new(move || {
        yield_now();
        r.set(true);
    });
    sleeper.enter();
    let s = sleeper.clone();
    let waker = Coroutine::new(move || {
        s.wake(); // queued behind this coroutine
        panic!("waker dies");
    });
    assert!(catch_unwind(AssertUnwindSafe(|| waker.enter())).is_err());
    assert!(!resumed.get());
    // The wake-list claim became a co_schedule one: scheduling it again
    // names that scheduler.
    let h = sleeper.handle();
    let err = catch_unwind(AssertUnwindSafe(|| ctx.co_schedule(&h))).expect_err("scheduled twice");
    assert!(
        panic_message(err).contains("Co-routine was already scheduled in 'aio_co_schedule'"),
        "the rescheduled wakeup holds a co_schedule claim"
    );
    assert!(poll_blocking(&ctx));
    assert!(resumed.get());
    assert!(sleeper.is_terminated());
}

/// Review finding: dropping a coroutine that was never entered drops its
/// closure without running anything as that coroutine (a destructor that
/// asks whether it runs in a coroutine is told no).
#[test]
fn drop_never_entered_coroutine_runs_nothing_inside() {
    struct D(Rc<Cell<Option<bool>>>);
    impl Drop for D {
        fn drop(&mut self) {
            self.0.set(Some(in_coroutine()));
        }
    }
    let seen = Rc::new(Cell::new(None));
    let d = D(seen.clone());
    drop(Coroutine::new(move || drop(d)));
    assert_eq!(seen.get(), Some(false));
}

/// Review finding: a destructor running while a suspended coroutine is
/// unwound by its drop cannot resurrect it through `Coroutine::current()`.
#[test]
fn dying_coroutine_is_not_resurrected() {
    struct D(Rc<Cell<Option<bool>>>);
    impl Drop for D {
        fn drop(&mut self) {
            self.0.set(Some(Coroutine::current().is_some()));
        }
    }
    let seen = Rc::new(Cell::new(None));
    let d = D(seen.clone());
    let co = Coroutine::new(move || {
        let _d = d;
        yield_now();
    });
    co.enter();
    drop(co);
    assert_eq!(seen.get(), Some(false));
    assert!(!in_coroutine(), "the caller is restored");
}

/// Review finding: a coroutine that holds a lock and is dropped while
/// suspended hands the lock over during unwinding; the waiter is not lost.
#[test]
fn wakeup_queued_while_unwinding_is_not_lost() {
    let ctx = AioContext::new().unwrap();
    let woken = Rc::new(Cell::new(false));
    let sleeper = {
        let w = woken.clone();
        Coroutine::new(move || {
            yield_now();
            w.set(true);
        })
    };
    sleeper.enter();
    struct WakeOnDrop(Coroutine);
    impl Drop for WakeOnDrop {
        fn drop(&mut self) {
            self.0.wake();
        }
    }
    let guard = WakeOnDrop(sleeper.clone());
    let holder = Coroutine::new(move || {
        let _g = guard;
        yield_now();
    });
    holder.enter();
    drop(holder); // unwinds: the wake is queued on the dying coroutine
    assert!(!woken.get());
    assert!(poll_blocking(&ctx));
    assert!(woken.get());
}

/// Review finding: thread tokens are never reused, so a handle whose home
/// thread has exited is never taken for a handle of the current thread.
#[test]
fn handle_of_exited_thread_is_never_local() {
    let h = std::thread::spawn(|| {
        let _ctx = AioContext::new().unwrap();
        let co = Coroutine::new(yield_now);
        co.enter();
        let h = co.handle();
        std::mem::forget(co); // keep it suspended; its thread ends
        h
    })
    .joined();
    for _ in 0..8 {
        let h = h.clone();
        let local = std::thread::spawn(move || h.local().is_some()).joined();
        assert!(
            !local,
            "a new thread must not pass for the dead home thread"
        );
    }
    assert!(h.local().is_none());
}
