//! Unit tests of the coroutine-object pool and of a pooled object's stack,
//! which need the module's internals (the thread's kept-stack count, the
//! pool's length and thread-exit destructor, a coroutine's stack size).

use std::cell::Cell;
use std::rc::Rc;

use super::*;

/// This thread's count of terminated coroutines that keep their stack.
pub(super) fn kept() -> usize {
    tls::with_state(|st| st.kept_stacks.get())
}

/// Runs `f` on a thread of its own (a fresh pool and count), and fails the
/// test with `f`'s panic.
/// `n` coroutines that each count one run in the returned cell, entered
/// until they terminated; their handles held.
pub(super) fn run_counted(n: usize) -> (Rc<Cell<usize>>, Vec<Coroutine>) {
    let ran = Rc::new(Cell::new(0));
    let cos: Vec<_> = (0..n)
        .map(|_| {
            let r = ran.clone();
            let co = Coroutine::new(move || r.set(r.get() + 1));
            co.enter();
            co
        })
        .collect();
    (ran, cos)
}

pub(super) fn on_new_thread(f: impl FnOnce() + Send + 'static) {
    if let Err(p) = std::thread::spawn(f).join() {
        std::panic::resume_unwind(p);
    }
}

/// A terminated coroutine's stack is counted while it keeps it, pooled or
/// not; `take` un-counts it when the object is reused; the pool's
/// thread-exit destructor empties and closes the pool, after which
/// coroutines still run but are no longer pooled.
#[test]
fn pool_counts_kept_stacks_and_closes_at_thread_exit() {
    on_new_thread(|| {
        let cos: Vec<_> = (0..3)
            .map(|_| {
                let co = Coroutine::new(|| {});
                co.enter();
                co
            })
            .collect();
        assert_eq!((pool::len(), kept()), (0, 3), "terminated, handles alive");
        drop(cos);
        assert_eq!((pool::len(), kept()), (3, 3), "pooled with their stacks");
        let co = Coroutine::new(|| {});
        assert_eq!((pool::len(), kept()), (2, 2), "one reused: not terminated");
        co.enter();
        drop(co);
        assert_eq!((pool::len(), kept()), (3, 3));

        // What the thread's exit does.
        drop(pool::Drain);
        assert_eq!((pool::len(), kept()), (0, 0), "drained, stacks given back");
        assert!(pool::take().is_none(), "a closed pool gives nothing");
        let ran = Rc::new(Cell::new(false));
        let r = ran.clone();
        let co = Coroutine::new(move || r.set(true));
        co.enter();
        assert!(ran.get() && co.is_terminated());
        assert_eq!(kept(), 1, "terminated, its handle alive");
        drop(co);
        assert_eq!((pool::len(), kept()), (0, 0), "not pooled: freed");
    });
}

/// More terminated coroutines than `KEEP_STACKS` with their handles alive:
/// the ones beyond the bound give their stack back at once, and are pooled
/// without one; reusing such an object takes a fresh stack.
#[test]
fn kept_stacks_bounded_and_stackless_objects_reused() {
    // The bounds are the defaults: no pool-size test runs meanwhile.
    let _sizes = super::tests_pool_size::lock();
    on_new_thread(|| {
        let n = KEEP_STACKS + 5;
        let cos: Vec<_> = (0..n)
            .map(|_| {
                let co = Coroutine::new(|| {});
                co.enter();
                co
            })
            .collect();
        assert_eq!(kept(), KEEP_STACKS);
        drop(cos);
        assert_eq!(pool::len(), pool::MAX.min(n));
        assert_eq!(kept(), KEEP_STACKS.min(pool::MAX));
        // Reuse every pooled object, with or without a stack, all alive.
        let (ran, cos) = run_counted(pool::MAX.min(n));
        assert_eq!(ran.get(), cos.len());
        assert!(cos.iter().all(Coroutine::is_terminated));
    });
}

/// A pooled object whose stack has an older size gets a stack of the
/// current size when it is reused (the object itself is still reused).
#[test]
fn reused_object_follows_the_stack_size() {
    fn stack_len(co: &Coroutine) -> usize {
        // SAFETY: the coroutine is idle and on this thread: nothing else
        // borrows `raw`.
        let raw = unsafe { &*co.inner().raw.get() };
        raw.as_ref().expect("an idle coroutine has one").stack_len()
    }
    on_new_thread(|| {
        let co = Coroutine::new(|| {});
        let addr = co.as_ptr();
        let old = stack_len(&co);
        co.enter();
        drop(co);
        let size = stack_size() / 4;
        set_stack_size(size);
        let ran = Rc::new(Cell::new(false));
        let r = ran.clone();
        let co = Coroutine::new(move || {
            // Uses a few KiB of the new stack.
            let buf = std::hint::black_box([1u8; 8192]);
            r.set(buf.iter().all(|&b| b == 1));
        });
        let new = stack_len(&co);
        set_stack_size(DEFAULT_STACK_SIZE);
        assert_eq!(co.as_ptr(), addr, "the object came from the pool");
        assert!(
            new >= size && new < old,
            "stack of {new} bytes for a size of {size} (was {old})"
        );
        co.enter();
        assert!(ran.get() && co.is_terminated());
    });
}

/// A panic of a nested coroutine caught inside its enterer (itself a
/// coroutine) leaves the enterer current, running and able to yield: the
/// unwind guard restores the current coroutine from the panicking one's
/// `caller`, holding nothing itself.
#[test]
fn panic_caught_inside_an_enterer_restores_it() {
    let outer = Coroutine::new(|| {
        let me = Coroutine::current().expect("in a coroutine");
        let inner = Coroutine::new(|| panic!("inner"));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.enter()));
        assert!(caught.is_err() && inner.is_terminated());
        let now = Coroutine::current().expect("still in a coroutine");
        assert!(now.ptr_eq(&me), "the enterer is current again");
        assert!(me.entered());
        yield_now();
    });
    outer.enter();
    assert!(!in_coroutine());
    assert!(!outer.entered() && !outer.is_terminated());
    outer.enter();
    assert!(outer.is_terminated());
}
