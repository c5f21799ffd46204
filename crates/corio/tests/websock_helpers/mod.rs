//! Helpers of the WebSocket channel tests (io_channel_websock.rs and
//! io_channel_websock_errors.rs): a listener, a bounded accept, coroutine
//! runners, clients with timeouts, echo steps, the QIOTask handshake.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use corio::io::address::SocketAddress;
use corio::io::{Channel, SocketChannel, WebsockChannel};
use corio::{AioContext, Coroutine, IoThread};
use tungstenite::{Bytes, Message, WebSocket};

use crate::helpers::poll_until;

pub const DEADLINE: Duration = Duration::from_secs(60);
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Message sizes around the 7-, 16- and 64-bit length forms, and 1 MiB.
pub const SIZES: [usize; 6] = [1, 125, 126, 65535, 65536, 1 << 20];

pub fn listen() -> (SocketChannel, u16) {
    let l = SocketChannel::listen_sync(&SocketAddress::inet("127.0.0.1", 0), 16).unwrap();
    l.set_blocking(false).unwrap();
    let port = match l.local_address().unwrap() {
        SocketAddress::Inet(a) => a.port,
        other => panic!("not a TCP address: {other}"),
    };
    (l, port)
}

/// Accepts from the non-blocking listener, failing the test at the deadline.
pub fn accept(l: &SocketChannel) -> SocketChannel {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match l.accept() {
            Ok(s) => return s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no client connected");
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Runs `f` in a new coroutine on `t`; its result arrives on the receiver.
pub fn spawn_on<T: Send + 'static>(
    t: &IoThread,
    f: impl FnOnce() -> T + Send + 'static,
) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel();
    t.context().run_in(move || {
        Coroutine::new(move || {
            let _ = tx.send(f());
        })
        .enter();
    });
    rx
}

/// Runs `f` in a coroutine of `ctx`, polling `ctx` until it returns.
pub fn run_in_coroutine<T: 'static>(
    ctx: &AioContext,
    what: &str,
    f: impl FnOnce() -> T + 'static,
) -> T {
    let out = std::rc::Rc::new(std::cell::RefCell::new(None));
    let o = out.clone();
    let co = Coroutine::new(move || *o.borrow_mut() = Some(f()));
    co.enter();
    poll_until(ctx, what, || co.is_terminated());
    let r = out.borrow_mut().take();
    r.unwrap_or_else(|| panic!("{what}: coroutine ended without a result"))
}

pub fn tcp_client(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// The server side of the echo tests: handshake, then for each size read
/// exactly that many bytes and write them back; then expect end of stream.
pub fn echo_server(ws: &WebsockChannel, sizes: &[usize]) -> Result<(), String> {
    ws.handshake_sync().map_err(|e| format!("handshake: {e}"))?;
    for &n in sizes {
        let mut buf = vec![0u8; n];
        ws.read_all(&mut buf)
            .map_err(|e| format!("reading {n} bytes: {e}"))?;
        ws.write_all_bytes(&buf)
            .map_err(|e| format!("writing {n} bytes: {e}"))?;
    }
    let mut b = [0u8];
    match ws.read_all_eof(&mut b) {
        Ok(false) => Ok(()),
        other => Err(format!("expected end of stream, got {other:?}")),
    }
}

/// Reads binary messages until `n` bytes came (the server frames its
/// writes its own way).
pub fn read_bytes<S: Read + Write>(ws: &mut WebSocket<S>, n: usize) -> Result<Vec<u8>, String> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match ws
            .read()
            .map_err(|e| format!("after {} of {n} bytes: {e}", got.len()))?
        {
            Message::Binary(b) => got.extend_from_slice(&b),
            other => return Err(format!("expected binary data, got {other:?}")),
        }
    }
    if got.len() != n {
        return Err(format!("got {} bytes, expected {n}", got.len()));
    }
    Ok(got)
}

/// Sends `data`, reads it back, compares.
pub fn echo_once<S: Read + Write>(ws: &mut WebSocket<S>, data: Vec<u8>) -> Result<(), String> {
    let n = data.len();
    ws.send(Message::Binary(Bytes::from(data.clone())))
        .map_err(|e| format!("sending {n} bytes: {e}"))?;
    let got = read_bytes(ws, n)?;
    if got != data {
        return Err(format!("echo of {n} bytes differs"));
    }
    Ok(())
}

/// Closes from the client side and waits for the server's close frame and
/// the end of the connection.
pub fn close_client<S: Read + Write>(ws: &mut WebSocket<S>) -> Result<(), String> {
    ws.close(None).map_err(|e| format!("close: {e}"))?;
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => {}
            Ok(other) => return Err(format!("expected the close reply, got {other:?}")),
            Err(tungstenite::Error::ConnectionClosed) => return Ok(()),
            Err(e) => return Err(format!("closing: {e}")),
        }
    }
}

/// Sends `request` (then hangs up its write side if `hang_up`), returns all
/// the server sent back until it closed.
pub fn raw_request(port: u16, request: Vec<u8>, hang_up: bool) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut s = tcp_client(port);
        s.write_all(&request).unwrap();
        if hang_up {
            s.shutdown(Shutdown::Write).unwrap();
        }
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).unwrap();
        reply
    })
}

pub type Completion = (ThreadId, std::io::Result<WebsockChannel>);

/// Starts the QIOTask handshake of `sock` in `ctx`; the completion reports
/// its thread and result.
pub fn handshake_task(sock: SocketChannel, ctx: &AioContext) -> mpsc::Receiver<Completion> {
    let (tx, rx) = mpsc::channel();
    WebsockChannel::new_server(sock).handshake(
        move |r| {
            let _ = tx.send((std::thread::current().id(), r));
        },
        Some(ctx),
    );
    rx
}
