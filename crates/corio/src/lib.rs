//! # corio: QEMU's asynchronous I/O core, in Rust
//!
//! corio rebuilds the primitives QEMU's device emulation, block jobs and NBD
//! server run on:
//!
//! * [`Coroutine`]: stackful coroutines with `enter` / [`yield_now`], pooled
//!   stacks with guard pages, panics that reach whoever entered;
//! * [`AioContext`]: an event loop with bottom halves, level-triggered fd
//!   handlers, event notifiers, timers, `poll(blocking)` and `notify`;
//! * cross-context scheduling: [`AioContext::co_schedule`] and
//!   [`CoHandle::wake`] hand a sleeping coroutine to its context from any
//!   thread through a lock-free queue;
//! * [`IoThread`]: a thread that owns and polls a context;
//! * [`trace`]: QEMU's trace events, switched on by pattern at run time.
//!
//! Synchronous-looking code that is asynchronous underneath:
//!
//! ```
//! use corio::{coroutine, AioContext, Coroutine, IoThread};
//! use std::sync::mpsc;
//!
//! let ctx = AioContext::new().unwrap();
//! let worker = IoThread::new().unwrap();
//! let (tx, rx) = mpsc::channel();
//!
//! let co = Coroutine::new(move || {
//!     // Ask the iothread for something, and sleep until it answers.
//!     let me = Coroutine::current().unwrap().handle();
//!     let (ans_tx, ans_rx) = mpsc::channel();
//!     worker.context().bh_schedule_oneshot(move || {
//!         ans_tx.send(6 * 7).unwrap();
//!         me.wake(); // resumes the coroutine on its own thread
//!     });
//!     coroutine::yield_now();
//!     tx.send(ans_rx.recv().unwrap()).unwrap();
//!     worker.join();
//! });
//! co.enter();
//! while !co.is_terminated() {
//!     ctx.poll(true);
//! }
//! assert_eq!(rx.recv().unwrap(), 42);
//! ```
//!
//! The threading rules, which make this sound, are in the [`coroutine`]
//! module documentation.

pub mod aio;
pub mod coroutine;
pub mod io;
pub mod iothread;
mod loom;
pub mod main_loop;
pub mod spawn;
pub mod sync;
pub mod thread_pool;
pub mod trace;

pub use aio::{co_reschedule_self, AioContext, Bh, Clock, EventNotifier, Timer, WeakAioContext};
pub use coroutine::{in_coroutine, yield_now, CoHandle, Coroutine};
pub use iothread::{in_iothread, IoThread};
pub use spawn::{spawn_local, yield_to_loop, JoinError, JoinHandle};
pub use thread_pool::{PoolError, ThreadPool};
