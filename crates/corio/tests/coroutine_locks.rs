//! QEMU's tests/unit/test-coroutine.c, locking cases: /locking/co-mutex,
//! /locking/co-mutex/lockable, /locking/co-rwlock/upgrade,
//! /locking/co-rwlock/downgrade; plus CoQueue, sleeps and misuse.

mod helpers;
use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};

use corio::sync::{co_sleep_ns, CoMutex, CoQueue, CoRwLock, CoSleep, Lockable};
use corio::{yield_now, AioContext, Clock, Coroutine, IoThread};
use helpers::{join_iothread, join_within, poll_blocking_until, recv_within, wait_until, LockExt};

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        String::new()
    }
}

#[derive(Default)]
struct MutexState {
    locked: Cell<bool>,
    done: Cell<u32>,
}

/// The body of QEMU's `mutex_fn` / `lockable_fn`: lock, hold across a
/// yield, unlock.
fn mutex_body(st: &MutexState, lock: &dyn Fn(), unlock: &dyn Fn()) {
    lock();
    assert!(!st.locked.get());
    st.locked.set(true);
    yield_now();
    st.locked.set(false);
    unlock();
    st.done.set(st.done.get() + 1);
}

/// QEMU's `do_test_co_mutex`: c2 blocks while c1 holds the mutex across a
/// yield; c1's unlock queues c2, which runs as soon as c1 terminates.
fn do_test_co_mutex(make: impl Fn(Rc<MutexState>) -> Coroutine) {
    let st = Rc::new(MutexState::default());
    let c1 = make(st.clone());
    let c2 = make(st.clone());
    c1.enter();
    assert!(st.locked.get());
    c2.enter();
    // Unlock queues c2; it starts when c1 terminates.
    c1.enter();
    assert_eq!(st.done.get(), 1);
    assert!(st.locked.get());
    c2.enter();
    assert_eq!(st.done.get(), 2);
    assert!(!st.locked.get());
}

/// /locking/co-mutex
#[test]
fn locking_co_mutex() {
    let m = Rc::new(CoMutex::new(()));
    do_test_co_mutex(|st| {
        let m = m.clone();
        Coroutine::new(move || {
            // Through the RAII guard, held in a cell across the yield.
            let g = RefCell::new(None);
            mutex_body(&st, &|| *g.borrow_mut() = Some(m.lock()), &|| {
                drop(g.borrow_mut().take())
            });
        })
    });
    assert!(!m.is_locked());
}

/// /locking/co-mutex/lockable: the same through the `Lockable` trait object
/// (QEMU's `QemuLockable`): the second locker waits, and the lock taken
/// through the trait is the mutex's own (QEMU's `QEMU_MAKE_LOCKABLE(NULL)`
/// check has no Rust counterpart: an absent lock is an `Option`).
#[test]
fn locking_co_mutex_lockable() {
    let m = Rc::new(CoMutex::new(()));
    do_test_co_mutex(|st| {
        let m = m.clone();
        Coroutine::new(move || {
            let x: &dyn Lockable = &*m;
            mutex_body(&st, &|| x.lock(), &|| x.unlock());
        })
    });
    assert!(!m.is_locked());
    let x: Rc<dyn Lockable> = m.clone();
    let holder = Coroutine::new(move || {
        x.lock();
        yield_now();
        x.unlock();
    });
    holder.enter();
    assert!(m.is_locked(), "Lockable::lock took the CoMutex");
    assert!(m.try_lock().is_none(), "held through the trait object");
    holder.enter();
    assert!(holder.is_terminated());
    assert!(!m.is_locked(), "Lockable::unlock released the CoMutex");
    // The explicit QEMU pair too.
    let m2 = m.clone();
    let co = Coroutine::new(move || {
        m2.lock_raw();
        m2.assert_locked();
        m2.unlock();
    });
    co.enter();
    assert!(co.is_terminated());
    assert!(!m.is_locked());
}

thread_local! {
    static RWLOCK: Rc<CoRwLock> = Rc::new(CoRwLock::new());
}

fn co(f: impl FnOnce(&CoRwLock) + 'static) -> Coroutine {
    let l = RWLOCK.with(Rc::clone);
    Coroutine::new(move || f(&l))
}

fn flag() -> Rc<Cell<bool>> {
    Rc::new(Cell::new(false))
}

/// /locking/co-rwlock/upgrade: a reader that upgrades while a writer is
/// queued goes back into the queue behind it, even as the sole reader.
#[test]
fn locking_co_rwlock_upgrade() {
    let (c1_done, c2_done) = (flag(), flag());
    let d1 = c1_done.clone();
    let c1 = co(move |l| {
        l.rdlock();
        yield_now();
        l.upgrade();
        l.unlock();
        d1.set(true);
    });
    let d2 = c2_done.clone();
    let c2 = co(move |l| {
        l.wrlock();
        yield_now();
        l.unlock();
        d2.set(true);
    });
    c1.enter();
    c2.enter();
    // c1 now goes to sleep, and c2 gets the write lock.
    c1.enter();
    assert!(!c1_done.get());
    c2.enter();
    assert!(c1_done.get());
    assert!(c2_done.get());
}

/// /locking/co-rwlock/downgrade: with a reader holding the lock and a
/// writer, a reader and a writer queued, the writer's downgrade lets the
/// queued reader in, and everything completes without a hang.
#[test]
fn locking_co_rwlock_downgrade() {
    let done: Vec<_> = (0..4).map(|_| flag()).collect();
    let d = done.clone();
    let c1 = co(move |l| {
        l.rdlock();
        yield_now();
        l.unlock();
        yield_now();
        d[0].set(true);
    });
    let d = done.clone();
    let c2 = co(move |l| {
        l.wrlock();
        l.downgrade();
        l.unlock();
        d[1].set(true);
    });
    let d = done.clone();
    let c3 = co(move |l| {
        l.rdlock();
        l.unlock();
        d[2].set(true);
    });
    let d = done.clone();
    let c4 = co(move |l| {
        l.wrlock();
        l.unlock();
        d[3].set(true);
    });
    c1.enter();
    c2.enter();
    c3.enter();
    c4.enter();
    c1.enter();
    assert!(done[1].get());
    assert!(done[2].get());
    assert!(done[3].get());
    c1.enter();
    assert!(done[0].get());
}

/// Writer preference: a reader arriving while a writer waits queues behind it.
#[test]
fn rwlock_reader_waits_behind_queued_writer() {
    let order = Rc::new(RefCell::new(Vec::new()));
    let o = order.clone();
    let r1 = co(move |l| {
        l.rdlock();
        yield_now();
        o.borrow_mut().push("r1 unlock");
        l.unlock();
    });
    let o = order.clone();
    let w = co(move |l| {
        l.wrlock();
        o.borrow_mut().push("w");
        l.unlock();
    });
    let o = order.clone();
    let r2 = co(move |l| {
        l.rdlock();
        o.borrow_mut().push("r2");
        l.unlock();
    });
    r1.enter();
    w.enter();
    r2.enter();
    assert!(!r2.is_terminated());
    r1.enter();
    assert!(w.is_terminated() && r2.is_terminated());
    assert_eq!(*order.borrow(), ["r1 unlock", "w", "r2"]);
}

#[test]
fn rwlock_unlock_free_panics() {
    let l = CoRwLock::new();
    let msg = panic_message(catch_unwind(AssertUnwindSafe(|| l.unlock())).unwrap_err());
    assert!(msg.contains("not held"), "{msg}");
}

/// Bad use: unlocking a CoMutex that is not held panics clearly.
#[test]
fn co_mutex_unlock_not_held_panics() {
    let m = CoMutex::new(());
    let msg = panic_message(catch_unwind(AssertUnwindSafe(|| m.unlock())).unwrap_err());
    assert!(msg.contains("not locked"), "{msg}");

    // From a coroutine, and by a coroutine that is not the holder.
    let m = Rc::new(CoMutex::new(()));
    let m1 = m.clone();
    let holder = Coroutine::new(move || {
        m1.lock_raw();
        yield_now();
        m1.unlock();
    });
    holder.enter();
    let m2 = m.clone();
    let thief = Coroutine::new(move || m2.unlock());
    let msg = panic_message(catch_unwind(AssertUnwindSafe(|| thief.enter())).unwrap_err());
    assert!(msg.contains("held by another coroutine"), "{msg}");
    holder.enter();
    assert!(!m.is_locked());
    let msg = panic_message(catch_unwind(AssertUnwindSafe(|| m.assert_locked())).unwrap_err());
    assert!(msg.contains("not locked"), "{msg}");
}

#[test]
fn co_mutex_lock_outside_coroutine_panics() {
    let m = CoMutex::new(());
    let msg = panic_message(catch_unwind(AssertUnwindSafe(|| drop(m.lock()))).unwrap_err());
    assert!(msg.contains("outside a coroutine"), "{msg}");
}

#[test]
fn co_mutex_try_lock_and_data() {
    let m = CoMutex::new(5);
    {
        let mut g = m.try_lock().unwrap();
        *g += 1;
        assert!(m.try_lock().is_none());
        m.assert_locked(); // outside a coroutine the thread is the holder
    }
    assert_eq!(m.into_inner(), 6);
}

/// Waiters are served in the order they queued.
#[test]
fn co_mutex_fifo_handoff() {
    let m = Rc::new(CoMutex::new(Vec::new()));
    let m0 = m.clone();
    let first = Coroutine::new(move || {
        let g = m0.lock();
        yield_now();
        drop(g);
    });
    first.enter();
    let cos: Vec<_> = (0..5)
        .map(|i| {
            let m = m.clone();
            let c = Coroutine::new(move || m.lock().push(i));
            c.enter();
            c
        })
        .collect();
    first.enter();
    assert!(cos.iter().all(Coroutine::is_terminated));
    assert_eq!(*m.try_lock().unwrap(), [0, 1, 2, 3, 4]);
}

/// A waiter resumes on its own home thread, never on the unlocker's: the
/// holder runs on an IOThread, the waiter on this thread.
#[test]
fn co_mutex_waiter_resumes_in_home_context() {
    let ctx = AioContext::current();
    let t = IoThread::new().unwrap();
    let m = Arc::new(CoMutex::new(()));
    let (locked_tx, locked_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Arc::new(Mutex::new(go_rx));
    let m1 = m.clone();
    t.context().bh_schedule_oneshot(move || {
        let co = Coroutine::new(move || {
            let g = m1.lock();
            locked_tx.send(()).unwrap();
            // Hold it until the main thread's coroutine waits.
            let rx = go_rx.clone();
            while rx.locked().try_recv().is_err() {
                let me = Coroutine::current().unwrap();
                AioContext::current().bh_schedule_oneshot({
                    let h = me.handle();
                    move || h.wake()
                });
                yield_now();
            }
            drop(g);
        });
        co.enter();
    });
    recv_within(&locked_rx, "locked_rx");
    let me_thread = std::thread::current().id();
    let resumed_on = Rc::new(Cell::new(None));
    let r = resumed_on.clone();
    let m2 = m.clone();
    let waiter = Coroutine::new(move || {
        let _g = m2.lock();
        r.set(Some(std::thread::current().id()));
    });
    waiter.enter();
    assert!(!waiter.is_terminated());
    go_tx.send(()).unwrap();
    poll_blocking_until(&ctx, "waiter.is_terminated()", || waiter.is_terminated());
    assert_eq!(resumed_on.get(), Some(me_thread));
    join_iothread(t, "t");
}

/// CoQueue: next wakes the oldest, restart_all the rest; a waiter releases
/// its CoMutex while it sleeps and holds it again when it returns.
#[test]
fn co_queue_wait_next_restart_all() {
    let q = Rc::new(CoQueue::new());
    let m = Rc::new(CoMutex::new(0));
    let log = Rc::new(RefCell::new(Vec::new()));
    let cos: Vec<_> = (0..3)
        .map(|i| {
            let (q, m, log) = (q.clone(), m.clone(), log.clone());
            let c = Coroutine::new(move || {
                let g = m.lock();
                let mut g = q.wait_guard(g);
                m.assert_locked();
                *g += 1;
                log.borrow_mut().push(i);
            });
            c.enter();
            c
        })
        .collect();
    assert!(!m.is_locked(), "waiters release the mutex while they sleep");
    assert!(!q.is_empty());
    // From a coroutine: the woken one runs after the waker ends.
    let q2 = q.clone();
    let waker = Coroutine::new(move || assert!(q2.next()));
    waker.enter();
    assert_eq!(*log.borrow(), [0]);
    let q3 = q.clone();
    Coroutine::new(move || q3.restart_all()).enter();
    assert_eq!(*log.borrow(), [0, 1, 2]);
    assert!(cos.iter().all(Coroutine::is_terminated));
    assert!(q.is_empty());
    assert!(!q.next());
    assert_eq!(*m.try_lock().unwrap(), 3);
}

/// Any lock can be released by a CoQueue: here a spin flag.
#[derive(Default)]
struct SpinLock(AtomicBool);
impl Lockable for SpinLock {
    fn lock(&self) {
        while self.0.swap(true, SeqCst) {
            std::hint::spin_loop();
        }
    }
    fn unlock(&self) {
        self.0.store(false, SeqCst);
    }
}

/// wait_front, enter_next with a lock, and a std mutex released while waiting.
#[test]
fn co_queue_front_and_std_lock() {
    let q = Rc::new(CoQueue::new());
    let log = Rc::new(RefCell::new(Vec::new()));
    let std_m = Arc::new(Mutex::new(0));
    let (q1, l1, s1) = (q.clone(), log.clone(), std_m.clone());
    let back = Coroutine::new(move || {
        let g = s1.locked();
        let mut g = q1.wait_std(&s1, g);
        *g += 1;
        l1.borrow_mut().push("back");
    });
    back.enter();
    assert_eq!(*std_m.locked(), 0, "the std mutex is free while waiting");
    let lock = Rc::new(SpinLock::default());
    let (q2, l2, lk) = (q.clone(), log.clone(), lock.clone());
    let front = Coroutine::new(move || {
        q2.wait_front();
        assert!(
            !lk.0.load(SeqCst),
            "enter_next released the lock around the wakeup"
        );
        l2.borrow_mut().push("front");
    });
    front.enter();
    lock.lock();
    assert!(q.enter_next_lockable(Some(&*lock)));
    assert!(lock.0.load(SeqCst), "and took it again");
    lock.unlock();
    q.enter_all();
    assert_eq!(*log.borrow(), ["front", "back"]);
    assert_eq!(*std_m.locked(), 1);
}

/// Waiters on several IOThreads, woken from this thread, each resume on
/// their own thread.
#[test]
fn co_queue_cross_thread_wakeups() {
    let threads: Vec<_> = (0..3).map(|_| IoThread::new().unwrap()).collect();
    let q = Arc::new(CoQueue::new());
    let waiting = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    for t in &threads {
        let (q, waiting, tx) = (q.clone(), waiting.clone(), tx.clone());
        t.context().bh_schedule_oneshot(move || {
            Coroutine::new(move || {
                let home = std::thread::current().id();
                waiting.fetch_add(1, SeqCst);
                q.wait();
                tx.send(std::thread::current().id() == home).unwrap();
            })
            .enter();
        });
    }
    wait_until("three waiters", || waiting.load(SeqCst) >= 3);
    // A waiter counts itself just before it queues: wake until all answered.
    let mut answers = 0;
    let deadline = std::time::Instant::now() + helpers::DEADLINE;
    while answers < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {answers} of 3 waiters answered"
        );
        q.restart_all();
        while let Ok(on_home) = rx.recv_timeout(std::time::Duration::from_millis(5)) {
            assert!(on_home);
            answers += 1;
        }
    }
    for t in threads {
        join_iothread(t, "t");
    }
}

/// co_sleep_ns sleeps on a timer of the coroutine's context.
#[test]
fn co_sleep_ns_on_timer() {
    let ctx = AioContext::current();
    let start = Clock::Realtime.now_ns();
    let done = Rc::new(Cell::new(false));
    let d = done.clone();
    let co = Coroutine::new(move || {
        co_sleep_ns(Clock::Realtime, 2_000_000);
        d.set(true);
    });
    co.enter();
    assert!(!done.get());
    poll_blocking_until(&ctx, "done.get()", || done.get());
    // Monotonic clock: the timer cannot fire before its deadline.
    assert!(Clock::Realtime.now_ns() - start >= 2_000_000);
}

/// A wakeable sleep ends early when woken from another thread, and a wakeup
/// by other means while it sleeps panics (QEMU's qemu_co_sleep mark).
#[test]
fn co_sleep_wakeable() {
    let ctx = AioContext::current();
    let s = CoSleep::new();
    let s2 = s.clone();
    let woke = Arc::new(AtomicBool::new(false));
    let w = woke.clone();
    let co = Coroutine::new(move || {
        s2.sleep_ns(Clock::Realtime, i64::MAX / 4);
        w.store(true, SeqCst);
    });
    co.enter();
    assert!(s.is_sleeping());
    let h = co.handle();
    let msg = panic_message(catch_unwind(AssertUnwindSafe(|| h.wake())).unwrap_err());
    assert!(msg.contains("qemu_co_sleep"), "{msg}");
    let s3 = s.clone();
    join_within(std::thread::spawn(move || s3.wake()), "s3.wake()");
    poll_blocking_until(&ctx, "woke.load(SeqCst)", || woke.load(SeqCst));
    assert!(!s.is_sleeping());
    s.wake(); // nobody sleeps: nothing happens
}

/// The barging window is bounded even when the woken waiter cannot run:
/// here it lives on the holder's own thread, so it runs only when the
/// holder yields, and the holder relocks in a loop without yielding. Once
/// the waiter has waited the bound (500 µs), an unlock hands it the mutex,
/// the holder's next lock queues and yields, and the waiter gets in long
/// before the loop's end (which takes far longer than 500 µs).
#[test]
fn co_mutex_barging_bounded_for_a_waiter_on_the_holders_thread() {
    const ROUNDS: u32 = 200_000;
    let ctx = AioContext::new().unwrap();
    let m = Rc::new(CoMutex::new(()));
    let round = Rc::new(Cell::new(0u32));
    let waiter_got_it_at = Rc::new(Cell::new(None));
    let (m1, r1) = (m.clone(), round.clone());
    let holder = Coroutine::new(move || {
        let mut g = m1.lock();
        yield_now(); // let the waiter queue
        for i in 1..=ROUNDS {
            r1.set(i);
            drop(g);
            g = m1.lock();
        }
        drop(g);
    });
    let (m2, r2, w2) = (m.clone(), round.clone(), waiter_got_it_at.clone());
    let waiter = Coroutine::new(move || {
        let _g = m2.lock();
        w2.set(Some(r2.get()));
    });
    holder.enter();
    waiter.enter(); // queues behind the holder
    holder.enter();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !(holder.is_terminated() && waiter.is_terminated()) {
        assert!(
            std::time::Instant::now() < deadline,
            "coroutines never finished"
        );
        ctx.poll(false);
    }
    let at = waiter_got_it_at.get().expect("the waiter got the mutex");
    assert!(
        at < ROUNDS,
        "the waiter got the mutex only after all {ROUNDS} rounds"
    );
    assert!(!m.is_locked());
}

/// The CoMutex accessors: `get_mut` and `into_inner` reach the data,
/// `Debug` shows whether it is locked (and a guard shows the data), and a
/// guard names its own mutex.
#[test]
fn co_mutex_accessors_and_debug() {
    let mut m = CoMutex::new(vec![1u8]);
    m.get_mut().push(2);
    assert_eq!(format!("{m:?}"), "CoMutex { locked: false, .. }");
    {
        let g = m.try_lock().expect("free");
        assert!(std::ptr::eq(g.mutex(), &m), "the guard's mutex");
        assert_eq!(format!("{g:?}"), "[1, 2]");
        assert_eq!(format!("{m:?}"), "CoMutex { locked: true, .. }");
    }
    assert!(!m.is_locked());
    assert_eq!(m.into_inner(), vec![1, 2]);
}

/// An unlock hands the mutex over (QEMU's handoff) to a waiter that has
/// waited past the starvation bound (500 µs), and counts it; a fresh mutex
/// has handed over nothing.
#[test]
fn co_mutex_hands_over_to_a_starving_waiter() {
    let ctx = AioContext::new().unwrap();
    let m = Rc::new(CoMutex::new(()));
    assert_eq!(m.handoffs(), 0, "a fresh mutex");
    let (m1, m2) = (m.clone(), m.clone());
    let holder = Coroutine::new(move || {
        m1.lock_raw();
        yield_now();
        m1.unlock();
    });
    let got = Rc::new(Cell::new(false));
    let g = got.clone();
    let waiter = Coroutine::new(move || {
        m2.lock_raw();
        g.set(true);
        m2.unlock();
    });
    holder.enter();
    waiter.enter(); // queues behind the holder
    assert!(!got.get());
    assert_eq!(m.handoffs(), 0);
    std::thread::sleep(std::time::Duration::from_millis(5)); // the waiter starves
    holder.enter(); // unlocks
    assert_eq!(
        m.handoffs(),
        1,
        "the unlock handed the mutex to the starving waiter"
    );
    poll_blocking_until(&ctx, "the waiter to run", || waiter.is_terminated());
    assert!(got.get());
    assert_eq!(m.handoffs(), 1);
    assert!(!m.is_locked());
}
