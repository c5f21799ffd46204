//! Blocking work kept off the event loop, two ways.
//!
//! 1. `ThreadPool::submit_co`: a coroutine hands a blocking call (here a
//!    file read) to a worker thread and sleeps until it returns; its
//!    IoThread serves other coroutines meanwhile.
//! 2. QIOTask (`corio::io::Task`): QEMU's callback form. A worker thread
//!    runs the job, then the completion runs on a chosen context. Waking a
//!    coroutine from the completion gives the task a coroutine face.
//!
//! Run it: `cargo run -p corio --example blocking_offload`.

use std::sync::{Arc, Mutex};

use corio::io::Task;
use corio::{coroutine, Coroutine, IoThread, ThreadPool};

fn main() {
    let t = IoThread::new().expect("iothread");
    let path = std::env::temp_dir().join(format!("corio-offload-{}", std::process::id()));
    std::fs::write(&path, b"read on a pool worker").expect("write the sample file");

    // 1. submit_co: the coroutine sleeps, a pool worker blocks.
    let p = path.clone();
    let text = t
        .spawn(move || ThreadPool::current().submit_co(move || std::fs::read_to_string(p)))
        .join()
        .expect("the coroutine ran")
        .expect("the worker did not panic")
        .expect("the file was read");
    println!("submit_co: {text:?}");

    // 2. A QIOTask whose completion wakes the coroutine that started it.
    let sample = path.clone();
    let size = t
        .spawn(move || {
            let me = Coroutine::current().expect("in a coroutine").handle();
            let slot = Arc::new(Mutex::new(None));
            let s = slot.clone();
            let task = Task::new(path, move |t: &mut Task<std::path::PathBuf>| {
                // On the iothread, in its context: store and wake.
                let r = t
                    .propagate_error()
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        t.take_result::<u64>()
                            .map_err(|e| e.to_string())?
                            .ok_or_else(|| "no result".to_string())
                    });
                *s.lock().unwrap() = Some(r);
                me.wake();
            });
            let ctx = Coroutine::current().unwrap().context();
            task.run_in_thread(
                |t| match std::fs::metadata(t.source()) {
                    Ok(m) => t.set_result(m.len()),
                    Err(e) => t.set_error(e),
                },
                Some(&ctx),
            );
            // Sleep until the completion wakes us (wakeups may be spurious).
            loop {
                if let Some(r) = slot.lock().unwrap().take() {
                    return r;
                }
                coroutine::yield_now();
            }
        })
        .join()
        .expect("the coroutine ran");
    println!("QIOTask: the file has {} bytes", size.expect("metadata"));
    std::fs::remove_file(sample).expect("remove the sample file");
    t.join();
}
