//! QEMU's tests/unit/test-aio.c (the /aio/* cases), ported case by case; plus
//! fd handlers, cross-thread notify, run_in and the misuse cases.

mod helpers;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use corio::{yield_now, AioContext, Bh, Coroutine, IoThread};
use helpers::{join_iothread, join_within, poll_blocking, poll_blocking_until, JoinExt, LockExt};

fn counter() -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    (n.clone(), n)
}

/// /aio/bh/schedule: a scheduled BH runs only when polled, once.
#[test]
fn bh_schedule() {
    let ctx = AioContext::new().unwrap();
    let (n, n2) = counter();
    let bh = ctx.bh_new(move || {
        n2.fetch_add(1, SeqCst);
    });
    bh.schedule();
    assert_eq!(n.load(SeqCst), 0);
    assert!(poll_blocking(&ctx));
    assert_eq!(n.load(SeqCst), 1);
    assert!(!ctx.poll(false));
    assert_eq!(n.load(SeqCst), 1);
    bh.delete();
}

/// /aio/bh/schedule10: a BH that reschedules itself runs once per poll.
#[test]
fn bh_schedule10() {
    let ctx = AioContext::new().unwrap();
    let (n, n2) = counter();
    let slot: Arc<Mutex<Option<Bh>>> = Arc::default();
    let s = slot.clone();
    let bh = ctx.bh_new(move || {
        if n2.fetch_add(1, SeqCst) + 1 < 10 {
            s.locked().as_ref().unwrap().schedule();
        }
    });
    *slot.locked() = Some(bh.clone());
    bh.schedule();
    assert_eq!(n.load(SeqCst), 0);
    assert!(ctx.poll(false));
    assert_eq!(n.load(SeqCst), 1);
    assert!(poll_blocking(&ctx));
    assert_eq!(n.load(SeqCst), 2);
    while ctx.poll(false) {}
    assert_eq!(n.load(SeqCst), 10);
    assert!(!ctx.poll(false));
    slot.locked().take();
    bh.delete();
}

/// /aio/bh/cancel: schedule then cancel: never runs.
#[test]
fn bh_cancel() {
    let ctx = AioContext::new().unwrap();
    let (n, n2) = counter();
    let bh = ctx.bh_new(move || {
        n2.fetch_add(1, SeqCst);
    });
    bh.schedule();
    assert!(bh.is_scheduled());
    bh.cancel();
    assert!(!bh.is_scheduled());
    assert!(!ctx.poll(false));
    assert_eq!(n.load(SeqCst), 0);
    bh.delete();
}

/// /aio/bh/delete (and the misuse case "a bottom half deleted while
/// pending"): schedule then delete: never runs, nothing leaks.
#[test]
fn bh_delete() {
    let ctx = AioContext::new().unwrap();
    let (n, n2) = counter();
    let alive = Arc::new(());
    let a = alive.clone();
    let bh = ctx.bh_new(move || {
        let _ = &a;
        n2.fetch_add(1, SeqCst);
    });
    bh.schedule();
    let again = bh.clone();
    bh.delete();
    again.schedule(); // scheduling a deleted BH does nothing
    assert!(!ctx.poll(false));
    assert_eq!(n.load(SeqCst), 0);
    assert_eq!(Arc::strong_count(&alive), 1, "the callback was dropped");
}

/// /aio/bh/callback-delete/one: a BH deletes itself from its callback.
#[test]
fn bh_callback_delete_one() {
    let ctx = AioContext::new().unwrap();
    let (n, n2) = counter();
    let slot: Arc<Mutex<Option<Bh>>> = Arc::default();
    let s = slot.clone();
    let bh = ctx.bh_new(move || {
        n2.fetch_add(1, SeqCst);
        s.locked().take().unwrap().delete();
    });
    *slot.locked() = Some(bh.clone());
    bh.schedule();
    drop(bh);
    assert!(poll_blocking(&ctx));
    assert_eq!(n.load(SeqCst), 1);
    assert!(!ctx.poll(false));
    assert_eq!(n.load(SeqCst), 1);
}

/// /aio/bh/callback-delete/many: four BHs delete themselves after 1, 3, 2 and
/// 4 runs; the first poll runs all four once; all end up deleted.
#[test]
fn bh_callback_delete_many() {
    let ctx = AioContext::new().unwrap();
    let limits = [1usize, 3, 2, 4];
    let counts: Vec<Arc<AtomicUsize>> = (0..4).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let deleted: Vec<Arc<AtomicBool>> = (0..4).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let mut bhs = Vec::new();
    for i in 0..4 {
        let slot: Arc<Mutex<Option<Bh>>> = Arc::default();
        let (s, c, d, limit) = (
            slot.clone(),
            counts[i].clone(),
            deleted[i].clone(),
            limits[i],
        );
        let bh = ctx.bh_new(move || {
            if c.fetch_add(1, SeqCst) + 1 == limit {
                d.store(true, SeqCst);
                s.locked().take().unwrap().delete();
            } else {
                s.locked().as_ref().unwrap().schedule();
            }
        });
        *slot.locked() = Some(bh.clone());
        bhs.push(bh);
    }
    for bh in &bhs {
        bh.schedule();
    }
    drop(bhs);
    assert!(ctx.poll(false));
    for c in &counts {
        assert_eq!(c.load(SeqCst), 1, "the first poll runs all four once");
    }
    while ctx.poll(false) {}
    for i in 0..4 {
        assert_eq!(counts[i].load(SeqCst), limits[i]);
        assert!(deleted[i].load(SeqCst));
    }
}

/// /aio/bh/flush: a blocking poll runs the pending BH; then no progress.
#[test]
fn bh_flush() {
    let ctx = AioContext::new().unwrap();
    let (n, n2) = counter();
    let bh = ctx.bh_new(move || {
        n2.fetch_add(1, SeqCst);
    });
    bh.schedule();
    assert!(poll_blocking(&ctx));
    assert_eq!(n.load(SeqCst), 1);
    assert!(!ctx.poll(false));
    bh.delete();
}

/// Idle BHs run but count as no progress.
#[test]
fn bh_schedule_idle() {
    let ctx = AioContext::new().unwrap();
    let (n, n2) = counter();
    let bh = ctx.bh_new(move || {
        n2.fetch_add(1, SeqCst);
    });
    bh.schedule_idle();
    while n.load(SeqCst) == 0 {
        assert!(!poll_blocking(&ctx), "an idle BH is not progress");
    }
    assert_eq!(n.load(SeqCst), 1);
    bh.delete();
}

/// /aio/coroutine/queue-chaining: two coroutines ping-pong through co_enter
/// on the same context 25,000 times each without nesting: each wakeup is
/// queued behind the running coroutine and chained by the enterer.
#[test]
fn coroutine_queue_chaining() {
    let ctx = AioContext::new().unwrap();
    const N: usize = 25_000;
    let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let peers: Arc<Mutex<Vec<corio::CoHandle>>> = Arc::default();
    let mut cos = Vec::new();
    for i in 0..2 {
        let (counts, peers, ctx) = (counts.clone(), peers.clone(), ctx.clone());
        cos.push(Coroutine::new(move || {
            for _ in 0..N {
                counts[i].fetch_add(1, SeqCst);
                let other = peers.locked()[1 - i].clone();
                ctx.co_enter(&other);
                yield_now();
            }
        }));
    }
    *peers.locked() = cos.iter().map(Coroutine::handle).collect();
    cos[0].enter();
    assert_eq!(counts[0].load(SeqCst), N);
    assert_eq!(counts[1].load(SeqCst), N);
    // One enter ran the whole chain; the first coroutine finished, and the
    // second sits at its last yield.
    assert!(cos[0].is_terminated());
    assert!(!cos[1].is_terminated());
    cos[1].enter();
    assert!(cos[1].is_terminated());
    peers.locked().clear();
}

/// /aio/coroutine/worker-thread-co-enter: co_enter(ctx, co) from a thread
/// without a context schedules the coroutine, and it runs on the context's
/// thread in the next blocking poll.
#[test]
fn coroutine_worker_thread_co_enter() {
    let ctx = AioContext::new().unwrap();
    let ran_on = Arc::new(Mutex::new(None));
    let r = ran_on.clone();
    let co = Coroutine::new(move || {
        *r.locked() = Some(std::thread::current().id());
    });
    let h = co.handle();
    let c = ctx.clone();
    std::thread::spawn(move || {
        assert!(AioContext::try_current().is_none());
        c.co_enter(&h);
    })
    .joined();
    assert!(ran_on.locked().is_none(), "not run before the poll");
    assert!(poll_blocking(&ctx));
    assert_eq!(*ran_on.locked(), Some(std::thread::current().id()));
    assert!(co.is_terminated());
}

fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK)
        .unwrap()
}

/// fd handlers are level-triggered: a readable fd that is not drained runs
/// its handler on every poll.
#[test]
fn fd_handler_level_triggered() {
    let ctx = AioContext::new().unwrap();
    let (r, w) = pipe();
    let (n, n2) = counter();
    ctx.set_fd_handler(
        r.as_fd(),
        Some(Box::new(move || {
            n2.fetch_add(1, SeqCst);
        })),
        None,
    )
    .unwrap();
    assert!(!ctx.poll(false));
    rustix::io::write(&w, b"x").unwrap();
    assert!(ctx.poll(false));
    assert!(poll_blocking(&ctx));
    assert_eq!(n.load(SeqCst), 2);
    ctx.set_fd_handler(r.as_fd(), None, None).unwrap();
    assert!(!ctx.poll(false));
    assert_eq!(n.load(SeqCst), 2);
}

/// Misuse case: an fd handler removed from its own callback runs no more.
#[test]
fn fd_handler_removed_from_own_callback() {
    let ctx = AioContext::new().unwrap();
    let (r, w) = pipe();
    let r = Arc::new(r);
    let (n, n2) = counter();
    let (c, r2) = (ctx.clone(), r.clone());
    ctx.set_fd_handler(
        r.as_fd(),
        Some(Box::new(move || {
            n2.fetch_add(1, SeqCst);
            c.set_fd_handler(r2.as_fd(), None, None).unwrap();
        })),
        None,
    )
    .unwrap();
    rustix::io::write(&w, b"x").unwrap();
    assert!(ctx.poll(false));
    assert!(!ctx.poll(false));
    assert_eq!(n.load(SeqCst), 1);
}

/// A handler that replaces itself from its callback: the new one runs next.
#[test]
fn fd_handler_replaced_from_own_callback() {
    let ctx = AioContext::new().unwrap();
    let (r, w) = pipe();
    let r = Arc::new(r);
    let (first, f2) = counter();
    let (second, s2) = counter();
    let (c, r2) = (ctx.clone(), r.clone());
    ctx.set_fd_handler(
        r.as_fd(),
        Some(Box::new(move || {
            f2.fetch_add(1, SeqCst);
            let s2 = s2.clone();
            c.set_fd_handler(
                r2.as_fd(),
                Some(Box::new(move || {
                    s2.fetch_add(1, SeqCst);
                })),
                None,
            )
            .unwrap();
        })),
        None,
    )
    .unwrap();
    rustix::io::write(&w, b"x").unwrap();
    assert!(ctx.poll(false));
    assert!(ctx.poll(false));
    assert_eq!((first.load(SeqCst), second.load(SeqCst)), (1, 1));
    ctx.set_fd_handler(r.as_fd(), None, None).unwrap();
}

/// A write handler runs while the fd is writable.
#[test]
fn fd_handler_write() {
    let ctx = AioContext::new().unwrap();
    let (_r, w) = pipe();
    let (n, n2) = counter();
    ctx.set_fd_handler(
        w.as_fd(),
        None,
        Some(Box::new(move || {
            n2.fetch_add(1, SeqCst);
        })),
    )
    .unwrap();
    assert!(ctx.poll(false));
    assert_eq!(n.load(SeqCst), 1);
    ctx.set_fd_handler(w.as_fd(), None, None).unwrap();
}

/// notify() from another thread ends a blocking poll: a BH scheduled there
/// runs here.
#[test]
fn cross_thread_bh_wakes_blocking_poll() {
    let ctx = AioContext::new().unwrap();
    let (n, n2) = counter();
    let bh = ctx.bh_new(move || {
        n2.fetch_add(1, SeqCst);
    });
    for i in 1..=50 {
        let b = bh.clone();
        let t = std::thread::spawn(move || b.schedule());
        poll_blocking_until(&ctx, "n.load(SeqCst) >= i", || n.load(SeqCst) >= i);
        join_within(t, "t");
    }
    assert_eq!(n.load(SeqCst), 50);
    bh.delete();
}

/// run_in runs on the target thread and returns the value; a panic comes back.
#[test]
fn run_in_other_context() {
    let _ctx = AioContext::new().unwrap();
    let t = IoThread::new().unwrap();
    let id = t.context().run_in(|| std::thread::current().id());
    assert_ne!(id, std::thread::current().id());
    assert!(t
        .context()
        .run_in(|| AioContext::current().in_home_thread()));
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        t.context().run_in(|| panic!("in the iothread"))
    }))
    .unwrap_err();
    assert_eq!(err.downcast_ref::<&str>(), Some(&"in the iothread"));
    // The iothread survived the panic.
    assert_eq!(t.context().run_in(|| 7), 7);
    join_iothread(t, "t");
}

/// poll() on a foreign thread panics with a clear message.
#[test]
fn poll_from_foreign_thread_panics() {
    let ctx = AioContext::new().unwrap();
    let c = ctx.clone();
    let err = std::thread::spawn(move || c.poll(false))
        .join_result()
        .unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("home thread"), "{msg}");
}

/// A nested poll from a BH continues the outer batch (QEMU's slices): a BH
/// waiting for a later BH of the same batch does not hang.
#[test]
fn nested_poll_runs_rest_of_batch() {
    let ctx = AioContext::new().unwrap();
    let flag = Arc::new(AtomicBool::new(false));
    let (c, f) = (ctx.clone(), flag.clone());
    let waiter = ctx.bh_new(move || {
        poll_blocking_until(&c, "f.load(SeqCst)", || f.load(SeqCst));
    });
    let f2 = flag.clone();
    let setter = ctx.bh_new(move || f2.store(true, SeqCst));
    waiter.schedule();
    setter.schedule();
    assert!(poll_blocking(&ctx));
    assert!(flag.load(SeqCst));
    waiter.delete();
    setter.delete();
    // The waiter holds the context: only the poll that drops the deleted
    // callbacks breaks the cycle (LeakSanitizer reports it otherwise).
    ctx.poll(false);
}

/// A BH scheduled again while its callback runs a nested poll is not called
/// re-entrantly (QEMU's reentrancy guard, trace `reentrant_aio`); it runs
/// once the outer call has returned.
#[test]
fn bh_not_reentered_by_nested_poll() {
    let ctx = AioContext::new().unwrap();
    let depth = Arc::new(AtomicUsize::new(0));
    let max_depth = Arc::new(AtomicUsize::new(0));
    let (runs, r2) = counter();
    let slot: Arc<Mutex<Option<Bh>>> = Arc::default();
    let (c, s, d, m) = (ctx.clone(), slot.clone(), depth.clone(), max_depth.clone());
    let bh = ctx.bh_new(move || {
        let now = d.fetch_add(1, SeqCst) + 1;
        m.fetch_max(now, SeqCst);
        if r2.fetch_add(1, SeqCst) == 0 {
            s.locked().as_ref().unwrap().schedule();
            c.poll(false); // takes the BH again, must not call it
        }
        d.fetch_sub(1, SeqCst);
    });
    *slot.locked() = Some(bh.clone());
    bh.schedule();
    while ctx.poll(false) {}
    assert_eq!(runs.load(SeqCst), 2);
    assert_eq!(max_depth.load(SeqCst), 1, "never re-entered");
    slot.locked().take();
    bh.delete();
    // The callback holds the context: only the poll that drops the deleted
    // callback breaks the cycle (LeakSanitizer reports it otherwise).
    ctx.poll(false);
}

/// Review finding: a BH cancelled, taken by a blocking poll, then scheduled
/// again from another thread still wakes that poll.
#[test]
fn bh_rescheduled_from_other_thread_after_cancel_wakes_poll() {
    let ctx = AioContext::new().unwrap();
    let (n, n2) = counter();
    let bh = ctx.bh_new(move || {
        n2.fetch_add(1, SeqCst);
    });
    bh.schedule();
    bh.cancel(); // still pending in the list, not scheduled
    let b = bh.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        b.schedule();
    });
    poll_blocking_until(&ctx, "n.load(SeqCst) != 0", || n.load(SeqCst) != 0); // must not sleep forever
    join_within(t, "t");
    bh.delete();
}

/// Review finding: an fd handler whose callback panicked once keeps working.
#[test]
fn fd_handler_survives_its_panic() {
    let ctx = AioContext::new().unwrap();
    let (r, w) = pipe();
    let (n, n2) = counter();
    ctx.set_fd_handler(
        r.as_fd(),
        Some(Box::new(move || {
            if n2.fetch_add(1, SeqCst) == 0 {
                panic!("first call fails");
            }
        })),
        None,
    )
    .unwrap();
    rustix::io::write(&w, b"x").unwrap();
    assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.poll(false))).is_err());
    assert!(ctx.poll(false), "called again");
    assert_eq!(n.load(SeqCst), 2);
    ctx.set_fd_handler(r.as_fd(), None, None).unwrap();
}

/// Review finding: a coroutine entered by the co_schedule BH may poll in a
/// nested loop until another coroutine handed over from a thread has run.
#[test]
fn nested_poll_inside_scheduled_coroutine_sees_new_handovers() {
    let ctx = AioContext::new().unwrap();
    let other = Coroutine::new(yield_now);
    other.enter();
    let other_h = other.handle();
    let (c, o) = (ctx.clone(), other.clone());
    let waiter = Coroutine::new(move || {
        yield_now();
        let h = other_h.clone();
        std::thread::spawn(move || h.wake());
        poll_blocking_until(&c, "o.is_terminated()", || o.is_terminated());
    });
    waiter.enter();
    ctx.co_schedule(&waiter.handle());
    poll_blocking_until(&ctx, "waiter.is_terminated()", || waiter.is_terminated());
    assert!(other.is_terminated());
}

/// `co_reschedule_self` between two contexts of one thread (QEMU compares
/// contexts, not threads): the coroutine resumes from the target's
/// bottom half, and the target becomes its home context.
#[test]
fn co_reschedule_self_between_contexts_of_one_thread() {
    let a = AioContext::new().unwrap();
    let b = AioContext::new().unwrap();
    assert_eq!(AioContext::current(), a);
    let homes = Arc::new(Mutex::new(Vec::new()));
    let h = homes.clone();
    let target = b.clone();
    let co = Coroutine::new(move || {
        let me = || Coroutine::current().unwrap().context();
        h.locked().push(me() == target);
        // SAFETY: the same thread: nothing on the stack changes threads.
        unsafe { corio::co_reschedule_self(&target) };
        h.locked().push(me() == target);
        yield_now();
        h.locked().push(me() == target);
    });
    co.enter();
    assert!(!co.is_terminated());
    // Polling the old context does not resume it: it waits in `b`.
    a.poll(false);
    assert!(!co.is_terminated());
    assert_eq!(*homes.locked(), [false]);
    assert!(b.poll(false));
    assert_eq!(*homes.locked(), [false, true]);
    // `b` is its home now: what a handle names, and where a wake from
    // another thread would schedule it.
    assert_eq!(co.context(), b);
    assert_eq!(co.handle().context(), b);
    co.handle().wake();
    assert!(co.is_terminated());
    assert_eq!(*homes.locked(), [false, true, true]);
}

/// Coroutines scheduled on a context in one batch run in the order they were
/// scheduled (FIFO), whether scheduled from the home thread or another.
#[test]
fn co_schedule_batch_runs_in_fifo_order() {
    let ctx = AioContext::new().unwrap();
    for remote in [false, true] {
        let order: Arc<Mutex<Vec<usize>>> = Arc::default();
        let cos: Vec<Coroutine> = (0..8)
            .map(|i| {
                let o = order.clone();
                let co = Coroutine::new(move || {
                    yield_now();
                    o.locked().push(i);
                });
                co.enter();
                co
            })
            .collect();
        let handles: Vec<corio::CoHandle> = cos.iter().map(Coroutine::handle).collect();
        if remote {
            let c = ctx.clone();
            std::thread::spawn(move || {
                for h in &handles {
                    c.co_schedule(h);
                }
            })
            .joined();
        } else {
            for h in &handles {
                ctx.co_schedule(h);
            }
        }
        assert!(order.locked().is_empty(), "nothing runs before the poll");
        assert!(poll_blocking(&ctx));
        assert_eq!(
            *order.locked(),
            (0..8).collect::<Vec<_>>(),
            "batch order (scheduled from {})",
            if remote { "another thread" } else { "home" }
        );
        assert!(cos.iter().all(Coroutine::is_terminated));
    }
}

/// `co_enter` on a context that is not the coroutine's home refuses (as
/// co_schedule does) instead of waking the coroutine at its real home;
/// from that other context's own thread too.
#[test]
fn co_enter_on_a_foreign_context_panics() {
    let ctx = AioContext::new().unwrap();
    let t = IoThread::new().unwrap();
    let co = Coroutine::new(yield_now);
    co.enter();
    let h = co.handle();
    let other = t.context().clone();
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| other.co_enter(&h)))
        .expect_err("co_enter on another thread's context");
    let msg = err
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| err.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert!(msg.contains("home is another AioContext"), "{msg}");
    let h2 = co.handle();
    let refused = t.context().run_in(move || {
        let here = AioContext::current();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| here.co_enter(&h2))).is_err()
    });
    assert!(refused, "co_enter from the foreign context's thread");
    ctx.poll(false);
    assert!(!co.is_terminated(), "a refused co_enter woke it");
    co.enter();
    assert!(co.is_terminated());
    join_iothread(t, "t");
}

/// A coroutine of a co_schedule batch that panics does not lose the rest of
/// the batch: the panic leaves `poll`, and the next poll runs the others.
#[test]
fn co_schedule_batch_survives_a_panicking_coroutine() {
    let ctx = AioContext::new().unwrap();
    let ran: Arc<Mutex<Vec<usize>>> = Arc::default();
    let cos: Vec<Coroutine> = (0..3)
        .map(|i| {
            let r = ran.clone();
            let co = Coroutine::new(move || {
                yield_now();
                if i == 0 {
                    panic!("the first of the batch fails");
                }
                r.locked().push(i);
            });
            co.enter();
            co
        })
        .collect();
    for co in &cos {
        ctx.co_schedule(&co.handle());
    }
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.poll(false)));
    assert!(err.is_err(), "the coroutine's panic leaves poll");
    assert!(ran.locked().is_empty(), "the rest waits for the next poll");
    assert!(ctx.poll(false), "the next poll runs the rest of the batch");
    assert_eq!(*ran.locked(), vec![1, 2]);
    assert!(cos.iter().all(Coroutine::is_terminated));
}

/// A oneshot bottom half runs once and is freed right after: its closure
/// (and what it captured) is dropped by the poll that ran it.
#[test]
fn bh_oneshot_is_freed_after_it_runs() {
    struct Dropped(Arc<AtomicUsize>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, SeqCst);
        }
    }
    let ctx = AioContext::new().unwrap();
    let (ran, ran2) = counter();
    let (dropped, dropped2) = counter();
    let guard = Dropped(dropped2);
    ctx.bh_schedule_oneshot(move || {
        let _keep = &guard;
        ran2.fetch_add(1, SeqCst);
    });
    assert_eq!(dropped.load(SeqCst), 0);
    assert!(ctx.poll(false));
    assert_eq!(ran.load(SeqCst), 1);
    assert_eq!(
        dropped.load(SeqCst),
        1,
        "the oneshot's closure was not freed"
    );
    assert!(!ctx.poll(false));
    assert_eq!(ran.load(SeqCst), 1);
}
