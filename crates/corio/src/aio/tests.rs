//! Unit tests of the context that need its private state.

use super::*;

/// A failing fd monitor panics out of `poll`, but leaves `notify_me`
/// lowered and the context usable for the caller who catches it.
#[test]
fn poll_monitor_failure_lowers_notify_me() {
    let ctx = AioContext::with_fd_monitor(FdMon::Epoll).unwrap();
    let e = crate::aio::EventNotifier::new().unwrap();
    ctx.set_event_notifier(&e, Some(Box::new(|_| {}))).unwrap();
    match &mut ctx.shared.local().monitor {
        Monitor::Epoll(m) => m.break_for_test(),
        Monitor::Uring(_) => unreachable!("asked for epoll"),
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.poll(true)));
    let msg = r.expect_err("poll on a broken monitor must panic");
    let msg = msg
        .downcast_ref::<String>()
        .map(String::as_str)
        .unwrap_or_default();
    assert!(msg.contains("fd monitor wait failed"), "{msg}");
    assert_eq!(ctx.shared.notify_me.get(), 0);
    // Still usable: the home-thread state was not left borrowed.
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r2 = ran.clone();
    let bh = ctx.bh_new(move || r2.store(true, Relaxed));
    bh.schedule();
    ctx.set_event_notifier(&e, None).unwrap();
    assert!(ctx.poll(false));
    assert!(ran.load(Relaxed));
}
