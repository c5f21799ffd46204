//! The blocking-mode guard rail (issue 10, item 3): a coroutine that uses a
//! channel in blocking mode (the default for accepted, connected and paired
//! sockets, and for pipes) yields when the channel would block, so its
//! IoThread goes on serving other coroutines; outside a coroutine a
//! non-blocking channel answers `std::io::Read` with `WouldBlock`.
//!
//! Each test starts a "stuck" coroutine on an IoThread, then checks that a
//! second coroutine on the same IoThread still runs (which it cannot if the
//! first blocked the thread in a system call), then unblocks the first.

mod helpers;

use std::io::{ErrorKind, Read};
use std::sync::mpsc;
use std::time::Duration;

use corio::io::{Channel, FileChannel, SocketAddress, SocketChannel};
use corio::{Coroutine, IoThread};
use helpers::{join_iothread, join_within, recv_within};

/// Runs `f` in a new coroutine on `t`'s thread.
fn start_on(t: &IoThread, f: impl FnOnce() + Send + 'static) {
    t.context()
        .bh_schedule_oneshot(move || Coroutine::new(f).enter());
}

/// Checks that another coroutine on `t` still runs.
fn assert_thread_serves_others(t: &IoThread, stuck: &str) {
    let (tx, rx) = mpsc::channel();
    start_on(t, move || tx.send(()).unwrap());
    recv_within(
        &rx,
        &format!("a second coroutine while the first {stuck}: the IoThread is blocked"),
    );
}

fn tcp_pair() -> (SocketChannel, SocketChannel) {
    let l = SocketChannel::listen_sync(&SocketAddress::inet("127.0.0.1", 0), 1).unwrap();
    let c = SocketChannel::connect_sync(&l.local_address().unwrap()).unwrap();
    let s = l.accept().unwrap();
    (s, c)
}

#[test]
fn accepted_socket_read_yields_in_coroutine() {
    let t = IoThread::new().unwrap();
    let (server, client) = tcp_pair(); // server: blocking mode, never changed
    assert!(server.is_blocking());
    let (tx, rx) = mpsc::channel();
    start_on(&t, move || {
        let mut buf = [0u8; 5];
        let r = server.read_all(&mut buf).map(|()| buf);
        tx.send(r).unwrap();
    });
    assert_thread_serves_others(&t, "reads an empty socket");
    client.write_all_bytes(b"hello").unwrap();
    assert_eq!(&recv_within(&rx, "the reader").unwrap(), b"hello");
    drop(client);
    join_iothread(t, "t");
}

#[test]
fn std_read_and_single_read_yield_in_coroutine() {
    let t = IoThread::new().unwrap();
    let (a, b) = SocketChannel::pair().unwrap();
    let (tx, rx) = mpsc::channel();
    start_on(&t, move || {
        let mut buf = [0u8; 3];
        // One call, the std way: yields, then returns what came.
        let n = (&a).read(&mut buf).unwrap();
        tx.send(buf[..n].to_vec()).unwrap();
        // One call, QEMU's way.
        let n = a.readv(&mut [std::io::IoSliceMut::new(&mut buf)]).unwrap();
        tx.send(buf[..n].to_vec()).unwrap();
    });
    assert_thread_serves_others(&t, "reads with std::io::Read");
    b.write_all_bytes(b"ab").unwrap();
    assert_eq!(recv_within(&rx, "the std read"), b"ab");
    assert_thread_serves_others(&t, "reads with readv");
    b.write_all_bytes(b"c").unwrap();
    assert_eq!(recv_within(&rx, "the readv"), b"c");
    drop(b);
    join_iothread(t, "t");
}

#[test]
fn connected_socket_write_yields_when_the_peer_is_full() {
    const LEN: usize = 16 << 20; // far beyond any socket buffer
    let t = IoThread::new().unwrap();
    let (server, client) = tcp_pair();
    let (tx, rx) = mpsc::channel();
    start_on(&t, move || {
        let data = vec![7u8; LEN];
        tx.send(client.write_all_bytes(&data)).unwrap();
    });
    assert_thread_serves_others(&t, "writes to a peer that does not read");
    let mut got = vec![0u8; LEN];
    server.read_all(&mut got).unwrap();
    recv_within(&rx, "the writer").unwrap();
    assert!(got.iter().all(|&b| b == 7));
    join_iothread(t, "t");
}

#[test]
fn blocking_listener_accept_yields_in_coroutine() {
    let t = IoThread::new().unwrap();
    let l = SocketChannel::listen_sync(&SocketAddress::inet("127.0.0.1", 0), 1).unwrap();
    let addr = l.local_address().unwrap();
    let (tx, rx) = mpsc::channel();
    start_on(&t, move || {
        let r = l.accept().map(|c| c.remote_address().is_ok());
        tx.send(r).unwrap();
    });
    assert_thread_serves_others(&t, "accepts with no client");
    let _c = SocketChannel::connect_sync(&addr).unwrap();
    assert!(recv_within(&rx, "the acceptor").unwrap());
    join_iothread(t, "t");
}

#[test]
fn pipe_read_yields_in_coroutine() {
    let t = IoThread::new().unwrap();
    let (r, w) = FileChannel::pipe().unwrap();
    let (tx, rx) = mpsc::channel();
    start_on(&t, move || {
        let mut buf = [0u8; 4];
        tx.send(r.read_all(&mut buf).map(|()| buf)).unwrap();
    });
    assert_thread_serves_others(&t, "reads an empty pipe");
    w.write_all_bytes(b"pipe").unwrap();
    assert_eq!(&recv_within(&rx, "the pipe reader").unwrap(), b"pipe");
    drop(w);
    join_iothread(t, "t");
}

/// Non-blocking mode keeps QEMU's single-call contract inside a coroutine:
/// `WouldBlock` comes back to the caller, who runs its own wait.
#[test]
fn nonblocking_single_read_returns_wouldblock_in_coroutine() {
    let t = IoThread::new().unwrap();
    let (a, _b) = SocketChannel::pair().unwrap();
    a.set_blocking(false).unwrap();
    assert!(!a.is_blocking());
    let (tx, rx) = mpsc::channel();
    start_on(&t, move || {
        let mut buf = [0u8; 1];
        let r = a.readv(&mut [std::io::IoSliceMut::new(&mut buf)]);
        tx.send(r.map_err(|e| e.kind())).unwrap();
    });
    assert_eq!(recv_within(&rx, "the reader"), Err(ErrorKind::WouldBlock));
    join_iothread(t, "t");
}

/// Outside a coroutine, `std::io::Read` on a non-blocking channel returns
/// `WouldBlock` at once, as `std`'s own non-blocking sockets do (it used to
/// wait in poll(2)).
#[test]
fn std_read_on_nonblocking_channel_outside_coroutine_is_wouldblock() {
    let (a, b) = SocketChannel::pair().unwrap();
    a.set_blocking(false).unwrap();
    let mut buf = [0u8; 4];
    let e = (&a).read(&mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WouldBlock);
    // The data path still works once there is data.
    b.write_all_bytes(b"data").unwrap();
    assert_eq!((&a).read(&mut buf).unwrap(), 4);
    assert_eq!(&buf, b"data");
    // And the `_all` functions still wait, as QEMU's do.
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        b.write_all_bytes(b"late").unwrap();
        b
    });
    a.read_all(&mut buf).unwrap();
    assert_eq!(&buf, b"late");
    drop(join_within(t, "t"));
}
