//! QEMU's `notify_me` handshake (util/aio-posix.c `aio_poll`, util/async.c
//! `aio_notify`), apart from the poll loop so that its loom model runs the
//! code that ships.
//!
//! A blocking poll raises the count before it looks for work and lowers it
//! after its wait; a notifier, having published work, kicks the eventfd only
//! when it sees the count raised. It is a Dekker handshake: each side writes
//! its own variable (the count; the work list), issues a `SeqCst` fence, and
//! reads the other's. The two fences are ordered one way or the other in the
//! single total order of `SeqCst` operations, and whichever comes second
//! sees the write before the first: the poll sees the work, or the notifier
//! sees the count raised and kicks (or both). Without either fence both may
//! read the old values (store buffering) and the poll sleeps on work that
//! is already there.

use std::sync::atomic::Ordering::{Relaxed, Release, SeqCst};

use crate::loom::{fence, AtomicU32};

/// The `notify_me` count: 2 per blocking poll in progress on the home thread.
pub(crate) struct NotifyMe {
    /// Written only by the home thread (`raise`, `lower`), read by notifiers.
    count: AtomicU32,
}

impl NotifyMe {
    pub(crate) fn new() -> NotifyMe {
        NotifyMe {
            count: AtomicU32::new(0),
        }
    }

    /// Before a blocking poll looks for work.
    ///
    /// # Thread context
    /// Home thread only.
    pub(crate) fn raise(&self) {
        // Relaxed: the fence below orders it before the look for work.
        self.count.fetch_add(2, Relaxed);
        // SeqCst, pairs with the fence in `needs_kick`: either our look for
        // work (after this fence) sees the work the notifier published
        // before its fence, or its load of the count (after its fence) sees
        // this raise and it kicks the eventfd.
        fence(SeqCst);
    }

    /// After a blocking poll's wait.
    ///
    /// # Thread context
    /// Home thread only.
    pub(crate) fn lower(&self) {
        // Release, as QEMU's qatomic_store_release ("finish the poll before
        // clearing the flag"): the poll's look for work and its wait are
        // ordered before the lower. It pairs with no acquire: `needs_kick`
        // reads the count Relaxed after its fence. No wakeup depends on it:
        // a notifier that reads the count lowered skips the kick, and the
        // next blocking poll raises it again and looks for work after its
        // fence (the loom model `loom_notify_no_lost_wakeup` passes with
        // this store Relaxed).
        self.count.fetch_sub(2, Release);
    }

    /// After publishing work: whether a blocking poll may be sleeping on it,
    /// so that the eventfd must be written.
    ///
    /// # Thread context
    /// Any thread.
    pub(crate) fn needs_kick(&self) -> bool {
        // SeqCst, pairs with the fence in `raise` (see there). The work was
        // published before this fence (a list push).
        fence(SeqCst);
        // Relaxed: ordered by the fence above.
        self.count.load(Relaxed) != 0
    }

    /// The count, for tests.
    #[cfg(test)]
    pub(crate) fn get(&self) -> u32 {
        self.count.load(Relaxed)
    }
}

/// loom models of the handshake with the real list ([`AtomicStack`]) and
/// the real [`NotifyMe`]; the eventfd is a flag under a loom mutex and
/// condition variable, so a poll that sleeps with nobody to kick it is a
/// loom deadlock.
///
/// [`AtomicStack`]: super::queue::AtomicStack
#[cfg(all(test, loom))]
#[allow(unsafe_code)] // an intrusive list of test nodes
mod loom_tests {
    use super::*;
    use crate::aio::queue::{AtomicStack, Linked};
    use crate::loom::AtomicPtr;
    use loom::sync::{Arc, Condvar, Mutex};
    use loom::thread;
    use std::ptr::{self, NonNull};

    struct Work {
        link: AtomicPtr<Work>,
    }
    // SAFETY: `link` is used by one stack at a time.
    unsafe impl Linked for Work {
        fn link(&self) -> &AtomicPtr<Work> {
            &self.link
        }
    }

    /// The context: the work list, `notify_me`, and the eventfd.
    struct Ctx {
        list: AtomicStack<Work>,
        notify_me: NotifyMe,
        eventfd: Mutex<bool>,
        wake: Condvar,
    }

    impl Ctx {
        /// `AioContext::notify` after a list push (`bh_enqueue`).
        fn push_and_notify(&self) {
            let w = Box::new(Work {
                link: AtomicPtr::new(ptr::null_mut()),
            });
            // SAFETY: a fresh node, freed by `take`.
            unsafe { self.list.push(NonNull::from(Box::leak(w))) };
            if self.notify_me.needs_kick() {
                *self.eventfd.lock().unwrap() = true;
                self.wake.notify_one();
            }
        }

        fn take(&self) -> usize {
            self.list
                .take_all()
                // SAFETY: every node came from Box::leak in `push_and_notify`.
                .map(|n| drop(unsafe { Box::from_raw(n.as_ptr()) }))
                .count()
        }

        /// One blocking `AioContext::poll`: raise, look for work, sleep on
        /// the eventfd if there is none (an edge-triggered wait consumes the
        /// kick), lower, then run what is there.
        fn blocking_poll(&self) -> usize {
            self.notify_me.raise();
            let mut got = self.take();
            if got == 0 {
                let mut kicked = self.eventfd.lock().unwrap();
                while !*kicked {
                    kicked = self.wake.wait(kicked).unwrap();
                }
                *kicked = false;
            }
            self.notify_me.lower();
            got += self.take();
            got
        }
    }

    /// Producers push work and notify; the home thread polls (blocking)
    /// until it has all of it. A lost wakeup leaves it asleep with every
    /// producer done: loom reports the deadlock.
    fn model(producers: usize) {
        loom::model(move || {
            let ctx = Arc::new(Ctx {
                list: AtomicStack::new(),
                notify_me: NotifyMe::new(),
                eventfd: Mutex::new(false),
                wake: Condvar::new(),
            });
            let handles: Vec<_> = (0..producers)
                .map(|_| {
                    let ctx = ctx.clone();
                    thread::spawn(move || ctx.push_and_notify())
                })
                .collect();
            let mut got = 0;
            while got < producers {
                got += ctx.blocking_poll();
            }
            for h in handles {
                h.join().unwrap();
            }
            assert_eq!(got, producers);
            assert_eq!(ctx.notify_me.get(), 0);
        });
    }

    /// Checked by mutation: either fence removed deadlocks this model (and
    /// its two-producer twin); `lower` made `Relaxed` passes it (see
    /// `lower`). Both fences weakened to `AcqRel` pass it too, and rightly:
    /// the look for work is a swap and the push a compare-exchange on the
    /// same list head, so the poll's release fence synchronizes with the
    /// notifier's acquire fence through them. `SeqCst` is kept (QEMU's
    /// `smp_mb`) so that the handshake stays correct if the look for work
    /// becomes a plain load (an `is_empty` check before the take).
    #[test]
    fn loom_notify_no_lost_wakeup() {
        model(1);
    }

    /// Two notifiers: the second may find the count raised by a poll that
    /// the first one's kick is already ending.
    #[test]
    fn loom_notify_two_producers() {
        model(2);
    }
}
