//! WebSocket server channels: QEMU's `QIOChannelWebsock`
//! (io/channel-websock.c), RFC 6455 over any other channel.
//!
//! [`WebsockChannel::new_server`] wraps a *master* channel (usually an
//! accepted [`SocketChannel`](super::SocketChannel)), as QEMU's VNC server
//! does for browser clients. [`handshake`](WebsockChannel::handshake) reads
//! the client's HTTP upgrade request from the master and answers it, as a
//! QIOTask whose completion runs on a context's thread;
//! [`handshake_sync`](WebsockChannel::handshake_sync) does the same in line,
//! yielding in a coroutine and blocking outside one. Afterwards the channel is
//! a byte stream like any other [`Channel`]:
//!
//! * reads decode the client's frames: binary frames and their continuation
//!   frames are the stream; a ping is answered with a pong, a pong is ignored;
//!   a close frame is answered with a close frame, after which reads return
//!   end of stream (once the data before it has been read);
//! * writes send binary frames, unmasked as a server's must be. Output the
//!   master does not take at once stays encoded in the channel and goes out
//!   with the next I/O on it, or from a watch on the master in the caller's
//!   context (QEMU's `qio_channel_websock_set_watch`); a write reports the
//!   bytes it accepted, never more, never twice;
//! * a client that breaks the protocol is sent a close frame with QEMU's
//!   status code, and reads fail with [`WebsockError::Protocol`] (after the
//!   data decoded before the fault):
//!
//! | client frame | close code |
//! | --- | --- |
//! | not masked; a control frame over 125 bytes; reserved bits set; a continuation frame with nothing to continue, or a new binary frame before the last one ended; a close frame with a 1-byte payload or an invalid code | 1002 |
//! | a text frame or an unknown opcode | 1003 |
//! | a fragmented frame that is not binary | 1008 |
//!
//! The handshake follows QEMU: `GET / HTTP/1.1` with `Host`, `Upgrade:
//! websocket` and `Connection: ... Upgrade ...` (both case-insensitive),
//! `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key`; a
//! `Sec-WebSocket-Protocol` header is optional, but when present must offer
//! `binary`, which the reply then selects. A refused request is answered with
//! QEMU's HTTP error and fails with [`WebsockError::Handshake`]:
//!
//! | request | reply |
//! | --- | --- |
//! | a method other than `GET`, a version other than `HTTP/1.1`, a malformed line, more than 32 headers, a header missing, another WebSocket version, a key that is not 24 characters of base64 for 16 bytes, no `Upgrade` token in `Connection`, `Upgrade` other than `websocket`, protocols without `binary` | `400 Bad Request` |
//! | a path other than `/` | `404 Not Found` |
//! | no end of headers in the first 4096 bytes | `403 Request Entity Too Large` |
//! | the client hangs up before the end of its headers | none: [`io::ErrorKind::UnexpectedEof`] |
//!
//! # Examples
//!
//! A handshake against a hand-written request, then one frame each way:
//!
//! ```
//! use corio::io::{Channel, SocketChannel, WebsockChannel};
//!
//! let (server, client) = SocketChannel::pair().unwrap();
//! client
//!     .write_all_bytes(
//!         b"GET / HTTP/1.1\r\n\
//!           Host: localhost\r\n\
//!           Upgrade: websocket\r\n\
//!           Connection: Upgrade\r\n\
//!           Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
//!           Sec-WebSocket-Version: 13\r\n\r\n",
//!     )
//!     .unwrap();
//! let ws = WebsockChannel::new_server(server);
//! ws.handshake_sync().unwrap(); // blocks: not in a coroutine
//!
//! let mut reply = Vec::new();
//! while !reply.ends_with(b"\r\n\r\n") {
//!     let mut byte = [0u8];
//!     client.read_all(&mut byte).unwrap();
//!     reply.push(byte[0]);
//! }
//! let reply = String::from_utf8(reply).unwrap();
//! assert!(reply.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
//! assert!(reply.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
//!
//! // A client frame is masked...
//! let mask = [1, 2, 3, 4];
//! let mut frame = vec![0x82, 0x80 | 5, 1, 2, 3, 4];
//! frame.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
//! client.write_all_bytes(&frame).unwrap();
//! let mut got = [0u8; 5];
//! ws.read_all(&mut got).unwrap();
//! assert_eq!(&got, b"hello");
//!
//! // ...a server frame is not.
//! ws.write_all_bytes(b"hi").unwrap();
//! let mut got = [0u8; 4];
//! client.read_all(&mut got).unwrap();
//! assert_eq!(got, [0x82, 2, b'h', b'i']);
//! ```

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::Shutdown;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use super::channel::{std_read, std_write, Channel, ChannelBase, Feature, ReadFlags};
use super::task::{Task, TaskError};
use super::watch::{PendingProbe, WatchFunc, WatchHandle};
use crate::aio::events;
use crate::aio::AioContext;
use crate::main_loop::main_context;
use crate::trace;

mod frame;
mod http;
mod inner;

use inner::{ebadf, lock, Arm, Flush, Inner, Input, Output, Phase, Status};

type Ptr = *const ();

/// QEMU caps the HTTP request at 4096 bytes ("typical HTTP headers from
/// novnc are 512 bytes").
const HANDSHAKE_MAX: usize = 4096;

/// The most encoded output kept when the master does not take it (QEMU's
/// `QIO_CHANNEL_WEBSOCK_MAX_BUFFER` is 8192; ours is larger so that a bulk
/// write leaves in few frames, which then use the 64-bit length form too).
const MAX_OUTPUT: usize = 128 * 1024;

/// How much one read asks of the master.
const READ_CHUNK: usize = 64 * 1024;

/// The close status codes QEMU sends (RFC 6455 §7.4.1).
const STATUS_NORMAL: u16 = 1000;

/// Why a WebSocket channel failed; carried inside the [`io::Error`] (kind
/// [`io::ErrorKind::InvalidData`]) that its operations return, so that
/// callers can tell what the client was told.
///
/// ```
/// use corio::io::websock::WebsockError;
/// use std::io;
///
/// let e = io::Error::new(
///     io::ErrorKind::InvalidData,
///     WebsockError::Handshake { status: 404, message: "Unexpected HTTP path /x".into() },
/// );
/// assert!(matches!(WebsockError::from_io(&e), Some(WebsockError::Handshake { status: 404, .. })));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebsockError {
    /// The client's upgrade request was refused; it was sent this HTTP
    /// `status` (400, 403 or 404).
    #[error("websocket handshake refused with HTTP {status}: {message}")]
    Handshake {
        /// The HTTP status of the reply.
        status: u16,
        /// What was wrong with the request.
        message: String,
    },
    /// The client broke RFC 6455; it was sent a close frame with `code`.
    #[error("websocket protocol error (close code {code}): {message}")]
    Protocol {
        /// The close status code sent to the client.
        code: u16,
        /// What the client did.
        message: String,
    },
}

impl WebsockError {
    /// The `WebsockError` inside `e`, if it carries one.
    pub fn from_io(e: &io::Error) -> Option<&WebsockError> {
        e.get_ref()?.downcast_ref()
    }

    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

/// A WebSocket server channel over a master channel (QEMU's
/// `QIOChannelWebsock`); see the [module documentation](self).
///
/// # Thread context
/// Any thread, like every channel: a reader and a writer may use it at once
/// (from two coroutines or two threads). The handshake's completion runs on
/// its context's home thread.
///
/// # Watches
/// Payload already decoded inside the channel does not make the master's
/// fd readable. So `IN` watches ([`Channel::add_watch`]) also fire from a
/// bottom half while decoded payload is buffered, and
/// [`Channel::yield_for`] and [`Channel::wait`] for `IN` return at once
/// ([`Channel::io_has_pending_input`]), as QEMU's websock GSource looks at
/// its buffers. A read never reports `WouldBlock` while decoded payload is
/// buffered.
pub struct WebsockChannel {
    base: ChannelBase,
    /// Shared with the watch that flushes output in the background, which
    /// holds it weakly.
    inner: Arc<Inner>,
}

impl WebsockChannel {
    /// Wraps `master`, whose next bytes must be the client's HTTP upgrade
    /// request (QEMU's `qio_channel_websock_new_server`). The channel has
    /// [`Feature::Shutdown`] if the master has. Nothing is read until the
    /// handshake.
    pub fn new_server(master: impl Channel + 'static) -> WebsockChannel {
        let master: Box<dyn Channel> = Box::new(master);
        let master_ptr = &*master as *const dyn Channel as Ptr;
        let ws = WebsockChannel {
            base: ChannelBase::new(),
            inner: Arc::new(Inner {
                master,
                status: Mutex::new(Status {
                    phase: Phase::Handshake,
                    error: None,
                    eof: false,
                }),
                input: Mutex::new(Input::default()),
                output: Mutex::new(Output::default()),
                nonblocking: AtomicBool::new(false),
            }),
        };
        ws.base.record_blocking(ws.inner.master.is_blocking());
        if ws.inner.master.has_feature(Feature::Shutdown) {
            ws.set_feature(Feature::Shutdown);
        }
        trace::qio_channel_websock_new_server(ws.ptr(), master_ptr);
        ws
    }

    /// Reads the client's upgrade request and answers it, as a QIOTask
    /// driven by watches on the master in `ctx` (the main loop's context when
    /// `None`), then runs `completion` there with the channel, or with the
    /// error (QEMU's `qio_channel_websock_handshake`). A refused request is
    /// answered with its HTTP error before `completion` runs; the channel is
    /// then dropped, which closes the master.
    ///
    /// The master may be blocking or not: the watches only read when it is
    /// readable and write when it is writable.
    ///
    /// # Thread context
    /// Any thread; `completion` runs on `ctx`'s home thread. If `ctx` is
    /// dropped first, the completion is dropped unrun.
    ///
    /// # Errors
    /// Given to `completion`: [`WebsockError::Handshake`] for a refused
    /// request, [`io::ErrorKind::UnexpectedEof`] if the client hung up
    /// before the end of its request, or the master's I/O error.
    ///
    /// # Panics
    /// With `ctx` `None`, if no main loop is bound and the caller is not the
    /// process's main thread ([`crate::main_loop::main_context`]).
    ///
    /// ```
    /// use corio::io::{Channel, SocketChannel, WebsockChannel};
    /// use corio::AioContext;
    /// use std::sync::mpsc;
    ///
    /// let ctx = AioContext::new().unwrap();
    /// let (server, client) = SocketChannel::pair().unwrap();
    /// let (tx, rx) = mpsc::channel();
    /// WebsockChannel::new_server(server).handshake(
    ///     move |r| tx.send(r.map(|_ws| ())).unwrap(),
    ///     Some(&ctx),
    /// );
    /// client.write_all_bytes(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    /// let result = loop {
    ///     ctx.poll(true);
    ///     if let Ok(r) = rx.try_recv() {
    ///         break r;
    ///     }
    /// };
    /// assert!(result.unwrap_err().to_string().contains("Unsupported HTTP method POST"));
    /// let mut reply = [0u8; 24];
    /// client.read_all(&mut reply).unwrap();
    /// assert_eq!(&reply, b"HTTP/1.1 400 Bad Request");
    /// ```
    pub fn handshake(
        self,
        completion: impl FnOnce(io::Result<WebsockChannel>) + Send + 'static,
        ctx: Option<&AioContext>,
    ) {
        let ctx = ctx.cloned().unwrap_or_else(main_context);
        let ioc = self.ptr();
        let inner = self.inner.clone();
        let task = Task::new(Some(self), move |t: &mut HandshakeTask| {
            let ws = t.source_mut().take();
            let r = match t.propagate_error() {
                Ok(()) => {
                    ws.ok_or_else(|| io::Error::other("websocket handshake lost its channel"))
                }
                Err(e) => Err(task_error_to_io(e)),
            };
            completion(r);
        });
        trace::qio_channel_websock_handshake_start(ioc);
        trace::qio_channel_websock_handshake_pending(ioc, events::IN);
        let slot: HandshakeSlot = Arc::new(Mutex::new(Some(HandshakeState {
            task,
            outcome: None,
        })));
        let watched = handshake_watch(&slot, &inner, events::IN, &ctx);
        drop(inner); // the completion may close the channel: hold no reference
        if let Err(e) = watched {
            if let Some(mut st) = lock(&slot).take() {
                st.task.set_error(st.inner().handshake_failed(e));
                ctx.bh_schedule_oneshot(move || st.task.complete());
            }
        }
    }

    /// Reads the client's upgrade request and answers it, in line: in a
    /// coroutine, waiting for the master yields the coroutine; outside one,
    /// it blocks the thread (see [`Channel::wait_io`]). Returns once the
    /// reply has been written.
    ///
    /// # Thread context
    /// Any thread; in a coroutine, it yields while the master would block.
    ///
    /// # Errors
    /// As [`handshake`](Self::handshake); also if the handshake was done
    /// already. After an error the channel stays failed.
    pub fn handshake_sync(&self) -> io::Result<()> {
        let ioc = self.ptr();
        trace::qio_channel_websock_handshake_start(ioc);
        let outcome = loop {
            match self.inner.handshake_read() {
                Ok(Some(outcome)) => break outcome,
                Ok(None) => trace::qio_channel_websock_handshake_pending(ioc, events::IN),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    trace::qio_channel_websock_handshake_pending(ioc, events::IN);
                    self.wait_io(events::IN)
                        .map_err(|e| self.inner.handshake_failed(e))?;
                }
                Err(e) => return Err(self.inner.handshake_failed(e)),
            }
        };
        trace::qio_channel_websock_handshake_reply(ioc);
        loop {
            match self.inner.flush(Arm::No) {
                Ok(Flush::Drained) => break,
                Ok(Flush::Blocked | Flush::Busy) => {
                    trace::qio_channel_websock_handshake_pending(ioc, events::OUT);
                    self.wait_io(events::OUT)
                        .map_err(|e| self.inner.handshake_failed(e))?;
                }
                Err(e) => return Err(self.inner.handshake_failed(e)),
            }
        }
        self.inner.handshake_done(outcome)
    }

    /// Writes out the encoded output the master has not taken yet, yielding
    /// or blocking as [`Channel::write_all_bytes`] does (QEMU has no such call: its
    /// watch flushes in the background; ours does too, in the context of
    /// whoever wrote, when that thread has one).
    ///
    /// # Thread context
    /// Any thread; in a coroutine, it yields while the master is full.
    ///
    /// # Errors
    /// The master's write error.
    pub fn flush(&self) -> io::Result<()> {
        loop {
            match self.inner.flush(Arm::No) {
                Ok(Flush::Drained) => return Ok(()),
                Ok(Flush::Blocked | Flush::Busy) => self.wait_io(events::OUT)?,
                Err(e) => return Err(self.inner.fail_io(e)),
            }
        }
    }

    /// Whether the handshake has succeeded and the channel is not closed.
    pub fn is_open(&self) -> bool {
        lock(&self.inner.status).phase == Phase::Open
    }

    fn ptr(&self) -> Ptr {
        Arc::as_ptr(&self.inner).cast()
    }

    /// Waits in poll(2) for `condition` while pushing pending output out
    /// whenever the master is writable: a reader outside a coroutine must
    /// not wait for the client while the client waits for our output.
    fn wait_flushing(&self, condition: u32) -> io::Result<()> {
        use rustix::event::{poll, PollFd, PollFlags};
        let want = poll_flags(condition);
        loop {
            let fd = self.poll_fd()?;
            let mut pfd = [PollFd::new(&fd, want | PollFlags::OUT)];
            match poll(&mut pfd, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let got = pfd[0].revents();
            if got.intersects(want | PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL) {
                return Ok(());
            }
            match self.inner.flush(Arm::No) {
                Ok(Flush::Blocked | Flush::Busy) => {}
                // Drained: wait for the condition alone. An error: the
                // caller's retried I/O reports it.
                Ok(Flush::Drained) => return self.inner.master.wait(condition),
                Err(e) => {
                    self.inner.fail_io(e);
                    return Ok(());
                }
            }
        }
    }
}

fn poll_flags(condition: u32) -> rustix::event::PollFlags {
    use rustix::event::PollFlags;
    let mut flags = PollFlags::empty();
    if condition & events::IN != 0 {
        flags |= PollFlags::IN;
    }
    if condition & events::OUT != 0 {
        flags |= PollFlags::OUT;
    }
    if condition & events::PRI != 0 {
        flags |= PollFlags::PRI;
    }
    flags
}

impl Channel for WebsockChannel {
    fn base(&self) -> &ChannelBase {
        &self.base
    }

    /// Returns decoded payload; see the [module documentation](self).
    /// File descriptors are never received.
    fn io_readv(
        &self,
        iov: &mut [IoSliceMut<'_>],
        _fds: Option<&mut Vec<OwnedFd>>,
        _flags: ReadFlags,
    ) -> io::Result<usize> {
        self.inner.read(iov)
    }

    fn io_writev(&self, iov: &[IoSlice<'_>], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        if !fds.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "websocket channels cannot pass file descriptors",
            ));
        }
        self.inner.write(iov)
    }

    fn io_set_blocking(&self, enabled: bool) -> io::Result<()> {
        self.inner.master.set_blocking(enabled)?;
        self.inner.nonblocking.store(!enabled, Relaxed);
        Ok(())
    }

    /// Sends a close frame (status 1000) unless one was sent, then closes
    /// the master (QEMU closes the master only). Output still queued (a
    /// write reports bytes once they are encoded) goes first: all of it
    /// when the master is blocking; on a non-blocking master only what it
    /// takes at once, as QEMU frees the rest, so call
    /// [`flush`](WebsockChannel::flush) first to send everything. If a
    /// background flush still holds the master on another thread, the
    /// master is shut down now and closed when the channel is dropped.
    fn io_close(&mut self) -> io::Result<()> {
        let drain = !self.inner.nonblocking.load(Relaxed);
        self.close_inner(drain)
    }

    fn poll_fd(&self) -> io::Result<BorrowedFd<'_>> {
        if lock(&self.inner.status).phase == Phase::Closed {
            return Err(ebadf());
        }
        self.inner.master.poll_fd()
    }

    /// Decoded payload not yet read, or the end of stream or error that a
    /// read would report at once (see `Inner::has_pending_input`).
    fn io_has_pending_input(&self) -> bool {
        self.inner.has_pending_input()
    }

    fn pending_input_probe(&self) -> Option<PendingProbe> {
        let inner = self.inner.clone();
        Some(Arc::new(move || inner.has_pending_input()))
    }

    /// Shuts the master down (QEMU's `qio_channel_websock_shutdown`). When
    /// the write side goes and the channel was made non-blocking, a close
    /// frame (status 1000) is offered to the master first, as far as it
    /// takes it without blocking.
    fn io_shutdown(&self, how: Shutdown) -> io::Result<()> {
        let open = lock(&self.inner.status).phase == Phase::Open;
        if how != Shutdown::Read && open && self.inner.nonblocking.load(Relaxed) {
            {
                let mut out = lock(&self.inner.output);
                if !out.close_queued {
                    out.encode_close(self.ptr(), STATUS_NORMAL, b"");
                }
            }
            let _ = self.inner.flush(Arm::No);
        }
        self.inner.master.shutdown(how)
    }

    fn io_set_delay(&self, enabled: bool) -> io::Result<()> {
        self.inner.master.set_delay(enabled)
    }

    fn io_set_cork(&self, enabled: bool) -> io::Result<()> {
        self.inner.master.set_cork(enabled)
    }

    /// Blocks in poll(2) for `condition`; while encoded output is pending,
    /// also for the master being writable, to push it out meanwhile.
    fn wait(&self, condition: u32) -> io::Result<()> {
        if condition & events::IN != 0 && self.io_has_pending_input() {
            return Ok(());
        }
        if condition & events::OUT == 0 {
            match self.inner.flush(Arm::No) {
                Ok(Flush::Blocked | Flush::Busy) => return self.wait_flushing(condition),
                Ok(Flush::Drained) => {}
                Err(e) => {
                    self.inner.fail_io(e);
                    return Ok(()); // the caller's retried I/O reports it
                }
            }
        }
        self.inner.master.wait(condition)
    }
}

impl WebsockChannel {
    /// `io_close`, draining queued output (blocking) if `drain`, else
    /// offering it to the master without blocking. Drop never drains.
    fn close_inner(&mut self, drain: bool) -> io::Result<()> {
        trace::qio_channel_websock_close(self.ptr());
        let phase = lock(&self.inner.status).phase;
        if phase == Phase::Closed {
            return Err(ebadf());
        }
        if phase == Phase::Open {
            let pending = {
                let mut out = lock(&self.inner.output);
                if !out.close_queued && self.inner.sticky().is_none() {
                    out.encode_close(self.ptr(), STATUS_NORMAL, b"");
                }
                out.pending() > 0
            };
            if pending {
                if !drain {
                    let _ = self.inner.master.set_blocking(false);
                }
                let _ = self.inner.flush(Arm::No);
            }
        }
        let watch = lock(&self.inner.output).watch.take();
        if let Some(w) = watch {
            w.remove();
        }
        lock(&self.inner.status).phase = Phase::Closed;
        self.base.close_watches();
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.master.close(),
            None => {
                if self.inner.master.has_feature(Feature::Shutdown) {
                    let _ = self.inner.master.shutdown(Shutdown::Both);
                }
                Ok(())
            }
        }
    }
}

impl Drop for WebsockChannel {
    /// Closes as [`close`](Channel::close) does, but never blocks: queued
    /// output goes only as far as the master takes it at once.
    fn drop(&mut self) {
        if lock(&self.inner.status).phase != Phase::Closed {
            let _ = self.close_inner(false);
        }
    }
}

impl fmt::Debug for WebsockChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebsockChannel")
            .field("phase", &lock(&self.inner.status).phase)
            .finish_non_exhaustive()
    }
}

impl io::Read for WebsockChannel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        std_read(&*self, buf)
    }
}

impl io::Read for &WebsockChannel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        std_read(*self, buf)
    }
}

impl io::Write for WebsockChannel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        std_write(&*self, buf)
    }

    /// [`WebsockChannel::flush`].
    fn flush(&mut self) -> io::Result<()> {
        WebsockChannel::flush(self)
    }
}

impl io::Write for &WebsockChannel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        std_write(*self, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        WebsockChannel::flush(self)
    }
}

// ----- the async handshake: QEMU's handshake_io / handshake_send watches -----

type HandshakeTask = Task<Option<WebsockChannel>>;

struct HandshakeState {
    /// Its source is the channel, until the completion takes it.
    task: HandshakeTask,
    /// The request's verdict, once read; the reply is being written.
    outcome: Option<io::Result<()>>,
}

impl HandshakeState {
    fn inner(&self) -> Arc<Inner> {
        let ws = self.task.source().as_ref();
        ws.expect("the handshake task has its channel until it completes")
            .inner
            .clone()
    }
}

/// Where a handshake's watch callbacks find their state: taken out while a
/// callback works on it.
type HandshakeSlot = Arc<Mutex<Option<HandshakeState>>>;

/// Watches the master for `condition` (IN: read the request; OUT: write the
/// reply) in `ctx`.
fn handshake_watch(
    slot: &HandshakeSlot,
    inner: &Inner,
    condition: u32,
    ctx: &AioContext,
) -> io::Result<WatchHandle> {
    let s = slot.clone();
    let c = ctx.clone();
    let func: WatchFunc = Box::new(move |_| {
        if condition == events::IN {
            handshake_in(&s, &c)
        } else {
            handshake_out(&s)
        }
    });
    inner
        .master
        .add_watch(condition | events::ERR | events::HUP, func, None, Some(ctx))
}

/// Finishes the handshake task with `e`.
fn handshake_abort(mut st: HandshakeState, inner: Arc<Inner>, e: io::Error) {
    st.task.set_error(inner.handshake_failed(e));
    drop(inner); // the completion may close the channel: hold no reference
    st.task.complete();
}

/// QEMU's `qio_channel_websock_handshake_io`: one read of the request.
fn handshake_in(slot: &HandshakeSlot, ctx: &AioContext) -> bool {
    let Some(mut st) = lock(slot).take() else {
        return false;
    };
    let inner = st.inner();
    match inner.handshake_read() {
        Ok(None) => {
            trace::qio_channel_websock_handshake_pending(inner.ptr(), events::IN);
            *lock(slot) = Some(st);
            true
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            *lock(slot) = Some(st);
            true
        }
        Err(e) => {
            handshake_abort(st, inner, e);
            false
        }
        Ok(Some(outcome)) => {
            trace::qio_channel_websock_handshake_reply(inner.ptr());
            st.outcome = Some(outcome);
            *lock(slot) = Some(st);
            trace::qio_channel_websock_handshake_pending(inner.ptr(), events::OUT);
            if let Err(e) = handshake_watch(slot, &inner, events::OUT, ctx) {
                if let Some(st) = lock(slot).take() {
                    handshake_abort(st, inner, e);
                }
            }
            false
        }
    }
}

/// QEMU's `qio_channel_websock_handshake_send`: writes the reply, then
/// completes the task.
fn handshake_out(slot: &HandshakeSlot) -> bool {
    let Some(mut st) = lock(slot).take() else {
        return false;
    };
    let inner = st.inner();
    match inner.flush(Arm::No) {
        Ok(Flush::Drained) => {
            let outcome = st.outcome.take().unwrap_or(Ok(()));
            if let Err(e) = inner.handshake_done(outcome) {
                st.task.set_error(e);
            }
            drop(inner);
            st.task.complete();
            false
        }
        Ok(Flush::Blocked | Flush::Busy) => {
            trace::qio_channel_websock_handshake_pending(inner.ptr(), events::OUT);
            *lock(slot) = Some(st);
            true
        }
        Err(e) => {
            handshake_abort(st, inner, e);
            false
        }
    }
}

fn task_error_to_io(e: TaskError) -> io::Error {
    match e.downcast::<io::Error>() {
        Ok(e) => *e,
        Err(e) => io::Error::other(e),
    }
}
