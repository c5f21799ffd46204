//! Recycling terminated coroutines: the per-thread object pool, and what
//! happens to a coroutine's last reference.

use super::*;

/// The per-thread pool of terminated coroutine objects, each with its stack.
///
/// Bounded by [`pool::MAX`] objects per thread; beyond that a dying
/// coroutine's stack goes to the stack pool (which has its own bounds) and
/// its object is freed. When the thread exits, the pooled stacks move to the
/// shared stack pool (or are unmapped if it is full) and the objects are freed.
pub(super) mod pool {
    use super::*;

    /// The most objects one thread keeps (as many as one stack batch).
    pub(crate) const MAX: usize = stack::BATCH;

    pub(super) struct Pool(Vec<Arc<CoInner>>);

    impl Drop for Pool {
        fn drop(&mut self) {
            let mut stacks = Vec::with_capacity(self.0.len());
            for mut co in self.0.drain(..) {
                // Pooled objects are unique (checked by `release`); a miss
                // would just drop the object, which also frees its stack.
                if let Some(inner) = Arc::get_mut(&mut co) {
                    if let Some(raw) = inner.raw.get_mut().take() {
                        stacks.push(raw.into_stack());
                    }
                }
            }
            stack::give_all(stacks);
        }
    }

    thread_local! {
        static POOL: RefCell<Pool> = const { RefCell::new(Pool(Vec::new())) };
    }

    // `take` and `put` are never inlined: they touch a thread-local, and
    // their callers (`Coroutine::new`, handle drops) may be inlined into a
    // coroutine's frame that spans a switch (see `tls`).

    /// Takes a pooled object: terminated, unique, homed on this thread.
    #[inline(never)]
    pub(crate) fn take() -> Option<Arc<CoInner>> {
        POOL.try_with(|p| p.borrow_mut().0.pop()).ok().flatten()
    }

    /// Pools `co` (the caller checked it is eligible); drops it if the pool
    /// is full or the thread is exiting.
    #[inline(never)]
    pub(crate) fn put(co: Arc<CoInner>) {
        let full = POOL.try_with(move |p| {
            let mut p = p.borrow_mut();
            if p.0.len() < MAX {
                p.0.push(co);
                None
            } else {
                Some(co)
            }
        });
        // Dropped here, after the pool's borrow ended.
        drop(full);
    }

    /// Empties this thread's pool (the objects' stacks go to the shared
    /// stack pool, as at thread exit).
    pub(crate) fn flush() {
        let pool = POOL.try_with(|p| std::mem::replace(&mut *p.borrow_mut(), Pool(Vec::new())));
        drop(pool); // after the borrow ended
    }

    /// Objects in this thread's pool (each holds one stack).
    pub(crate) fn len() -> usize {
        POOL.try_with(|p| p.borrow().0.len()).unwrap_or(0)
    }
}

/// Drops a reference to a coroutine, pooling the object if it was the last
/// one and the coroutine terminated on this thread (its home).
#[inline]
pub(super) fn release(mut co: Arc<CoInner>) {
    // A relaxed peek first, so that dropping a shared handle costs no
    // read-modify-write beyond the count decrement. `Arc::get_mut` then
    // decides with the proper synchronisation (it Acquires the other
    // handles' Release decrements).
    if Arc::strong_count(&co) == 1 {
        if let Some(inner) = Arc::get_mut(&mut co) {
            if recyclable(inner) {
                pool::put(co);
                return;
            }
        }
    }
    drop(co);
}

/// Whether a uniquely held object may be pooled; resets its cross-thread
/// fields for the next user if so.
#[inline]
pub(super) fn recyclable(inner: &mut CoInner) -> bool {
    if *inner.state.get_mut() != state::TERMINATED
        || *inner.home_thread.get_mut() != tls::thread_token()
    {
        return false;
    }
    // A claim left by a coroutine that ended without being woken (a sleep
    // it panicked out of) must not follow the object.
    inner.scheduled.reset();
    let home = inner.home.get_mut().unwrap_or_else(|e| e.into_inner());
    if home.is_some() {
        // The pool must not keep a context alive; the next user's home
        // context is chosen afresh.
        drop_home(home);
    }
    true
}

#[cold]
pub(super) fn drop_home(home: &mut Option<Arc<dyn Home>>) {
    *home = None;
}
