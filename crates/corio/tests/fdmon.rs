//! The fd monitor choice at the context level: both monitors keep fd
//! handlers level-triggered, wake a blocking poll from other threads, and
//! let go of closed fds; `CORIO_FDMON` names them. (Every other test file
//! runs on either monitor with `CORIO_FDMON=io_uring`.)

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corio::{AioContext, FdMon, IoThread};

mod helpers;

const DEADLINE: Duration = Duration::from_secs(10);

fn both(test: impl Fn(FdMon)) {
    for kind in [FdMon::Epoll, FdMon::IoUring] {
        test(kind);
    }
}

fn ctx(kind: FdMon) -> AioContext {
    let ctx = AioContext::with_fd_monitor(kind).unwrap();
    assert_eq!(ctx.fd_monitor(), kind, "io_uring refused on this machine");
    ctx
}

/// A handler that does not drain its fd runs from every poll; once it
/// drains, polls stop calling it.
#[test]
fn fd_handler_is_level_triggered() {
    both(|kind| {
        let ctx = ctx(kind);
        let (mut a, b) = UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let c2 = calls.clone();
        ctx.set_fd_handler(
            b.as_fd(),
            Some(Box::new(move || {
                c2.fetch_add(1, SeqCst);
            })),
            None,
        )
        .unwrap();
        assert!(!ctx.poll(false), "{kind:?}: called before data");
        a.write_all(b"x").unwrap();
        let end = Instant::now() + DEADLINE;
        while calls.load(SeqCst) == 0 {
            assert!(Instant::now() < end, "{kind:?}: no call");
            ctx.poll(true);
        }
        for i in 2..5 {
            assert!(ctx.poll(false), "{kind:?}: not level-triggered");
            assert_eq!(calls.load(SeqCst), i, "{kind:?}");
        }
        let mut buf = [0u8; 4];
        assert_eq!((&b).read(&mut buf).unwrap(), 1);
        // One more call may come from a poll armed before the read.
        ctx.poll(false);
        let n = calls.load(SeqCst);
        assert!(!ctx.poll(false), "{kind:?}: called once drained");
        assert_eq!(calls.load(SeqCst), n, "{kind:?}");
        ctx.set_fd_handler(b.as_fd(), None, None).unwrap();
    });
}

/// Bottom halves scheduled from other threads wake a blocking poll, every
/// time (the context's notifier on the ring for io_uring).
#[test]
fn other_threads_wake_a_blocking_poll() {
    both(|kind| {
        let ctx = ctx(kind);
        let ran = Arc::new(AtomicUsize::new(0));
        for i in 1..=200 {
            let (c, r) = (ctx.clone(), ran.clone());
            let t = std::thread::spawn(move || {
                if i % 2 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
                c.bh_schedule_oneshot(move || {
                    r.fetch_add(1, SeqCst);
                });
            });
            // A watchdog bounds a lost wake-up: it schedules its own BH
            // after the deadline, and the test then fails by name.
            let (c, stop) = (ctx.clone(), Arc::new(AtomicUsize::new(0)));
            let s2 = stop.clone();
            let dog = std::thread::spawn(move || {
                let end = Instant::now() + DEADLINE;
                while s2.load(SeqCst) == 0 && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if s2.load(SeqCst) == 0 {
                    c.bh_schedule_oneshot(|| {});
                }
            });
            while ran.load(SeqCst) < i {
                let start = Instant::now();
                ctx.poll(true);
                assert!(
                    start.elapsed() < DEADLINE,
                    "{kind:?}: wake-up {i} lost (the watchdog woke the poll)"
                );
            }
            stop.store(1, SeqCst);
            t.join().unwrap();
            dog.join().unwrap();
        }
    });
}

/// After `shutdown`, a socket whose handler was removed and which is then
/// closed is really closed: the peer reads end of stream (an io_uring poll
/// holding the file would keep it open).
#[test]
fn shutdown_lets_go_of_closed_fds() {
    both(|kind| {
        let ctx = ctx(kind);
        let (mut a, b) = UnixStream::pair().unwrap();
        ctx.set_fd_handler(b.as_fd(), Some(Box::new(|| {})), None)
            .unwrap();
        ctx.poll(false); // the poll is armed in the kernel
        ctx.shutdown();
        drop(b);
        a.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut buf = [0u8; 4];
        let n = a.read(&mut buf).expect("peer of a closed socket");
        assert_eq!(n, 0, "{kind:?}: the socket is still open");
    });
}

/// Removing a handler and closing the fd closes it at once, too.
#[test]
fn removed_handler_lets_go_of_closed_fds() {
    both(|kind| {
        let ctx = ctx(kind);
        let (mut a, b) = UnixStream::pair().unwrap();
        ctx.set_fd_handler(b.as_fd(), Some(Box::new(|| {})), None)
            .unwrap();
        ctx.poll(false);
        ctx.set_fd_handler(b.as_fd(), None, None).unwrap();
        drop(b);
        a.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(a.read(&mut buf).unwrap(), 0, "{kind:?}");
    });
}

#[test]
fn fdmon_names_parse() {
    assert_eq!(FdMon::parse("epoll"), Some(FdMon::Epoll));
    assert_eq!(FdMon::parse(""), Some(FdMon::Epoll));
    assert_eq!(FdMon::parse("io_uring"), Some(FdMon::IoUring));
    assert_eq!(FdMon::parse("io-uring"), Some(FdMon::IoUring));
    assert_eq!(FdMon::parse("kqueue"), None);
}

/// `CORIO_FDMON` picks the monitor of `AioContext::new` (a child process,
/// so that the variable does not leak into other tests).
#[test]
fn env_var_picks_the_monitor() {
    if let Ok(want) = std::env::var("CORIO_FDMON_TEST_CHILD") {
        let got = AioContext::new().unwrap().fd_monitor();
        assert_eq!(Some(got), FdMon::parse(&want));
        return;
    }
    for v in ["epoll", "io_uring"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "env_var_picks_the_monitor", "--nocapture"])
            .env("CORIO_FDMON", v)
            .env("CORIO_FDMON_TEST_CHILD", v)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "CORIO_FDMON={v}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("1 passed"), "child ran no test: {stdout}");
    }
}

/// An IoThread takes the monitor it is given, whatever `CORIO_FDMON`
/// says, and serves a coroutine on it.
#[test]
fn iothread_takes_the_monitor_it_is_given() {
    both(|kind| {
        let t = IoThread::with_fd_monitor("fdmon-test", kind).unwrap();
        let got = t.context().run_in(|| AioContext::current().fd_monitor());
        assert_eq!(got, kind, "io_uring refused on this machine");
        let h = t.spawn(|| {
            corio::yield_to_loop();
            7
        });
        helpers::wait_until("the IoThread's coroutine", || h.is_finished());
        assert_eq!(h.join().unwrap(), 7);
        t.join();
    });
}
