//! An fd read handler runs on hang-up and on error, not only on
//! readability (QEMU's aio-posix dispatches `io_read` for
//! `G_IO_IN | G_IO_HUP | G_IO_ERR`): a coroutine reading an empty pipe must
//! wake when the writer closes it, or it would sleep forever.

mod helpers;

use std::cell::Cell;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use corio::io::{Channel, FileChannel};
use corio::{AioContext, Coroutine};
use helpers::{join_within, poll_blocking, poll_until_within};

fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK)
        .unwrap()
}

/// Registers a counting read handler for `fd`.
fn count_reads(ctx: &AioContext, fd: &OwnedFd) -> Arc<AtomicUsize> {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    ctx.set_fd_handler(
        fd.as_fd(),
        Some(Box::new(move || {
            n2.fetch_add(1, SeqCst);
        })),
        None,
    )
    .unwrap();
    n
}

/// The read end of a pipe whose writer closed, with no data: poll(2)
/// reports HUP without IN. The read handler runs (and reads EOF).
#[test]
fn read_handler_runs_on_hup_without_in() {
    let ctx = AioContext::new().unwrap();
    let (r, w) = pipe();
    let n = count_reads(&ctx, &r);
    assert!(!ctx.poll(false));
    assert_eq!(n.load(SeqCst), 0, "nothing to read yet");
    drop(w);
    assert!(poll_blocking(&ctx), "the hang-up is progress");
    assert!(n.load(SeqCst) >= 1, "the read handler did not run on HUP");
    let mut buf = [0u8; 1];
    assert_eq!(rustix::io::read(&r, &mut buf).unwrap(), 0, "EOF");
    ctx.set_fd_handler(r.as_fd(), None, None).unwrap();
}

/// The write end of a pipe whose reader closed: poll(2) reports ERR (and
/// no IN). A read handler registered on it runs.
#[test]
fn read_handler_runs_on_err_without_in() {
    let ctx = AioContext::new().unwrap();
    let (r, w) = pipe();
    let n = count_reads(&ctx, &w);
    assert!(!ctx.poll(false));
    assert_eq!(n.load(SeqCst), 0);
    drop(r);
    assert!(poll_blocking(&ctx), "the error is progress");
    assert!(n.load(SeqCst) >= 1, "the read handler did not run on ERR");
    ctx.set_fd_handler(w.as_fd(), None, None).unwrap();
}

/// A coroutine reading an empty pipe sleeps; when another thread closes the
/// writer, it wakes and reads the end of stream.
#[test]
fn coroutine_reading_empty_pipe_wakes_when_writer_closes() {
    let ctx = AioContext::new().unwrap();
    let (r, w) = pipe();
    let ch = FileChannel::new_fd(r);
    ch.set_blocking(false).unwrap();
    let got = Rc::new(Cell::new(None));
    let g = got.clone();
    let co = Coroutine::new(move || {
        let mut buf = [0u8; 16];
        g.set(Some(ch.read_all_eof(&mut buf).map_err(|e| e.to_string())));
    });
    co.enter();
    assert!(!co.is_terminated(), "the read must wait: the pipe is empty");
    assert!(!ctx.poll(false));
    assert!(!co.is_terminated());
    join_within(std::thread::spawn(move || drop(w)), "the writer closing");
    poll_until_within(
        &ctx,
        "the reading coroutine to wake on the writer's hang-up",
        Duration::from_secs(10),
        || co.is_terminated(),
    );
    assert_eq!(got.take(), Some(Ok(false)), "a clean end of stream");
}
