//! CoRwLock: QEMU's `qemu_co_rwlock_*` (the ticket-queue version).

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;

use super::lock_std;
use crate::coroutine::{yield_now, CoHandle, Coroutine};

/// A fair reader-writer lock for coroutines (QEMU's `CoRwlock`).
///
/// Requests are served in arrival order from one ticket queue: a reader
/// joins the current readers only if nobody waits ahead of it, so a queued
/// writer is never starved by a stream of readers (writer preference); a
/// writer waits until every reader has left. A reader that
/// [`upgrade`](Self::upgrade)s while others wait is sent to the back of the
/// queue, behind them; [`downgrade`](Self::downgrade) turns a write lock into
/// a read lock and lets the readers queued next in. Locks are released with
/// [`unlock`](Self::unlock), whatever their kind.
///
/// A waiter resumes in its own home context (see [`crate::sync`]).
///
/// # Examples
///
/// ```
/// use corio::{coroutine, sync::CoRwLock, Coroutine};
/// use std::rc::Rc;
///
/// let l = Rc::new(CoRwLock::new());
/// let (l1, l2) = (l.clone(), l.clone());
/// let reader = Coroutine::new(move || {
///     l1.rdlock();
///     coroutine::yield_now();
///     l1.unlock();
/// });
/// let writer = Coroutine::new(move || {
///     l2.wrlock();
///     l2.unlock();
/// });
/// reader.enter();
/// writer.enter(); // waits for the reader
/// assert!(!writer.is_terminated());
/// reader.enter(); // the last reader leaves: the writer goes
/// assert!(writer.is_terminated());
/// ```
#[derive(Default)]
pub struct CoRwLock {
    /// Held only for short updates, never across a yield or a wakeup.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Number of readers holding the lock, -1 for a writer, 0 when free.
    owners: isize,
    /// Waiting requests in arrival order.
    tickets: VecDeque<Ticket>,
}

struct Ticket {
    read: bool,
    co: CoHandle,
}

impl State {
    /// Grants the lock to the waiters at the head of the queue that can have
    /// it now: one writer, or every reader up to the next writer (QEMU wakes
    /// one reader, which wakes the next: the same result). The granted
    /// coroutines are returned, to be woken after the state mutex is dropped.
    fn grant(&mut self) -> Vec<CoHandle> {
        let mut woken = Vec::new();
        while let Some(t) = self.tickets.front() {
            if t.read && self.owners >= 0 {
                self.owners += 1;
            } else if !t.read && self.owners == 0 {
                self.owners = -1;
            } else {
                break;
            }
            let t = self.tickets.pop_front().expect("front exists");
            woken.push(t.co);
            if self.owners < 0 {
                break;
            }
        }
        woken
    }
}

fn wake_all(woken: Vec<CoHandle>) {
    for h in woken {
        h.wake();
    }
}

fn current_handle(what: &str) -> CoHandle {
    Coroutine::current()
        .unwrap_or_else(|| panic!("CoRwLock::{what} outside a coroutine"))
        .handle()
}

impl CoRwLock {
    /// Creates an unlocked lock (QEMU's `qemu_co_rwlock_init`).
    pub const fn new() -> CoRwLock {
        CoRwLock {
            state: Mutex::new(State {
                owners: 0,
                tickets: VecDeque::new(),
            }),
        }
    }

    /// Takes a read lock, waiting behind a writer that holds the lock or any
    /// request queued earlier (QEMU's `qemu_co_rwlock_rdlock`).
    ///
    /// # Thread context
    /// Coroutine only.
    ///
    /// # Panics
    /// Outside a coroutine.
    pub fn rdlock(&self) {
        let mut s = lock_std(&self.state);
        if s.owners == 0 || (s.owners > 0 && s.tickets.is_empty()) {
            s.owners += 1;
            return;
        }
        s.tickets.push_back(Ticket {
            read: true,
            co: current_handle("rdlock"),
        });
        drop(s);
        yield_now();
        debug_assert!(lock_std(&self.state).owners >= 1);
    }

    /// Takes the write lock, waiting until the lock is free and every
    /// request queued earlier has been served (QEMU's `qemu_co_rwlock_wrlock`).
    ///
    /// # Panics
    /// Outside a coroutine.
    pub fn wrlock(&self) {
        let mut s = lock_std(&self.state);
        if s.owners == 0 {
            s.owners = -1;
            return;
        }
        s.tickets.push_back(Ticket {
            read: false,
            co: current_handle("wrlock"),
        });
        drop(s);
        yield_now();
        debug_assert_eq!(lock_std(&self.state).owners, -1);
    }

    /// Turns the caller's read lock into the write lock (QEMU's
    /// `qemu_co_rwlock_upgrade`). Immediate if the caller is the only reader
    /// and nobody waits; otherwise it gives up its read lock, queues behind
    /// the waiters, and returns once it holds the write lock.
    ///
    /// # Panics
    /// If no read lock is held; outside a coroutine when it must wait.
    pub fn upgrade(&self) {
        let mut s = lock_std(&self.state);
        assert!(s.owners > 0, "CoRwLock::upgrade: no read lock is held");
        if s.owners == 1 && s.tickets.is_empty() {
            s.owners = -1;
            return;
        }
        s.owners -= 1;
        s.tickets.push_back(Ticket {
            read: false,
            co: current_handle("upgrade"),
        });
        let woken = s.grant();
        drop(s);
        wake_all(woken);
        yield_now();
        debug_assert_eq!(lock_std(&self.state).owners, -1);
    }

    /// Turns the caller's write lock into a read lock, and lets in the
    /// readers queued at the head (QEMU's `qemu_co_rwlock_downgrade`).
    ///
    /// # Panics
    /// If the write lock is not held.
    pub fn downgrade(&self) {
        let mut s = lock_std(&self.state);
        assert_eq!(
            s.owners, -1,
            "CoRwLock::downgrade: the write lock is not held"
        );
        s.owners = 1;
        let woken = s.grant();
        drop(s);
        wake_all(woken);
    }

    /// Releases a read or the write lock, and grants the lock to the waiters
    /// now entitled to it (QEMU's `qemu_co_rwlock_unlock`).
    ///
    /// # Thread context
    /// Any thread (normally the coroutine that locked).
    ///
    /// # Panics
    /// "CoRwLock::unlock: the lock is not held" if it is free.
    pub fn unlock(&self) {
        let mut s = lock_std(&self.state);
        match s.owners {
            0 => {
                drop(s);
                panic!("CoRwLock::unlock: the lock is not held");
            }
            n if n > 0 => s.owners -= 1,
            _ => s.owners = 0,
        }
        let woken = s.grant();
        drop(s);
        wake_all(woken);
    }
}

impl fmt::Debug for CoRwLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = lock_std(&self.state);
        f.debug_struct("CoRwLock")
            .field("owners", &s.owners)
            .field("waiting", &s.tickets.len())
            .finish()
    }
}
