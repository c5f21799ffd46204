//! Work moving between IoThreads: `CoHandle::wake` and `co_schedule`.
//!
//! A coroutine on IoThread A asks IoThread B for a value with a bottom half
//! and sleeps; B's bottom half computes it and wakes the coroutine, which
//! resumes on A (its home) through A's lock-free co_schedule queue. A
//! second coroutine on B is woken from a plain thread with
//! `AioContext::co_schedule`, which always queues for the next poll.
//!
//! Run it: `cargo run -p corio --example cross_thread`.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use corio::{coroutine, Coroutine, IoThread};

fn main() {
    let a = IoThread::with_name("iothread-a").expect("iothread");
    let b = IoThread::with_name("iothread-b").expect("iothread");

    // 1. A asks B, sleeps, and is woken from B's thread.
    let b_ctx = b.context().clone();
    let answer = a
        .spawn(move || {
            let me = Coroutine::current().expect("in a coroutine").handle();
            let slot = Arc::new(Mutex::new(None));
            let s = slot.clone();
            b_ctx.bh_schedule_oneshot(move || {
                let name = std::thread::current().name().map(str::to_owned);
                *s.lock().unwrap() = Some((6 * 7, name));
                me.wake(); // from B: queued on A, entered by A's poll
            });
            loop {
                if let Some(v) = slot.lock().unwrap().take() {
                    let here = std::thread::current().name().map(str::to_owned);
                    return (v, here);
                }
                coroutine::yield_now(); // wake-ups may be spurious: look again
            }
        })
        .join()
        .expect("the coroutine ran");
    let ((value, computed_on), resumed_on) = answer;
    println!("{value} computed on {computed_on:?}, the coroutine resumed on {resumed_on:?}");
    assert_eq!(resumed_on.as_deref(), Some("iothread-a"));

    // 2. A coroutine on B parks its handle; this plain thread schedules it.
    let (handle_tx, handle_rx) = mpsc::channel();
    let parked = b.spawn(move || {
        handle_tx
            .send(Coroutine::current().expect("in a coroutine").handle())
            .unwrap();
        coroutine::yield_now();
        "resumed by co_schedule"
    });
    let handle = handle_rx.recv().expect("the coroutine parked");
    handle.context().co_schedule(&handle); // QEMU's aio_co_schedule
    println!("{}", parked.join().expect("the coroutine ran"));

    a.join();
    b.join();
}
