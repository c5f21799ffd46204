//! The lock-free multi-producer, single-consumer list behind `co_schedule` and
//! the bottom-half list (QEMU's `QSLIST_INSERT_HEAD_ATOMIC` /
//! `QSLIST_MOVE_ATOMIC`).
//!
//! Producers, on any thread, push a node onto a LIFO stack with a
//! compare-exchange on the head. The one consumer, the context's home thread,
//! swaps the whole stack out at once and reverses it, so that nodes come out in
//! push order (FIFO). There is no pop-one operation, so the compare-exchange
//! has no ABA problem: a producer only ever links its node in front of
//! whatever head it observed, and the exchange fails if the head moved.
//!
//! Memory ordering: the push is a `Release` compare-exchange, the take an
//! `Acquire` swap. They pair: everything a producer wrote before pushing (the
//! node's contents, its `next` link, the state of the coroutine behind it) is
//! visible to the consumer that takes the batch holding that node.

use std::ptr::{self, NonNull};

use crate::loom::AtomicPtr;

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

/// A node type with an intrusive link.
///
/// # Safety
/// `link` must return the same field for the life of the node, and that field
/// must be used by no one but one [`AtomicStack`] at a time.
pub(crate) unsafe trait Linked {
    fn link(&self) -> &AtomicPtr<Self>
    where
        Self: Sized;
}

/// An intrusive Treiber stack taken whole. It does not own its nodes: callers
/// push pointers they own (for example from `Arc::into_raw`) and get them back
/// from [`AtomicStack::take_all`].
pub(crate) struct AtomicStack<T: Linked> {
    head: AtomicPtr<T>,
}

impl<T: Linked> AtomicStack<T> {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        AtomicStack {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        AtomicStack {
            head: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Pushes `node`; returns whether the stack was empty before.
    ///
    /// # Thread context
    /// Any thread.
    ///
    /// # Safety
    /// `node` must point to a live node that is in no stack, and stay live
    /// until a consumer takes it back.
    pub(crate) unsafe fn push(&self, node: NonNull<T>) -> bool {
        // SAFETY: the caller guarantees `node` is live and not linked anywhere,
        // so nobody else reads or writes its link until we publish it.
        let link = unsafe { node.as_ref() }.link();
        let mut head = self.head.load(Relaxed);
        loop {
            // Relaxed: the link is published by the Release exchange below.
            link.store(head, Relaxed);
            // Release pairs with the Acquire swap in `take_all`: makes the
            // node's contents and link visible to the consumer.
            match self
                .head
                .compare_exchange_weak(head, node.as_ptr(), Release, Relaxed)
            {
                Ok(_) => return head.is_null(),
                Err(h) => head = h,
            }
        }
    }

    /// Whether the stack looks empty: a racy hint (adaptive polling's spin
    /// and tests); `take_all` is what synchronises.
    pub(crate) fn is_empty(&self) -> bool {
        self.head.load(Relaxed).is_null()
    }

    /// Takes every node pushed so far, in push order.
    ///
    /// # Thread context
    /// The single consumer only.
    pub(crate) fn take_all(&self) -> Batch<T> {
        // Acquire pairs with the Release exchange in `push`.
        let mut cur = self.head.swap(ptr::null_mut(), Acquire);
        // Reverse the LIFO chain in place into FIFO order.
        let mut fifo: *mut T = ptr::null_mut();
        while let Some(node) = NonNull::new(cur) {
            // SAFETY: nodes in a taken chain are live (push's contract) and
            // owned by this consumer alone now; the Acquire swap made their
            // links visible.
            let link = unsafe { node.as_ref() }.link();
            cur = link.load(Relaxed);
            link.store(fifo, Relaxed);
            fifo = node.as_ptr();
        }
        Batch { next: fifo }
    }
}

/// A taken batch, yielding node pointers in push order.
pub(crate) struct Batch<T: Linked> {
    next: *mut T,
}

impl<T: Linked> Iterator for Batch<T> {
    type Item = NonNull<T>;

    fn next(&mut self) -> Option<NonNull<T>> {
        let node = NonNull::new(self.next)?;
        // SAFETY: the batch owns its nodes, which are live (push's contract).
        self.next = unsafe { node.as_ref() }.link().load(Relaxed);
        Some(node)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    struct Node {
        link: AtomicPtr<Node>,
        val: usize,
    }
    // SAFETY: `link` is a plain field used by one stack at a time.
    unsafe impl Linked for Node {
        fn link(&self) -> &AtomicPtr<Node> {
            &self.link
        }
    }

    fn node(val: usize) -> NonNull<Node> {
        NonNull::from(Box::leak(Box::new(Node {
            link: AtomicPtr::new(ptr::null_mut()),
            val,
        })))
    }

    fn drain(s: &AtomicStack<Node>) -> Vec<usize> {
        s.take_all()
            // SAFETY: every node came from Box::leak in `node`.
            .map(|n| unsafe { Box::from_raw(n.as_ptr()) }.val)
            .collect()
    }

    #[test]
    fn fifo_batches() {
        let s = AtomicStack::new();
        // SAFETY: fresh nodes, freed by `drain`.
        unsafe {
            assert!(s.push(node(1)));
            assert!(!s.push(node(2)));
            assert!(!s.push(node(3)));
        }
        assert_eq!(drain(&s), [1, 2, 3]);
        assert!(s.is_empty());
        assert_eq!(drain(&s), Vec::<usize>::new());
    }

    #[test]
    fn many_producers() {
        let s = std::sync::Arc::new(AtomicStack::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        // SAFETY: fresh node, freed by `drain`.
                        unsafe { s.push(node(t * 1_000_000 + i)) };
                    }
                })
            })
            .collect();
        let mut seen = Vec::new();
        while seen.len() < 40_000 {
            seen.extend(drain(&s));
        }
        for t in threads {
            t.join().unwrap();
        }
        seen.extend(drain(&s));
        assert_eq!(seen.len(), 40_000);
        for t in 0..4 {
            let mine: Vec<_> = seen.iter().filter(|v| **v / 1_000_000 == t).collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "per-producer order kept"
            );
        }
    }
}

/// loom models: `RUSTFLAGS="--cfg loom" cargo test -p corio --release --lib loom_`.
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// The payload sits in a loom cell, so loom checks that the consumer's
    /// read happens after the producer's write (the Release/Acquire pair).
    struct Node {
        link: AtomicPtr<Node>,
        payload: loom::cell::UnsafeCell<(usize, usize)>,
    }
    // SAFETY: `link` is a plain field used by one stack at a time.
    unsafe impl Linked for Node {
        fn link(&self) -> &AtomicPtr<Node> {
            &self.link
        }
    }

    fn push(s: &AtomicStack<Node>, producer: usize, seq: usize) {
        let node = Box::new(Node {
            link: AtomicPtr::new(ptr::null_mut()),
            payload: loom::cell::UnsafeCell::new((0, 0)),
        });
        // SAFETY: the node is not shared yet.
        node.payload.with_mut(|p| unsafe { *p = (producer, seq) });
        // SAFETY: a fresh node, freed by `take` below.
        unsafe { s.push(NonNull::from(Box::leak(node))) };
    }

    fn take(s: &AtomicStack<Node>, out: &mut Vec<(usize, usize)>) {
        for n in s.take_all() {
            // SAFETY: every node came from Box::leak in `push`.
            let n = unsafe { Box::from_raw(n.as_ptr()) };
            // SAFETY: the batch owns the node; loom checks the ordering.
            out.push(n.payload.with(|p| unsafe { *p }));
        }
    }

    /// Every pushed item arrives exactly once, in push order per producer,
    /// whatever the interleaving of producers and batch-taking consumer.
    fn model(producers: usize, per_producer: usize) {
        loom::model(move || {
            let s = Arc::new(AtomicStack::new());
            let handles: Vec<_> = (0..producers)
                .map(|p| {
                    let s = s.clone();
                    thread::spawn(move || {
                        for i in 0..per_producer {
                            push(&s, p, i);
                        }
                    })
                })
                .collect();
            let mut got = Vec::new();
            take(&s, &mut got); // a batch taken while producers run
            for h in handles {
                h.join().unwrap();
            }
            take(&s, &mut got);
            assert_eq!(got.len(), producers * per_producer);
            for p in 0..producers {
                let seqs: Vec<usize> = got
                    .iter()
                    .filter(|(q, _)| *q == p)
                    .map(|(_, s)| *s)
                    .collect();
                assert_eq!(
                    seqs,
                    (0..per_producer).collect::<Vec<_>>(),
                    "producer {p} order"
                );
            }
        });
    }

    #[test]
    fn loom_two_producers() {
        model(2, 2);
    }

    #[test]
    fn loom_three_producers() {
        model(3, 1);
    }

    /// `push_scheduled`'s protocol: only a push that finds the stack empty
    /// kicks the consumer (schedules its bottom half, modelled by
    /// `pending`); the consumer clears `pending` before it takes the whole
    /// stack (as `bh_poll` clears PENDING before the callback). Then no
    /// node is ever left behind with no kick pending.
    #[test]
    fn loom_kick_when_empty() {
        use loom::sync::atomic::AtomicUsize;
        use std::sync::atomic::Ordering::AcqRel;
        struct Q {
            s: AtomicStack<Node>,
            pending: AtomicUsize,
        }
        loom::model(|| {
            let q = Arc::new(Q {
                s: AtomicStack::new(),
                pending: AtomicUsize::new(0),
            });
            let handles: Vec<_> = (0..2)
                .map(|p| {
                    let q = q.clone();
                    thread::spawn(move || {
                        let node = Box::new(Node {
                            link: AtomicPtr::new(ptr::null_mut()),
                            payload: loom::cell::UnsafeCell::new((p, 0)),
                        });
                        // SAFETY: a fresh node, freed by `take`.
                        if unsafe { q.s.push(NonNull::from(Box::leak(node))) } {
                            // AcqRel, as bh_enqueue's fetch_or: pairs with
                            // the consumer's swap.
                            q.pending.fetch_or(1, AcqRel);
                        }
                    })
                })
                .collect();
            let mut got = Vec::new();
            // One bottom-half run while the producers push.
            if q.pending.swap(0, AcqRel) != 0 {
                take(&q.s, &mut got);
            }
            for h in handles {
                h.join().unwrap();
            }
            // Quiescence: every node is reachable through a pending kick.
            while q.pending.swap(0, AcqRel) != 0 {
                take(&q.s, &mut got);
            }
            assert_eq!(got.len(), 2, "a node was left with no kick pending");
        });
        // Checked by mutation: clearing `pending` after the take instead of
        // before fails this model.
    }
}
