//! Channel watches (QEMU's io/channel-watch.c, `qio_channel_add_watch_full`):
//! conditions IN, OUT, PRI, ERR, HUP, NVAL; keep-or-drop callbacks; notify
//! exactly once; removal by handle from any thread.

mod helpers;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corio::io::address::SocketAddress;
use corio::io::{events, Channel, SocketChannel};
use corio::{AioContext, Coroutine};
use helpers::{join_within, poll_blocking, poll_until, JoinExt, LockExt};

struct Counts {
    calls: AtomicUsize,
    notified: AtomicUsize,
    last: AtomicU32,
}

fn counts() -> Arc<Counts> {
    Arc::new(Counts {
        calls: AtomicUsize::new(0),
        notified: AtomicUsize::new(0),
        last: AtomicU32::new(0),
    })
}

fn watch(
    ch: &impl Channel,
    ctx: &AioContext,
    condition: u32,
    keep: bool,
    c: &Arc<Counts>,
) -> corio::io::WatchHandle {
    let c1 = c.clone();
    let c2 = c.clone();
    ch.add_watch(
        condition,
        Box::new(move |cond| {
            c1.calls.fetch_add(1, SeqCst);
            c1.last.store(cond, SeqCst);
            keep
        }),
        Some(Box::new(move || {
            c2.notified.fetch_add(1, SeqCst);
        })),
        Some(ctx),
    )
    .unwrap()
}

fn tcp_pair() -> (SocketChannel, SocketChannel) {
    let l = SocketChannel::listen_sync(&SocketAddress::inet("127.0.0.1", 0), 1).unwrap();
    let c = SocketChannel::connect_sync(&l.local_address().unwrap()).unwrap();
    (c, l.accept().unwrap())
}

#[test]
fn io_channel_watch_in_level_triggered() {
    let ctx = AioContext::new().unwrap();
    let (a, b) = SocketChannel::pair().unwrap();
    let c = counts();
    let h = watch(&a, &ctx, events::IN, true, &c);
    assert!(!ctx.poll(false));
    assert_eq!(c.calls.load(SeqCst), 0);
    b.write_all_bytes(b"xy").unwrap();
    poll_blocking(&ctx);
    ctx.poll(false);
    // Level-triggered: still readable, so called on each poll.
    assert_eq!(c.calls.load(SeqCst), 2);
    assert_eq!(c.last.load(SeqCst), events::IN);
    a.read_all(&mut [0u8; 2]).unwrap();
    assert!(!ctx.poll(false));
    assert_eq!(c.calls.load(SeqCst), 2);
    assert!(h.is_active());
    assert_eq!(c.notified.load(SeqCst), 0);
    h.remove();
    assert!(!h.is_active());
    assert_eq!(c.notified.load(SeqCst), 1);
    h.remove();
    assert_eq!(c.notified.load(SeqCst), 1);
}

#[test]
fn io_channel_watch_out_oneshot_notify_once() {
    let ctx = AioContext::new().unwrap();
    let (a, _b) = SocketChannel::pair().unwrap();
    let c = counts();
    let h = watch(&a, &ctx, events::OUT, false, &c);
    poll_blocking(&ctx);
    ctx.poll(false);
    assert_eq!(c.calls.load(SeqCst), 1);
    assert_eq!(c.last.load(SeqCst), events::OUT);
    assert_eq!(c.notified.load(SeqCst), 1);
    assert!(!h.is_active());
    h.remove();
    assert_eq!(c.notified.load(SeqCst), 1);
}

#[test]
fn io_channel_watch_hup() {
    let ctx = AioContext::new().unwrap();
    let (a, b) = SocketChannel::pair().unwrap();
    let c = counts();
    let _h = watch(&a, &ctx, events::HUP, false, &c);
    assert!(!ctx.poll(false));
    drop(b);
    poll_until(&ctx, "c.notified.load(SeqCst) == 1", || {
        c.notified.load(SeqCst) == 1
    });
    assert_eq!(c.last.load(SeqCst), events::HUP);
    assert_eq!(c.calls.load(SeqCst), 1);
}

#[test]
fn io_channel_watch_pri() {
    let ctx = AioContext::new().unwrap();
    let (a, b) = tcp_pair();
    let c = counts();
    let _h = watch(&b, &ctx, events::PRI, false, &c);
    assert!(!ctx.poll(false));
    rustix::net::send(&a, b"!", rustix::net::SendFlags::OOB).unwrap();
    poll_until(&ctx, "c.notified.load(SeqCst) == 1", || {
        c.notified.load(SeqCst) == 1
    });
    assert_eq!(c.last.load(SeqCst), events::PRI);
}

#[test]
fn io_channel_watch_err() {
    let ctx = AioContext::new().unwrap();
    let (a, b) = tcp_pair();
    let c = counts();
    let _h = watch(&b, &ctx, events::ERR | events::HUP, false, &c);
    // Abortive close: the peer gets a reset, an error condition.
    socket2::SockRef::from(&a)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(a);
    poll_until(&ctx, "c.notified.load(SeqCst) == 1", || {
        c.notified.load(SeqCst) == 1
    });
    assert_ne!(c.last.load(SeqCst) & events::ERR, 0);
}

#[test]
fn io_channel_watch_nval_on_close() {
    let ctx = AioContext::new().unwrap();
    let (mut a, _b) = SocketChannel::pair().unwrap();
    let c = counts();
    let h = watch(&a, &ctx, events::IN | events::NVAL, true, &c);
    a.close().unwrap();
    assert_eq!(c.last.load(SeqCst), events::NVAL);
    assert_eq!(c.calls.load(SeqCst), 1);
    assert_eq!(c.notified.load(SeqCst), 1);
    assert!(!h.is_active());
    assert!(a
        .add_watch(events::IN, Box::new(|_| true), None, Some(&ctx))
        .is_err());
}

#[test]
fn io_channel_watch_remove_from_other_thread() {
    let ctx = AioContext::new().unwrap();
    let (a, b) = SocketChannel::pair().unwrap();
    let c = counts();
    let h = watch(&a, &ctx, events::IN, true, &c);
    join_within(std::thread::spawn(move || h.remove()), "h.remove()");
    poll_until(&ctx, "c.notified.load(SeqCst) == 1", || {
        c.notified.load(SeqCst) == 1
    });
    b.write_all_bytes(b"x").unwrap();
    assert!(!ctx.poll(false));
    assert_eq!(c.calls.load(SeqCst), 0);
    assert_eq!(c.notified.load(SeqCst), 1);
}

#[test]
fn io_channel_watch_added_from_other_thread() {
    // The callback runs on the context's home thread.
    let ctx = AioContext::new().unwrap();
    let (a, b) = SocketChannel::pair().unwrap();
    let home = std::thread::current().id();
    let ran_on = Arc::new(Mutex::new(None));
    let r = ran_on.clone();
    let c2 = ctx.clone();
    let a = Arc::new(a);
    let a2 = a.clone();
    std::thread::spawn(move || {
        a2.add_watch(
            events::IN,
            Box::new(move |_| {
                *r.locked() = Some(std::thread::current().id());
                false
            }),
            None,
            Some(&c2),
        )
        .unwrap();
    })
    .joined();
    b.write_all_bytes(b"x").unwrap();
    poll_until(&ctx, "ran_on.is_some()", || ran_on.locked().is_some());
    assert_eq!(*ran_on.locked(), Some(home));
}

#[test]
fn io_channel_watch_beside_yielding_coroutine() {
    // A watch for OUT and a coroutine yielding for IN on the same channel
    // in the same context do not disturb each other.
    let ctx = AioContext::new().unwrap();
    let (a, b) = SocketChannel::pair().unwrap();
    let a = Arc::new(a);
    a.set_blocking(false).unwrap();
    let c = counts();
    let _h = watch(&*a, &ctx, events::OUT, false, &c);
    let a1 = a.clone();
    let co = Coroutine::new(move || {
        let mut buf = [0u8; 4];
        a1.read_all(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    });
    co.enter();
    poll_until(&ctx, "c.notified.load(SeqCst) == 1", || {
        c.notified.load(SeqCst) == 1
    });
    assert!(!co.is_terminated());
    b.write_all_bytes(b"ping").unwrap();
    poll_until(&ctx, "co.is_terminated()", || co.is_terminated());
    b.shutdown(Shutdown::Both).unwrap();
}
