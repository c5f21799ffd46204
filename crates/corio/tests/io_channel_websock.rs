//! The WebSocket server channel (QEMU's io/channel-websock.c; QEMU has no
//! unit test of its own for it, its VNC tests drive it through noVNC)
//! against independent clients: tungstenite, and a Python client written
//! with the standard library only. Also: refused upgrade requests, protocol
//! errors after the handshake, output the master does not take at once, and
//! the handshake as a QIOTask completing on its context's thread.
//!
//! Every wait has a deadline: contexts are polled with `poll(false)` and a
//! short sleep, client threads are joined with `join_within`, and client
//! sockets have read and write timeouts.

mod helpers;
mod io_channel_helpers;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use corio::io::address::SocketAddress;
use corio::io::websock::WebsockError;
use corio::io::{Channel, SocketChannel, WebsockChannel};
use corio::{AioContext, Coroutine, IoThread};
use helpers::{join_iothread, join_within, poll_until, recv_within, LockExt};
use io_channel_helpers::{frame, pattern, GOOD_REQUEST};
use tungstenite::client::ClientRequestBuilder;
use tungstenite::{Bytes, Message, WebSocket};

const DEADLINE: Duration = Duration::from_secs(60);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Message sizes around the 7-, 16- and 64-bit length forms, and 1 MiB.
const SIZES: [usize; 6] = [1, 125, 126, 65535, 65536, 1 << 20];

fn listen() -> (SocketChannel, u16) {
    let l = SocketChannel::listen_sync(&SocketAddress::inet("127.0.0.1", 0), 16).unwrap();
    l.set_blocking(false).unwrap();
    let port = match l.local_address().unwrap() {
        SocketAddress::Inet(a) => a.port,
        other => panic!("not a TCP address: {other}"),
    };
    (l, port)
}

/// Accepts from the non-blocking listener, failing the test at the deadline.
fn accept(l: &SocketChannel) -> SocketChannel {
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
fn spawn_on<T: Send + 'static>(
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
fn run_in_coroutine<T: 'static>(
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

fn tcp_client(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// The server side of the echo tests: handshake, then for each size read
/// exactly that many bytes and write them back; then expect end of stream.
fn echo_server(ws: &WebsockChannel, sizes: &[usize]) -> Result<(), String> {
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
fn read_bytes<S: Read + Write>(ws: &mut WebSocket<S>, n: usize) -> Result<Vec<u8>, String> {
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
fn echo_once<S: Read + Write>(ws: &mut WebSocket<S>, data: Vec<u8>) -> Result<(), String> {
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
fn close_client<S: Read + Write>(ws: &mut WebSocket<S>) -> Result<(), String> {
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

#[test]
fn websock_echo_tungstenite_on_iothread() {
    let (l, port) = listen();
    let client = std::thread::spawn(move || -> Result<(), String> {
        let (mut ws, resp) =
            tungstenite::client(format!("ws://127.0.0.1:{port}/"), tcp_client(port))
                .map_err(|e| format!("handshake: {e}"))?;
        if resp.headers().contains_key("sec-websocket-protocol") {
            return Err("protocol selected though none was offered".into());
        }
        for (i, n) in SIZES.into_iter().enumerate() {
            echo_once(&mut ws, pattern(n, i as u8))?;
            if n == 126 {
                // The server is in its next read: it answers at once.
                ws.send(Message::Ping(Bytes::from_static(b"corio")))
                    .map_err(|e| format!("ping: {e}"))?;
                match ws.read().map_err(|e| format!("waiting for pong: {e}"))? {
                    Message::Pong(p) if &p[..] == b"corio" => {}
                    other => return Err(format!("expected the pong, got {other:?}")),
                }
            }
        }
        close_client(&mut ws)
    });
    let sock = accept(&l);
    let t = IoThread::new().unwrap();
    let done = spawn_on(&t, move || {
        sock.set_blocking(false).unwrap();
        let ws = WebsockChannel::new_server(sock);
        echo_server(&ws, &SIZES)
    });
    let server = recv_within(&done, "echo server");
    join_within(client, "tungstenite client").unwrap();
    server.unwrap();
    join_iothread(t, "t");
}

#[test]
fn websock_binary_protocol_negotiated() {
    let (l, port) = listen();
    let client = std::thread::spawn(move || -> Result<(), String> {
        let uri = format!("ws://127.0.0.1:{port}/").parse().unwrap();
        let req = ClientRequestBuilder::new(uri).with_sub_protocol("binary");
        // tungstenite checks that the reply selects the offered protocol.
        let (mut ws, resp) =
            tungstenite::client(req, tcp_client(port)).map_err(|e| format!("handshake: {e}"))?;
        let proto = resp.headers().get("sec-websocket-protocol");
        if proto.map(|v| v.as_bytes()) != Some(b"binary") {
            return Err(format!("protocol reply {proto:?}"));
        }
        echo_once(&mut ws, b"hello".to_vec())?;
        close_client(&mut ws)
    });
    let sock = accept(&l);
    let ctx = AioContext::new().unwrap();
    let server = run_in_coroutine(&ctx, "echo server", move || {
        sock.set_blocking(false).unwrap();
        echo_server(&WebsockChannel::new_server(sock), &[5])
    });
    join_within(client, "tungstenite client").unwrap();
    server.unwrap();
}

/// A client speaking RFC 6455 with Python's standard library only. It sends
/// masked frames in all three length forms, a ping, a fragmented message and
/// a close with a status code; it checks the accept key, the echo, the pong,
/// the close reply and the end of the connection.
const PYTHON_CLIENT: &str = r#"
import base64, hashlib, os, socket, struct, sys

port = int(sys.argv[1])
sizes = [int(n) for n in sys.argv[2].split(',')]

def recv_exact(s, n):
    b = b''
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError('server closed after %d of %d bytes' % (len(b), n))
        b += c
    return b

def mask_bytes(data, mask):
    m = (mask * (len(data) // 4 + 1))[:len(data)]
    x = int.from_bytes(data, 'big') ^ int.from_bytes(m, 'big')
    return x.to_bytes(len(data), 'big')

def send_frame(s, opcode, payload, fin=True):
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack('!H', n)
    else:
        head += bytes([0x80 | 127]) + struct.pack('!Q', n)
    s.sendall(head + mask + mask_bytes(payload, mask))

def recv_frame(s):
    b0, b1 = recv_exact(s, 2)
    assert not b1 & 0x80, 'server frames must not be masked'
    n = b1 & 0x7f
    if n == 126:
        n, = struct.unpack('!H', recv_exact(s, 2))
    elif n == 127:
        n, = struct.unpack('!Q', recv_exact(s, 8))
    return b0 & 0x0f, bool(b0 & 0x80), recv_exact(s, n)

s = socket.create_connection(('127.0.0.1', port), timeout=30)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(('GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n'
           'Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: %s\r\n'
           'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n'
           % (port, key)).encode())
reply = b''
while not reply.endswith(b'\r\n\r\n'):
    c = s.recv(1)  # byte by byte: frames may follow the reply
    if not c:
        raise EOFError('no handshake reply: %r' % reply)
    reply += c
lines = reply.decode().split('\r\n')
assert lines[0] == 'HTTP/1.1 101 Switching Protocols', lines[0]
headers = {k.lower(): v.strip() for k, v in (l.split(':', 1) for l in lines[1:] if l)}
guid = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'
accept = base64.b64encode(hashlib.sha1((key + guid).encode()).digest()).decode()
assert headers['sec-websocket-accept'] == accept, headers
assert headers['sec-websocket-protocol'] == 'binary', headers

def echo(parts):
    total = b''.join(parts)
    for i, p in enumerate(parts):
        send_frame(s, 0x2 if i == 0 else 0x0, p, fin=(i == len(parts) - 1))
    got = b''
    while len(got) < len(total):
        op, fin, data = recv_frame(s)
        assert op == 0x2 and fin, (op, fin)
        got += data
    assert got == total, 'echo of %d bytes differs' % len(total)

for n in sizes[:-1]:
    echo([bytes((i * 7 + n) & 0xff for i in range(n))])
    if n == 125:
        send_frame(s, 0x9, b'py-ping')
        assert recv_frame(s) == (0xA, True, b'py-ping')
third = sizes[-1] // 3
echo([b'a' * third, b'', b'b' * third, b'c' * (sizes[-1] - 2 * third)])
send_frame(s, 0x8, struct.pack('!H', 1001) + b'going away')
op, fin, data = recv_frame(s)
assert op == 0x8 and data == struct.pack('!H', 1001), (op, data)
assert s.recv(1) == b'', 'the server did not end the connection'
print('python websocket client: ok')
"#;

#[test]
fn websock_echo_python_client_blocking_thread() {
    match Command::new("python3").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => {
            println!(
                "skipping websock_echo_python_client_blocking_thread: python3 is not available"
            );
            return;
        }
    }
    let sizes = [1usize, 125, 126, 65535, 65536, 70000, 300];
    let (l, port) = listen();
    let list: Vec<String> = sizes.iter().map(ToString::to_string).collect();
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(PYTHON_CLIENT)
        .arg(port.to_string())
        .arg(list.join(","))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3");
    let sock = accept(&l);
    // The server: a plain thread, blocking mode.
    let server = std::thread::spawn(move || {
        sock.set_blocking(true).unwrap();
        echo_server(&WebsockChannel::new_server(sock), &sizes)
    });
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("python client hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let server = join_within(server, "server");
    assert!(
        status.success(),
        "python client failed ({status}):\n{out}{err}\nserver: {server:?}"
    );
    assert!(out.contains("python websocket client: ok"), "{out}{err}");
    server.unwrap();
}

/// Sends `request` (then hangs up its write side if `hang_up`), returns all
/// the server sent back until it closed.
fn raw_request(port: u16, request: Vec<u8>, hang_up: bool) -> std::thread::JoinHandle<Vec<u8>> {
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

type Completion = (ThreadId, std::io::Result<WebsockChannel>);

/// Starts the QIOTask handshake of `sock` in `ctx`; the completion reports
/// its thread and result.
fn handshake_task(sock: SocketChannel, ctx: &AioContext) -> mpsc::Receiver<Completion> {
    let (tx, rx) = mpsc::channel();
    WebsockChannel::new_server(sock).handshake(
        move |r| {
            let _ = tx.send((std::thread::current().id(), r));
        },
        Some(ctx),
    );
    rx
}

/// One malformed request: the HTTP status of the reply (`None`: no reply)
/// and a piece of the error's text.
struct Refusal {
    what: &'static str,
    request: Vec<u8>,
    /// The client hangs up after sending `request`.
    hang_up: bool,
    status: Option<u16>,
    text: &'static str,
}

fn refused(what: &'static str, request: Vec<u8>, status: u16, text: &'static str) -> Refusal {
    Refusal {
        what,
        request,
        hang_up: false,
        status: Some(status),
        text,
    }
}

#[test]
fn websock_handshake_refusals_then_a_good_client() {
    let good = |edit: &dyn Fn(&str) -> String| edit(GOOD_REQUEST).into_bytes();
    let without = |name: &'static str| {
        move |r: &str| {
            r.split("\r\n")
                .filter(|l| !l.starts_with(name))
                .collect::<Vec<_>>()
                .join("\r\n")
        }
    };
    let replace = |from: &'static str, to: &'static str| move |r: &str| r.replace(from, to);
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let cases = [
        refused(
            "not GET",
            good(&replace("GET", "POST")),
            400,
            "Unsupported HTTP method POST",
        ),
        refused(
            "HTTP/1.0",
            good(&replace("HTTP/1.1", "HTTP/1.0")),
            400,
            "HTTP version",
        ),
        refused(
            "path",
            good(&replace("GET / ", "GET /chat ")),
            404,
            "HTTP path /chat",
        ),
        refused(
            "no Upgrade",
            good(&without("Upgrade:")),
            400,
            "websocket upgrade",
        ),
        refused(
            "h2c",
            good(&replace(": websocket", ": h2c")),
            400,
            "upgrade method",
        ),
        refused(
            "no upgrade token",
            good(&replace(": Upgrade", ": close")),
            400,
            "No connection upgrade",
        ),
        refused(
            "no Host",
            good(&without("Host:")),
            400,
            "Missing websocket host",
        ),
        refused(
            "version 8",
            good(&replace("Version: 13", "Version: 8")),
            400,
            "version '8'",
        ),
        refused(
            "no key",
            good(&without("Sec-WebSocket-Key")),
            400,
            "Missing websocket key",
        ),
        refused(
            "short key",
            good(&replace(key, "c2hvcnQ=")),
            400,
            "Key length '8'",
        ),
        refused(
            "bad key",
            good(&replace(key, "not*base64*at*all*24char")),
            400,
            "not the base64",
        ),
        refused(
            "protocol",
            good(&replace(
                "\r\n\r\n",
                "\r\nSec-WebSocket-Protocol: chat\r\n\r\n",
            )),
            400,
            "'binary'",
        ),
        refused(
            "garbage",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
            "header delimiter",
        ),
        refused(
            "garbage line",
            b"\x16\x03\x01garbage\r\nmore garbage\r\n\r\n".to_vec(),
            400,
            "path delimiter",
        ),
        refused(
            "oversized",
            vec![b'X'; 4096],
            403,
            "End of headers not found in first 4096 bytes",
        ),
        Refusal {
            what: "hang-up mid-request",
            request: b"GET / HTTP/1.1\r\nHost: localhost\r\n".to_vec(),
            hang_up: true,
            status: None,
            text: "end of headers not found before the connection closed",
        },
        Refusal {
            what: "hang-up at once",
            request: Vec::new(),
            hang_up: true,
            status: None,
            text: "before the connection closed",
        },
    ];
    let (l, port) = listen();
    let ctx = AioContext::new().unwrap();
    let home = std::thread::current().id();
    for Refusal {
        what,
        request,
        hang_up,
        status,
        text,
    } in cases
    {
        let client = raw_request(port, request, hang_up);
        let sock = accept(&l);
        sock.set_blocking(false).unwrap();
        let done = handshake_task(sock, &ctx);
        let mut got = None;
        poll_until(&ctx, what, || {
            got = got.take().or_else(|| done.try_recv().ok());
            got.is_some()
        });
        let (thread, r) = got.unwrap();
        assert_eq!(
            thread, home,
            "{what}: completion ran off the context's thread"
        );
        let e = r.expect_err(what);
        assert!(e.to_string().contains(text), "{what}: error {e:?}");
        match status {
            Some(status) => {
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{what}");
                assert!(
                    matches!(WebsockError::from_io(&e), Some(WebsockError::Handshake { status: s, .. }) if *s == status),
                    "{what}: {e:?}"
                );
            }
            None => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{what}: {e:?}"),
        }
        let reply = String::from_utf8_lossy(&join_within(client, what)).into_owned();
        match status {
            Some(status) => {
                assert!(
                    reply.starts_with(&format!("HTTP/1.1 {status} ")),
                    "{what}: reply {reply:?}"
                );
                assert!(
                    reply.ends_with("\r\n\r\n") && reply.contains("Connection: close\r\n"),
                    "{what}: {reply:?}"
                );
                if status == 400 {
                    assert!(
                        reply.contains("Sec-WebSocket-Version: 13\r\n"),
                        "{what}: {reply:?}"
                    );
                }
            }
            None => assert!(reply.is_empty(), "{what}: unexpected reply {reply:?}"),
        }
    }

    // The listener and the context are unharmed: a good client works.
    let client = std::thread::spawn(move || -> Result<(), String> {
        let (mut ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}/"), tcp_client(port))
            .map_err(|e| format!("handshake: {e}"))?;
        echo_once(&mut ws, b"after the refusals".to_vec())?;
        close_client(&mut ws)
    });
    let sock = accept(&l);
    sock.set_blocking(false).unwrap();
    let done = handshake_task(sock, &ctx);
    let mut got = None;
    poll_until(&ctx, "good handshake", || {
        got = got.take().or_else(|| done.try_recv().ok());
        got.is_some()
    });
    let (thread, ws) = got.unwrap();
    assert_eq!(thread, home);
    let ws = ws.unwrap();
    assert!(ws.is_open());
    let server = run_in_coroutine(&ctx, "echo", move || -> std::io::Result<bool> {
        let mut buf = [0u8; 18];
        ws.read_all(&mut buf)?;
        ws.write_all_bytes(&buf)?;
        ws.read_all_eof(&mut [0u8])
    });
    join_within(client, "good client").unwrap();
    assert!(!server.unwrap(), "expected end of stream after the close");
}

/// A client that speaks the handshake by hand, then sends raw frames.
fn raw_client(port: u16) -> TcpStream {
    let mut s = tcp_client(port);
    s.write_all(GOOD_REQUEST.as_bytes()).unwrap();
    let mut reply = Vec::new();
    while !reply.ends_with(b"\r\n\r\n") {
        let mut b = [0u8];
        s.read_exact(&mut b).unwrap();
        reply.push(b[0]);
    }
    assert!(
        reply.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    s
}

#[test]
fn websock_protocol_errors_close_the_connection() {
    let mut too_big_ping = vec![0x89, 0x80 | 126, 0, 200, 1, 2, 3, 4];
    too_big_ping.extend([0u8; 200]);
    // (what, bytes after a good "abc" frame, close code)
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", vec![0x82, 3, b'x', b'y', b'z'], 1002),
        ("unknown opcode", frame(0x83, b"?", [9, 8, 7, 6]), 1003),
        ("text frame", frame(0x81, b"text", [9, 8, 7, 6]), 1003),
        ("control frame over 125 bytes", too_big_ping, 1002),
        ("fragmented ping", frame(0x09, b"", [9, 8, 7, 6]), 1008),
        ("reserved bits", frame(0xC2, b"!", [9, 8, 7, 6]), 1002),
    ];
    let (l, port) = listen();
    for (what, bad, code) in cases {
        let client = std::thread::spawn(move || {
            let mut s = raw_client(port);
            let mut out = frame(0x82, b"abc", [1, 2, 3, 4]);
            out.extend(bad);
            s.write_all(&out).unwrap();
            let mut reply = Vec::new();
            s.read_to_end(&mut reply).unwrap();
            reply
        });
        let sock = accept(&l);
        let server = std::thread::spawn(move || {
            let ws = WebsockChannel::new_server(sock);
            ws.handshake_sync().unwrap();
            // The data before the bad frame comes first...
            let mut buf = [0u8; 3];
            ws.read_all(&mut buf).unwrap();
            assert_eq!(&buf, b"abc");
            // ...then the error, for reads and writes alike, every time.
            let e = ws.read_all(&mut buf).unwrap_err();
            let again = ws.read_all(&mut buf).unwrap_err();
            let w = ws.write_all_bytes(b"no").unwrap_err();
            (e, again, w)
        });
        let (e, again, w) = join_within(server, what);
        for e in [&e, &again, &w] {
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{what}: {e:?}");
            assert!(
                matches!(WebsockError::from_io(e), Some(WebsockError::Protocol { code: c, .. }) if *c == code),
                "{what}: {e:?}"
            );
        }
        // The client got a close frame with the code, then the end.
        let reply = join_within(client, what);
        assert!(reply.len() >= 4, "{what}: reply {reply:x?}");
        assert_eq!(reply[0], 0x88, "{what}: not a close frame: {reply:x?}");
        let len = usize::from(reply[1]);
        assert_eq!(reply.len(), 2 + len, "{what}: trailing bytes: {reply:x?}");
        assert_eq!(u16::from_be_bytes([reply[2], reply[3]]), code, "{what}");
    }
}

/// Output the master does not take at once stays buffered and goes out
/// whole: the server's send buffer is tiny, the server writes 1 MiB and then
/// waits for an acknowledgement that the client sends only once it has all
/// of it. In a coroutine the background watch pushes the rest out while the
/// coroutine waits to read; outside one, the poll(2) wait does.
#[test]
fn websock_partial_writes_are_kept_and_flushed() {
    for in_coroutine in [true, false] {
        let (a, b) = UnixStream::pair().unwrap();
        rustix::net::sockopt::set_socket_send_buffer_size(&a, 4096).unwrap();
        rustix::net::sockopt::set_socket_recv_buffer_size(&b, 4096).unwrap();
        b.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        b.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        let big = pattern(1 << 20, 0x33);
        let tail = pattern(300_000, 0x44);
        let (big2, tail2) = (big.clone(), tail.clone());
        let client = std::thread::spawn(move || -> Result<(), String> {
            let (mut ws, _) =
                tungstenite::client("ws://localhost/", b).map_err(|e| format!("handshake: {e}"))?;
            if read_bytes(&mut ws, big2.len())? != big2 {
                return Err("1 MiB differs".into());
            }
            ws.send(Message::Binary(Bytes::from_static(b"*")))
                .map_err(|e| format!("ack: {e}"))?;
            if read_bytes(&mut ws, tail2.len())? != tail2 {
                return Err("tail differs".into());
            }
            close_client(&mut ws)
        });
        let server = move || -> std::io::Result<bool> {
            let ws = WebsockChannel::new_server(SocketChannel::new_fd(a.into())?);
            ws.set_blocking(false)?;
            ws.handshake_sync()?;
            ws.write_all_bytes(&big)?;
            let mut ack = [0u8];
            ws.read_all(&mut ack)?;
            assert_eq!(&ack, b"*");
            ws.write_all_bytes(&tail)?;
            ws.flush()?;
            ws.read_all_eof(&mut ack)
        };
        let r = if in_coroutine {
            let ctx = AioContext::new().unwrap();
            run_in_coroutine(&ctx, "server coroutine", server)
        } else {
            join_within(std::thread::spawn(server), "server thread")
        };
        join_within(client, "client").unwrap();
        assert!(!r.unwrap(), "expected end of stream");
    }
}

/// QEMU's handshake is a QIOTask: its completion runs on the thread of the
/// context it was given, here an IOThread, whichever thread started it, for
/// success and failure alike. Afterwards the channel works from any thread,
/// and closing it sends the client a close frame.
#[test]
fn websock_handshake_task_completes_on_context_thread() {
    let t = IoThread::new().unwrap();
    let io_thread = t.context().run_in(|| std::thread::current().id());
    assert_ne!(io_thread, std::thread::current().id());
    let (l, port) = listen();

    let bad = raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), false);
    let done = handshake_task(accept(&l), t.context());
    let (thread, r) = recv_within(&done, "failed handshake");
    assert_eq!(thread, io_thread);
    assert!(r
        .unwrap_err()
        .to_string()
        .contains("Missing websocket version"));
    assert!(String::from_utf8_lossy(&join_within(bad, "bad client")).starts_with("HTTP/1.1 400 "));

    let client = std::thread::spawn(move || -> Result<Option<u16>, String> {
        let (mut ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}/"), tcp_client(port))
            .map_err(|e| format!("handshake: {e}"))?;
        echo_once(&mut ws, pattern(70_000, 7))?;
        // The server closes: its close frame, then the end.
        let code = match ws.read().map_err(|e| format!("waiting for close: {e}"))? {
            Message::Close(f) => f.map(|f| u16::from(f.code)),
            other => return Err(format!("expected a close frame, got {other:?}")),
        };
        // The server closed its socket right after its close frame: the
        // client's close reply may meet a reset instead of the end.
        match ws.read() {
            Err(tungstenite::Error::ConnectionClosed) => Ok(code),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                Ok(code)
            }
            other => Err(format!("expected the end, got {other:?}")),
        }
    });
    let done = handshake_task(accept(&l), t.context());
    let (thread, r) = recv_within(&done, "good handshake");
    assert_eq!(thread, io_thread);
    let mut ws = r.unwrap();
    // Blocking mode, from the test thread.
    ws.set_blocking(true).unwrap();
    let mut buf = vec![0u8; 70_000];
    ws.read_all(&mut buf).unwrap();
    ws.write_all_bytes(&buf).unwrap();
    ws.close().unwrap();
    assert_eq!(join_within(client, "client").unwrap(), Some(1000));
    let e = ws.read_all(&mut buf).unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(rustix::io::Errno::BADF.raw_os_error())
    );
    join_iothread(t, "t");
}

#[test]
fn websock_io_before_handshake_fails() {
    let (a, _b) = SocketChannel::pair().unwrap();
    let ws = WebsockChannel::new_server(a);
    assert!(!ws.is_open());
    let e = ws.write_all_bytes(b"x").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotConnected);
    let e = ws.read_all(&mut [0u8]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotConnected);
}

/// Frames that arrive with the request (a client need not wait for the
/// 101) are decoded after the handshake; a ping gets its pong from a
/// blocking read; after the client's close, reads end and writes fail.
#[test]
fn websock_frames_pipelined_with_the_request() {
    let (server, client) = SocketChannel::pair().unwrap();
    let mut out = GOOD_REQUEST.as_bytes().to_vec();
    out.extend(frame(0x82, b"hi", [5, 6, 7, 8]));
    out.extend(frame(0x89, b"p", [1, 1, 1, 1]));
    out.extend(frame(0x02, b"fr", [2, 3, 4, 5]));
    out.extend(frame(0x80, b"ag", [6, 7, 8, 9]));
    out.extend(frame(0x88, &1000u16.to_be_bytes(), [0, 0, 0, 0]));
    client.write_all_bytes(&out).unwrap();
    let ws = WebsockChannel::new_server(server);
    ws.handshake_sync().unwrap();
    let mut buf = [0u8; 6];
    ws.read_all(&mut buf).unwrap();
    assert_eq!(&buf, b"hifrag");
    assert!(
        !ws.read_all_eof(&mut buf).unwrap(),
        "expected end of stream"
    );
    let e = ws.write_all_bytes(b"late").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e:?}");
    // The client got the 101, the pong, the close reply, then the end.
    let mut reply = Vec::new();
    while !reply.ends_with(b"\r\n\r\n") {
        let mut b = [0u8];
        client.read_all(&mut b).unwrap();
        reply.push(b[0]);
    }
    assert!(reply.starts_with(b"HTTP/1.1 101 "));
    let mut frames = [0u8; 7];
    client.read_all(&mut frames).unwrap();
    assert_eq!(frames, [0x8A, 1, b'p', 0x88, 2, 0x03, 0xE8]);
    assert!(!client.read_all_eof(&mut [0u8]).unwrap());
}

/// Decoded payload not yet read is input the master's fd cannot announce:
/// `wait(IN)` returns at once while it is buffered, and so does
/// `yield_for(IN)` in a coroutine.
#[test]
fn websock_pending_payload_wakes_waiters() {
    let (server, client) = SocketChannel::pair().unwrap();
    let mut out = GOOD_REQUEST.as_bytes().to_vec();
    out.extend(frame(0x82, b"0123456789", [9, 8, 7, 6]));
    client.write_all_bytes(&out).unwrap();
    let ws = Arc::new(WebsockChannel::new_server(server));
    ws.handshake_sync().unwrap();
    ws.set_blocking(false).unwrap();
    // The frame came with the upgrade request: already read from the
    // socket, so only the channel knows it is there.
    assert!(ws.io_has_pending_input());
    let mut one = [0u8; 1];
    assert_eq!(
        ws.readv(&mut [std::io::IoSliceMut::new(&mut one)]).unwrap(),
        1
    );
    assert_eq!(&one, b"0");
    assert!(ws.io_has_pending_input());
    // The client sends nothing more: only the buffered payload ends this.
    let w = ws.clone();
    let waiter = std::thread::spawn(move || w.wait(corio::io::events::IN));
    join_within(waiter, "wait(IN) on buffered payload (it must not sleep)").unwrap();
    let ctx = AioContext::new().unwrap();
    let w = ws.clone();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let co = Coroutine::new(move || {
        w.yield_for(corio::io::events::IN).unwrap();
        let mut rest = [0u8; 9];
        let n = w.readv(&mut [std::io::IoSliceMut::new(&mut rest)]).unwrap();
        g.locked().extend_from_slice(&rest[..n]);
    });
    co.enter();
    poll_until(&ctx, "coroutine with buffered payload", || {
        co.is_terminated()
    });
    assert_eq!(&*got.locked(), b"123456789");
    assert!(!ws.io_has_pending_input());
    // The client's close frame: the read reports end of stream at once.
    client
        .write_all_bytes(&frame(0x88, &1000u16.to_be_bytes(), [1, 2, 3, 4]))
        .unwrap();
    assert!(!ws.read_all_eof(&mut one).unwrap());
    assert!(ws.io_has_pending_input());
}

/// An `IN` watch keeps firing while decoded payload is buffered: a callback
/// reading 4 bytes at a time gets all of a 40-byte frame though the fd
/// went quiet after the frame arrived.
#[test]
fn websock_watch_fires_on_pending_payload() {
    let (server, client) = SocketChannel::pair().unwrap();
    let mut out = GOOD_REQUEST.as_bytes().to_vec();
    let msg = pattern(40, 5);
    out.extend(frame(0x82, &msg, [3, 1, 4, 1]));
    client.write_all_bytes(&out).unwrap();
    let ws = Arc::new(WebsockChannel::new_server(server));
    ws.handshake_sync().unwrap();
    ws.set_blocking(false).unwrap();
    let ctx = AioContext::new().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(Mutex::new(false));
    let (w, g, d) = (ws.clone(), got.clone(), done.clone());
    ws.add_watch(
        corio::io::events::IN,
        Box::new(move |_| {
            let mut four = [0u8; 4];
            match w.readv(&mut [std::io::IoSliceMut::new(&mut four)]) {
                Ok(n) => g.locked().extend_from_slice(&four[..n]),
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}"),
            }
            g.locked().len() < 40
        }),
        Some(Box::new(move || *d.locked() = true)),
        Some(&ctx),
    )
    .unwrap();
    poll_until(&ctx, "watch reading buffered payload", || *done.locked());
    assert_eq!(*got.locked(), msg);
}

/// `close` on a blocking master sends every byte `write_all` accepted, then
/// the close frame: a slow client gets the whole payload and a close 1000.
/// (Drop, and close on a non-blocking master, only offer it: see `flush`.)
#[test]
fn websock_close_on_blocking_master_drains_output() {
    let (a, b) = UnixStream::pair().unwrap();
    rustix::net::sockopt::set_socket_send_buffer_size(&a, 4096).unwrap();
    b.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    b.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    let data = pattern(4 << 20, 0x5c);
    let expect = data.clone();
    let client = std::thread::spawn(move || -> Result<Option<u16>, String> {
        let (mut ws, _) =
            tungstenite::client("ws://localhost/", b).map_err(|e| format!("handshake: {e}"))?;
        std::thread::sleep(Duration::from_millis(20)); // let the server block
        if read_bytes(&mut ws, expect.len())? != expect {
            return Err("payload differs".into());
        }
        match ws.read() {
            Ok(Message::Close(c)) => Ok(c.map(|c| u16::from(c.code))),
            other => Err(format!("expected the close frame, got {other:?}")),
        }
    });
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let mut ws = WebsockChannel::new_server(SocketChannel::new_fd(a.into())?);
        ws.handshake_sync()?;
        ws.write_all_bytes(&data)?;
        ws.close()
    });
    join_within(server, "server").unwrap();
    assert_eq!(join_within(client, "client").unwrap(), Some(1000));
}
