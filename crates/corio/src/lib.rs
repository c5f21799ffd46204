//! # corio: QEMU's asynchronous I/O core, in Rust
//!
//! corio rebuilds the primitives QEMU's device emulation, block jobs and NBD
//! server run on, for servers written in plain, synchronous-looking Rust:
//! each client or request is a stackful coroutine that reads and writes as
//! if it blocked, while the thread's event loop serves everyone else. No
//! `async`, no colouring of functions; a codec written against
//! `std::io::Read` runs unchanged inside a coroutine.
//!
//! # The modules, bottom up
//!
//! | module | what it is for |
//! | --- | --- |
//! | [`coroutine`] | [`Coroutine`], [`CoHandle`], [`yield_now`]: QEMU's coroutines, with the threading rules that make them sound |
//! | [`aio`] | [`AioContext`]: an event loop with bottom halves, fd handlers, timers, `poll`, `notify`, and `co_schedule` from any thread |
//! | [`spawn`] | [`AioContext::spawn`], [`IoThread::spawn`], [`spawn_local`]: start a coroutine anywhere and get its value (or its panic) in a [`JoinHandle`] |
//! | [`future`] | [`block_on`](future::block_on): wait on any `std::future::Future` in a coroutine (its waker resumes the coroutine from any thread); a [`JoinHandle`] is a `Future` |
//! | [`iothread`] | [`IoThread`]: a thread that owns and polls a context |
//! | [`main_loop`] | the process-wide main-loop context ([`main_loop::init`]) |
//! | [`sync`] | locks for coroutines: [`CoMutex`](sync::CoMutex), [`CoQueue`](sync::CoQueue), [`CoRwLock`](sync::CoRwLock), [`co_sleep_ns`](sync::co_sleep_ns) |
//! | [`thread_pool`] | [`ThreadPool`]: run blocking work (file I/O, DNS) off the loop |
//! | [`io`] | QEMU's I/O layer: the [`Channel`](io::Channel) trait and its socket, file, TLS and WebSocket channels, watches, [`NetListener`](io::NetListener), QIOTask ([`Task`](io::Task)) |
//! | [`trace`] | QEMU's trace events, switched on by pattern (`CORIO_TRACE=aio_*`) |
//!
//! The TLS and WebSocket channels are behind the cargo features `tls` and
//! `websocket` (on by default); `--no-default-features` leaves out rustls,
//! ring, sha1 and base64.
//!
//! # Which primitive, when
//!
//! **Start work on a context: [`spawn`](AioContext::spawn).** From any
//! thread, runs a closure as a coroutine on that context's thread (so it may
//! yield: do channel I/O, take a [`CoMutex`](sync::CoMutex), sleep) and
//! hands back its value; a panic is caught into the handle and the loop goes
//! on. [`Coroutine::new`] + [`enter`](Coroutine::enter) is the low-level QEMU
//! form, on the calling thread, with no result.
//!
//! ```
//! use corio::IoThread;
//!
//! let t = IoThread::new().unwrap();
//! let h = t.spawn(|| "served on the iothread".len());
//! assert_eq!(h.join().unwrap(), 22); // a plain thread blocks; a coroutine would yield
//! t.join();
//! ```
//!
//! **Run a callback there: a bottom half.**
//! [`bh_schedule_oneshot`](AioContext::bh_schedule_oneshot) (or a reusable
//! [`Bh`]) runs a closure on the context's thread at its next poll. It cannot
//! yield and returns nothing: use it for short callbacks, as QEMU does.
//!
//! ```
//! use corio::AioContext;
//! use std::sync::mpsc;
//!
//! let ctx = AioContext::new().unwrap();
//! let (tx, rx) = mpsc::channel();
//! let c = ctx.clone();
//! std::thread::spawn(move || c.bh_schedule_oneshot(move || tx.send(1).unwrap()));
//! let got = loop {
//!     ctx.poll(true); // the bottom half runs here, on ctx's thread
//!     if let Ok(v) = rx.try_recv() {
//!         break v;
//!     }
//! };
//! assert_eq!(got, 1);
//! ```
//!
//! **Call into a context and wait for the answer: [`run_in`](AioContext::run_in).**
//! Blocks the caller (its own context keeps polling meanwhile) until the
//! closure ran on the context's thread. For setup and teardown from plain
//! threads; in a coroutine prefer `spawn(..).join()`, which yields.
//!
//! ```
//! let t = corio::IoThread::new().unwrap();
//! let on_it = t.context().run_in(corio::in_coroutine);
//! assert!(!on_it); // a plain call on the iothread, not a coroutine
//! t.join();
//! ```
//!
//! **Resume a sleeping coroutine: [`CoHandle::wake`].** A coroutine that
//! waits for an event keeps its [`CoHandle`] somewhere and yields; whoever
//! completes the event calls `wake`, from any thread. On the coroutine's own
//! thread it is entered at once; from another it goes onto its context's
//! lock-free queue ([`AioContext::co_schedule`], QEMU's `aio_co_schedule`,
//! which always queues for the next poll; use it directly when entering now
//! would recurse). A coroutine that just wants to let its loop run other
//! work calls [`yield_to_loop`].
//!
//! ```
//! use corio::{coroutine, Coroutine, IoThread};
//! use std::sync::mpsc;
//!
//! let t = IoThread::new().unwrap();
//! let (handle_tx, handle_rx) = mpsc::channel();
//! let h = t.spawn(move || {
//!     handle_tx.send(Coroutine::current().unwrap().handle()).unwrap();
//!     coroutine::yield_now(); // sleeps until someone wakes it
//!     "woken"
//! });
//! handle_rx.recv().unwrap().wake(); // from this thread: queued on the iothread
//! assert_eq!(h.join().unwrap(), "woken");
//! t.join();
//! ```
//!
//! **Blocking work from a coroutine: [`ThreadPool::submit_co`].** The
//! coroutine sleeps while a worker thread runs the closure (a `pread`, a
//! `fsync`, a DNS lookup), and resumes with its value. **QIOTask
//! ([`io::Task`])** is the callback-shaped form QEMU's I/O layer uses
//! (`connect_async`, TLS handshakes): a worker thread per task, then a
//! completion on a context, with no coroutine needed. In a coroutine, use
//! `submit_co`; to give a QIOTask-based API a coroutine face, wake the
//! coroutine from the completion (see `examples/blocking_offload.rs`).
//!
//! ```
//! use corio::{IoThread, ThreadPool};
//!
//! let t = IoThread::new().unwrap();
//! let h = t.spawn(|| ThreadPool::current().submit_co(|| std::fs::metadata("/").is_ok()));
//! assert!(h.join().unwrap().unwrap());
//! t.join();
//! ```
//!
//! **Channel I/O in a coroutine.** Sockets from [`NetListener`](io::NetListener),
//! [`accept`](io::SocketChannel::accept) and `connect` start in blocking
//! mode, in which a coroutine yields when the socket would block and its
//! thread serves others (the rules: [`io::channel`]). An echo server with a
//! coroutine per client spread over IoThreads is `examples/echo_server.rs`;
//! `examples/cross_thread.rs` moves work between IoThreads.
//!
//! ```
//! use corio::io::{Channel, SocketChannel};
//! use corio::IoThread;
//!
//! let t = IoThread::new().unwrap();
//! let (a, b) = SocketChannel::pair().unwrap();
//! let reader = t.spawn(move || {
//!     let mut buf = [0u8; 5];
//!     a.read_all(&mut buf).map(|()| buf) // yields until the bytes come
//! });
//! b.write_all_bytes(b"hello").unwrap();
//! assert_eq!(&reader.join().unwrap().unwrap(), b"hello");
//! t.join();
//! ```
//!
//! The threading rules, which make all this sound, are in the [`coroutine`]
//! module documentation.
//!
//! # Floors, not circles
//!
//! The modules stand on floors (DESIGN.md §1's layout, STYLE.md's "floors,
//! not circles"). A module may use the modules on the floors below its own,
//! never one on its own floor or above: no `crate::` path in its files
//! (imports, re-exports reached through the crate root such as
//! `crate::AioContext`, or `$crate::` in macros) names an upper module. The
//! test `tests/module_floors.rs` reads this table and checks every file
//! under `src/` against it; adding a module means adding it here.
//!
//! | floor | modules | what they know |
//! | --- | --- | --- |
//! | 0 | `trace`, `loom` | nothing of corio |
//! | 1 | `coroutine` | the stack switch, the wakeup lists, the coroutine thread-locals; of the event loop only "a place to wake me" |
//! | 2 | `aio` | the event loop: bottom halves, fd handlers, timers, `co_schedule`, each thread's current context |
//! | 3 | `spawn` | coroutines with a result on a context |
//! | 4 | `sync`, `thread_pool`, `iothread`, `main_loop` | what a coroutine waits on; threads that own contexts |
//! | 5 | `io`, `future` | channels, watches, listeners, QIOTask; std futures awaited in coroutines (its tests run IoThreads) |
//!
//! corio-nbd stands above them all. Where a lower floor must reach up, the
//! upper one hands it a trait object or a value it cannot look into:
//!
//! * A coroutine's home context is, to the coroutine layer, an
//!   `Arc<dyn Home>` ("a place to wake me": queue this coroutine there, run
//!   this closure there), which `aio` implements for its context and fills
//!   in. The coroutine layer wakes across threads, sends a never-entered
//!   closure home and reschedules an interrupted wakeup chain through it,
//!   without naming `AioContext`. `co_reschedule_self` lends the coroutine a
//!   `dyn MoveTarget` (the target context) for its enterer to hand it to.
//!   When a coroutine with no home yet needs one, the coroutine layer calls
//!   the function `aio` installed when it made its first context ("the
//!   caller's current context", a thread-local that lives in `aio`).
//! * The methods that return a context ([`Coroutine::context`],
//!   [`CoHandle::context`], [`Coroutine::handle`], which picks the home) are
//!   written in `aio` (inherent methods may live in any module of the crate),
//!   so the public API did not move.
//! * A context keeps its thread pool in a slot whose type it does not know
//!   (`Box<dyn Any>`): the pool, a floor above, puts its own type there and
//!   takes it back.
//!
//! # Where the unsafe code is
//!
//! The crate denies `unsafe_code`; the modules that need it allow it on their
//! `mod` line, each with a comment saying what it holds: the stack switch
//! and the coroutine-object pool ([`coroutine`]), the lock-free intrusive lists (`aio::queue` and its users
//! `aio::bh`, `aio::schedule`), the epoll event buffer (`aio::sys::epoll`), the
//! [`CoMutex`](sync::CoMutex) data cell (`sync::mutex`) and borrowing a
//! numbered fd (`io::socket::fd`); `AioContext`'s own file allows it on two
//! items only (the home-thread `Sync` impl and the bottom-half loop).

#![deny(unsafe_code)]

pub mod aio;
// unsafe: the stack switch (raw pointers to the running coroutine and its
// yielder, the home-thread cells of `CoInner`, reference counts by hand) in
// coroutine/{mod,enter,cancel}.rs, the last-reference check of the object
// pool (coroutine/recycle.rs) and a corosensei coroutine running on a view
// of the stack it is stored with (coroutine/running.rs); its other files
// deny it again.
#[allow(unsafe_code)]
pub mod coroutine;
pub mod future;
pub mod io;
pub mod iothread;
mod loom;
pub mod main_loop;
pub mod spawn;
pub mod sync;
pub mod thread_pool;
pub mod trace;

pub use aio::{
    co_reschedule_self, AioContext, Bh, Clock, EventNotifier, FdMon, Timer, WeakAioContext,
};
pub use coroutine::{in_coroutine, yield_now, CoHandle, Coroutine};
pub use iothread::{in_iothread, IoThread};
pub use spawn::{spawn_local, yield_to_loop, JoinError, JoinHandle};
pub use thread_pool::{PoolError, ThreadPool};
