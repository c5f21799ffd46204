//! The main loop is bound explicitly (issue 10, item 3): `main_loop::init`
//! binds the caller's thread; asking for the main loop before that from a
//! thread other than the process's main thread panics, naming `init`,
//! instead of making that thread the process-wide main loop. (Test threads
//! are never the process's main thread; the implicit binding on the main
//! thread is exercised by the `main_loop` module's doctest, which runs in
//! `main`.)
//!
//! One test: the main loop is process-wide state.

mod helpers;

use std::panic::catch_unwind;
use std::sync::mpsc;
use std::time::Duration;

use corio::io::Task;
use corio::{main_loop, IoThread};
use helpers::{join_iothread, poll_blocking_until};

#[test]
fn main_loop_is_bound_only_by_init() {
    // An IoThread that starts a task aimed at the main loop before anyone
    // bound it gets a clear panic, not the main loop.
    let worker = IoThread::new().unwrap();
    let (tx, rx) = mpsc::channel();
    worker.context().bh_schedule_oneshot(move || {
        let r = catch_unwind(|| {
            Task::new((), |_| {}).run_in_thread(|_| {}, None);
        });
        let msg = r
            .err()
            .and_then(|p| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tx.send(msg).unwrap();
    });
    let msg = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the IoThread answered");
    assert!(msg.contains("main_loop::init"), "panic message: {msg:?}");
    assert!(
        main_loop::try_main_context().is_none(),
        "the IoThread became the main loop"
    );

    // From this (non-main) test thread too.
    let r = catch_unwind(main_loop::main_context);
    assert!(
        r.is_err(),
        "main_context bound a non-main thread implicitly"
    );

    // init binds this thread; everyone then gets its context, and a task's
    // completion with no context runs here.
    let main = main_loop::init();
    assert!(main.in_home_thread());
    assert!(
        main_loop::init().ptr_eq(&main),
        "init is idempotent on its thread"
    );
    let (tx, rx) = mpsc::channel();
    let m = main.clone();
    worker.context().bh_schedule_oneshot(move || {
        tx.send(main_loop::main_context().ptr_eq(&m)).unwrap();
    });
    assert!(rx.recv_timeout(Duration::from_secs(20)).unwrap());
    let (tx, rx) = mpsc::channel();
    Task::new((), move |_| tx.send(std::thread::current().id()).unwrap())
        .run_in_thread(|_| {}, None);
    let mut got = None;
    poll_blocking_until(&main, "the task's completion on the main loop", || {
        got = got.or_else(|| rx.try_recv().ok());
        got.is_some()
    });
    let got = got.unwrap();
    assert_eq!(got, std::thread::current().id());

    // init from another thread, once bound, panics.
    let (tx, rx) = mpsc::channel();
    worker.context().bh_schedule_oneshot(move || {
        tx.send(catch_unwind(main_loop::init).is_err()).unwrap();
    });
    assert!(rx.recv_timeout(Duration::from_secs(20)).unwrap());
    join_iothread(worker, "worker");
}
