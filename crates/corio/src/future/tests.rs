//! The edges of `block_on`: wakes before the park, spurious resumes, wakers
//! after the end and on many threads, self-waking futures, cancellation;
//! `JoinHandle` as a `Future`; `block_on` outside coroutines.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::{block_on, POLL_BUDGET};
use crate::{coroutine, AioContext, Coroutine, IoThread, JoinError};

/// Runs `f` on a thread and fails with `what` if it takes longer than 30 s
/// (a lost wakeup fails with a name instead of hanging).
fn deadline<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(v) => {
            t.join().unwrap();
            v
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no result within 30 s"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match t.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!(),
        },
    }
}

/// A future that is pending until [`open`](Gate::open)ed; keeps the last
/// waker it was polled with and counts its polls.
#[derive(Clone, Default)]
struct Gate(Arc<GateInner>);

#[derive(Default)]
struct GateInner {
    ready: AtomicBool,
    polls: AtomicUsize,
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    /// Makes it ready, then wakes its waker.
    fn open(&self) {
        self.0.ready.store(true, SeqCst);
        self.wake();
    }

    /// Wakes its waker (if it was polled) without making it ready.
    fn wake(&self) {
        if let Some(w) = self.waker() {
            w.wake();
        }
    }

    fn waker(&self) -> Option<Waker> {
        self.0.waker.lock().unwrap().clone()
    }

    fn polls(&self) -> usize {
        self.0.polls.load(SeqCst)
    }
}

impl Future for Gate {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.polls.fetch_add(1, SeqCst);
        *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
        if self.0.ready.load(SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// A coroutine on this thread's context that runs `block_on(gate)` and
/// records that it returned.
fn parked_on(gate: &Gate) -> (Coroutine, Rc<Cell<bool>>) {
    let done = Rc::new(Cell::new(false));
    let (g, d) = (gate.clone(), done.clone());
    let co = Coroutine::new(move || {
        block_on(g);
        d.set(true);
    });
    co.enter();
    assert_eq!(gate.polls(), 1);
    assert!(!done.get(), "the gate is closed: block_on must wait");
    (co, done)
}

/// Polls `ctx` without blocking until nothing makes progress.
fn drain(ctx: &AioContext) {
    while ctx.poll(false) {}
}

#[test]
fn block_on_ready_future_does_not_yield() {
    let ctx = AioContext::current();
    let co = Coroutine::new(|| assert_eq!(block_on(async { 7 }), 7));
    co.enter();
    assert!(co.is_terminated(), "a ready future must not suspend");
    drain(&ctx);
}

/// The future is woken (from another thread, which has finished) before
/// `block_on` could park: it must poll again rather than sleep.
#[test]
fn block_on_wake_before_park() {
    deadline("block_on_wake_before_park", || {
        let ctx = AioContext::current();
        struct WakeDuringPoll(bool);
        impl Future for WakeDuringPoll {
            type Output = &'static str;
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<&'static str> {
                if self.0 {
                    return Poll::Ready("polled again");
                }
                self.0 = true;
                let w = cx.waker().clone();
                std::thread::spawn(move || w.wake()).join().unwrap();
                Poll::Pending
            }
        }
        let got = Rc::new(Cell::new(""));
        let g = got.clone();
        let co = Coroutine::new(move || g.set(block_on(WakeDuringPoll(false))));
        co.enter();
        // No poll of the context needed: the wake came before the park.
        assert!(co.is_terminated(), "the early wake was lost");
        assert_eq!(got.get(), "polled again");
        drain(&ctx);
    });
}

#[test]
fn block_on_woken_from_another_thread() {
    deadline("block_on_woken_from_another_thread", || {
        let ctx = AioContext::current();
        let gate = Gate::default();
        let (co, done) = parked_on(&gate);
        let g = gate.clone();
        std::thread::spawn(move || g.open()).join().unwrap();
        while !done.get() {
            ctx.poll(true);
        }
        assert_eq!(gate.polls(), 2);
        assert!(co.is_terminated());
    });
}

/// Something else enters the parked coroutine: it polls again and, the
/// future still pending, parks again; the real wake then completes it.
#[test]
fn block_on_spurious_resume_polls_again() {
    let ctx = AioContext::current();
    let gate = Gate::default();
    let (co, done) = parked_on(&gate);
    co.enter(); // spurious
    assert_eq!(gate.polls(), 2);
    assert!(!done.get());
    co.handle().wake(); // spurious, through the wake path
    assert_eq!(gate.polls(), 3);
    drain(&ctx);
    assert!(!done.get());
    gate.open();
    drain(&ctx);
    assert!(done.get());
    assert_eq!(gate.polls(), 4);
}

/// A wake schedules the resume; before it runs, a spurious resume takes
/// the notification. The resume then finds nothing to do: it must not
/// enter the coroutine at its next, unrelated suspension (here a second
/// `block_on`, and then a plain yield).
#[test]
fn block_on_spurious_resume_racing_wake_resumes_once() {
    let ctx = AioContext::current();
    let (first, second) = (Gate::default(), Gate::default());
    let stage = Rc::new(Cell::new(0));
    let (f, s, st) = (first.clone(), second.clone(), stage.clone());
    let co = Coroutine::new(move || {
        block_on(f);
        st.set(1);
        block_on(s);
        st.set(2);
        coroutine::yield_now();
        st.set(3);
    });
    co.enter();
    // Still pending, re-parked: the queued resume must not enter it.
    first.wake();
    co.enter();
    assert_eq!(first.polls(), 2);
    drain(&ctx);
    assert_eq!(first.polls(), 2, "a stale resume entered the coroutine");
    // Ready at the spurious resume: block_on returns; the stale resume must
    // not enter the second block_on.
    first.wake();
    first.0.ready.store(true, SeqCst);
    co.enter();
    assert_eq!((stage.get(), second.polls()), (1, 1));
    drain(&ctx);
    assert_eq!(
        second.polls(),
        1,
        "a stale resume entered the next block_on"
    );
    // And a wake of the finished first block_on does nothing either.
    first.wake();
    second.open();
    drain(&ctx);
    assert_eq!(stage.get(), 2);
    first.wake();
    drain(&ctx);
    assert_eq!(
        stage.get(),
        2,
        "a finished block_on's waker entered the coroutine"
    );
    co.enter();
    assert_eq!(stage.get(), 3);
}

/// A stray wake of the parked coroutine (it queues it on its context)
/// together with the future's own wake: one resume, no "already scheduled"
/// panic, whichever runs first.
#[test]
fn block_on_stray_wake_and_waker_resume_once() {
    deadline("block_on_stray_wake_and_waker_resume_once", || {
        let ctx = AioContext::current();
        for waker_first in [false, true] {
            let gate = Gate::default();
            let (co, done) = parked_on(&gate);
            let h = co.handle();
            let g = gate.clone();
            std::thread::spawn(move || {
                if waker_first {
                    g.wake();
                    h.wake();
                } else {
                    h.wake();
                    g.wake();
                }
            })
            .join()
            .unwrap();
            drain(&ctx);
            assert_eq!(gate.polls(), 2, "waker_first {waker_first}: one resume");
            gate.open();
            while !done.get() {
                ctx.poll(true);
            }
        }
    });
}

/// The waker outlives the coroutine: called afterwards, from many threads
/// at once, many times, it does nothing (no panic, no resume).
#[test]
fn block_on_waker_after_coroutine_finished() {
    deadline("block_on_waker_after_coroutine_finished", || {
        let ctx = AioContext::current();
        let gate = Gate::default();
        let (co, done) = parked_on(&gate);
        let waker = gate.waker().unwrap();
        gate.open();
        while !done.get() {
            ctx.poll(true);
        }
        assert!(co.is_terminated());
        drop(co); // the coroutine object goes back to the pool
                  // A new coroutine may reuse the object: the old waker must not
                  // touch it.
        let next = Gate::default();
        let (co2, done2) = parked_on(&next);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let w = waker.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        w.wake_by_ref();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        waker.wake();
        drain(&ctx);
        assert_eq!(next.polls(), 1, "an old waker resumed another coroutine");
        assert!(!done2.get());
        next.open();
        while !done2.get() {
            ctx.poll(true);
        }
        drop(co2);
    });
}

/// Clones of a parked coroutine's waker called concurrently from eight
/// threads, a thousand times each: the coroutine is resumed without a
/// double schedule, and ends once the future is ready.
#[test]
fn block_on_waker_clones_on_many_threads() {
    deadline("block_on_waker_clones_on_many_threads", || {
        let t = IoThread::new().unwrap();
        let gate = Gate::default();
        let g = gate.clone();
        let h = t.spawn(move || block_on(g));
        while gate.waker().is_none() {
            std::thread::yield_now();
        }
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let w = gate.waker().unwrap();
                let g = gate.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        // A clone per wake, woken by value: dropped here.
                        let c = w.clone();
                        c.wake();
                    }
                    if i == 7 {
                        g.open();
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        h.join().unwrap();
        assert!(gate.polls() >= 2);
        t.join();
    });
}

/// A future that wakes itself on every poll and is pending until another
/// coroutine of the same thread has run three times: without the budget
/// it would spin forever and the other coroutine would never run.
#[test]
fn block_on_self_waking_future_yields_to_loop() {
    deadline("block_on_self_waking_future_yields_to_loop", || {
        struct Spin {
            other_ran: Arc<AtomicUsize>,
            polls: usize,
        }
        impl Future for Spin {
            type Output = usize;
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
                self.polls += 1;
                if self.other_ran.load(SeqCst) >= 3 {
                    return Poll::Ready(self.polls);
                }
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
        let t = IoThread::new().unwrap();
        let other_ran = Arc::new(AtomicUsize::new(0));
        let o = other_ran.clone();
        let spinner = t.spawn(move || {
            block_on(Spin {
                other_ran: o,
                polls: 0,
            })
        });
        let o = other_ran.clone();
        let other = t.spawn(move || {
            for _ in 0..3 {
                o.fetch_add(1, SeqCst);
                crate::yield_to_loop();
            }
        });
        let polls = spinner.join().unwrap();
        other.join().unwrap();
        assert!(
            polls > POLL_BUDGET as usize,
            "ready after {polls} polls: the budget never ran out?"
        );
        // And a bottom half of the same context runs meanwhile too.
        let bh_ran = Arc::new(AtomicBool::new(false));
        let b = bh_ran.clone();
        let ctx = t.context().clone();
        let h = t.spawn(move || {
            let b2 = b.clone();
            ctx.bh_schedule_oneshot(move || b2.store(true, SeqCst));
            let flag = b.clone();
            block_on(std::future::poll_fn(move |cx| {
                if flag.load(SeqCst) {
                    Poll::Ready(())
                } else {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            }))
        });
        h.join().unwrap();
        assert!(bh_ran.load(SeqCst));
        t.join();
    });
}

/// A coroutine cancelled in `block_on`: the future is dropped on the
/// coroutine's home thread, the handle reports `Cancelled`, and the waker
/// kept by the future's owner does nothing afterwards.
#[test]
fn block_on_cancelled_drops_future_at_home() {
    deadline("block_on_cancelled_drops_future_at_home", || {
        struct DropProbe(Gate, mpsc::Sender<std::thread::ThreadId>);
        impl Drop for DropProbe {
            fn drop(&mut self) {
                self.1.send(std::thread::current().id()).unwrap();
            }
        }
        impl Future for DropProbe {
            type Output = ();
            fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                Pin::new(&mut self.get_mut().0).poll(cx)
            }
        }
        let t = IoThread::new().unwrap();
        let gate = Gate::default();
        let (tx, rx) = mpsc::channel();
        let (home_tx, home_rx) = mpsc::channel();
        let g = gate.clone();
        let h = t.spawn(move || {
            home_tx.send(std::thread::current().id()).unwrap();
            block_on(DropProbe(g, tx));
        });
        let home = home_rx.recv_timeout(Duration::from_secs(20)).unwrap();
        while gate.waker().is_none() {
            std::thread::yield_now();
        }
        let waker = gate.waker().unwrap();
        h.abort();
        assert!(matches!(h.join(), Err(JoinError::Cancelled)));
        let dropped_on = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(
            dropped_on, home,
            "the future was dropped off its home thread"
        );
        waker.wake_by_ref();
        gate.open();
        // The iothread is still fine.
        assert_eq!(t.spawn(|| block_on(async { 5 })).join().unwrap(), 5);
        t.join();
    });
}

/// A JoinHandle polled by foreign executors: tokio on this thread, and
/// `block_on` in a coroutine of another context.
#[test]
fn join_handle_is_a_future() {
    deadline("join_handle_is_a_future", || {
        let t = IoThread::new().unwrap();
        let gate = Gate::default();
        let g = gate.clone();
        let h = t.spawn(move || {
            block_on(g);
            "done"
        });
        let opener = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                while gate.waker().is_none() {
                    std::thread::yield_now();
                }
                gate.open();
            })
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(h).unwrap(), "done");
        opener.join().unwrap();

        // Awaited from a coroutine of another iothread, and a panic
        // travels through as JoinError::Panic.
        let t2 = IoThread::new().unwrap();
        let bad = t.spawn(|| -> u32 { panic!("boom") });
        let r = t2.spawn(move || block_on(bad)).join().unwrap();
        assert_eq!(r.unwrap_err().panic_message(), Some("boom"));
        t2.join();
        t.join();
    });
}

/// Polling a JoinHandle again after it returned Ready panics clearly.
#[test]
fn join_handle_polled_after_ready_panics() {
    let ctx = AioContext::current();
    let mut h = ctx.spawn(|| 1);
    while !h.is_finished() {
        ctx.poll(true);
    }
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    assert!(matches!(Pin::new(&mut h).poll(&mut cx), Poll::Ready(Ok(1))));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = Pin::new(&mut h).poll(&mut cx);
    }));
    assert!(r.is_err());
}

/// Outside any coroutine, on a thread with no context: the thread parks
/// until a wake from another thread.
#[test]
fn block_on_outside_coroutine_parks_thread() {
    deadline("block_on_outside_coroutine_parks_thread", || {
        assert!(AioContext::try_current().is_none());
        let gate = Gate::default();
        let g = gate.clone();
        let opener = std::thread::spawn(move || {
            while g.waker().is_none() {
                std::thread::yield_now();
            }
            g.open();
        });
        block_on(gate.clone());
        opener.join().unwrap();
        assert!(
            AioContext::try_current().is_none(),
            "block_on made a context"
        );
    });
}

/// Outside any coroutine, on a thread that has a context: it is polled
/// while waiting, so a coroutine spawned on it (which completes the
/// future) runs; and a wake from another thread ends the blocking poll.
#[test]
fn block_on_outside_coroutine_polls_context() {
    deadline("block_on_outside_coroutine_polls_context", || {
        let _ctx = AioContext::current();
        let h = crate::spawn_local(|| {
            crate::yield_to_loop();
            11
        });
        assert_eq!(block_on(h).unwrap(), 11);
        let gate = Gate::default();
        let g = gate.clone();
        let opener = std::thread::spawn(move || {
            while g.waker().is_none() {
                std::thread::yield_now();
            }
            g.open();
        });
        block_on(gate);
        opener.join().unwrap();
    });
}

/// A coroutine moved to another IoThread while parked in `block_on` (the
/// unsafe `co_schedule_migrate`) polls the future there with a waker for
/// its new home: the wake that completes it reaches it on the new thread.
#[test]
fn block_on_migrated_while_parked_wakes_at_new_home() {
    deadline("block_on_migrated_while_parked_wakes_at_new_home", || {
        let a = IoThread::with_name("bridge-a").unwrap();
        let b = IoThread::with_name("bridge-b").unwrap();
        let gate = Gate::default();
        let g = gate.clone();
        let (co_tx, co_rx) = mpsc::channel();
        let h = a.spawn(move || {
            co_tx.send(Coroutine::current().unwrap().handle()).unwrap();
            block_on(g);
            std::thread::current().name().map(str::to_owned)
        });
        let co = co_rx.recv_timeout(Duration::from_secs(20)).unwrap();
        let to = b.context().clone();
        // On a's thread, after the coroutine has parked (a's thread ran it
        // up to its yield before taking this call).
        a.context().run_in(move || {
            // At its yield in `block_on` the coroutine's stack holds only
            // `Send` values (the gate, the waker, contexts, handles).
            // SAFETY: that, no thread-local reference on its stack, and
            // nothing but the bridge's waker (which block_on replaces) wakes
            // it on a's context: it may move to b.
            unsafe { to.co_schedule_migrate(&co) };
        });
        while gate.polls() < 2 {
            std::thread::yield_now(); // re-polled on b, with b's waker
        }
        gate.open();
        assert_eq!(h.join().unwrap().as_deref(), Some("bridge-b"));
        b.join();
        a.join();
    });
}

/// The future need not be `Send`: it is polled only on the coroutine's
/// home thread (an `Rc` held across an await woken from another thread).
#[test]
fn block_on_non_send_future() {
    deadline("block_on_non_send_future", || {
        let t = IoThread::new().unwrap();
        let h = t.spawn(|| {
            let gate = Gate::default();
            let g = gate.clone();
            let opener = std::thread::spawn(move || {
                while g.waker().is_none() {
                    std::thread::yield_now();
                }
                g.open();
            });
            let v = block_on(async move {
                let local = Rc::new(Cell::new(20)); // !Send, alive across the await
                gate.await;
                local.set(local.get() + 1);
                local.get()
            });
            opener.join().unwrap();
            v
        });
        assert_eq!(h.join().unwrap(), 21);
        t.join();
    });
}
