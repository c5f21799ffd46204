//! The end of a context's life: the coroutines it owns, and
//! [`AioContext::shutdown`], which unwinds them and drops every callback
//! that could keep the context alive.

use super::AioContext;
use crate::coroutine::{self, CoHandle};

/// How many rounds of "cancel what is left, run what that scheduled"
/// `shutdown` makes: a destructor may spawn again, but not forever.
const SHUTDOWN_ROUNDS: usize = 16;

impl AioContext {
    /// Records a coroutine spawned in this context, until it finishes.
    pub(crate) fn adopt(&self, co: &CoHandle) {
        self.shared
            .local()
            .owned
            .insert(co.as_ptr() as usize, co.clone());
    }

    /// Forgets a spawned coroutine that finished. The handle drops after
    /// the home-state borrow ends (dropping it may recycle the coroutine).
    ///
    /// # Thread context
    /// Any thread: one that migrated finishes elsewhere, and its entry is
    /// removed from a bottom half here.
    pub(crate) fn disown(&self, co: *const ()) {
        let key = co as usize;
        if self.in_home_thread() {
            let old = self.shared.local().owned.remove(&key);
            drop(old);
        } else {
            let ctx = self.downgrade();
            self.bh_schedule_oneshot(move || {
                if let Some(ctx) = ctx.upgrade() {
                    let old = ctx.shared.local().owned.remove(&key);
                    drop(old);
                }
            });
        }
    }

    /// Number of spawned coroutines that have not finished.
    pub(crate) fn owned_count(&self) -> usize {
        self.shared.local().owned.len()
    }

    /// Ends the context's work, as [`IoThread::join`](crate::IoThread::join)
    /// does once its loop has stopped:
    ///
    /// 1. every coroutine [spawned](Self::spawn) here that has not finished
    ///    is cancelled: unwound from its yield point, its destructors run
    ///    (locks released, channels closed), its `JoinHandle` reports
    ///    [`JoinError::Cancelled`](crate::JoinError::Cancelled);
    /// 2. what that scheduled (bottom halves, wakeups) runs, with
    ///    non-blocking polls; steps 1 and 2 repeat while coroutines remain,
    ///    at most 16 times;
    /// 3. every fd handler and timer is removed, so that no callback keeps
    ///    the context alive.
    ///
    /// A plain coroutine ([`Coroutine::new`](crate::Coroutine::new), not
    /// spawned) is not the context's: one suspended on a channel is kept
    /// alive by its own stack (the channel's waiter holds its handle) and is
    /// neither unwound nor freed, as QEMU leaks an abandoned coroutine. Use
    /// [`spawn`](Self::spawn) for work that must end with the context.
    ///
    /// The context can still be used afterwards (a later poll runs new
    /// work), but the fds whose handlers were removed stay registered with
    /// the epoll monitor until closed (the io_uring monitor removes their
    /// polls: a poll would keep its file open).
    ///
    /// # Thread context
    /// Home thread only, outside the coroutines it cancels (a spawned
    /// coroutine that calls it is left running, and reported as remaining).
    ///
    /// # Panics
    /// On another thread.
    ///
    /// Returns how many spawned coroutines could not be cancelled (0
    /// unless one of them is running, i.e. called this).
    pub fn shutdown(&self) -> usize {
        self.assert_home("shutdown");
        for _ in 0..SHUTDOWN_ROUNDS {
            let owned: Vec<CoHandle> = self.shared.local().owned.values().cloned().collect();
            let mut cancelled = 0;
            for co in &owned {
                if !co.is_home() {
                    // It migrated to another context: not ours to end.
                    self.shared.local().owned.remove(&(co.as_ptr() as usize));
                } else if coroutine::cancel(&co.inner) != coroutine::Cancel::Running {
                    cancelled += 1;
                }
            }
            drop(owned);
            let mut rounds = 0;
            while self.poll(false) && rounds < 1024 {
                rounds += 1;
            }
            if cancelled == 0 {
                break;
            }
        }
        let (handlers, timers) = {
            let mut local = self.shared.local();
            let handlers: Vec<_> = local.handlers.drain().collect();
            let handlers: Vec<_> = handlers
                .into_iter()
                .map(|(fd, node)| {
                    local.monitor.forget(fd);
                    node
                })
                .collect();
            local.poll_handlers.clear(&self.shared.poll_counters);
            for node in &handlers {
                node.deleted
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let timers = std::mem::take(&mut local.timers);
            for t in &timers {
                t.expire.store(-1, std::sync::atomic::Ordering::Relaxed);
            }
            (handlers, timers)
        };
        // Dropped outside the borrow: their destructors may use the context.
        drop(handlers);
        drop(timers);
        let remaining = self.owned_count();
        debug_assert!(remaining == 0 || crate::in_coroutine());
        remaining
    }
}
