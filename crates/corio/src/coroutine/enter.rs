//! Entering coroutines: the enter/yield switch, the wakeup lists, the
//! hand-over of a migrating coroutine, and termination (QEMU's
//! `qemu_aio_coroutine_enter` and `aio_co_wake`).

use super::*;

/// Enters `co`, then the wakeups it queued, depth first (QEMU's
/// `qemu_aio_coroutine_enter`).
#[inline(never)]
pub(crate) fn enter(co: &CoInner) {
    tls::with_state(|st| {
        if refused(co, st) != 0 {
            // The whole slow enter out of line: merged with the fast
            // path's tail, its result would cost the round trip a
            // re-read of the state.
            return enter_cold(co, st);
        }
        match switch::<false>(co, st) {
            Back::Yielded => {}
            Back::Wakeups => run_wakeups(co),
            // Out of line and last: no value stays live across it.
            Back::Returned => returned_then_wakeups::<false>(co),
        }
    })
}

/// What the switch came back with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Back {
    /// The coroutine yielded and woke no one.
    Yielded,
    /// It yielded and queued wakeups (or asked to migrate), left in its
    /// `wakeup` list for the caller to run.
    Wakeups,
    /// It returned (or panicked and the panic was caught inside): the
    /// caller calls [`returned`].
    Returned,
}

/// `enter` after a refusal check failed or with a switch trace event on.
#[cold]
#[inline(never)]
fn enter_cold(co: &CoInner, st: &tls::ThreadState) {
    enter_refused(co, st);
    match switch::<true>(co, st) {
        Back::Yielded => {}
        Back::Wakeups => run_wakeups(co),
        Back::Returned => returned_then_wakeups::<true>(co),
    }
}

/// Enters a coroutine taken from a co_schedule queue: clears `scheduled`.
/// Gives the queue's reference back through the pool.
pub(crate) fn enter_scheduled(co: Arc<CoInner>) {
    // Its ordering: see `Claim::release`.
    co.scheduled.release();
    if !cancelled_wakeup(&co) {
        enter(&co);
    }
    release(co);
}

#[cold]
pub(super) fn run_wakeups(co: &CoInner) {
    /// If one of them panics, the rest are not lost: they are rescheduled.
    struct Pending(VecDeque<Arc<CoInner>>);
    impl Drop for Pending {
        fn drop(&mut self) {
            reschedule_wakeups(std::mem::take(&mut self.0));
        }
    }
    let mut pending = Pending(std::mem::take(&mut *co.wakeup.borrow_mut()));
    // Last use of `co` here: once migrated, another thread owns it.
    migrate_if_asked(co);
    while let Some(next) = pending.0.pop_front() {
        // As in `enter_scheduled`.
        next.scheduled.release();
        if cancelled_wakeup(&next) {
            release(next);
            continue;
        }
        if enter_one(&next) {
            let mut queued = next.wakeup.borrow_mut();
            while let Some(w) = queued.pop_back() {
                pending.0.push_front(w);
            }
            drop(queued);
            migrate_if_asked(&next);
        }
        release(next);
    }
}

/// Asks the enterer to move the running coroutine to `ctx` once it has
/// yielded (the second half of `co_reschedule_self`): no bottom half and
/// no allocation, one push onto `ctx`'s queue from `migrate_if_asked`.
///
/// Returns false, asking nothing, if `already_home` says that `target` is
/// the coroutine's home already.
///
/// # Safety
/// As `AioContext::co_schedule_migrate`; the caller then yields at once,
/// and `target` stays borrowed until the coroutine is resumed (there).
pub(crate) unsafe fn request_migration(
    target: &(dyn MoveTarget + 'static),
    already_home: impl FnOnce(&CoInner) -> bool,
) -> bool {
    let me = tls::current_co();
    assert!(!me.is_null(), "co_reschedule_self outside a coroutine");
    // SAFETY: the running coroutine is live (its enterer holds it).
    let me = unsafe { &*me };
    if already_home(me) {
        return false;
    }
    assert!(
        me.polls.get() == 0,
        "co_reschedule_self: the coroutine is inside AioContext::poll (a callback of a poll \
         running on its own stack); it cannot leave its thread before that poll returns"
    );
    me.migrate_to.set(Some(NonNull::from(target)));
    me.state.set(me.state.get() | state::WAKEUPS);
    true
}

/// Marks an `AioContext::poll` in progress on the running coroutine's stack
/// (if any) for as long as it lives: such a coroutine refuses to migrate,
/// since the poll's frames would go on running on another thread.
pub(crate) struct PollFrame(*const CoInner);

impl PollFrame {
    #[inline]
    pub(crate) fn enter() -> PollFrame {
        let co = tls::current_co();
        if !co.is_null() {
            // SAFETY: the running coroutine is live while it runs, and this
            // frame is on its stack.
            let c = unsafe { &*co };
            c.polls.set(c.polls.get() + 1);
        }
        PollFrame(co)
    }
}

impl Drop for PollFrame {
    #[inline]
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: as in `enter`: the frame lives on the coroutine's
            // stack, so the coroutine is live while it drops.
            let c = unsafe { &*self.0 };
            c.polls.set(c.polls.get() - 1);
        }
    }
}

/// After `co` yielded: if it asked to migrate, claims it and pushes it onto
/// the target context's queue. Called on the home thread with `co` idle.
#[inline]
pub(super) fn migrate_if_asked(co: &CoInner) {
    let target = co.migrate_to.replace(None);
    // Only a coroutine that yielded (state idle) still has the
    // `co_reschedule_self` frame that `target` borrows from; one that
    // terminated instead (a panic before the switch) is not moved.
    if let Some(target) = target.filter(|_| co.state.get() == 0) {
        // SAFETY: `request_migration` stored a reference that the yielded
        // coroutine's `co_reschedule_self` frame still borrows; the
        // coroutine is suspended until `take_in` below hands it over.
        migrate_now(co, unsafe { target.as_ref() });
    }
}

#[cold]
#[inline(never)]
pub(super) fn migrate_now(co: &CoInner, target: &dyn MoveTarget) {
    co.mark_scheduled(Scheduler::AioCoSchedule);
    // SAFETY: every `CoInner` lives in an `Arc` (created by
    // `Coroutine::new`), and the enterer holds one for the whole switch, so
    // the count is at least 1: taking one more reference is sound.
    let arc = unsafe {
        Arc::increment_strong_count(co);
        Arc::from_raw(co as *const CoInner)
    };
    // Sets the new home (and its thread), then pushes onto its queue.
    target.take_in(arc);
}

/// Hands queued wakeups to this thread's context instead of entering them
/// now (used when a panic interrupts the wakeup chain).
#[cold]
pub(super) fn reschedule_wakeups(list: VecDeque<Arc<CoInner>>) {
    if list.is_empty() {
        return;
    }
    for co in list {
        // The wake list's claim (`AioCoWake`, taken by `wake_local`) becomes
        // a co_schedule claim without panicking (this may run while
        // unwinding). Its ordering: see `Claim::hand_over`.
        if co
            .scheduled
            .hand_over(Scheduler::AioCoWake, Scheduler::AioCoSchedule)
        {
            home::push_home(co);
        }
    }
}

/// Runs `co` until it yields or returns. Returns whether it queued wakeups
/// (left in its `wakeup` list for the caller to run).
#[inline(always)]
pub(super) fn enter_one(co: &CoInner) -> bool {
    tls::with_state(|st| {
        let back = if refused(co, st) != 0 {
            enter_refused(co, st);
            switch::<true>(co, st)
        } else {
            switch::<false>(co, st)
        };
        match back {
            Back::Yielded => false,
            Back::Wakeups => true,
            Back::Returned => returned(co),
        }
    })
}

/// Every refusal in one value, non-zero if `co` may not simply be
/// entered: the home thread and the schedule claim (one word, equal to the
/// thread's token when homed here and unclaimed; a token is never 0, so a
/// thread that has none yet goes to the slow path, which gives it one), the
/// state (running, terminated), and the coroutine-switch trace events (the
/// slow path emits them).
#[inline(always)]
fn refused(co: &CoInner, st: &tls::ThreadState) -> usize {
    (co.scheduled.word() ^ st.token_if_any()) | co.state.get() | trace::switch_events_enabled()
}

/// The switch itself, with the trace events when `TRACED`.
#[inline(always)]
fn switch<const TRACED: bool>(co: &CoInner, st: &tls::ThreadState) -> Back {
    // SAFETY: home thread and idle (checked by `refused`, or the caller
    // panicked in `enter_refused`): no other borrow of `raw` exists, and the
    // coroutine never touches its own `raw`.
    let raw = unsafe { &mut *co.raw.get() };
    debug_assert!(
        raw.is_some(),
        "an idle coroutine holds its corosensei coroutine"
    );
    // `raw` is `None` only once its stack was given back, which happens only
    // to a terminated coroutine (`give_stack_now`, `Drop`, the pool's
    // `Drop`), and a terminated one becomes idle again only in `reuse`,
    // which puts a new one in.
    // SAFETY: an idle coroutine (state 0, checked above) holds its
    // corosensei coroutine (see above), so `raw` is `Some`.
    let raw = unsafe { raw.as_mut().unwrap_unchecked() };
    // The caller is kept in the coroutine, not in a register: a value live
    // across the switch costs a callee-saved register (a push and a pop, and
    // here one more push and pop to keep the stack aligned), a reload only
    // one instruction.
    co.caller.set(st.current.get());
    co.state.set(state::RUNNING);
    st.current.set(co);
    // Armed before the trace call: a `tracing` subscriber that panics
    // must not leave this coroutine current.
    let guard = UnwindGuard;
    if TRACED && trace::event::qemu_aio_coroutine_enter.enabled() {
        enter_traced(co.caller.get(), co);
    }
    let result = raw.resume(());
    // Normal return: restore inline; the guard only acts on a panic.
    std::mem::forget(guard);
    st.current.set(co.caller.get());
    if let corosensei::CoroutineResult::Return(()) = result {
        // All of termination out of line (the caller calls `returned`):
        // its values would otherwise take callee-saved registers that the
        // round trip's prologue would save.
        return Back::Returned;
    }
    let wakeups = co.state.get() & state::WAKEUPS != 0;
    co.state.set(0);
    // QEMU emits it in the coroutine just before the switch; nothing
    // runs on this thread between that point and this one.
    if TRACED && trace::event::qemu_coroutine_yield.enabled() {
        yield_traced(co, co.caller.get());
    }
    if wakeups {
        Back::Wakeups
    } else {
        Back::Yielded
    }
}

/// The coroutine returned: marks it terminated and keeps its stack with it
/// (or gives the stack back, see [`keep_or_give_stack`]). Returns whether
/// it queued wakeups.
#[inline(always)]
fn returned(co: &CoInner) -> bool {
    let wakeups = co.state.get() & state::WAKEUPS != 0;
    terminated(co);
    keep_or_give_stack_here(co);
    wakeups
}

/// `enter`'s end for a coroutine that returned: [`returned`], then its
/// wakeups. The common case (no wakeups, no trace) inline and with no
/// value live across a call, so that it saves no registers. Untraced
/// (`TRACED` false: no switch event was on when the coroutine was entered),
/// the terminate event is not checked, as `trace::switch_events_enabled`
/// describes.
#[cold]
#[inline(never)]
fn returned_then_wakeups<const TRACED: bool>(co: &CoInner) {
    if co.state.get() & state::WAKEUPS != 0
        || (TRACED && trace::event::qemu_coroutine_terminate.enabled())
    {
        return returned_then_wakeups_slow(co);
    }
    co.state.set(state::TERMINATED);
    keep_or_give_stack_here(co);
}

#[cold]
#[inline(never)]
fn returned_then_wakeups_slow(co: &CoInner) {
    if returned(co) {
        run_wakeups(co);
    }
}

/// The yield trace event (QEMU's `qemu_coroutine_yield(self, to)`).
#[cold]
#[inline(never)]
fn yield_traced(co: &CoInner, to: *const CoInner) {
    trace::qemu_coroutine_yield(co as *const CoInner as *const (), to.cast());
}

/// The enter trace event, its arguments computed off the hot path. `ctx` is
/// the home thread's token (QEMU passes the AioContext; ours is filled on
/// demand).
#[cold]
#[inline(never)]
pub(super) fn enter_traced(from: *const CoInner, co: &CoInner) {
    trace::qemu_aio_coroutine_enter(
        tls::thread_token() as *const (),
        from.cast(),
        co as *const CoInner as *const (),
        ptr::null(),
    );
}

/// `enter_one`'s checks failed: panics with QEMU's message, or returns if
/// the only problem was that this thread had no token yet and it is the
/// coroutine's home.
#[cold]
#[inline(never)]
pub(super) fn enter_refused(co: &CoInner, st: &tls::ThreadState) {
    if co.scheduled.home() != st.token() {
        wrong_thread();
    }
    let sched = co.scheduled.get();
    if sched != 0 {
        already_scheduled(sched as u8);
    }
    match co.state.get() {
        0 => {}
        state::TERMINATED => entered_after_termination(),
        _ => reentered(),
    }
}

/// Whether a wakeup that reaches `co` must be dropped: it was on its way
/// (queued, or held by an fd handler or a wait list) when [`cancel`]
/// unwound the coroutine. Checked by the wake paths, not by
/// `Coroutine::enter`, which still panics on a terminated coroutine.
#[inline]
pub(super) fn cancelled_wakeup(co: &CoInner) -> bool {
    co.state.get() == state::TERMINATED && co.cancelled.get()
}

/// Restores the caller's state if the coroutine panicked (the panic then
/// continues into the enterer), and marks the dead coroutine terminated.
///
/// It holds nothing: when a panic leaves `resume`, the coroutine that was
/// entered is the current one again (every enter and cancel restores the
/// current coroutine on its way out, panicking or not), and its `caller`
/// is the enterer's. So the switch keeps no value alive across the switch
/// for the landing pad, which would cost the round trip a spill.
pub(super) struct UnwindGuard;

impl Drop for UnwindGuard {
    #[inline(always)]
    fn drop(&mut self) {
        unwound();
    }
}

/// The unwind guard's work, out of line.
#[cold]
#[inline(never)]
pub(super) fn unwound() {
    // The enterer's frame: still its thread.
    let co = tls::with_state(|st| {
        let co = st.current.get();
        debug_assert!(!co.is_null(), "a coroutine unwound into its enterer");
        // SAFETY: the coroutine whose switch unwound is current again (see
        // `UnwindGuard`) and live: its enterer, whose frame this is, holds a
        // reference for the whole switch.
        let co = unsafe { &*co };
        st.current.set(co.caller.get());
        co
    });
    // Wakeups it queued before panicking (a lock released while
    // unwinding hands over to a waiter) must not be lost: they go
    // through the home context's queue and run from its next poll.
    reschedule_wakeups(std::mem::take(&mut *co.wakeup.borrow_mut()));
    // SAFETY: home thread, and the switch has returned: no other borrow.
    if unsafe { &*co.raw.get() }.as_ref().is_some_and(|r| r.done()) {
        terminated(co);
        keep_or_give_stack(co);
    } else {
        co.state.set(0);
    }
}

/// How many terminated coroutines per thread keep their stack until their
/// last handle drops, before `inc_pool_size`; beyond that, a terminating
/// coroutine gives its stack back at once, so that code keeping many
/// finished coroutines' handles does not keep as many stacks mapped (QEMU
/// frees the stack at termination too, when its pool is full). The extra
/// pool size from `inc_pool_size` raises the bound by as much
/// ([`keep_beyond_or_give`]), since as many more objects, each with its
/// stack, may then be pooled (`recycle::pool::put_beyond`).
pub(super) const KEEP_STACKS: usize = 64;

/// Keeps a terminated coroutine's stack with it for the object pool (the
/// common case: its last handle drops soon), unless this thread already has
/// [`KEEP_STACKS`] such coroutines: then [`keep_beyond_or_give`] decides. A
/// kept stack is counted in the thread's `kept_stacks` for as long as the
/// terminated coroutine's `raw` holds it (`CoInner::holds_stack_mut`). For a
/// coroutine that returned, `returned` does the same with the thread state
/// at hand.
#[inline(never)]
pub(super) fn keep_or_give_stack(co: &CoInner) {
    if !tls::keep_stack_slot(KEEP_STACKS) {
        keep_beyond_or_give(co);
    }
}

/// [`keep_or_give_stack`] inline, for `returned`: only in the enterer's
/// functions (`enter` and what it calls after the switch), whose frames
/// stay on one thread, so the thread state may be read in them.
#[inline(always)]
fn keep_or_give_stack_here(co: &CoInner) {
    if !tls::with_state(|st| st.keep_stack_slot(KEEP_STACKS)) {
        keep_beyond_or_give(co);
    }
}

/// Beyond [`KEEP_STACKS`]: keeps the stack while fewer than `KEEP_STACKS`
/// plus the extra pool size (`inc_pool_size`) terminated coroutines of this
/// thread keep theirs, else gives it back now. Cold, out of the fixed
/// bound's fast path.
#[cold]
#[inline(never)]
pub(super) fn keep_beyond_or_give(co: &CoInner) {
    if !tls::keep_stack_slot(KEEP_STACKS + stack::pool_extra()) {
        give_stack_now(co);
    }
}

#[cold]
#[inline(never)]
pub(super) fn give_stack_now(co: &CoInner) {
    // SAFETY: called on the home thread after the switch returned (from
    // `enter_one` or its unwind guard): no borrow of `raw` is alive, and the
    // finished coroutine never touches its own `raw`.
    if let Some(done) = unsafe { &mut *co.raw.get() }.take() {
        stack::give(done.into_stack());
    }
}

/// A coroutine returned or panicked. Its stack stays with it (in the
/// finished corosensei coroutine) until its last handle drops, then both go
/// to the pool; see [`keep_or_give_stack`] for the bound.
#[inline(always)]
pub(super) fn terminated(co: &CoInner) {
    co.state.set(state::TERMINATED);
    if trace::event::qemu_coroutine_terminate.enabled() {
        terminate_traced(co);
    }
}

#[cold]
#[inline(never)]
pub(super) fn terminate_traced(co: &CoInner) {
    trace::qemu_coroutine_terminate(co as *const CoInner as *const ());
}

#[cold]
#[inline(never)]
pub(super) fn already_scheduled(code: u8) -> ! {
    panic!(
        "Co-routine was already scheduled in '{}'",
        scheduler_name(code)
    );
}

#[cold]
#[inline(never)]
pub(super) fn reentered() -> ! {
    panic!("Co-routine re-entered recursively");
}

#[cold]
#[inline(never)]
pub(super) fn entered_after_termination() -> ! {
    panic!("Co-routine entered after it terminated");
}

#[cold]
#[inline(never)]
pub(super) fn wrong_thread() -> ! {
    panic!("coroutine entered on a thread that is not its home context's");
}

/// QEMU's `aio_co_wake` on the home thread.
pub(super) fn wake_local(co: &Arc<CoInner>) {
    let cur = tls::current_co();
    if cancelled_wakeup(co) {
        return;
    }
    if cur.is_null() {
        enter(co);
    } else {
        assert!(
            !ptr::eq(cur, Arc::as_ptr(co)),
            "a coroutine cannot wake itself"
        );
        // Claimed like a co_schedule: a second wake (from this thread or
        // another) before the first has entered it panics with QEMU's
        // "already scheduled" instead of resuming it twice.
        co.mark_scheduled(Scheduler::AioCoWake);
        // SAFETY: the running coroutine is live and on this thread.
        let cur = unsafe { &*cur };
        cur.wakeup.borrow_mut().push_back(co.clone());
        cur.state.set(cur.state.get() | state::WAKEUPS);
    }
}
