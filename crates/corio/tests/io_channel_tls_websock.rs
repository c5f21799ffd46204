//! A WebSocket over TLS, QEMU's VNC wss path (ui/vnc-ws.c over
//! io/channel-tls.c): the WebSocket handshake started from the TLS
//! handshake's completion, frames through both layers, and an `IN` watch
//! that hears what the TLS layer holds.
//!
//! Every test generates its own PKI with rcgen (see `tls_helpers`).

mod helpers;
mod io_channel_helpers;
mod tls_helpers;

use std::sync::{Arc, Mutex};

use corio::io::{Channel, WebsockChannel};
use corio::AioContext;
use helpers::{join_within, poll_until, LockExt};
use io_channel_helpers::{frame, pattern, GOOD_REQUEST};
use tls_helpers::{qemu_authz, tcp_pair, Pki, Tls};

// ----- a WebSocket over TLS (QEMU's VNC wss path) -----

/// The TLS handshake as a task whose completion owns the channel and
/// wraps it in a WebSocket channel, whose own handshake task then answers
/// a client speaking TLS: a frame's payload comes back through both
/// layers.
#[test]
fn io_channel_tls_websock_over_tls_task() {
    let pki = Pki::new("wss");
    let (a, b) = tcp_pair();
    let server = Tls::new_server(b, &pki.server_creds(true), Some(qemu_authz())).unwrap();
    let client = Tls::new_client(a, &pki.client_creds(), Some("localhost")).unwrap();
    let payload = b"hello through wss";

    let client = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        client.handshake_sync()?;
        client.write_all_bytes(GOOD_REQUEST.as_bytes())?;
        let mut reply = Vec::new();
        while !reply.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            client.read_all(&mut byte)?;
            reply.push(byte[0]);
        }
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 101 "), "{reply}");
        client.write_all_bytes(&frame(0x82, payload, [7, 1, 9, 3]))?;
        let mut head = [0u8; 2];
        client.read_all(&mut head)?;
        assert_eq!(head[0], 0x82, "a final binary frame");
        let mut echo = vec![0u8; usize::from(head[1])];
        client.read_all(&mut echo)?;
        client.bye()?;
        Ok(echo)
    });

    let ctx = AioContext::new().unwrap();
    let ws_out = Arc::new(Mutex::new(None));
    let (o, c2) = (ws_out.clone(), ctx.clone());
    server.handshake(
        move |r| {
            let tls = r.expect("the TLS handshake");
            assert!(tls.is_handshake_complete());
            WebsockChannel::new_server(tls).handshake(
                move |r| *o.locked() = Some(r.map_err(|e| e.to_string())),
                Some(&c2),
            );
        },
        Some(&ctx),
    );
    poll_until(&ctx, "the TLS and then the WebSocket handshake", || {
        ws_out.locked().is_some()
    });
    let ws = ws_out.locked().take().unwrap().unwrap();
    let mut got = vec![0u8; payload.len()];
    ws.read_all(&mut got).unwrap();
    assert_eq!(got, payload);
    ws.write_all_bytes(&got).unwrap();
    ws.flush().unwrap();
    let echo = join_within(client, "TLS WebSocket client").unwrap();
    assert_eq!(echo, payload);
}

/// An `IN` watch on a WebSocket over TLS hears input the TLS layer holds:
/// 60 frames of 1000 bytes sent in one burst arrive as several TLS records;
/// a WebSocket read takes one record's plaintext from the TLS channel, so
/// the socket goes quiet while the TLS layer still holds the rest, long
/// before the watch, reading 700 bytes per call, has taken everything.
#[test]
fn io_channel_tls_websock_over_tls_watch_hears_tls_input() {
    let pki = Pki::new("wss-watch");
    let (a, b) = tcp_pair();
    let server = Tls::new_server(b, &pki.server_creds(true), Some(qemu_authz())).unwrap();
    let client = Tls::new_client(a, &pki.client_creds(), Some("localhost")).unwrap();
    let frames: Vec<Vec<u8>> = (0..60u8).map(|i| pattern(1000, i)).collect();
    let expect: Vec<u8> = frames.concat();
    let client = std::thread::spawn(move || -> std::io::Result<Tls> {
        client.handshake_sync()?;
        let mut burst = GOOD_REQUEST.as_bytes().to_vec();
        for f in &frames {
            burst.extend(frame(0x82, f, [4, 3, 2, 1]));
        }
        client.write_all_bytes(&burst)?;
        Ok(client) // kept open: no EOF to wake anyone
    });
    server.handshake_sync().unwrap();
    let ws = Arc::new(WebsockChannel::new_server(server));
    ws.handshake_sync().unwrap();
    ws.set_blocking(false).unwrap();
    let ctx = AioContext::new().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(Mutex::new(false));
    let (w, g, d, total) = (ws.clone(), got.clone(), done.clone(), expect.len());
    ws.add_watch(
        corio::io::events::IN,
        Box::new(move |_| {
            let mut buf = [0u8; 700];
            match w.readv(&mut [std::io::IoSliceMut::new(&mut buf)]) {
                Ok(k) => g.locked().extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("websock read: {e}"),
            }
            g.locked().len() < total
        }),
        Some(Box::new(move || *d.locked() = true)),
        Some(&ctx),
    )
    .unwrap();
    poll_until(&ctx, "the watch reading every frame", || *done.locked());
    assert!(
        *got.locked() == expect,
        "frames read through the watch differ"
    );
    drop(join_within(client, "TLS WebSocket client").unwrap());
}
