//! Helpers shared by corio's integration tests: every wait has a deadline
//! and fails with a name (a lost wakeup never hangs the run), a lock that
//! ignores poisoning (one failed test thread does not turn every later
//! check into a `PoisonError`), and one meaning of `CORIO_TEST_THOROUGH`.
//!
//! A test crate uses it with `mod helpers;`.

#![allow(dead_code)] // each test crate uses a part of this module

use std::panic::Location;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use corio::{AioContext, IoThread};

/// How long any single wait in a test may take before it fails by name.
pub const DEADLINE: Duration = Duration::from_secs(60);

#[path = "thorough.rs"]
mod thorough_mode;
#[allow(unused_imports)] // each test crate uses a part
pub use thorough_mode::{quick_or_thorough, thorough};

/// `Mutex::lock` that ignores poisoning: the data of a lock whose holder
/// panicked is still what the test wants to inspect.
pub trait LockExt<T> {
    /// Locks, recovering the guard from a poisoned lock.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> LockExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Polls `ctx` until `done`, failing with `what` after [`DEADLINE`].
///
/// The poll does not block: `done` may become true without an event in
/// `ctx` (another thread finishing); a poll that made no progress sleeps a
/// millisecond instead.
pub fn poll_until(ctx: &AioContext, what: &str, done: impl FnMut() -> bool) {
    poll_until_within(ctx, what, DEADLINE, done)
}

/// [`poll_until`] with an explicit deadline.
pub fn poll_until_within(
    ctx: &AioContext,
    what: &str,
    within: Duration,
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        if !ctx.poll(false) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Waits (sleeping a millisecond between checks) until `done`, failing
/// with `what` after [`DEADLINE`]; for conditions another thread makes true.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Receives one value, failing with `what` after [`DEADLINE`] (or if the
/// sender is gone).
pub fn recv_within<T>(rx: &Receiver<T>, what: &str) -> T {
    match rx.recv_timeout(DEADLINE) {
        Ok(v) => v,
        Err(RecvTimeoutError::Timeout) => panic!("no {what} within {DEADLINE:?}"),
        Err(RecvTimeoutError::Disconnected) => {
            panic!("no {what}: its sender was dropped (did its thread panic?)")
        }
    }
}

/// Joins a thread, failing with `what` if it runs past [`DEADLINE`] and
/// propagating its panic.
pub fn join_within<T>(h: JoinHandle<T>, what: &str) -> T {
    join_within_for(h, what, DEADLINE)
}

/// [`join_within`] with an explicit deadline.
pub fn join_within_for<T>(h: JoinHandle<T>, what: &str, within: Duration) -> T {
    match join_bounded(h, format_args!("thread {what}"), within) {
        Ok(v) => v,
        Err(p) => {
            eprintln!("thread {what} panicked");
            std::panic::resume_unwind(p)
        }
    }
}

/// Waits on `cv` until `done(&state)`, failing with `what` after
/// [`DEADLINE`]; returns the guard.
pub fn wait_cv<'a, T>(
    cv: &Condvar,
    m: &'a Mutex<T>,
    what: &str,
    mut done: impl FnMut(&T) -> bool,
) -> MutexGuard<'a, T> {
    let (g, t) = cv
        .wait_timeout_while(m.locked(), DEADLINE, |s| !done(s))
        .unwrap_or_else(|e| e.into_inner());
    assert!(
        !t.timed_out(),
        "timed out after {DEADLINE:?} waiting for {what}"
    );
    g
}

/// Runs `f` on a thread and returns its result, failing with `what` if it
/// takes longer than [`DEADLINE`] (a lost wakeup inside `f` fails by name
/// instead of hanging), and propagating its panic.
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let what = what.to_owned();
    let t = std::thread::Builder::new()
        .name(what.clone())
        .spawn(f)
        .expect("spawn a test thread");
    join_within(t, &what)
}

/// Bounds blocking polls of a context: after the deadline it notifies the
/// context (again every 10 ms) so that a poll stuck on a lost wakeup
/// returns, and [`Watchdog::check`] then fails the test by name.
pub struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
    expired: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    within: Duration,
}

impl Watchdog {
    /// Arms a watchdog for `ctx` that expires after `within`.
    pub fn arm(ctx: &AioContext, within: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let expired = Arc::new(AtomicBool::new(false));
        let (c, e) = (ctx.clone(), expired.clone());
        let thread = std::thread::spawn(move || {
            if rx.recv_timeout(within) != Err(RecvTimeoutError::Timeout) {
                return; // disarmed
            }
            e.store(true, Ordering::SeqCst);
            while rx.recv_timeout(Duration::from_millis(10)) == Err(RecvTimeoutError::Timeout) {
                c.notify();
            }
        });
        Watchdog {
            disarm: Some(tx),
            expired,
            thread: Some(thread),
            within,
        }
    }

    /// Fails with `what` if the deadline has passed.
    pub fn check(&self, what: impl std::fmt::Display) {
        assert!(
            !self.expired.load(Ordering::SeqCst),
            "{what} did not happen within {:?} (a lost wakeup?)",
            self.within
        );
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.disarm.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One blocking `ctx.poll(true)`, failing (with the caller's file and
/// line) if it does not return within [`DEADLINE`]; returns its progress.
#[track_caller]
pub fn poll_blocking(ctx: &AioContext) -> bool {
    let at = Location::caller();
    let dog = Watchdog::arm(ctx, DEADLINE);
    let progress = ctx.poll(true);
    dog.check(format_args!("the blocking poll at {at} returning"));
    progress
}

/// Blocking polls of `ctx` until `done`, failing with `what` (and the
/// caller's line) after [`DEADLINE`]. Unlike [`poll_until`], each poll
/// sleeps until an event: for tests where the wakeup is the point.
#[track_caller]
pub fn poll_blocking_until(ctx: &AioContext, what: &str, mut done: impl FnMut() -> bool) {
    let at = Location::caller();
    let dog = Watchdog::arm(ctx, DEADLINE);
    while !done() {
        dog.check(format_args!("{what} (polled at {at})"));
        ctx.poll(true);
    }
}

/// Stops and joins an IoThread, failing with `what` if that takes longer
/// than [`DEADLINE`].
pub fn join_iothread(t: IoThread, what: &str) {
    within(&format!("joining IoThread {what}"), move || t.join())
}

/// Bounded joins as methods, for chains like `spawn(..).joined()`.
pub trait JoinExt<T> {
    /// Joins within [`DEADLINE`], failing with the caller's line if the
    /// thread runs longer, and propagating its panic.
    fn joined(self) -> T;
    /// Joins within [`DEADLINE`] and returns the thread's result (for a
    /// thread that is expected to panic).
    fn join_result(self) -> std::thread::Result<T>;
}

impl<T> JoinExt<T> for JoinHandle<T> {
    #[track_caller]
    fn joined(self) -> T {
        match self.join_result() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    #[track_caller]
    fn join_result(self) -> std::thread::Result<T> {
        let at = Location::caller();
        join_bounded(self, format_args!("the thread joined at {at}"), DEADLINE)
    }
}

/// Joins `h` once it has finished, failing with `what` after `within`.
fn join_bounded<T>(
    h: JoinHandle<T>,
    what: std::fmt::Arguments<'_>,
    within: Duration,
) -> std::thread::Result<T> {
    let deadline = Instant::now() + within;
    while !h.is_finished() {
        assert!(
            Instant::now() < deadline,
            "{what} did not finish within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    h.join()
}

/// A small xorshift generator: the tests need cheap randomness, not quality.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; zero is mapped away).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
