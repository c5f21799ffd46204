//! The channel contract: QEMU's `QIOChannel` (io/channel.h, io/channel.c).
//!
//! A [`Channel`] moves bytes (and, on Unix sockets, file descriptors) in
//! both directions. Implementors provide the `io_*` operations (QEMU's class
//! vtable); everything else is provided on top of them and behaves the same
//! for every channel:
//!
//! * [`readv_full`](Channel::readv_full) / [`writev_full`](Channel::writev_full)
//!   do one system call's worth of I/O, which may be short, and in
//!   non-blocking mode fail with [`io::ErrorKind::WouldBlock`] (QEMU's
//!   `QIO_CHANNEL_ERR_BLOCK`).
//! * [`read_all`](Channel::read_all), [`readv_all_eof`](Channel::readv_all_eof),
//!   [`write_all_bytes`](Channel::write_all_bytes) and friends loop until done. When the
//!   channel would block they *yield the calling coroutine* until the fd is
//!   ready ([`yield_for`](Channel::yield_for), QEMU's `qio_channel_yield`), or,
//!   outside a coroutine, block in poll(2) ([`wait`](Channel::wait), QEMU's
//!   `qio_channel_wait`).
//!
//! Channels also implement [`std::io::Read`] and [`std::io::Write`]: inside
//! a coroutine they yield as the `_all` functions do, so synchronous code (a
//! codec, `std::io::copy`) runs unchanged inside a coroutine while the
//! thread's [`AioContext`] serves others; outside a coroutine they follow the
//! channel's mode (a non-blocking channel returns
//! [`io::ErrorKind::WouldBlock`], as `std`'s own sockets do).
//!
//! # Blocking mode and coroutines
//!
//! QEMU's `qio_channel_set_blocking` contract: a channel starts in blocking
//! mode, in which an operation waits until it can proceed; in non-blocking
//! mode it fails with [`io::ErrorKind::WouldBlock`] instead. corio keeps the
//! contract and decides *who* waits:
//!
//! * **outside a coroutine** the calling thread waits, in the system call;
//! * **inside a coroutine** the *coroutine* waits: the channel does its I/O
//!   without blocking (`MSG_DONTWAIT` on sockets, a readiness check on
//!   pipes) and, when it would block, yields until the fd is ready
//!   ([`yield_for`](Channel::yield_for)), so its [`AioContext`] goes on
//!   serving every other coroutine and handler of the thread.
//!
//! So a coroutine that never calls `set_blocking(false)` on the socket it got
//! from [`SocketChannel::accept`](crate::io::SocketChannel::accept),
//! [`NetListener`](crate::io::NetListener)'s callback or a `connect_*` does
//! not stall its IoThread. QEMU's coroutine users (its NBD server) switch
//! their channels to non-blocking mode; here that is optional, and it still
//! changes one thing: the single-call operations
//! ([`readv_full`](Channel::readv_full), [`writev_full`](Channel::writev_full))
//! then return `WouldBlock` to the coroutine rather than yield, for callers
//! that run their own wait loop. What stays blocking inside a coroutine:
//! [`SocketChannel::connect_sync`](crate::io::SocketChannel::connect_sync)
//! (use [`connect_async`](crate::io::SocketChannel::connect_async) or the
//! thread pool), writes to a pipe larger than the room it has, and regular
//! files (the kernel reports them always ready: offload slow storage to the
//! [`ThreadPool`](crate::ThreadPool)).
//!
//! One channel direction serves one coroutine at a time: two coroutines that
//! write the same channel concurrently must take turns (a
//! [`CoMutex`](crate::sync::CoMutex)), as QEMU's NBD server does with its
//! `send_lock`.
//!
//! # Examples
//!
//! A coroutine reads from a non-blocking socket with plain `std::io::Read`:
//! it sleeps in the context until the peer writes.
//!
//! ```
//! use corio::io::{Channel, SocketChannel};
//! use corio::{AioContext, Coroutine};
//! use std::io::{Read, Write};
//! use std::sync::{Arc, Mutex};
//!
//! let ctx = AioContext::new().unwrap();
//! let (a, b) = SocketChannel::pair().unwrap();
//! a.set_blocking(false).unwrap();
//! let got = Arc::new(Mutex::new(String::new()));
//! let g = got.clone();
//! let co = Coroutine::new(move || {
//!     let mut a = a;
//!     let mut buf = [0u8; 5];
//!     a.read_exact(&mut buf).unwrap(); // yields: nothing there yet
//!     g.lock().unwrap().push_str(std::str::from_utf8(&buf).unwrap());
//! });
//! co.enter();
//! assert!(!co.is_terminated());
//! (&b).write_all(b"hello").unwrap();
//! while !co.is_terminated() {
//!     ctx.poll(true);
//! }
//! assert_eq!(*got.lock().unwrap(), "hello");
//! ```

use std::io::{self, IoSlice, IoSliceMut};
use std::net::Shutdown;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;

pub use super::channel_base::ChannelBase;
use super::channel_base::{lock, Waiter};
use crate::aio::{events, AioContext};
use crate::coroutine::{self, Coroutine};
use crate::io::watch::{self, PendingProbe, WatchFunc, WatchHandle, WatchNotify};

/// Optional capabilities of a channel (QEMU's `QIOChannelFeature`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Feature {
    /// File descriptors can be passed (Unix sockets, SCM_RIGHTS).
    FdPass = 0,
    /// [`Channel::shutdown`] is supported.
    Shutdown = 1,
    /// The channel is a listening socket.
    Listen = 2,
    /// `MSG_PEEK` is supported by reads.
    ReadMsgPeek = 3,
    /// Positioned I/O is supported.
    Seekable = 4,
}

/// Flags for [`Channel::readv_full`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadFlags {
    /// Look at the data without consuming it (`MSG_PEEK`); needs
    /// [`Feature::ReadMsgPeek`].
    pub peek: bool,
}

/// The most file descriptors one message may carry (QEMU's `SOCKET_MAX_FDS`).
pub const MAX_FDS: usize = 16;

fn unsupported(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, what.to_string())
}

/// Whether an operation on `ch` that would block should yield the calling
/// coroutine: blocking mode, inside a coroutine.
fn yields_when_blocked<C: Channel + ?Sized>(ch: &C) -> bool {
    ch.is_blocking() && coroutine::in_coroutine()
}

/// The error for a stream that ends in the middle of a transfer.
fn unexpected_eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "Unexpected end-of-file before all data were read",
    )
}

/// QEMU's `QIOChannel`: see the module documentation.
///
/// Every method takes `&self` except [`close`](Channel::close), so that one
/// channel can be shared (`Arc`) between a reading and a writing coroutine,
/// or between threads, as QEMU's channels are.
pub trait Channel: Send + Sync {
    /// The shared base state (name, features, yield bookkeeping).
    fn base(&self) -> &ChannelBase;

    /// One read into `iov` (QEMU's `io_readv`). Received file descriptors,
    /// if `fds` is given, are appended to it. Returns 0 at end of stream.
    ///
    /// Inside a coroutine an implementation must not block the thread on an
    /// fd that is not ready, whatever the mode: it returns `WouldBlock`
    /// instead, and [`readv_full`](Channel::readv_full) yields when the
    /// channel is in blocking mode (see the module documentation).
    ///
    /// # Errors
    /// [`io::ErrorKind::WouldBlock`] in non-blocking mode when nothing is
    /// there, or in a coroutine; any I/O error. `EINTR` is retried by the
    /// implementation.
    fn io_readv(
        &self,
        iov: &mut [IoSliceMut<'_>],
        fds: Option<&mut Vec<OwnedFd>>,
        flags: ReadFlags,
    ) -> io::Result<usize>;

    /// One write from `iov`, passing `fds` along (QEMU's `io_writev`).
    /// Inside a coroutine, as [`io_readv`](Channel::io_readv): never block
    /// the thread.
    ///
    /// # Errors
    /// As [`io_readv`](Channel::io_readv).
    fn io_writev(&self, iov: &[IoSlice<'_>], fds: &[BorrowedFd<'_>]) -> io::Result<usize>;

    /// Switches `O_NONBLOCK` (QEMU's `io_set_blocking`).
    ///
    /// # Errors
    /// If the fd refuses.
    fn io_set_blocking(&self, enabled: bool) -> io::Result<()>;

    /// Closes the channel (QEMU's `io_close`). Later I/O fails with `EBADF`.
    ///
    /// # Errors
    /// If closing reports an error; the channel is closed anyway.
    fn io_close(&mut self) -> io::Result<()>;

    /// The fd whose readiness the channel waits for (QEMU's watches and
    /// `io_set_aio_fd_handler` use the channel's fd).
    ///
    /// # Errors
    /// `EBADF` once closed.
    fn poll_fd(&self) -> io::Result<BorrowedFd<'_>>;

    /// QEMU's `io_shutdown`; the default says it is unsupported.
    ///
    /// # Errors
    /// [`io::ErrorKind::Unsupported`] unless implemented.
    fn io_shutdown(&self, _how: Shutdown) -> io::Result<()> {
        Err(unsupported("channel does not support shutdown"))
    }

    /// QEMU's `io_set_delay` (Nagle); the default does nothing.
    ///
    /// # Errors
    /// If the socket option cannot be set.
    fn io_set_delay(&self, _enabled: bool) -> io::Result<()> {
        Ok(())
    }

    /// QEMU's `io_set_cork`; the default does nothing.
    ///
    /// # Errors
    /// If the socket option cannot be set.
    fn io_set_cork(&self, _enabled: bool) -> io::Result<()> {
        Ok(())
    }

    /// Whether a read would return data without touching the fd: bytes a
    /// wrapping channel (TLS, WebSocket) already decoded and buffered. The
    /// fd cannot become readable for them, so [`yield_for`](Channel::yield_for)
    /// and [`wait`](Channel::wait) for `IN` return at once instead of
    /// sleeping (QEMU's TLS GSource checks gnutls' pending data the same
    /// way). The default says no. A channel that wraps another must also
    /// report its master's pending input (a WebSocket over TLS), and must
    /// never block here: a watch calls it from its event loop.
    fn io_has_pending_input(&self) -> bool {
        false
    }

    /// What [`io_has_pending_input`](Channel::io_has_pending_input) says,
    /// as a probe a watch can keep and call later from its context, so that
    /// `IN` watches fire while decoded input is buffered (QEMU's TLS and
    /// websock GSources check their buffers). `None`, the default, for
    /// channels that buffer no input.
    fn pending_input_probe(&self) -> Option<PendingProbe> {
        None
    }

    // ----- provided: QEMU's io/channel.c -----

    /// Whether the channel has `f` (QEMU's `qio_channel_has_feature`).
    fn has_feature(&self, f: Feature) -> bool {
        self.base().features.load(Relaxed) & (1 << f as u32) != 0
    }

    /// Marks the channel as having `f` (QEMU's `qio_channel_set_feature`).
    fn set_feature(&self, f: Feature) {
        self.base().features.fetch_or(1 << f as u32, Relaxed);
    }

    /// Sets the debug name (QEMU's `qio_channel_set_name`).
    ///
    /// # Thread context
    /// Any thread.
    fn set_name(&self, name: &str) {
        *lock(&self.base().name) = Some(name.to_owned());
    }

    /// The debug name, if one was set.
    fn name(&self) -> Option<String> {
        lock(&self.base().name).clone()
    }

    /// One read, with fds (QEMU's `qio_channel_readv_full`). In blocking
    /// mode inside a coroutine, the coroutine yields until there is
    /// something to read (see the module documentation).
    ///
    /// # Errors
    /// [`io::ErrorKind::Unsupported`] if fds are asked of a channel without
    /// [`Feature::FdPass`], or a peek of one without [`Feature::ReadMsgPeek`];
    /// otherwise as [`io_readv`](Channel::io_readv).
    ///
    /// # Panics
    /// In blocking mode inside a coroutine, if another coroutine already
    /// waits to read this channel ([`yield_for`](Channel::yield_for)).
    fn readv_full(
        &self,
        iov: &mut [IoSliceMut<'_>],
        mut fds: Option<&mut Vec<OwnedFd>>,
        flags: ReadFlags,
    ) -> io::Result<usize> {
        if fds.is_some() && !self.has_feature(Feature::FdPass) {
            return Err(unsupported(
                "Channel does not support file descriptor passing",
            ));
        }
        if flags.peek && !self.has_feature(Feature::ReadMsgPeek) {
            return Err(unsupported("Channel does not support peek read"));
        }
        loop {
            match self.io_readv(iov, fds.as_deref_mut(), flags) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && yields_when_blocked(self) => {
                    self.yield_for(events::IN)?
                }
                r => return r,
            }
        }
    }

    /// One write, with fds (QEMU's `qio_channel_writev_full`). In blocking
    /// mode inside a coroutine, the coroutine yields until the channel takes
    /// some bytes (see the module documentation).
    ///
    /// # Errors
    /// [`io::ErrorKind::Unsupported`] for fds without [`Feature::FdPass`];
    /// otherwise as [`io_writev`](Channel::io_writev).
    ///
    /// # Panics
    /// In blocking mode inside a coroutine, if another coroutine already
    /// waits to write this channel ([`yield_for`](Channel::yield_for)).
    fn writev_full(&self, iov: &[IoSlice<'_>], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        if !fds.is_empty() && !self.has_feature(Feature::FdPass) {
            return Err(unsupported(
                "Channel does not support file descriptor passing",
            ));
        }
        if fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("at most {MAX_FDS} fds may be passed at once"),
            ));
        }
        loop {
            match self.io_writev(iov, fds) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && yields_when_blocked(self) => {
                    self.yield_for(events::OUT)?
                }
                r => return r,
            }
        }
    }

    /// Whether the channel is in blocking mode (QEMU's channels start so):
    /// see [`set_blocking`](Channel::set_blocking).
    fn is_blocking(&self) -> bool {
        self.base().is_blocking()
    }

    /// One read (QEMU's `qio_channel_readv`).
    ///
    /// # Errors
    /// As [`readv_full`](Channel::readv_full).
    fn readv(&self, iov: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        self.readv_full(iov, None, ReadFlags::default())
    }

    /// One write (QEMU's `qio_channel_writev`).
    ///
    /// # Errors
    /// As [`writev_full`](Channel::writev_full).
    fn writev(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        self.writev_full(iov, &[])
    }

    /// Reads until `iov` is full, yielding or waiting when the channel would
    /// block; received fds are appended to `fds` (QEMU's
    /// `qio_channel_readv_full_all_eof`). Returns `Ok(false)` on a clean end
    /// of stream before any byte, `Ok(true)` once `iov` is full.
    ///
    /// # Errors
    /// [`io::ErrorKind::UnexpectedEof`] if the stream ends after part of the
    /// data; any other I/O error.
    fn readv_full_all_eof(
        &self,
        iov: &mut [IoSliceMut<'_>],
        mut fds: Option<&mut Vec<OwnedFd>>,
    ) -> io::Result<bool> {
        let mut iov = iov;
        IoSliceMut::advance_slices(&mut iov, 0); // drop leading empty slices
        let mut partial = false;
        while !iov.is_empty() {
            match self.readv_full(iov, fds.as_deref_mut(), ReadFlags::default()) {
                Ok(0) if partial => return Err(unexpected_eof()),
                Ok(0) => return Ok(false),
                Ok(n) => {
                    partial = true;
                    IoSliceMut::advance_slices(&mut iov, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_io(events::IN)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// [`readv_full_all_eof`](Channel::readv_full_all_eof) where a clean end
    /// of stream is an error too (QEMU's `qio_channel_readv_full_all`).
    ///
    /// # Errors
    /// [`io::ErrorKind::UnexpectedEof`] at any end of stream.
    fn readv_full_all(
        &self,
        iov: &mut [IoSliceMut<'_>],
        fds: Option<&mut Vec<OwnedFd>>,
    ) -> io::Result<()> {
        if self.readv_full_all_eof(iov, fds)? {
            Ok(())
        } else {
            Err(unexpected_eof())
        }
    }

    /// QEMU's `qio_channel_readv_all_eof`: see
    /// [`readv_full_all_eof`](Channel::readv_full_all_eof).
    ///
    /// # Errors
    /// As there.
    fn readv_all_eof(&self, iov: &mut [IoSliceMut<'_>]) -> io::Result<bool> {
        self.readv_full_all_eof(iov, None)
    }

    /// QEMU's `qio_channel_readv_all`.
    ///
    /// # Errors
    /// As [`readv_full_all`](Channel::readv_full_all).
    fn readv_all(&self, iov: &mut [IoSliceMut<'_>]) -> io::Result<()> {
        self.readv_full_all(iov, None)
    }

    /// Fills `buf`; `Ok(false)` on a clean end of stream before any byte
    /// (QEMU's `qio_channel_read_all_eof`).
    ///
    /// # Errors
    /// As [`readv_full_all_eof`](Channel::readv_full_all_eof).
    fn read_all_eof(&self, buf: &mut [u8]) -> io::Result<bool> {
        self.readv_full_all_eof(&mut [IoSliceMut::new(buf)], None)
    }

    /// Fills `buf` (QEMU's `qio_channel_read_all`).
    ///
    /// # Errors
    /// [`io::ErrorKind::UnexpectedEof`] at any end of stream.
    fn read_all(&self, buf: &mut [u8]) -> io::Result<()> {
        self.readv_full_all(&mut [IoSliceMut::new(buf)], None)
    }

    /// Writes all of `iov`, passing `fds` with the first chunk, yielding or
    /// waiting when the channel would block (QEMU's
    /// `qio_channel_writev_full_all`).
    ///
    /// # Errors
    /// Any I/O error ([`io::ErrorKind::BrokenPipe`] once the peer is gone).
    fn writev_full_all(&self, iov: &mut [IoSlice<'_>], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut iov = iov;
        let mut fds = fds;
        IoSlice::advance_slices(&mut iov, 0);
        while !iov.is_empty() {
            match self.writev_full(iov, fds) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "channel accepted no data",
                    ))
                }
                Ok(n) => {
                    fds = &[];
                    IoSlice::advance_slices(&mut iov, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_io(events::OUT)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// QEMU's `qio_channel_writev_all`.
    ///
    /// # Errors
    /// As [`writev_full_all`](Channel::writev_full_all).
    fn writev_all(&self, iov: &mut [IoSlice<'_>]) -> io::Result<()> {
        self.writev_full_all(iov, &[])
    }

    /// Writes all of `buf` (QEMU's `qio_channel_write_all`). Not called
    /// `write_all`: that name would shadow [`std::io::Write::write_all`] on
    /// every channel, which returns `WouldBlock` on a non-blocking channel
    /// outside a coroutine where this waits.
    ///
    /// # Errors
    /// As [`writev_full_all`](Channel::writev_full_all).
    fn write_all_bytes(&self, buf: &[u8]) -> io::Result<()> {
        self.writev_full_all(&mut [IoSlice::new(buf)], &[])
    }

    /// Switches blocking mode (QEMU's `qio_channel_set_blocking`). Channels
    /// start in blocking mode. In blocking mode a thread waits in the system
    /// call and a coroutine yields to its context until the operation can
    /// proceed; in non-blocking mode the single-call operations fail with
    /// [`io::ErrorKind::WouldBlock`] (the `_all` functions still wait). See
    /// the module documentation.
    ///
    /// # Errors
    /// If the fd refuses; the mode is then unchanged.
    fn set_blocking(&self, enabled: bool) -> io::Result<()> {
        self.io_set_blocking(enabled)?;
        self.base().record_blocking(enabled);
        Ok(())
    }

    /// TCP_NODELAY off (`enabled`) or on (QEMU's `qio_channel_set_delay`);
    /// no effect on channels without Nagle.
    ///
    /// # Errors
    /// If the socket option cannot be set.
    fn set_delay(&self, enabled: bool) -> io::Result<()> {
        self.io_set_delay(enabled)
    }

    /// TCP_CORK (QEMU's `qio_channel_set_cork`); no effect elsewhere.
    ///
    /// # Errors
    /// If the socket option cannot be set.
    fn set_cork(&self, enabled: bool) -> io::Result<()> {
        self.io_set_cork(enabled)
    }

    /// Shuts down one or both directions (QEMU's `qio_channel_shutdown`).
    ///
    /// # Thread context
    /// Any thread, also while another thread reads or writes the channel.
    ///
    /// # Errors
    /// [`io::ErrorKind::Unsupported`] without [`Feature::Shutdown`].
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        if !self.has_feature(Feature::Shutdown) {
            return Err(unsupported("channel does not support shutdown"));
        }
        self.io_shutdown(how)
    }

    /// Closes the channel (QEMU's `qio_channel_close`).
    ///
    /// # Errors
    /// As [`io_close`](Channel::io_close).
    fn close(&mut self) -> io::Result<()> {
        self.io_close()
    }

    /// Suspends the calling coroutine until the channel's fd has
    /// `condition` ([`events::IN`] or [`events::OUT`]), through an fd handler
    /// in the coroutine's home [`AioContext`] that is removed again after
    /// wake-up (QEMU's `qio_channel_yield`). Wake-ups may be spurious (see
    /// [`wake_read`](Channel::wake_read)): callers retry their I/O.
    ///
    /// # Thread context
    /// Coroutine only.
    ///
    /// # Errors
    /// If the channel is closed or the fd handler cannot be installed.
    ///
    /// # Panics
    /// Outside a coroutine; if `condition` is neither IN nor OUT; if another
    /// coroutine already waits for the same direction.
    fn yield_for(&self, condition: u32) -> io::Result<()> {
        let co = Coroutine::current().expect("qio_channel_yield: not in a coroutine");
        let read = match condition {
            events::IN => true,
            events::OUT => false,
            _ => panic!("qio_channel_yield: condition must be IN or OUT, not {condition:#x}"),
        };
        let fd = self.poll_fd()?;
        if read && self.io_has_pending_input() {
            return Ok(());
        }
        let base = self.base();
        let ctx = co.context();
        let handle = co.handle();
        drop(co);
        {
            let mut w = lock(&base.waiters);
            let slot = if read { &mut w.read } else { &mut w.write };
            assert!(
                slot.is_none(),
                "qio_channel_yield: another coroutine already waits to {} this channel",
                if read { "read" } else { "write" }
            );
            *slot = Some(Waiter {
                co: handle.clone(),
                ctx: ctx.clone(),
            });
        }
        let clear = |base: &ChannelBase| {
            let mut w = lock(&base.waiters);
            let slot = if read { &mut w.read } else { &mut w.write };
            if slot
                .as_ref()
                .is_some_and(|w| w.co.as_ptr() == handle.as_ptr())
            {
                *slot = None;
            }
        };
        if let Err(e) = base.update_handlers(fd, &ctx) {
            clear(base);
            return Err(e);
        }
        /// If the coroutine is cancelled (unwound) while it waits, its
        /// waiter and fd handler go with it: the handler would otherwise
        /// keep the context and a dead coroutine's handle alive.
        struct OnUnwind<F: FnMut()>(F);
        impl<F: FnMut()> Drop for OnUnwind<F> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    (self.0)();
                }
            }
        }
        let unwinding = OnUnwind(|| {
            clear(base);
            let _ = base.update_handlers(fd, &ctx);
        });
        coroutine::yield_now();
        drop(unwinding);
        clear(base);
        base.update_handlers(fd, &ctx)
    }

    /// Calls `func` in `ctx` (the caller's current context when `None`)
    /// whenever the channel has one of `condition`'s events, until it
    /// returns `false`, the returned handle removes it or the channel
    /// closes; then `notify` runs, once (QEMU's `qio_channel_add_watch_full`).
    /// See [`crate::io::watch`].
    ///
    /// # Thread context
    /// Any thread; `func` and `notify` run on `ctx`'s home thread.
    ///
    /// # Errors
    /// If the channel is closed or its fd cannot be watched.
    ///
    /// # Panics
    /// If `condition` is empty or has bits other than `events::*`.
    fn add_watch(
        &self,
        condition: u32,
        func: WatchFunc,
        notify: Option<WatchNotify>,
        ctx: Option<&AioContext>,
    ) -> io::Result<WatchHandle> {
        let fd = self.poll_fd()?;
        watch::add_watch(
            &self.base().watches,
            fd,
            self.pending_input_probe(),
            condition,
            func,
            notify,
            ctx,
        )
    }

    /// Wakes the coroutine waiting in `yield_for(IN)`, if any (QEMU's
    /// `qio_channel_wake_read`); its read then returns to its caller's retry
    /// loop.
    ///
    /// # Thread context
    /// Any thread.
    fn wake_read(&self) {
        let taken = lock(&self.base().waiters).read.take();
        if let Some(w) = taken {
            w.co.wake();
        }
    }

    /// Wakes the coroutine waiting in `yield_for(OUT)`, if any: the write
    /// counterpart of [`wake_read`](Channel::wake_read). After a local
    /// `shutdown(Both)` of a Unix socket whose peer does not read, the fd
    /// never becomes writable and the hang-up is not a write event, so a
    /// writer waits for ever unless woken; woken, its retried write fails
    /// with `EPIPE`.
    ///
    /// # Thread context
    /// Any thread.
    fn wake_write(&self) {
        let taken = lock(&self.base().waiters).write.take();
        if let Some(w) = taken {
            w.co.wake();
        }
    }

    /// Blocks the thread in poll(2) until the fd has `condition` (QEMU's
    /// `qio_channel_wait`).
    ///
    /// # Errors
    /// If the channel is closed or poll fails.
    fn wait(&self, condition: u32) -> io::Result<()> {
        let fd = self.poll_fd()?;
        if condition & events::IN != 0 && self.io_has_pending_input() {
            return Ok(());
        }
        let mut flags = rustix::event::PollFlags::empty();
        if condition & events::IN != 0 {
            flags |= rustix::event::PollFlags::IN;
        }
        if condition & events::OUT != 0 {
            flags |= rustix::event::PollFlags::OUT;
        }
        if condition & events::PRI != 0 {
            flags |= rustix::event::PollFlags::PRI;
        }
        let mut pfd = [rustix::event::PollFd::new(&fd, flags)];
        loop {
            match rustix::event::poll(&mut pfd, None) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// [`yield_for`](Channel::yield_for) inside a coroutine,
    /// [`wait`](Channel::wait) outside: what the `_all` functions do when
    /// the channel would block.
    ///
    /// # Errors
    /// As those.
    fn wait_io(&self, condition: u32) -> io::Result<()> {
        if coroutine::in_coroutine() {
            self.yield_for(condition)
        } else {
            self.wait(condition)
        }
    }
}

pub(crate) use super::std_io::impl_std_io;
pub use super::std_io::{std_read, std_write};
