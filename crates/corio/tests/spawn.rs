//! `spawn` / `JoinHandle`: results, panic isolation, cancellation and
//! shutdown.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

mod helpers;

use corio::io::{Channel, SocketChannel};
use corio::sync::CoQueue;
use corio::{AioContext, Coroutine, IoThread, JoinError};
use helpers::{poll_blocking, poll_blocking_until, within};

/// Counts drops, to show that a cancelled coroutine's destructors ran.
struct DropCount(Arc<AtomicUsize>);
impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Parks the calling coroutine forever (until cancelled).
fn park_forever() -> ! {
    let q = CoQueue::new();
    loop {
        q.wait();
    }
}

#[test]
fn spawn_returns_value_from_iothread() {
    within("spawn_returns_value_from_iothread", || {
        let t = IoThread::new().unwrap();
        let h = t.spawn(|| {
            assert!(corio::in_coroutine());
            corio::yield_to_loop();
            std::thread::current().name().map(str::to_owned)
        });
        assert_eq!(h.join().unwrap().as_deref(), Some("iothread"));
        t.join();
    });
}

/// A coroutine joining another yields; the joined one runs elsewhere.
#[test]
fn join_from_coroutine_yields() {
    within("join_from_coroutine_yields", || {
        let a = IoThread::with_name("a").unwrap();
        let b = IoThread::with_name("b").unwrap();
        let bctx = b.context().clone();
        let h = a.spawn(move || {
            let inner = bctx.spawn(|| {
                corio::yield_to_loop();
                std::thread::current().name().unwrap().to_owned()
            });
            let got = inner.join().unwrap();
            (got, std::thread::current().name().unwrap().to_owned())
        });
        assert_eq!(h.join().unwrap(), ("b".to_owned(), "a".to_owned()));
        a.join();
        b.join();
    });
}

/// `join` outside a coroutine on the context's own thread polls it.
#[test]
fn spawn_local_and_join_on_home_thread() {
    within("spawn_local_and_join_on_home_thread", || {
        let _ctx = AioContext::new().unwrap();
        let shared = std::rc::Rc::new(20);
        let s = shared.clone();
        let mut h = corio::spawn_local(move || {
            corio::yield_to_loop();
            *s + 1
        });
        assert!(
            !h.is_finished(),
            "spawn must not run the coroutine in place"
        );
        assert!(h.try_join().is_none());
        assert_eq!(h.join().unwrap(), 21);
    });
}

#[test]
fn try_join_and_is_finished() {
    within("try_join_and_is_finished", || {
        let ctx = AioContext::new().unwrap();
        let mut h = ctx.spawn(|| 5);
        assert!(!h.is_finished());
        poll_blocking_until(&ctx, "h.is_finished()", || h.is_finished());
        assert_eq!(h.try_join().unwrap().unwrap(), 5);
        assert!(h.try_join().is_none(), "the result is taken once");
    });
}

/// A panic in one spawned coroutine reaches its handle; the iothread
/// goes on serving the others and `run_in`.
#[test]
fn panicking_coroutine_is_isolated() {
    within("panicking_coroutine_is_isolated", || {
        let t = IoThread::new().unwrap();
        let q = Arc::new(AtomicUsize::new(0));
        let good: Vec<_> = (0..4)
            .map(|i| {
                let q = q.clone();
                t.spawn(move || {
                    corio::yield_to_loop();
                    q.fetch_add(1, SeqCst);
                    i
                })
            })
            .collect();
        let bad = t.spawn(|| -> u32 {
            corio::yield_to_loop();
            panic!("client 3 misbehaved")
        });
        match bad.join() {
            Err(e @ JoinError::Panic(_)) => {
                assert_eq!(e.panic_message(), Some("client 3 misbehaved"));
                assert!(e.to_string().contains("client 3 misbehaved"));
            }
            other => panic!("expected a panic, got {other:?}"),
        }
        let got: Vec<_> = good.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(got, [0, 1, 2, 3]);
        assert_eq!(t.context().run_in(|| 9), 9);
        t.join();
    });
}

/// A panicking bottom half is reported to the hook and the loop goes on.
#[test]
fn panicking_bh_does_not_end_iothread() {
    within("panicking_bh_does_not_end_iothread", || {
        static SEEN: AtomicUsize = AtomicUsize::new(0);
        corio::iothread::set_panic_hook(Some(Box::new(|_ctx, p| {
            assert_eq!(p.downcast_ref::<&str>(), Some(&"bh boom"));
            SEEN.fetch_add(1, SeqCst);
        })));
        let t = IoThread::new().unwrap();
        t.context().bh_schedule_oneshot(|| panic!("bh boom"));
        // run_in is queued behind the panicking BH: it must still run.
        assert_eq!(t.context().run_in(|| 1 + 1), 2);
        assert_eq!(SEEN.load(SeqCst), 1);
        assert_eq!(t.spawn(|| "still serving").join().unwrap(), "still serving");
        corio::iothread::set_panic_hook(None);
        t.join();
    });
}

/// `abort` unwinds a suspended coroutine: its destructors run and `join`
/// says Cancelled.
#[test]
fn abort_unwinds_suspended_coroutine() {
    within("abort_unwinds_suspended_coroutine", || {
        let t = IoThread::new().unwrap();
        let drops = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let d = drops.clone();
        let h = t.spawn(move || {
            let _guard = DropCount(d);
            tx.send(()).unwrap();
            park_forever()
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("coroutine started");
        assert_eq!(drops.load(SeqCst), 0);
        h.abort();
        let r = h.join();
        assert!(matches!(r, Err(JoinError::Cancelled)), "{r:?}");
        assert_eq!(drops.load(SeqCst), 1);
        t.join();
    });
}

/// Aborting on the home thread unwinds at once; a wakeup already queued for
/// the coroutine is dropped instead of entering a dead coroutine.
#[test]
fn abort_on_home_thread_drops_pending_wakeup() {
    within("abort_on_home_thread_drops_pending_wakeup", || {
        let ctx = AioContext::new().unwrap();
        let (tx, rx) = mpsc::channel();
        let h = ctx.spawn(move || {
            let me = Coroutine::current().unwrap().handle();
            tx.send(me).unwrap();
            park_forever()
        });
        let me = loop {
            if let Ok(me) = rx.try_recv() {
                break me;
            }
            poll_blocking(&ctx);
        };
        // Queue a wake from another thread, then cancel before it runs.
        std::thread::spawn({
            let me = me.clone();
            move || me.wake()
        })
        .join()
        .unwrap();
        h.abort();
        assert!(h.is_finished(), "abort on the home thread is synchronous");
        ctx.poll(false); // the queued wake finds a cancelled coroutine
        me.wake(); // and so does a later one
        assert!(matches!(h.join(), Err(JoinError::Cancelled)));
    });
}

/// A coroutine aborted before it started never runs.
#[test]
fn abort_before_start_never_runs() {
    within("abort_before_start_never_runs", || {
        let (ctx_tx, ctx_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let ctx = AioContext::new().unwrap();
            ctx_tx.send(ctx.clone()).unwrap();
            go_rx.recv().unwrap();
            for _ in 0..10 {
                ctx.poll(false);
            }
        });
        let ctx = ctx_rx.recv().unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let h = ctx.spawn(move || r.store(true, SeqCst));
        h.abort();
        go_tx.send(()).unwrap();
        t.join().unwrap();
        assert!(matches!(h.join(), Err(JoinError::Cancelled)));
        assert!(!ran.load(SeqCst));
    });
}

/// `IoThread::join` unwinds coroutines suspended on socket I/O: their
/// channels close (fd count back to where it was) and their destructors run.
#[test]
fn join_closes_fds_of_suspended_coroutines() {
    within("join_closes_fds_of_suspended_coroutines", || {
        let before = open_fds();
        let t = IoThread::new().unwrap();
        let drops = Arc::new(AtomicUsize::new(0));
        let mut peers = Vec::new();
        let mut handles = Vec::new();
        let (ready_tx, ready_rx) = mpsc::channel();
        for _ in 0..3 {
            let (a, b) = SocketChannel::pair().unwrap();
            peers.push(b);
            let d = drops.clone();
            let ready = ready_tx.clone();
            handles.push(t.spawn(move || {
                let _guard = DropCount(d);
                a.set_blocking(false).unwrap();
                let mut buf = [0u8; 16];
                ready.send(()).unwrap();
                a.read_all(&mut buf).map(|()| buf)
            }));
        }
        for _ in 0..3 {
            ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        // The peers stay open: the readers are suspended, not at EOF.
        let peer_fds = peers.len();
        assert_eq!(drops.load(SeqCst), 0);
        t.join();
        for h in handles {
            assert!(matches!(h.join(), Err(JoinError::Cancelled)));
        }
        assert_eq!(
            drops.load(SeqCst),
            3,
            "every suspended coroutine was unwound"
        );
        assert_eq!(
            open_fds(),
            before + peer_fds,
            "the coroutines' channels are closed by IoThread::join"
        );
        drop(peers);
        assert_eq!(open_fds(), before, "fds left open after IoThread::join");
    });
}

/// A coroutine aborted in the middle of a sleep ends holding the sleep's
/// schedule claim; its object goes back to the pool without it, so the
/// next coroutines made on this thread (which reuse it) enter normally.
#[test]
fn coroutine_aborted_in_a_sleep_leaves_no_claim_in_the_pool() {
    within(
        "coroutine_aborted_in_a_sleep_leaves_no_claim_in_the_pool",
        || {
            let ctx = AioContext::new().unwrap();
            let started = Arc::new(AtomicBool::new(false));
            let s = started.clone();
            let h = ctx.spawn(move || {
                s.store(true, SeqCst);
                corio::sync::co_sleep_ns(corio::Clock::Realtime, 3_600_000_000_000);
            });
            poll_blocking_until(&ctx, "the sleeper to start", || started.load(SeqCst));
            h.abort();
            assert!(matches!(h.join(), Err(JoinError::Cancelled)));
            for i in 0..8 {
                let co = Coroutine::new(|| {});
                co.enter();
                assert!(co.is_terminated(), "coroutine {i} did not run");
            }
        },
    );
}
