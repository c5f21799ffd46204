//! QEMU's tests/unit/test-aio.c event notifier cases (/aio/event/*), with
//! QEMU's one-run-per-poll and removal checks.

mod helpers;

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use corio::{AioContext, EventNotifier};
use helpers::{poll_blocking, poll_blocking_until};

fn counter() -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    (n.clone(), n)
}

/// /aio/event/add-remove: an unset notifier: no callback, no progress.
#[test]
fn event_add_remove() {
    let ctx = AioContext::new().unwrap();
    let e = EventNotifier::new().unwrap();
    let (n, n2) = counter();
    ctx.set_event_notifier(
        &e,
        Some(Box::new(move |e: &EventNotifier| {
            e.test_and_clear();
            n2.fetch_add(1, SeqCst);
        })),
    )
    .unwrap();
    assert!(!ctx.poll(false));
    assert_eq!(n.load(SeqCst), 0);
    ctx.set_event_notifier(&e, None).unwrap();
    assert!(!ctx.poll(false));
    assert_eq!(n.load(SeqCst), 0);
}

/// QEMU's `EventNotifierTestData`: runs of the handler, and how many more
/// it stays active for; with `auto_set`, it re-arms itself while active.
#[derive(Default)]
struct NotifierData {
    n: AtomicUsize,
    active: AtomicUsize,
    auto_set: bool,
}

/// Registers QEMU's `event_ready_cb` for a new notifier.
fn ready_notifier(ctx: &AioContext, data: &Arc<NotifierData>) -> EventNotifier {
    let e = EventNotifier::new().unwrap();
    let d = data.clone();
    ctx.set_event_notifier(
        &e,
        Some(Box::new(move |e: &EventNotifier| {
            assert!(e.test_and_clear(), "the handler ran for an unset notifier");
            d.n.fetch_add(1, SeqCst);
            let active = d.active.load(SeqCst);
            if active > 0 {
                d.active.store(active - 1, SeqCst);
            }
            if d.auto_set && d.active.load(SeqCst) > 0 {
                e.set().unwrap();
            }
        })),
    )
    .unwrap();
    e
}

fn data(active: usize, auto_set: bool) -> Arc<NotifierData> {
    Arc::new(NotifierData {
        n: AtomicUsize::new(0),
        active: AtomicUsize::new(active),
        auto_set,
    })
}

/// Blocking polls until the notifier is inactive (QEMU's
/// `wait_until_inactive`).
#[track_caller]
fn wait_until_inactive(ctx: &AioContext, d: &NotifierData) {
    poll_blocking_until(ctx, "the notifier to become inactive", || {
        d.active.load(SeqCst) == 0
    });
}

/// Removes the notifier's handler; afterwards setting it runs nothing and
/// is no progress.
fn remove_and_check(ctx: &AioContext, e: &EventNotifier, d: &NotifierData) {
    let n = d.n.load(SeqCst);
    ctx.set_event_notifier(e, None).unwrap();
    assert!(!ctx.poll(false), "no progress after removal");
    e.set().unwrap();
    assert!(!ctx.poll(false), "a removed notifier's set is no progress");
    assert_eq!(d.n.load(SeqCst), n, "a removed handler ran");
}

/// /aio/event/wait: setting the notifier makes one non-blocking poll run the
/// handler exactly once; the next poll runs nothing.
#[test]
fn event_wait() {
    let ctx = AioContext::new().unwrap();
    let d = data(1, false);
    let e = ready_notifier(&ctx, &d);
    while ctx.poll(false) {}
    assert_eq!(d.n.load(SeqCst), 0);
    assert_eq!(d.active.load(SeqCst), 1);

    e.set().unwrap();
    assert!(ctx.poll(false));
    assert_eq!(d.n.load(SeqCst), 1);
    assert_eq!(d.active.load(SeqCst), 0);

    assert!(!ctx.poll(false));
    assert_eq!(d.n.load(SeqCst), 1);
    remove_and_check(&ctx, &e, &d);
}

/// /aio/event/flush: a self-re-arming notifier (active = 10) runs once per
/// poll, and blocking polls drain it to n = 10.
#[test]
fn event_flush() {
    let ctx = AioContext::new().unwrap();
    let d = data(10, true);
    let e = ready_notifier(&ctx, &d);
    while ctx.poll(false) {}
    assert_eq!(d.n.load(SeqCst), 0);
    assert_eq!(d.active.load(SeqCst), 10);

    e.set().unwrap();
    assert!(ctx.poll(false));
    assert_eq!(d.n.load(SeqCst), 1, "one run per poll");
    assert_eq!(d.active.load(SeqCst), 9);
    assert!(ctx.poll(false));
    assert_eq!(d.n.load(SeqCst), 2, "one run per poll");

    wait_until_inactive(&ctx, &d);
    assert_eq!(d.n.load(SeqCst), 10);
    assert_eq!(d.active.load(SeqCst), 0);
    assert!(!ctx.poll(false));
    remove_and_check(&ctx, &e, &d);
}

/// /aio/event/wait/no-flush-cb: a blocking poll with only a set notifier does
/// not hang; with a dummy active notifier registered, each set runs the
/// handler exactly once, and the dummy's own run leaves the first alone.
#[test]
fn event_wait_no_flush_cb() {
    let ctx = AioContext::new().unwrap();
    let d = data(0, false);
    let e = ready_notifier(&ctx, &d);
    assert!(!ctx.poll(false));
    assert_eq!(d.n.load(SeqCst), 0);
    e.set().unwrap();
    assert!(poll_blocking(&ctx), "a blocking poll with a set notifier");
    d.n.store(0, SeqCst);

    let dummy = data(1, false);
    let de = ready_notifier(&ctx, &dummy);
    e.set().unwrap();
    assert!(ctx.poll(false));
    assert_eq!(d.n.load(SeqCst), 1);
    assert!(!ctx.poll(false));
    assert_eq!(d.n.load(SeqCst), 1);

    e.set().unwrap();
    assert!(ctx.poll(false));
    assert_eq!(d.n.load(SeqCst), 2);
    assert!(!ctx.poll(false));
    assert_eq!(d.n.load(SeqCst), 2);

    de.set().unwrap();
    wait_until_inactive(&ctx, &dummy);
    assert_eq!(d.n.load(SeqCst), 2);
    assert_eq!(dummy.n.load(SeqCst), 1);
    assert_eq!(dummy.active.load(SeqCst), 0);

    remove_and_check(&ctx, &de, &dummy);
    remove_and_check(&ctx, &e, &d);
    assert_eq!(d.n.load(SeqCst), 2);
}

/// An EventNotifier's raw fd is its eventfd (the descriptor `as_fd` lends).
#[test]
fn event_notifier_raw_fd_is_its_eventfd() {
    use std::os::fd::AsRawFd;
    let e = EventNotifier::new().unwrap();
    assert_eq!(e.as_raw_fd(), e.as_fd().as_raw_fd());
    let link = std::fs::read_link(format!("/proc/self/fd/{}", e.as_raw_fd())).unwrap();
    assert_eq!(link.to_string_lossy(), "anon_inode:[eventfd]");
}
