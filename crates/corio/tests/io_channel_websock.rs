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
mod websock_helpers;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corio::io::{Channel, SocketChannel, WebsockChannel};
use corio::{AioContext, Coroutine, IoThread};
use helpers::{join_iothread, join_within, poll_until, recv_within, LockExt};
use io_channel_helpers::{frame, pattern, GOOD_REQUEST};
use tungstenite::client::ClientRequestBuilder;
use tungstenite::{Bytes, Message};

use websock_helpers::*;

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
