//! The thread pool's teardown at process exit: `exit` (after `main`
//! returns) destroys the main thread's thread-locals, and with them its
//! current context; that drop does not wait for a request that never
//! returns, or the process would hang (the workers end with the process).
//!
//! The child must be a process's main thread, which libtest never gives a
//! test (it runs each on a thread of its own), so this binary has its own
//! `main` (`harness = false`) and speaks just enough of libtest's command
//! line for nextest (`--list`, `--exact NAME`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NAME: &str = "pool_process_exit_does_not_wait_for_running_requests";
const CHILD_ENV: &str = "CORIO_POOL_EXIT_CHILD";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("{NAME}: test");
        }
        return;
    }
    // A name filter that does not match this test: nothing to run.
    if args
        .iter()
        .any(|a| !a.starts_with('-') && !NAME.contains(a.as_str()))
    {
        return;
    }
    if std::env::var_os(CHILD_ENV).is_some() {
        child();
    } else {
        parent();
        println!("test {NAME} ... ok");
    }
}

/// On the main thread: a request that never returns, then `main` returns.
fn child() {
    let ctx = corio::AioContext::current();
    let (tx, rx) = std::sync::mpsc::channel();
    ctx.thread_pool().submit_aio(
        move || {
            tx.send(()).unwrap();
            loop {
                std::thread::park(); // never returns
            }
        },
        |_| {},
    );
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the request started");
}

fn parent() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, "1")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            child.kill().unwrap();
            panic!("the child did not exit: its pool's drop waited for a running request");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(status.success(), "the child failed: {status}");
}
