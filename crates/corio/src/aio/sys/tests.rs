//! The [`FdMonitor`] contract (see `sys/mod.rs`), run on every backend.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{eventfd, EventfdFlags};

use super::{events, Epoll, FdMonitor, Ready, Uring, EDGE};

/// How long a test waits for an event that must come.
const DEADLINE: Duration = Duration::from_secs(10);

fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK)
        .expect("pipe")
}

fn efd() -> OwnedFd {
    eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).expect("eventfd")
}

fn poke(fd: &OwnedFd) {
    rustix::io::write(fd, &1u64.to_ne_bytes()).expect("write");
}

/// One non-blocking wait's events.
fn now(m: &mut dyn FdMonitor) -> Vec<Ready> {
    let mut out = Vec::new();
    m.wait(0, &mut out).expect("wait(0)");
    out
}

/// Waits until `fd` is reported (blocking waits), with a deadline.
fn until(m: &mut dyn FdMonitor, fd: &impl AsRawFd, what: &str) -> u32 {
    let end = Instant::now() + DEADLINE;
    let mut out = Vec::new();
    while Instant::now() < end {
        out.clear();
        m.wait(100_000_000, &mut out).expect("wait");
        if let Some(r) = out.iter().find(|r| r.fd == fd.as_raw_fd()) {
            return r.events;
        }
    }
    panic!(
        "{what}: fd {} not reported within {DEADLINE:?}",
        fd.as_raw_fd()
    );
}

fn events_of(v: &[Ready], fd: &impl AsRawFd) -> Option<u32> {
    events_raw(v, fd.as_raw_fd())
}

fn events_raw(v: &[Ready], fd: std::os::fd::RawFd) -> Option<u32> {
    v.iter().find(|r| r.fd == fd).map(|r| r.events)
}

fn level_triggered(m: &mut dyn FdMonitor) {
    let (r, w) = pipe();
    m.register(r.as_fd(), events::IN).unwrap();
    assert_eq!(events_of(&now(m), &r), None, "empty pipe reported");
    rustix::io::write(&w, b"xy").unwrap();
    assert_ne!(until(m, &r, "first report") & events::IN, 0);
    // Not drained: reported by every wait.
    for i in 0..3 {
        let ev = events_of(&now(m), &r);
        assert_eq!(ev.map(|e| e & events::IN), Some(events::IN), "report {i}");
    }
    let mut buf = [0u8; 8];
    assert_eq!(rustix::io::read(&r, &mut buf).unwrap(), 2);
    // Drained: the report of the poll that was re-armed before the read
    // may still come once; after that, silence.
    now(m);
    assert_eq!(events_of(&now(m), &r), None, "drained pipe reported");
    m.deregister(r.as_fd());
}

fn writable_and_modify(m: &mut dyn FdMonitor) {
    let (r, w) = pipe();
    m.register(w.as_fd(), events::OUT).unwrap();
    assert_ne!(until(m, &w, "writable") & events::OUT, 0);
    // Interest changed to IN: an empty pipe's write end is never readable.
    m.register(w.as_fd(), events::IN).unwrap();
    now(m);
    assert_eq!(events_of(&now(m), &w), None, "stale interest reported");
    m.deregister(w.as_fd());
    drop(r);
}

fn hangup_without_interest(m: &mut dyn FdMonitor) {
    let (r, w) = pipe();
    m.register(r.as_fd(), 0).unwrap();
    assert_eq!(events_of(&now(m), &r), None);
    drop(w);
    assert_ne!(until(m, &r, "hang-up") & events::HUP, 0);
    m.deregister(r.as_fd());
}

fn deregister_stops_reports(m: &mut dyn FdMonitor) {
    let e = efd();
    poke(&e);
    m.register(e.as_fd(), events::IN).unwrap();
    until(m, &e, "readable eventfd");
    m.deregister(e.as_fd());
    assert_eq!(events_of(&now(m), &e), None, "deregistered fd reported");
    // Quiet when not registered.
    m.deregister(e.as_fd());
}

fn reused_number(m: &mut dyn FdMonitor) {
    let mut a = efd();
    poke(&a);
    m.register(a.as_fd(), events::IN).unwrap();
    until(m, &a, "first fd");
    m.deregister(a.as_fd());
    // The number now names another (unset) eventfd: dup2 closes the old
    // file and reuses the number at once, with no window for other threads.
    let b = efd();
    rustix::io::dup2(&b, &mut a).unwrap();
    drop(b);
    m.register(a.as_fd(), events::IN).unwrap();
    assert_eq!(events_of(&now(m), &a), None, "old registration leaked");
    poke(&a);
    until(m, &a, "new fd");
    m.deregister(a.as_fd());
}

fn edge_notifier(m: &mut dyn FdMonitor) {
    let e = efd();
    m.register(e.as_fd(), events::IN | EDGE).unwrap();
    assert_eq!(events_of(&now(m), &e), None);
    for round in 0..3 {
        poke(&e); // never read: only the writes are edges
        until(m, &e, "edge");
        assert_eq!(
            events_of(&now(m), &e),
            None,
            "edge reported twice ({round})"
        );
    }
    m.deregister(e.as_fd());
}

fn timeout_without_events(m: &mut dyn FdMonitor) {
    let e = efd();
    m.register(e.as_fd(), events::IN).unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    m.wait(20_000_000, &mut out).unwrap();
    assert!(out.is_empty(), "{out:?}");
    // It slept (a lower bound only: never an upper one in a test).
    assert!(start.elapsed() >= Duration::from_millis(19));
    m.deregister(e.as_fd());
}

fn wake_from_other_thread(m: &mut dyn FdMonitor) {
    let e = std::sync::Arc::new(efd());
    m.register(e.as_fd(), events::IN | EDGE).unwrap();
    for _ in 0..20 {
        let e2 = e.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1));
            poke(&e2);
        });
        until(m, &*e, "wake-up from another thread");
        t.join().unwrap();
    }
    m.deregister(e.as_fd());
}

/// More fds than the io_uring backend's queue holds (256 SQEs, 512 CQEs):
/// the submission makes room and the overflowing completions are kept.
fn many_fds(m: &mut dyn FdMonitor) {
    let fds: Vec<OwnedFd> = (0..700).map(|_| efd()).collect();
    for f in &fds {
        poke(f);
        m.register(f.as_fd(), events::IN).unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let end = Instant::now() + DEADLINE;
    let mut out = Vec::new();
    while seen.len() < fds.len() && Instant::now() < end {
        out.clear();
        m.wait(10_000_000, &mut out).unwrap();
        seen.extend(out.iter().map(|r| r.fd));
    }
    assert_eq!(seen.len(), fds.len(), "not every ready fd was reported");
    for f in &fds {
        m.deregister(f.as_fd());
    }
}

/// io_uring only: registration is batched, so an fd closed before the
/// next wait is found then, and reported as ERR | NVAL, once. (Epoll
/// checks at `register`, and drops the registration of a closed file.)
#[test]
fn uring_closed_fd_reports_error() {
    let m = &mut Uring::new().unwrap();
    // The number is high so that no other test thread reuses it meanwhile.
    let e = rustix::io::fcntl_dupfd_cloexec(efd(), 15_000).expect("dup to a high fd");
    let raw = e.as_raw_fd();
    // SAFETY: `raw` names `e`, open until after `register` returns; the
    // monitor keeps only the number.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
    m.register(borrowed, events::IN).unwrap();
    drop(e);
    let ev = now(m);
    let ev = events_raw(&ev, raw).unwrap_or(0);
    assert_eq!(ev, events::ERR | events::NVAL, "closed fd: {ev:#x}");
    assert_eq!(events_raw(&now(m), raw), None, "error reported twice");
    // SAFETY: as above; deregistering a closed number is allowed.
    m.deregister(unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) });
}

fn urgent_data(m: &mut dyn FdMonitor) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    m.register(b.as_fd(), events::PRI).unwrap();
    assert_eq!(events_of(&now(m), &b), None);
    rustix::net::send(&a, b"!", rustix::net::SendFlags::OOB).unwrap();
    assert_ne!(until(m, &b, "urgent data") & events::PRI, 0);
    m.deregister(b.as_fd());
}

macro_rules! contract {
    ($($name:ident),*) => {
        mod epoll {
            $( #[test] fn $name() { super::$name(&mut super::Epoll::new().unwrap()) } )*
        }
        mod uring {
            $( #[test] fn $name() { super::$name(&mut super::Uring::new().unwrap()) } )*
        }
    };
}

contract!(
    level_triggered,
    writable_and_modify,
    hangup_without_interest,
    deregister_stops_reports,
    reused_number,
    edge_notifier,
    timeout_without_events,
    wake_from_other_thread,
    many_fds,
    urgent_data
);

/// The io_uring monitor keeps its registration table in step.
#[test]
fn uring_registrations_follow_register_and_deregister() {
    let mut m = Uring::new().unwrap();
    let (r, w) = pipe();
    m.register(r.as_fd(), events::IN).unwrap();
    m.register(w.as_fd(), events::OUT).unwrap();
    now(&mut m);
    assert_eq!(m.registrations(), 2);
    m.deregister(r.as_fd());
    m.deregister(w.as_fd());
    assert_eq!(m.registrations(), 0);
}

/// A ring dropped with a read in the kernel (an empty pipe's) leaves no
/// read behind to consume the pipe's data. (That `Drop` waits for the
/// cancellation's CQE before freeing the buffer is not observable here:
/// closing the ring cancels a pipe read too; AddressSanitizer would see a
/// write into a freed buffer.)
#[test]
fn uring_drop_ends_reads_in_flight() {
    use super::FileOp;
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let mut m = Uring::new().unwrap();
    let waiter = crate::Coroutine::new(|| {}).handle();
    let op = FileOp::Read {
        fd: r.as_raw_fd(),
        offset: 0,
        buf: vec![0; 64],
        at: 0,
    };
    let id = m.submit_op(op, std::ptr::null(), waiter);
    now(&mut m); // submitted: the read now waits in the kernel
    assert_eq!(m.ops_in_flight(), 1);
    assert!(m.take_op(id).is_none());
    drop(m);
    rustix::io::write(&w, b"after").unwrap();
    let mut fds = [rustix::event::PollFd::new(&r, rustix::event::PollFlags::IN)];
    let ts = rustix::event::Timespec {
        tv_sec: 10,
        tv_nsec: 0,
    };
    assert_eq!(
        rustix::event::poll(&mut fds, Some(&ts)).unwrap(),
        1,
        "a read outlived its ring"
    );
    let mut buf = [0u8; 16];
    let n = rustix::io::read(&r, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"after");
}

/// A completed read hands back its buffer with the data, once.
#[test]
fn uring_read_completes_and_wakes() {
    use super::FileOp;
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    rustix::io::write(&w, b"data").unwrap();
    let mut m = Uring::new().unwrap();
    let waiter = crate::Coroutine::new(|| {}).handle();
    let op = FileOp::Read {
        fd: r.as_raw_fd(),
        offset: 0,
        buf: vec![0; 8],
        at: 2,
    };
    let id = m.submit_op(op, std::ptr::null(), waiter);
    let end = Instant::now() + DEADLINE;
    let (res, buf) = loop {
        assert!(Instant::now() < end, "read not completed");
        let mut out = Vec::new();
        m.wait(10_000_000, &mut out).unwrap();
        if let Some(r) = m.take_op(id) {
            break r;
        }
    };
    assert_eq!(res, 4);
    assert_eq!(&buf, b"\0\0data\0\0");
    let mut woken = Vec::new();
    m.take_woken(&mut woken);
    assert_eq!(woken.len(), 1);
    assert!(m.take_op(id).is_none());
}

/// A signal that interrupts a blocking wait (`EINTR`) makes it return `Ok`
/// with no events, on both monitors.
fn interrupted_wait(mut m: Box<dyn FdMonitor>) {
    use std::os::unix::thread::JoinHandleExt;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    extern "C" fn on_signal(_: libc::c_int) {}
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
    // No SA_RESTART: the wait must see EINTR.
    // SAFETY: `sa` is initialised; the handler only returns.
    let r = unsafe { libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()) };
    assert_eq!(r, 0);
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let t = std::thread::spawn(move || {
        let mut out = Vec::new();
        let r = m.wait(-1, &mut out);
        d2.store(true, SeqCst);
        (r.map_err(|e| e.to_string()), out)
    });
    let end = Instant::now() + DEADLINE;
    while !done.load(SeqCst) {
        assert!(Instant::now() < end, "the signal never ended the wait");
        std::thread::sleep(Duration::from_millis(5));
        // SAFETY: the thread is joined only below, so its pthread_t is valid.
        unsafe { libc::pthread_kill(t.as_pthread_t(), libc::SIGUSR2) };
    }
    let (r, out) = t.join().unwrap();
    assert_eq!(r, Ok(()), "EINTR must not be an error");
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn epoll_interrupted_wait() {
    interrupted_wait(Box::new(Epoll::new().unwrap()));
}

#[test]
fn uring_interrupted_wait() {
    interrupted_wait(Box::new(Uring::new().unwrap()));
}
