//! QEMU's QIONetListener (io/net-listener.c): several sockets for one
//! address, one callback call per client, disconnect, callback replacement.

mod helpers;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use corio::io::address::SocketAddress;
use corio::io::{Channel, NetListener, SocketChannel};
use corio::AioContext;
use helpers::{poll_until, LockExt};

fn ipv6_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// Accepted clients' greetings, in order.
fn echo_func(got: &Arc<Mutex<Vec<Vec<u8>>>>) -> corio::io::net_listener::ClientFunc {
    let g = got.clone();
    Box::new(move |_l, client: SocketChannel| {
        let mut buf = [0u8; 4];
        client.read_all(&mut buf).unwrap();
        client.write_all_bytes(&buf).unwrap();
        g.locked().push(buf.to_vec());
    })
}

#[test]
fn io_net_listener_two_addresses() {
    let ctx = AioContext::new().unwrap();
    let l = NetListener::new();
    l.set_name("two");
    // Two addresses at once: one socket each.
    l.open_sync(&SocketAddress::inet("127.0.0.1", 0), 5)
        .unwrap();
    let v6 = ipv6_available();
    if v6 {
        l.open_sync(&"[::1]:0".parse().unwrap(), 5).unwrap();
    }
    let expect = if v6 { 2 } else { 1 };
    assert_eq!(l.num_sockets(), expect);
    assert!(l.is_connected());
    let addrs = l.local_addresses().unwrap();

    let got = Arc::new(Mutex::new(Vec::new()));
    l.set_client_func(Some(echo_func(&got)), None, Some(&ctx));
    // Clients from another thread, two per address.
    let clients = std::thread::spawn(move || {
        let mut n = 0u8;
        for a in &addrs {
            for _ in 0..2 {
                let c = SocketChannel::connect_sync(a).unwrap();
                c.write_all_bytes(&[n; 4]).unwrap();
                let mut back = [0u8; 4];
                c.read_all(&mut back).unwrap();
                assert_eq!(back, [n; 4]);
                n += 1;
            }
        }
        n
    });
    poll_until(&ctx, "clients.is_finished()", || clients.is_finished());
    let n = clients.join().unwrap();
    assert_eq!(n as usize, 2 * expect);
    let got = got.locked();
    assert_eq!(got.len(), 2 * expect, "one callback call per connection");
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g, &[i as u8; 4]);
    }
}

#[test]
fn io_net_listener_localhost_resolves_to_both_families() {
    let l = NetListener::new();
    l.open_sync(&SocketAddress::inet("localhost", 0), 1)
        .unwrap();
    assert!(l.num_sockets() >= 1);
    for a in l.local_addresses().unwrap() {
        let SocketAddress::Inet(i) = a else {
            panic!("not inet")
        };
        assert!(i.host == "127.0.0.1" || i.host == "::1", "{}", i.host);
    }
}

#[test]
fn io_net_listener_disconnect_stops_accepting() {
    let ctx = AioContext::new().unwrap();
    let l = NetListener::new();
    let path = std::env::temp_dir()
        .join(format!("corio-test-{}-listener.sock", std::process::id()))
        .to_string_lossy()
        .into_owned();
    l.open_sync(&SocketAddress::unix(path.clone()), 5).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    l.set_client_func(
        Some(Box::new(move |_, _client| {
            c.fetch_add(1, SeqCst);
        })),
        None,
        Some(&ctx),
    );
    let addr = SocketAddress::unix(path.clone());
    let _c1 = SocketChannel::connect_sync(&addr).unwrap();
    poll_until(&ctx, "calls.load(SeqCst) == 1", || calls.load(SeqCst) == 1);
    l.disconnect();
    assert!(!l.is_connected());
    assert_eq!(l.num_sockets(), 0);
    assert!(
        !std::path::Path::new(&path).exists(),
        "listening path left behind"
    );
    assert!(SocketChannel::connect_sync(&addr).is_err());
    assert!(!ctx.poll(false));
    assert_eq!(calls.load(SeqCst), 1);
}

#[test]
fn io_net_listener_replace_callback_runs_old_notify_once() {
    let ctx = AioContext::new().unwrap();
    let l = NetListener::new();
    l.open_sync(&SocketAddress::inet("127.0.0.1", 0), 5)
        .unwrap();
    let addr = l.local_addresses().unwrap().remove(0);
    let first = Arc::new(AtomicUsize::new(0));
    let second = Arc::new(AtomicUsize::new(0));
    let notes = Arc::new(Mutex::new(Vec::new()));
    let (f, n) = (first.clone(), notes.clone());
    l.set_client_func(
        Some(Box::new(move |_, _| {
            f.fetch_add(1, SeqCst);
        })),
        Some(Box::new(move || n.locked().push("first"))),
        Some(&ctx),
    );
    let _a = SocketChannel::connect_sync(&addr).unwrap();
    poll_until(&ctx, "first.load(SeqCst) == 1", || first.load(SeqCst) == 1);

    let (s, n) = (second.clone(), notes.clone());
    l.set_client_func(
        Some(Box::new(move |_, _| {
            s.fetch_add(1, SeqCst);
        })),
        Some(Box::new(move || n.locked().push("second"))),
        Some(&ctx),
    );
    assert_eq!(*notes.locked(), ["first"]);
    let _b = SocketChannel::connect_sync(&addr).unwrap();
    poll_until(&ctx, "second.load(SeqCst) == 1", || {
        second.load(SeqCst) == 1
    });
    assert_eq!(first.load(SeqCst), 1);

    // Clearing runs the second notify; clients then wait unaccepted.
    l.set_client_func(None, None, None);
    assert_eq!(*notes.locked(), ["first", "second"]);
    let _c = SocketChannel::connect_sync(&addr).unwrap();
    assert!(!ctx.poll(false));
    assert_eq!(second.load(SeqCst), 1);
    // ... and wait_client takes it synchronously.
    let c = l.wait_client().unwrap();
    assert!(c.remote_address().is_ok());
    drop(l);
    assert_eq!(notes.locked().len(), 2, "no notify ran twice");
}

#[test]
fn io_net_listener_drop_runs_notify() {
    let ctx = AioContext::new().unwrap();
    let l = NetListener::new();
    l.open_sync(&SocketAddress::inet("127.0.0.1", 0), 1)
        .unwrap();
    let notified = Arc::new(AtomicUsize::new(0));
    let n = notified.clone();
    l.set_client_func(
        Some(Box::new(|_, _| {})),
        Some(Box::new(move || {
            n.fetch_add(1, SeqCst);
        })),
        Some(&ctx),
    );
    drop(l);
    ctx.poll(false);
    assert_eq!(notified.load(SeqCst), 1);
}

#[test]
fn io_net_listener_callback_may_disconnect() {
    // The callback gets the listener and may stop it (as qemu-nbd does
    // when it reaches its client limit).
    let ctx = AioContext::new().unwrap();
    let l = NetListener::new();
    l.open_sync(&SocketAddress::inet("127.0.0.1", 0), 5)
        .unwrap();
    let addr = l.local_addresses().unwrap().remove(0);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    l.set_client_func(
        Some(Box::new(move |l: &NetListener, _| {
            c.fetch_add(1, SeqCst);
            l.disconnect();
        })),
        None,
        Some(&ctx),
    );
    let _a = SocketChannel::connect_sync(&addr).unwrap();
    poll_until(&ctx, "calls.load(SeqCst) == 1", || calls.load(SeqCst) == 1);
    assert!(!l.is_connected());
}

#[test]
fn io_net_listener_open_fails_when_nothing_binds() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let l = NetListener::new();
    let e = l
        .open_sync(&format!("127.0.0.1:{port},ipv4").parse().unwrap(), 1)
        .unwrap_err();
    assert!(e.to_string().contains("Failed to bind"), "{e}");
    assert!(!l.is_connected());
}
