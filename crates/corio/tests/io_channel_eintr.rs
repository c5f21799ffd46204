//! EINTR: a signal that lands while a channel operation sleeps in the
//! kernel (read, write, accept, poll(2) in `wait`, epoll in an AioContext)
//! must neither lose data nor surface as an error. QEMU's channels retry
//! `EINTR` in every `io_*` callback and in `qio_channel_wait`; so do ours.
//!
//! The signal is SIGUSR1 with a handler installed *without* `SA_RESTART`,
//! so that the kernel really does return `EINTR` instead of restarting the
//! call; a helper thread sends it to the thread under test every 100 us
//! while that thread is blocked.

mod helpers;
mod io_channel_helpers;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use corio::io::address::SocketAddress;
use corio::io::{Channel, SocketChannel};
use corio::{AioContext, Coroutine};
use helpers::{join_within, poll_blocking, LockExt};
use io_channel_helpers::pattern;

/// Signals delivered, counted by the handler.
static DELIVERED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_sigusr1(_: libc::c_int) {
    DELIVERED.fetch_add(1, Ordering::Relaxed);
}

fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // `sa_flags` deliberately lacks SA_RESTART, so that blocked calls
        // fail with EINTR.
        // SAFETY: a zeroed `sigaction` is a valid "no flags, empty mask"
        // value; the handler only touches an atomic (async-signal-safe).
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigusr1 as *const () as libc::sighandler_t;
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut())
        };
        assert_eq!(r, 0, "sigaction failed");
    });
}

/// Sends SIGUSR1 to one thread every 100 us until stopped.
struct Pester {
    stop: Arc<AtomicBool>,
    sent: JoinHandle<usize>,
}

impl Pester {
    /// `target` must stay joinable (not joined, not detached) until
    /// [`Pester::finish`] returns: glibc keeps the thread's id valid until
    /// it is joined, even after the thread function returned.
    fn start(target: libc::pthread_t) -> Pester {
        install_handler();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let target = target as usize;
        let sent = std::thread::spawn(move || {
            let mut n = 0;
            while !s.load(Ordering::Relaxed) {
                // SAFETY: the target thread is not joined before `finish`
                // has joined this thread (see `start`), so its pthread_t
                // is valid; SIGUSR1 has a handler (installed above).
                let r = unsafe { libc::pthread_kill(target as libc::pthread_t, libc::SIGUSR1) };
                assert_eq!(r, 0, "pthread_kill failed");
                n += 1;
                std::thread::sleep(Duration::from_micros(100));
            }
            n
        });
        Pester { stop, sent }
    }

    /// Stops sending; returns how many signals were sent.
    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        join_within(self.sent, "signal sender")
    }
}

/// Waits (bounded) until `target` finished under a pester, stops the
/// pester, then joins `target`: the order that keeps the pthread_t valid.
/// Returns the target's result and the number of signals sent.
fn finish_under<T>(target: JoinHandle<T>, pester: Pester, what: &str) -> (T, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !target.is_finished() {
        assert!(Instant::now() < deadline, "{what} thread hung");
        std::thread::sleep(Duration::from_millis(1));
    }
    let sent = pester.finish();
    (join_within(target, what), sent)
}

/// A connected pair: a channel for the thread under test, and a plain std
/// stream for the test thread, whose calls time out after 30 s so that a
/// thread under test that dies fails the test instead of hanging it.
fn pair() -> (SocketChannel, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    b.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    b.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    (SocketChannel::new_fd(a.into()).unwrap(), b)
}

const LEN: usize = 1 << 20;
const CHUNK: usize = 64 << 10;

/// Writes `data` in chunks with pauses, so that the reader blocks between
/// chunks and the signals find it asleep in the kernel.
fn trickle(mut w: &UnixStream, data: &[u8]) {
    for c in data.chunks(CHUNK) {
        w.write_all(c).expect("the peer under test stopped reading");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `read_all` in a thread that keeps being interrupted: blocking mode
/// retries read(2); non-blocking mode (outside a coroutine) retries the
/// poll(2) in `wait` as well.
fn read_under_signals(blocking: bool) {
    let (r, w) = pair();
    r.set_blocking(blocking).unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; LEN];
        r.read_all(&mut got).map(|()| got)
    });
    let before = DELIVERED.load(Ordering::Relaxed);
    let pester = Pester::start(reader.as_pthread_t());
    let data = pattern(LEN, 7);
    trickle(&w, &data);
    let (got, sent) = finish_under(reader, pester, "reader");
    let got = got.expect("read_all failed under signals");
    assert!(sent > 0);
    assert!(
        DELIVERED.load(Ordering::Relaxed) > before,
        "no signal arrived"
    );
    assert!(
        got == data,
        "data read under signals differs from data written"
    );
}

#[test]
fn io_channel_eintr_blocking_read_all() {
    read_under_signals(true);
}

#[test]
fn io_channel_eintr_nonblocking_read_all_waits() {
    read_under_signals(false);
}

/// A blocking `write_all` far larger than the socket buffer, interrupted
/// while the peer drains slowly: a partial send or an EINTR must neither
/// duplicate nor drop a byte.
#[test]
fn io_channel_eintr_blocking_write_all() {
    let (w, mut r) = pair();
    let data = pattern(4 * LEN, 9);
    let out = data.clone();
    let writer = std::thread::spawn(move || w.write_all_bytes(&out));
    let pester = Pester::start(writer.as_pthread_t());
    let mut got = vec![0u8; data.len()];
    for c in got.chunks_mut(CHUNK) {
        std::thread::sleep(Duration::from_micros(500));
        r.read_exact(c)
            .expect("the writer under test stopped writing");
    }
    let (res, sent) = finish_under(writer, pester, "writer");
    res.expect("write_all failed under signals");
    assert!(sent > 0);
    assert!(got == data, "data written under signals arrived changed");
}

/// `accept` on a blocking listener keeps waiting through signals and
/// returns the client that finally connects.
#[test]
fn io_channel_eintr_blocking_accept() {
    let l = SocketChannel::listen_sync(&SocketAddress::inet("127.0.0.1", 0), 1).unwrap();
    let addr = l.local_address().unwrap();
    let acceptor = std::thread::spawn(move || l.accept().map(|c| c.remote_address()));
    let pester = Pester::start(acceptor.as_pthread_t());
    std::thread::sleep(Duration::from_millis(20));
    let c = SocketChannel::connect_sync(&addr).unwrap();
    let (res, sent) = finish_under(acceptor, pester, "acceptor");
    let peer = res.expect("accept failed under signals").unwrap();
    assert_eq!(peer, c.local_address().unwrap());
    assert!(sent > 0);
}

/// A coroutine reading in an AioContext whose thread is interrupted in
/// epoll_wait: the interrupted poll is not an error, the coroutine resumes
/// when the data arrives, and nothing is lost.
#[test]
fn io_channel_eintr_coroutine_in_context() {
    let (r, w) = pair();
    r.set_blocking(false).unwrap();
    let poller = std::thread::spawn(move || {
        let ctx = AioContext::new().unwrap();
        let got = Arc::new(std::sync::Mutex::new(None));
        let g = got.clone();
        let co = Coroutine::new(move || {
            let mut buf = vec![0u8; LEN];
            let r = r.read_all(&mut buf).map(|()| buf);
            *g.locked() = Some(r);
        });
        co.enter();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !co.is_terminated() {
            assert!(Instant::now() < deadline, "coroutine never finished");
            poll_blocking(&ctx);
        }
        let r = got.locked().take();
        r.expect("coroutine ended without a result")
    });
    let pester = Pester::start(poller.as_pthread_t());
    let data = pattern(LEN, 11);
    trickle(&w, &data);
    let (got, sent) = finish_under(poller, pester, "poller");
    let got = got.expect("read_all in a coroutine failed under signals");
    assert!(sent > 0);
    assert!(got == data, "data read by the coroutine differs");
}
