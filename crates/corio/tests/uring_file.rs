//! `AioFile`: coroutine file I/O on the context's io_uring, in the three
//! ways a context can serve it: the io_uring fd monitor's ring, a separate
//! ring beside epoll, and the thread pool when the kernel refuses io_uring
//! (a seccomp filter on the test's thread makes `io_uring_setup` fail).

mod helpers;

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corio::io::AioFile;
use corio::{AioContext, FdMon, JoinError, ThreadPool};
use helpers::Rng;

const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// The io_uring fd monitor; file operations on its ring.
    UringMonitor,
    /// epoll, and a ring for file operations beside it.
    EpollRing,
    /// io_uring refused by seccomp: epoll and the thread pool.
    Pool,
}

/// Makes `io_uring_setup` fail with `errno` on the calling thread (and the
/// threads it starts): a seccomp filter, as a container runtime installs.
fn deny_io_uring_setup(errno: u32) {
    let filter = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | errno,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(
        r,
        0,
        "PR_SET_NO_NEW_PRIVS: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `prog` points to `filter`, both alive for the call; the
    // kernel copies the program.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    };
    assert_eq!(r, 0, "PR_SET_SECCOMP: {}", std::io::Error::last_os_error());
}

/// Runs `test` on a fresh thread whose current context serves file I/O
/// the way `mode` says.
fn on_context(mode: Mode, test: impl FnOnce(&AioContext) + Send + 'static) {
    std::thread::spawn(move || {
        let ctx = match mode {
            Mode::UringMonitor => AioContext::with_fd_monitor(FdMon::IoUring).unwrap(),
            Mode::EpollRing => AioContext::with_fd_monitor(FdMon::Epoll).unwrap(),
            Mode::Pool => {
                deny_io_uring_setup(libc::EPERM as u32);
                AioContext::with_fd_monitor(FdMon::IoUring).unwrap()
            }
        };
        let want = if mode == Mode::UringMonitor {
            FdMon::IoUring
        } else {
            FdMon::Epoll
        };
        assert_eq!(ctx.fd_monitor(), want, "{mode:?}");
        test(&ctx);
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// Runs `f` in a coroutine spawned on `ctx` and polls until it finishes;
/// a watchdog thread kicks the loop so that the deadline is checked.
fn run<T: Send + 'static>(ctx: &AioContext, f: impl FnOnce() -> T + Send + 'static) -> T {
    let mut h = ctx.spawn(f);
    let stop = Arc::new(AtomicBool::new(false));
    let dog = {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                ctx.bh_schedule_oneshot(|| {});
            }
        })
    };
    let end = Instant::now() + DEADLINE;
    let r = loop {
        if let Some(r) = h.try_join() {
            break r;
        }
        assert!(
            Instant::now() < end,
            "file operation not completed in {DEADLINE:?}"
        );
        ctx.poll(true);
    };
    stop.store(true, SeqCst);
    dog.join().unwrap();
    r.unwrap_or_else(|e| panic!("coroutine failed: {e}"))
}

fn temp_file(len: u64) -> File {
    let p = std::env::temp_dir().join(format!(
        "corio-uring-file-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    std::fs::remove_file(&p).unwrap();
    f.set_len(len).unwrap();
    f
}

/// xorshift64: reproducible offsets without a dependency.
fn random_offsets_match_shadow(mode: Mode) {
    on_context(mode, move |ctx| {
        const SIZE: u64 = 256 * 1024;
        let file = AioFile::new(temp_file(SIZE));
        let ops = if std::env::var_os("CORIO_TEST_THOROUGH").is_some() {
            5000
        } else {
            400
        };
        run(ctx, move || {
            let mut shadow = vec![0u8; SIZE as usize];
            let mut rng = Rng::new(1);
            for i in 0..ops {
                let len = 1 + rng.below(16 * 1024);
                let off = rng.below((SIZE - len as u64) as usize) as u64;
                if rng.below(2) == 0 {
                    let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
                    let (r, back) = file.write_all_at(off, data);
                    r.unwrap();
                    shadow[off as usize..off as usize + len].copy_from_slice(&back);
                } else {
                    let (n, buf) = file.read_full_at(off, vec![0xa5; len]);
                    assert_eq!(n.unwrap(), len, "op {i}");
                    assert!(
                        buf == shadow[off as usize..off as usize + len],
                        "op {i}: read at {off} len {len} differs from the shadow"
                    );
                }
            }
            file.fsync(false).unwrap();
            file.fsync(true).unwrap();
            let (n, all) = file.read_full_at(0, vec![0; SIZE as usize]);
            assert_eq!(n.unwrap(), SIZE as usize);
            assert!(all == shadow, "whole file differs from the shadow");
        });
        if mode == Mode::Pool {
            assert!(
                ThreadPool::for_context(ctx).threads() > 0,
                "the fallback did not use the thread pool"
            );
        }
        assert_eq!(ctx.uring_ops_in_flight(), 0);
    });
}

fn short_reads_at_eof(mode: Mode) {
    on_context(mode, |ctx| {
        let f = temp_file(0);
        let file = AioFile::new(f);
        run(ctx, move || {
            let (r, _) = file.write_all_at(0, b"0123456789".to_vec());
            r.unwrap();
            let (n, buf) = file.read_at(5, vec![0; 16]);
            assert_eq!(n.unwrap(), 5);
            assert_eq!(&buf[..5], b"56789");
            let (n, buf) = file.read_full_at(2, vec![0; 100]);
            assert_eq!(n.unwrap(), 8);
            assert_eq!(&buf[..8], b"23456789");
            assert_eq!(file.read_at(10, vec![0; 4]).0.unwrap(), 0);
            assert_eq!(file.read_at(1 << 40, vec![0; 4]).0.unwrap(), 0);
        });
    });
}

fn errors_are_reported(mode: Mode) {
    on_context(mode, |ctx| {
        let rw = temp_file(4096);
        let path = format!("/proc/self/fd/{}", rw.as_raw_fd());
        let ro = AioFile::new(File::open(&path).unwrap());
        let rw = AioFile::new(rw);
        run(ctx, move || {
            let (r, buf) = ro.write_at(0, vec![1; 512]);
            assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EBADF));
            assert_eq!(buf, vec![1; 512], "the buffer comes back");
            // Past the file system's largest file size: EFBIG, no signal.
            let (r, _) = rw.write_at(i64::MAX as u64 - 10, vec![1; 512]);
            let e = r.unwrap_err().raw_os_error();
            assert!(matches!(e, Some(libc::EFBIG | libc::EINVAL)), "{e:?}");
            let e = rw.fallocate(0, i64::MAX as u64 - 10, 4096).unwrap_err();
            assert!(
                matches!(e.raw_os_error(), Some(libc::EFBIG | libc::EINVAL)),
                "{e}"
            );
        });
    });
}

/// ENOSPC on a 64 KiB tmpfs (needs the right to mount, as root in CI).
fn no_space(mode: Mode) {
    let dir = std::env::temp_dir().join(format!("corio-enospc-{}-{mode:?}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&dir)
        .status()
        .expect("the mount command (util-linux)");
    assert!(
        st.success(),
        "cannot mount a tmpfs at {}: {st}",
        dir.display()
    );
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("f"))
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        on_context(mode, move |ctx| {
            let file = AioFile::new(file);
            run(ctx, move || {
                let e = file.fallocate(0, 0, 1 << 20).unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "fallocate: {e}");
                let (r, _) = file.write_all_at(0, vec![7; 1 << 20]);
                let e = r.unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "write: {e}");
            });
        })
    }));
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&dir)
        .status();
    let _ = std::fs::remove_dir(&dir);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap()
}

/// A read that cannot complete (an empty pipe) is in flight when the
/// context shuts down: the coroutine is cancelled, the read cancelled in
/// the kernel, and its buffer kept until then. Nothing was read: the data
/// written afterwards is all still in the pipe.
fn cancelled_by_shutdown(mode: Mode) {
    on_context(mode, move |ctx| {
        let (r, w) = pipe();
        let file = AioFile::new(r.try_clone().unwrap());
        let h = ctx.spawn(move || file.read_at(0, vec![0; 64]).0.map(|_| ()));
        let end = Instant::now() + DEADLINE;
        let want = if mode == Mode::Pool { 0 } else { 1 };
        while ctx.uring_ops_in_flight() != want || (mode == Mode::Pool && !started(ctx)) {
            assert!(Instant::now() < end, "the read never went in flight");
            ctx.poll(false);
            std::thread::yield_now();
        }
        if mode == Mode::Pool {
            // A blocked pool worker cannot be cancelled (QEMU's neither):
            // unblock it so that the pool can stop.
            rustix::io::write(&w, b"x").unwrap();
        }
        assert_eq!(ctx.shutdown(), 0);
        assert!(matches!(h.join(), Err(JoinError::Cancelled) | Ok(Ok(()))));
        while ctx.uring_ops_in_flight() != 0 {
            assert!(Instant::now() < end, "the cancellation never completed");
            ctx.poll(false);
        }
        if mode != Mode::Pool {
            rustix::io::write(&w, b"intact").unwrap();
            let mut buf = [0u8; 16];
            let n = rustix::io::read(&r, &mut buf).unwrap();
            assert_eq!(&buf[..n], b"intact", "the cancelled read consumed data");
        }
    });
}

fn started(ctx: &AioContext) -> bool {
    ThreadPool::for_context(ctx).threads() > 0 && ThreadPool::for_context(ctx).queued() == 0
}

/// The context is dropped right after its shutdown cancelled a read
/// that was in the kernel: the ring's drop waits for the kernel to let go
/// of the buffer (or the cancellation was reaped already). Afterwards the
/// pipe's data is intact: no read is left behind to consume it.
fn dropped_with_read_in_flight(mode: Mode) {
    let (r, w) = pipe();
    let file = AioFile::new(r.try_clone().unwrap());
    std::thread::spawn(move || {
        let ctx = match mode {
            Mode::UringMonitor => AioContext::with_fd_monitor(FdMon::IoUring).unwrap(),
            _ => AioContext::with_fd_monitor(FdMon::Epoll).unwrap(),
        };
        let h = ctx.spawn(move || file.read_at(0, vec![0; 64]).0.map(|_| ()));
        let end = Instant::now() + DEADLINE;
        while ctx.uring_ops_in_flight() == 0 {
            assert!(Instant::now() < end, "the read never went in flight");
            ctx.poll(false);
        }
        assert_eq!(ctx.shutdown(), 0);
        assert!(matches!(h.join(), Err(JoinError::Cancelled)));
        // The thread's end drops the context (the thread-local current
        // context included), and with it the ring.
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
    rustix::io::write(&w, b"after").unwrap();
    let mut fds = [rustix::event::PollFd::new(&r, rustix::event::PollFlags::IN)];
    let ts = rustix::event::Timespec {
        tv_sec: 10,
        tv_nsec: 0,
    };
    let n = rustix::event::poll(&mut fds, Some(&ts)).unwrap();
    assert_eq!(n, 1, "the data was consumed: a read outlived its context");
    let mut buf = [0u8; 16];
    let n = rustix::io::read(&r, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"after");
}

macro_rules! per_mode {
    ($($name:ident),*) => {
        mod uring_monitor { $( #[test] fn $name() { super::$name(super::Mode::UringMonitor) } )* }
        mod epoll_ring { $( #[test] fn $name() { super::$name(super::Mode::EpollRing) } )* }
        mod pool { $( #[test] fn $name() { super::$name(super::Mode::Pool) } )* }
    };
}

per_mode!(
    random_offsets_match_shadow,
    short_reads_at_eof,
    errors_are_reported,
    no_space,
    cancelled_by_shutdown
);

#[test]
fn uring_monitor_dropped_with_read_in_flight() {
    dropped_with_read_in_flight(Mode::UringMonitor);
}

#[test]
fn epoll_ring_dropped_with_read_in_flight() {
    dropped_with_read_in_flight(Mode::EpollRing);
}

/// Every errno a kernel may refuse io_uring with falls back to epoll.
#[test]
fn fallback_on_enosys_and_eperm() {
    for errno in [libc::ENOSYS, libc::EPERM, libc::ENOMEM] {
        std::thread::spawn(move || {
            deny_io_uring_setup(errno as u32);
            let ctx = AioContext::with_fd_monitor(FdMon::IoUring).unwrap();
            assert_eq!(ctx.fd_monitor(), FdMon::Epoll, "errno {errno}");
            // And the context works: a bottom half runs.
            let ran = Arc::new(AtomicBool::new(false));
            let r2 = ran.clone();
            ctx.bh_schedule_oneshot(move || r2.store(true, SeqCst));
            assert!(ctx.poll(false));
            assert!(ran.load(SeqCst));
        })
        .join()
        .unwrap();
    }
}
