//! The WebSocket server channel refusing bad input: malformed upgrade
//! requests (each answered with its HTTP status, then a good client is
//! served), and protocol errors after the handshake closing the connection.
//! Split from io_channel_websock.rs; every wait has a deadline.

mod helpers;
mod io_channel_helpers;
mod websock_helpers;

use std::io::{Read, Write};
use std::net::TcpStream;

use corio::io::websock::WebsockError;
use corio::io::{Channel, WebsockChannel};
use corio::AioContext;
use helpers::{join_within, poll_until};
use io_channel_helpers::{frame, GOOD_REQUEST};

use websock_helpers::*;

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
