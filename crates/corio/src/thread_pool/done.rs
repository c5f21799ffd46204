//! The completion hand-off from the pool's workers to the context (QEMU's
//! `request_list` + `completion_bh`): a worker appends its finished request
//! to the list and, if no completion bottom half is pending, schedules one;
//! that bottom half takes the whole list on the home thread.
//!
//! It is mutex-based: the list and the `bh_scheduled` flag change together
//! under one lock, so the decision "schedule a bottom half" cannot race.
//! The lock-free part of the hand-off is the bottom half itself (its flags,
//! the context's list, `notify_me`), modelled in `aio/bh.rs` and
//! `aio/notify.rs`; the request's result travels under its own mutex. The
//! loom models below check this protocol on the real type, generic over
//! the job so that they need no context.

#[cfg(loom)]
use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
use std::sync::{Mutex, MutexGuard};

/// Finished requests waiting for the context, and whether a completion
/// bottom half will take them.
pub(super) struct DoneList<J> {
    inner: Mutex<Inner<J>>,
}

struct Inner<J> {
    /// Finished requests, oldest first.
    list: Vec<J>,
    /// A completion bottom half is scheduled and has not taken the list
    /// yet: whoever appends meanwhile schedules nothing.
    bh_scheduled: bool,
}

impl<J> DoneList<J> {
    pub(super) fn new() -> DoneList<J> {
        DoneList {
            inner: Mutex::new(Inner {
                list: Vec::new(),
                bh_scheduled: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<J>> {
        // Poisoning cannot leave `Inner` half-updated: nothing in its
        // critical sections panics between two related writes.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `job`. Returns what `ctx` gives when the caller must schedule
    /// the completion bottom half there (none was pending); if the context
    /// is gone (`ctx` gives `None`), drops the list: nobody will complete it.
    ///
    /// # Thread context
    /// Any thread (a worker, or the home thread cancelling).
    pub(super) fn push<C>(&self, job: J, ctx: impl FnOnce() -> Option<C>) -> Option<C> {
        let mut d = self.lock();
        d.list.push(job);
        Self::claim_bh_or_drop(d, ctx)
    }

    /// The completion bottom half: takes the whole list. An append from
    /// here on schedules a new bottom half.
    ///
    /// # Thread context
    /// The context's home thread.
    pub(super) fn take(&self) -> Vec<J> {
        let mut d = self.lock();
        d.bh_scheduled = false;
        std::mem::take(&mut d.list)
    }

    /// Puts `jobs` back at the front (a completion panicked before their
    /// turn); returns as [`push`](Self::push).
    ///
    /// # Thread context
    /// The context's home thread.
    pub(super) fn requeue_front<C>(
        &self,
        jobs: Vec<J>,
        ctx: impl FnOnce() -> Option<C>,
    ) -> Option<C> {
        let mut d = self.lock();
        d.list.splice(0..0, jobs);
        Self::claim_bh_or_drop(d, ctx)
    }

    /// Claims the bottom half if none is pending; if the context is gone,
    /// drops the list after unlocking (a request's destructors may drop
    /// the last reference to a context, whose pool teardown joins workers
    /// that may be waiting for this lock).
    fn claim_bh_or_drop<C>(
        mut d: MutexGuard<'_, Inner<J>>,
        ctx: impl FnOnce() -> Option<C>,
    ) -> Option<C> {
        if d.bh_scheduled {
            return None; // the pending bottom half will take the list
        }
        let Some(ctx) = ctx() else {
            // The context is gone: nobody to complete for.
            let orphaned = std::mem::take(&mut d.list);
            drop(d);
            drop(orphaned);
            return None;
        };
        d.bh_scheduled = true;
        Some(ctx)
    }
}

/// loom models of the hand-off on the real [`DoneList`]. A scheduled
/// bottom half is a count of pending runs, which the home thread (the
/// model's main thread) runs.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::Arc;
    use loom::thread;
    use std::sync::atomic::Ordering::SeqCst;

    struct Pool {
        done: DoneList<usize>,
        /// Completion bottom halves scheduled and not yet run. The
        /// model's bookkeeping, not under test: `SeqCst` so that it adds
        /// no interleavings of its own.
        bhs: AtomicUsize,
    }

    impl Pool {
        /// `push_done` and `schedule_completion`.
        fn push_done(&self, job: usize) {
            if self.done.push(job, || Some(())).is_some() {
                let before = self.bhs.fetch_add(1, SeqCst);
                assert_eq!(before, 0, "two completion bottom halves pending");
            }
        }

        /// Runs the pending completion bottom half, if any; `fail_after`
        /// completions in, the rest are requeued as `Rest::drop` does.
        fn run_bh(&self, completed: &mut Vec<usize>, fail_after: Option<usize>) {
            if self.bhs.load(SeqCst) == 0 {
                return;
            }
            self.bhs.fetch_sub(1, SeqCst);
            let mut jobs = self.done.take().into_iter();
            for job in jobs.by_ref() {
                completed.push(job);
                if Some(completed.len()) == fail_after {
                    break;
                }
            }
            let rest: Vec<usize> = jobs.collect();
            if !rest.is_empty() && self.done.requeue_front(rest, || Some(())).is_some() {
                let before = self.bhs.fetch_add(1, SeqCst);
                assert_eq!(before, 0, "two completion bottom halves pending");
            }
        }
    }

    fn pool() -> Arc<Pool> {
        Arc::new(Pool {
            done: DoneList::new(),
            bhs: AtomicUsize::new(0),
        })
    }

    /// Two workers finish while the completion bottom half runs: every
    /// request is completed exactly once, at most one bottom half is
    /// pending at a time, and none is left done with no bottom half to
    /// complete it. Checked by mutation: a `take` that leaves
    /// `bh_scheduled` set, or a claim that does not set it, fail it.
    #[test]
    fn loom_pool_completion_handoff() {
        loom::model(|| {
            let p = pool();
            let workers: Vec<_> = (0..2)
                .map(|j| {
                    let p = p.clone();
                    thread::spawn(move || p.push_done(j))
                })
                .collect();
            let mut completed = Vec::new();
            p.run_bh(&mut completed, None);
            for w in workers {
                w.join().unwrap();
            }
            p.run_bh(&mut completed, None);
            completed.sort_unstable();
            assert_eq!(completed, [0, 1], "a request was lost or completed twice");
            assert_eq!(p.bhs.load(SeqCst), 0);
        });
    }

    /// A completion panics with requests left in its batch while a worker
    /// finishes another: the rest go back in front, a bottom half is
    /// pending for them, and completions keep their order. Checked by
    /// mutation: a requeue at the back fails it.
    #[test]
    fn loom_pool_completion_requeue() {
        loom::model(|| {
            let p = pool();
            p.push_done(0);
            p.push_done(1);
            let worker = {
                let p = p.clone();
                thread::spawn(move || p.push_done(2))
            };
            let mut completed = Vec::new();
            p.run_bh(&mut completed, Some(1));
            worker.join().unwrap();
            while p.bhs.load(SeqCst) != 0 {
                p.run_bh(&mut completed, None);
            }
            assert_eq!(completed, [0, 1, 2]);
        });
    }
}
