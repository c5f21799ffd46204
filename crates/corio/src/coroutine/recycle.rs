//! Recycling terminated coroutines: the per-thread object pool, and what
//! happens to a coroutine's last reference.

use super::*;

/// The per-thread pool of terminated coroutine objects, each with its stack.
///
/// Bounded by [`pool::MAX`] objects per thread in a fixed array (the fast
/// path), plus as many as `inc_pool_size` added (less `dec_pool_size`) in a
/// cold overflow vector, used only when the array is full (`put_beyond`) or
/// empty (`take_beyond`): a device that keeps 1000 requests in flight
/// reuses 1000 objects and their stacks, as QEMU's per-thread alloc pool of
/// `pool_max_size` does. Beyond the bound a dying coroutine's stack goes to
/// the stack pool (which has its own bounds) and its object is freed. When
/// the thread exits, the pooled stacks move to the shared stack pool (or
/// are unmapped if it is full) and the objects are freed.
///
/// The objects live in the thread's switch state (`tls::ThreadState::pool`,
/// a fixed array of `ManuallyDrop` slots, and `overflow`), which has no
/// destructor: so the fast paths need no borrow flag and no "is the
/// thread-local alive" check. The destructor that empties the pool at
/// thread exit is a separate thread-local, [`pool::Drain`], registered when
/// the thread gets its token (a thread without one pools nothing: a pooled
/// object's home is the pooling thread's token).
///
/// How this bounds stacks: a terminated coroutine keeps its stack while
/// this thread has fewer than `KEEP_STACKS` plus the extra pool size such
/// coroutines (`keep_or_give_stack`), whether its handles are still held or
/// it went to the pool; beyond that it gives its stack back at termination.
/// With no extra pool size that is the 64 of the fixed array; with one, the
/// objects that fill the overflow keep their stacks too (termination cannot
/// tell whether handles will be dropped soon, so kept handles share the
/// same bound: at most 64 plus the extra size per thread, never unbounded).
pub(super) mod pool {
    use super::*;

    /// The most objects one thread keeps (as many as one stack batch).
    pub(crate) const MAX: usize = tls::POOL_MAX;

    /// Empties this thread's pool when the thread exits, and closes it.
    pub(in crate::coroutine) struct Drain;

    impl Drop for Drain {
        fn drop(&mut self) {
            empty(true);
        }
    }

    /// Empties this thread's pool (the objects' stacks go to the shared
    /// stack pool, as at thread exit) and keeps it open: a reused worker
    /// thread starts its next task without the last one's objects. Never
    /// inlined: it reads the thread state (see `tls`).
    #[inline(never)]
    pub(crate) fn flush() {
        empty(false);
    }

    /// Takes every pooled object out (the array's and the overflow's) and
    /// gives their stacks to the shared stack pool; with `close`, the pool
    /// refuses objects from then on.
    fn empty(close: bool) {
        let objects = tls::with_state(|st| {
            let old = st.pool_len.get();
            st.pool_len
                .set(if close || old == CLOSED { CLOSED } else { 0 });
            let mut objects = ManuallyDrop::into_inner(st.overflow.take());
            objects.extend(st.pool[..old.min(MAX)].iter().filter_map(|slot| {
                ManuallyDrop::into_inner(slot.replace(ManuallyDrop::new(None)))
            }));
            objects
        });
        let mut stacks = Vec::with_capacity(objects.len());
        for mut co in objects {
            // Pooled objects are unique (checked by `release`); a miss
            // would just drop the object, which also frees its stack.
            if let Some(inner) = Arc::get_mut(&mut co) {
                if let Some(raw) = inner.raw.get_mut().take() {
                    // It was counted as holding its stack.
                    tls::kept_stack_released();
                    stacks.push(raw.into_stack());
                }
            }
        }
        stack::give_all(stacks);
    }

    thread_local! {
        static DRAIN: Drain = const { Drain };
    }

    /// Registers the thread-exit destructor of this thread's pool; called
    /// once, when the thread gets its token (before it can pool anything).
    /// During thread exit, when that is no longer possible, closes the pool.
    pub(in crate::coroutine) fn register(st: &tls::ThreadState) {
        if DRAIN.try_with(|_| ()).is_err() {
            close(st);
        }
    }

    /// A closed pool's length: beyond the array, so that `put` refuses and
    /// `take` finds nothing, both through their one bounds check.
    const CLOSED: usize = usize::MAX;

    /// Closes the pool for good (the thread is exiting).
    fn close(st: &tls::ThreadState) {
        st.pool_len.set(CLOSED);
    }

    /// Takes a pooled object: terminated, unique, homed on this thread. Its
    /// stack (if it kept one) is no longer counted as a terminated
    /// coroutine's: the caller reuses it at once.
    ///
    /// Never inlined: it touches the thread's state, and its caller
    /// (`Coroutine::new`) may be inlined into a coroutine's frame that spans
    /// a switch (see `tls`).
    #[inline(never)]
    pub(crate) fn take() -> Option<Arc<CoInner>> {
        tls::with_state(|st| {
            // An empty pool (0 - 1 wraps) and a closed one (`CLOSED` - 1)
            // both miss the array.
            let len = st.pool_len.get().wrapping_sub(1);
            let Some(slot) = st.pool.get(len) else {
                return take_beyond(st);
            };
            let co = ManuallyDrop::into_inner(slot.replace(ManuallyDrop::new(None)))?;
            st.pool_len.set(len);
            Some(taken(st, co))
        })
    }

    /// `take` with the array empty (or the pool closed, when the overflow
    /// is empty too): an object from the overflow, if any.
    #[cold]
    #[inline(never)]
    fn take_beyond(st: &tls::ThreadState) -> Option<Arc<CoInner>> {
        let mut overflow = st.overflow.take();
        let co = overflow.pop();
        st.overflow.set(overflow);
        Some(taken(st, co?))
    }

    /// Un-counts the stack of `co`, just taken from the pool, if it kept one.
    #[inline(always)]
    fn taken(st: &tls::ThreadState, co: Arc<CoInner>) -> Arc<CoInner> {
        // SAFETY: the object is unique (the pool held the only reference)
        // and on its home thread; this reads whether `raw` is `Some`.
        if unsafe { &*co.raw.get() }.is_some() {
            // A pooled object holds its stack if it kept it when it
            // terminated (`CoInner::holds_stack_mut`); `Coroutine::new`
            // reuses it at once.
            st.kept_stacks.set(st.kept_stacks.get() - 1);
        }
        co
    }

    /// Pools `co`, a unique reference to a terminated coroutine homed on
    /// this thread, if the pool has room; otherwise hands it back.
    #[inline(always)]
    pub(super) fn put(st: &tls::ThreadState, co: Arc<CoInner>) -> Option<Arc<CoInner>> {
        let len = st.pool_len.get();
        let Some(slot) = st.pool.get(len) else {
            return Some(co);
        };
        // The slot is `None` (at `pool_len`): nothing to drop.
        let _ = slot.replace(ManuallyDrop::new(Some(co)));
        st.pool_len.set(len + 1);
        None
    }

    /// Pools `co`, which [`put`] handed back (the array is full, or the pool
    /// is closed), in the overflow if it is below the extra pool size from
    /// `inc_pool_size`; otherwise drops it (its stack goes to the stack
    /// pool). Cold and never inlined: it reads the thread state (see `tls`).
    #[cold]
    #[inline(never)]
    pub(super) fn put_beyond(co: Arc<CoInner>) {
        let extra = stack::pool_extra();
        let refused = tls::with_state(|st| {
            if st.pool_len.get() != MAX {
                return Some(co); // closed
            }
            let mut overflow = st.overflow.take();
            let refused = if overflow.len() < extra {
                overflow.push(co);
                None
            } else {
                Some(co)
            };
            st.overflow.set(overflow);
            refused
        });
        // Dropped after the thread state's closure: the drop reads it too.
        drop(refused);
    }

    /// Objects in this thread's pool, the array's and the overflow's (each
    /// holds at most one stack). Never inlined: it reads the thread state
    /// (see `tls`).
    #[inline(never)]
    pub(crate) fn len() -> usize {
        tls::with_state(|st| {
            let overflow = st.overflow.take();
            let beyond = overflow.len();
            st.overflow.set(overflow);
            match st.pool_len.get() {
                CLOSED => beyond,
                len => len + beyond,
            }
        })
    }
}

/// Drops a reference to a coroutine, pooling the object if it was the last
/// one and the coroutine terminated on this thread (its home).
///
/// Never inlined: it touches the thread's state, and its callers (handle
/// drops) may be inlined into a coroutine's frame that spans a switch.
/// Every way out that does more than pool is a tail call, so that the
/// pooling path saves no registers.
#[inline(never)]
pub(super) fn release(co: Arc<CoInner>) {
    if Arc::strong_count(&co) != 1 {
        return drop(co);
    }
    // The count was 1 and `co` is that reference: no other handle exists,
    // and none can appear (cloning needs one). The Acquire fence pairs with
    // the Release decrement of every handle dropped before (on any thread),
    // as `Arc`'s own drop does: their uses of the object happen before ours.
    std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
    // No `Weak` to a `CoInner` is ever made (`Arc::get_mut` would also
    // check that count, with a locked compare-exchange), so nothing else
    // can reach the object while this borrow lives; `recyclable` touches
    // its home-thread fields only once its home matched this thread.
    // SAFETY: `co` is the only reference (count 1, above) and no `Weak`
    // exists: this borrow is unique.
    let inner = unsafe { &mut *Arc::as_ptr(&co).cast_mut() };
    if !recyclable(inner, tls::with_state(|st| st.token_if_any())) {
        return drop_unpooled(co);
    }
    if inner
        .home
        .get_mut()
        .unwrap_or_else(|e| e.into_inner())
        .is_some()
    {
        return pool_homed(co);
    }
    if let Some(co) = tls::with_state(|st| pool::put(st, co)) {
        pool::put_beyond(co);
    }
}

/// `release` for an object that still has a home context: drops it (the
/// pool must not keep a context alive; the next user's home is chosen
/// afresh), then pools the object. Out of line: the last reference to the
/// context may run its teardown.
#[cold]
#[inline(never)]
fn pool_homed(mut co: Arc<CoInner>) {
    if let Some(inner) = Arc::get_mut(&mut co) {
        *inner.home.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
    }
    if let Some(co) = tls::with_state(|st| pool::put(st, co)) {
        pool::put_beyond(co);
    }
}

/// Drops a reference that `release` does not pool.
#[cold]
#[inline(never)]
fn drop_unpooled(co: Arc<CoInner>) {
    drop(co);
}

/// The last-handle check of a handle that cannot give its `Arc` away
/// (`CoHandle`, whose field the compiler drops after this): pools the object
/// through a second reference, which the field's drop then leaves alone.
#[inline(never)]
pub(super) fn release_handle(co: &mut Arc<CoInner>) {
    let token = tls::with_state(|st| st.token_if_any());
    let Some(inner) = Arc::get_mut(co) else {
        return;
    };
    if !recyclable(inner, token) {
        return;
    }
    *inner.home.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
    // Pooled through a second reference, whose count the field's drop
    // then brings back to 1.
    if let Some(leftover) = tls::with_state(|st| pool::put(st, Arc::clone(co))) {
        pool::put_beyond(leftover);
    }
}

/// Whether a uniquely held object may be pooled on the thread whose token
/// is `token` (0 if it has none yet, which matches no home): terminated
/// there. Resets its schedule claim if so (a claim left by a coroutine that
/// ended without being woken, a sleep it panicked out of, must not follow
/// the object); its home context is the caller's to drop.
#[inline(always)]
pub(super) fn recyclable(inner: &mut CoInner, token: usize) -> bool {
    if *inner.state.get_mut() != state::TERMINATED || inner.scheduled.home_mut() != token {
        return false;
    }
    inner.scheduled.reset();
    true
}
