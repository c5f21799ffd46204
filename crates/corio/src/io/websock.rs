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
//!     .write_all(
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
//! client.write_all(&frame).unwrap();
//! let mut got = [0u8; 5];
//! ws.read_all(&mut got).unwrap();
//! assert_eq!(&got, b"hello");
//!
//! // ...a server frame is not.
//! ws.write_all(b"hi").unwrap();
//! let mut got = [0u8; 4];
//! client.read_all(&mut got).unwrap();
//! assert_eq!(got, [0x82, 2, b'h', b'i']);
//! ```

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::Shutdown;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use super::channel::{std_read, std_write, Channel, ChannelBase, Feature, ReadFlags};
use super::task::{Task, TaskError};
use super::watch::{events, WatchFunc, WatchHandle};
use crate::aio::AioContext;
use crate::coroutine::Coroutine;
use crate::main_loop::main_context;
use crate::trace;

use frame::{Control, Decoder, ProtocolError};

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
/// [`Channel::add_watch`] waits on the master's fd. Payload already decoded
/// inside the channel does not make that fd readable, so a watch callback
/// should read until [`io::ErrorKind::WouldBlock`]. [`Channel::yield_for`]
/// and [`Channel::wait`] for `IN` know better: they return at once while
/// decoded payload is buffered ([`Channel::io_has_pending_input`]). A read
/// never reports `WouldBlock` while decoded payload is buffered. (QEMU gives
/// the channel a GSource of its own that looks at its buffers.)
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
    /// client.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
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
    /// or blocking as [`Channel::write_all`] does (QEMU has no such call: its
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

    /// Sends a close frame (status 1000) unless one was sent, writing out
    /// what the master takes without blocking, then closes the master
    /// (QEMU closes the master only). If a background flush still holds
    /// the master on another thread, the master is shut down now and closed
    /// when the channel is dropped.
    fn io_close(&mut self) -> io::Result<()> {
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
                let _ = self.inner.master.set_blocking(false);
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

    fn poll_fd(&self) -> io::Result<BorrowedFd<'_>> {
        if lock(&self.inner.status).phase == Phase::Closed {
            return Err(ebadf());
        }
        self.inner.master.poll_fd()
    }

    /// Decoded payload not yet read, or the end of stream or error that a
    /// read would report at once. Undecoded bytes do not count: a read
    /// decodes every whole frame before it reports `WouldBlock`, so what
    /// is left is part of a frame, which needs the master.
    fn io_has_pending_input(&self) -> bool {
        let input = lock(&self.inner.input);
        if input.has_raw() || input.eof {
            return true;
        }
        let st = lock(&self.inner.status);
        st.phase == Phase::Open && st.error.is_some()
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

impl Drop for WebsockChannel {
    fn drop(&mut self) {
        if lock(&self.inner.status).phase != Phase::Closed {
            let _ = self.io_close();
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

// ----- shared state -----

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ebadf() -> io::Error {
    io::Error::from_raw_os_error(rustix::io::Errno::BADF.raw_os_error())
}

/// The context a background flush runs in: the calling coroutine's, else
/// the thread's current one, if it has one.
fn caller_context() -> Option<AioContext> {
    Coroutine::current()
        .map(|co| co.context())
        .or_else(AioContext::try_current)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the upgrade request: no frame I/O yet.
    Handshake,
    /// Frames flow.
    Open,
    /// The handshake failed; `Status::error` says why.
    Failed,
    /// `io_close` ran: everything fails with `EBADF`.
    Closed,
}

/// An error kept for every later call (QEMU's `io_err`).
#[derive(Clone)]
struct StoredError {
    kind: io::ErrorKind,
    ws: Option<WebsockError>,
    message: String,
}

impl StoredError {
    fn new(e: &io::Error) -> StoredError {
        StoredError {
            kind: e.kind(),
            ws: WebsockError::from_io(e).cloned(),
            message: e.to_string(),
        }
    }

    fn to_io(&self) -> io::Error {
        match &self.ws {
            Some(ws) => io::Error::new(self.kind, ws.clone()),
            None => io::Error::new(self.kind, self.message.clone()),
        }
    }
}

struct Status {
    phase: Phase,
    /// The first fatal error (a refused handshake, a protocol error, a
    /// failed write, a hang-up mid-frame); reads return it once the decoded
    /// payload is consumed, writes at once.
    error: Option<StoredError>,
    /// The master reached end of stream (QEMU's `io_eof`): writes fail.
    eof: bool,
}

/// Bytes from the master and what they decoded to. Held by the reader for
/// its whole read, across the master read.
#[derive(Default)]
struct Input {
    /// Undecoded bytes are `buf[start..end]`; the rest is scratch space.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Decoded payload not yet returned is `raw[raw_pos..]`.
    raw: Vec<u8>,
    raw_pos: usize,
    decoder: Decoder,
    /// End of stream for reads: the client's close frame was answered, or
    /// the master ended at a frame boundary.
    eof: bool,
}

impl Input {
    /// `want` bytes of space after the undecoded bytes, for a master read.
    fn spare(&mut self, want: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < want {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < want {
            self.buf.resize(self.end + want, 0);
        }
        &mut self.buf[self.end..self.end + want]
    }

    /// Copies decoded payload into `iov`.
    fn take_raw(&mut self, iov: &mut [IoSliceMut<'_>]) -> usize {
        let mut got = 0;
        for b in iov.iter_mut() {
            let avail = &self.raw[self.raw_pos + got..];
            if avail.is_empty() {
                break;
            }
            let n = b.len().min(avail.len());
            b[..n].copy_from_slice(&avail[..n]);
            got += n;
        }
        self.raw_pos += got;
        if self.raw_pos == self.raw.len() {
            self.raw.clear();
            self.raw_pos = 0;
        }
        got
    }

    fn has_raw(&self) -> bool {
        self.raw_pos < self.raw.len()
    }

    /// Whether the stream is inside a frame or a fragmented message.
    fn mid_message(&self) -> bool {
        self.start != self.end || self.decoder.mid_message()
    }
}

/// Encoded output: HTTP replies during the handshake, frames afterwards.
/// Never held across a master write: a flusher takes the bytes out, writes
/// them unlocked, and puts back what the master did not take in front of
/// whatever was queued meanwhile, so that frames stay whole and in order.
#[derive(Default)]
struct Output {
    /// Unwritten bytes are `buf[pos..]`; always whole frames after the
    /// part of a frame the master took.
    buf: Vec<u8>,
    pos: usize,
    /// A flusher is writing; bytes queued meanwhile are its to write.
    flushing: bool,
    /// The background flush watch, while armed.
    watch: Option<WatchHandle>,
    /// A close frame (or an HTTP error reply) was queued: no more frames.
    close_queued: bool,
    /// Shut the master's write side down once everything is written.
    shutdown_when_drained: bool,
    shut_down: bool,
    /// Bytes ever queued and written: a pong is pending until `written`
    /// passes `pong_until`.
    queued: u64,
    written: u64,
    pong_until: u64,
}

impl Output {
    fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn push_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.queued += bytes.len() as u64;
    }

    /// Queues one frame (QEMU's `qio_channel_websock_encode`) carrying the
    /// first `len` bytes of `iov`.
    fn encode(&mut self, ioc: Ptr, opcode: u8, iov: &[IoSlice<'_>], len: usize) {
        let (header, hlen) = frame::header(opcode, len);
        trace::qio_channel_websock_encode(ioc, opcode, hlen, len);
        self.buf.reserve(hlen + len);
        self.buf.extend_from_slice(&header[..hlen]);
        let mut left = len;
        for part in iov {
            let n = part.len().min(left);
            self.buf.extend_from_slice(&part[..n]);
            left -= n;
            if left == 0 {
                break;
            }
        }
        self.queued += (hlen + len) as u64;
    }

    /// Queues a close frame with `code` and `reason`
    /// (QEMU's `qio_channel_websock_write_close`); no frame follows it.
    fn encode_close(&mut self, ioc: Ptr, code: u16, reason: &[u8]) {
        let code = code.to_be_bytes();
        let parts = [IoSlice::new(&code), IoSlice::new(reason)];
        self.encode(ioc, frame::OP_CLOSE, &parts, 2 + reason.len());
        self.close_queued = true;
    }

    /// Drops the written prefix when it is all written or large.
    fn compact(&mut self) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos >= READ_CHUNK && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }
}

/// Whether a flush that finds the master full arms the background watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arm {
    /// No: the caller waits for the master itself.
    No,
    /// Yes, in the caller's context, unless one is armed.
    Yes,
    /// The caller is the watch: it stays armed only if the master is full.
    Watch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flush {
    /// Everything is written.
    Drained,
    /// The master would block; output is pending.
    Blocked,
    /// Another flusher is writing; it writes what is pending.
    Busy,
}

/// The state the channel shares with its background flush watch.
///
/// Lock order: `input` before `output`; `status` is taken alone.
struct Inner {
    /// The wrapped channel: read under `input`, written by the flusher.
    master: Box<dyn Channel>,
    status: Mutex<Status>,
    input: Mutex<Input>,
    output: Mutex<Output>,
    /// Whether the master was made non-blocking through this channel;
    /// `Relaxed`: a hint for `io_shutdown`, which orders nothing by it.
    nonblocking: AtomicBool,
}

impl Inner {
    fn ptr(&self) -> Ptr {
        self as *const Inner as Ptr
    }

    /// Fails reads and writes that the phase does not allow.
    fn gate(&self) -> io::Result<()> {
        let st = lock(&self.status);
        match st.phase {
            Phase::Open => Ok(()),
            Phase::Handshake => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "websocket handshake has not completed",
            )),
            Phase::Failed => Err(st.error.as_ref().map_or_else(
                || io::Error::other("websocket handshake failed"),
                StoredError::to_io,
            )),
            Phase::Closed => Err(ebadf()),
        }
    }

    fn sticky(&self) -> Option<io::Error> {
        lock(&self.status).error.as_ref().map(StoredError::to_io)
    }

    /// Records `e` as the channel's error unless it has one.
    fn set_error(&self, e: &io::Error) {
        let mut st = lock(&self.status);
        if st.error.is_none() {
            st.error = Some(StoredError::new(e));
        }
    }

    /// A write to the master failed: the pending output is garbage now.
    fn fail_io(&self, e: io::Error) -> io::Error {
        self.set_error(&e);
        let mut out = lock(&self.output);
        out.buf.clear();
        out.pos = 0;
        e
    }

    // ----- handshake -----

    /// One read of the upgrade request (QEMU's
    /// `qio_channel_websock_handshake_read`): `Ok(None)` wants more;
    /// `Ok(Some(verdict))` means a reply is queued, to be written before the
    /// verdict stands.
    ///
    /// # Errors
    /// The master's (`WouldBlock`: wait for IN), or end of stream before
    /// the end of the request.
    fn handshake_read(&self) -> io::Result<Option<io::Result<()>>> {
        if lock(&self.status).phase != Phase::Handshake {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "websocket handshake already done",
            ));
        }
        let mut input = lock(&self.input);
        let want = HANDSHAKE_MAX - (input.end - input.start);
        let n = self
            .master
            .readv(&mut [IoSliceMut::new(input.spare(want))])?;
        input.end += n;
        let request = &input.buf[input.start..input.end];
        let Some(at) = find(request, b"\r\n\r\n") else {
            if request.len() >= HANDSHAKE_MAX {
                drop(input);
                return Ok(Some(Err(self.refuse(http::Refusal {
                    status: 403,
                    message: format!("End of headers not found in first {HANDSHAKE_MAX} bytes"),
                }))));
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "websocket handshake: end of headers not found before the connection closed",
                ));
            }
            return Ok(None);
        };
        let verdict = http::parse_request(&request[..at], self.ptr());
        // Bytes after the request are the client's first frames.
        input.start += at + 4;
        drop(input);
        let date = http::date(SystemTime::now());
        Ok(Some(match verdict {
            Ok(upgrade) => {
                let reply = http::reply_ok(&upgrade, &date);
                lock(&self.output).push_raw(reply.as_bytes());
                Ok(())
            }
            Err(refusal) => Err(self.refuse(refusal)),
        }))
    }

    /// Queues the HTTP error reply for `refusal`; the master's write side is
    /// shut down once it is written ("Connection: close").
    fn refuse(&self, refusal: http::Refusal) -> io::Error {
        let reply = http::reply_error(refusal.status, &http::date(SystemTime::now()));
        let mut out = lock(&self.output);
        out.push_raw(reply.as_bytes());
        out.close_queued = true;
        out.shutdown_when_drained = true;
        WebsockError::Handshake {
            status: refusal.status,
            message: refusal.message,
        }
        .into_io()
    }

    /// The reply is written: the verdict stands.
    fn handshake_done(&self, outcome: io::Result<()>) -> io::Result<()> {
        match outcome {
            Ok(()) => {
                lock(&self.status).phase = Phase::Open;
                trace::qio_channel_websock_handshake_complete(self.ptr());
                Ok(())
            }
            Err(e) => Err(self.handshake_failed(e)),
        }
    }

    fn handshake_failed(&self, e: io::Error) -> io::Error {
        trace::qio_channel_websock_handshake_fail(self.ptr(), &e.to_string());
        let mut st = lock(&self.status);
        st.phase = Phase::Failed;
        if st.error.is_none() {
            st.error = Some(StoredError::new(&e));
        }
        e
    }

    // ----- reading -----

    /// QEMU's `qio_channel_websock_readv` and `read_wire`: decoded payload
    /// first; then the error or end of stream; then decode more, reading
    /// the master when what is there is not a whole frame.
    fn read(self: &Arc<Self>, iov: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        self.gate()?;
        if iov.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        let mut input = lock(&self.input);
        loop {
            if input.has_raw() {
                return Ok(input.take_raw(iov));
            }
            if let Some(e) = self.sticky() {
                return Err(e);
            }
            if input.eof {
                return Ok(0);
            }
            self.decode(&mut input);
            if input.has_raw() || input.eof || lock(&self.status).error.is_some() {
                continue;
            }
            let r = self
                .master
                .readv(&mut [IoSliceMut::new(input.spare(READ_CHUNK))]);
            match r {
                Ok(0) if input.mid_message() => self.set_error(&io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "websocket client hung up in the middle of a frame",
                )),
                Ok(0) => {
                    input.eof = true;
                    lock(&self.status).eof = true;
                }
                Ok(n) => input.end += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drop(input);
                    // The caller is about to wait for the client: make sure
                    // the client is not waiting for us.
                    if lock(&self.output).pending() > 0 {
                        if let Err(e) = self.flush(Arm::Yes) {
                            self.fail_io(e);
                        }
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Decodes every whole frame in the input; answers control frames.
    fn decode(self: &Arc<Self>, input: &mut Input) {
        let ioc = self.ptr();
        let mut answered = false;
        loop {
            let Input {
                buf,
                start,
                end,
                raw,
                decoder,
                ..
            } = &mut *input;
            let (used, r) = decoder.decode(&buf[*start..*end], raw, ioc);
            *start += used;
            match r {
                Ok(None) => break,
                Ok(Some(Control::Ping(payload))) => {
                    // QEMU: one pong at a time; a ping that comes while the
                    // last pong is unwritten gets none.
                    let mut out = lock(&self.output);
                    if !out.close_queued && out.written >= out.pong_until {
                        out.encode(
                            ioc,
                            frame::OP_PONG,
                            &[IoSlice::new(&payload)],
                            payload.len(),
                        );
                        out.pong_until = out.queued;
                        answered = true;
                    }
                }
                Ok(Some(Control::Pong)) => {}
                Ok(Some(Control::Close(payload))) => {
                    self.on_close(input, &payload);
                    answered = true;
                    break;
                }
                Err(pe) => {
                    self.fail_protocol(input, pe);
                    answered = true;
                    break;
                }
            }
        }
        if answered {
            if let Err(e) = self.flush(Arm::Yes) {
                self.fail_io(e);
            }
        }
    }

    /// The client sent a close frame: answer it with its status code (1000
    /// if it gave none), half-close once that is written, end the stream.
    fn on_close(&self, input: &mut Input, payload: &[u8]) {
        let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        if payload.len() == 1 {
            return self.fail_protocol(
                input,
                ProtocolError::new(
                    1002,
                    "invalid close frame",
                    "close frame with a 1-byte payload",
                ),
            );
        }
        if let Some(c) = code.filter(|&c| !frame::valid_close_code(c)) {
            return self.fail_protocol(
                input,
                ProtocolError::new(
                    1002,
                    "invalid close code",
                    format!("close frame with invalid status code {c}"),
                ),
            );
        }
        let mut out = lock(&self.output);
        if !out.close_queued {
            match code {
                Some(c) => out.encode_close(self.ptr(), c, b""),
                None => out.encode_close(self.ptr(), STATUS_NORMAL, b"peer requested close"),
            }
        }
        out.shutdown_when_drained = true;
        input.eof = true;
        input.start = input.end; // nothing after a close frame counts
    }

    /// The client broke the protocol: close frame with QEMU's code, then the
    /// error for reads (after the payload decoded before it) and writes.
    fn fail_protocol(&self, input: &mut Input, pe: ProtocolError) {
        let e = WebsockError::Protocol {
            code: pe.code,
            message: pe.message,
        }
        .into_io();
        self.set_error(&e);
        let mut out = lock(&self.output);
        if !out.close_queued {
            out.encode_close(self.ptr(), pe.code, pe.reason.as_bytes());
        }
        out.shutdown_when_drained = true;
        input.start = input.end;
    }

    // ----- writing -----

    /// QEMU's `qio_channel_websock_writev`: encodes what fits in the output
    /// buffer as one binary frame and writes what the master takes.
    fn write(self: &Arc<Self>, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        self.gate()?;
        if let Some(e) = self.sticky() {
            return Err(e);
        }
        if lock(&self.status).eof {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "Broken pipe: the websocket client hung up",
            ));
        }
        let total: usize = iov.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Ok(0);
        }
        let first = self.flush(Arm::Yes).map_err(|e| self.fail_io(e))?;
        let want = {
            let mut out = lock(&self.output);
            if out.close_queued {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "websocket is closing: a close frame was sent",
                ));
            }
            let avail = MAX_OUTPUT.saturating_sub(out.pending());
            if avail == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let want = total.min(avail);
            out.encode(self.ptr(), frame::OP_BINARY, iov, want);
            want
        };
        if first == Flush::Drained {
            self.flush(Arm::Yes).map_err(|e| self.fail_io(e))?;
        }
        Ok(want)
    }

    /// Writes pending output until it is all out or the master would block
    /// (QEMU's `qio_channel_websock_write_wire`); see [`Arm`].
    fn flush(self: &Arc<Self>, arm: Arm) -> io::Result<Flush> {
        let mut out = lock(&self.output);
        if out.flushing {
            if arm == Arm::Watch {
                out.watch = None; // the flusher re-arms if it needs to
            }
            return Ok(Flush::Busy);
        }
        out.flushing = true;
        let result = loop {
            if out.pending() == 0 {
                if out.shutdown_when_drained && !out.shut_down {
                    out.shut_down = true;
                    if self.master.has_feature(Feature::Shutdown) {
                        let _ = self.master.shutdown(Shutdown::Write);
                    }
                }
                break Ok(Flush::Drained);
            }
            let mut chunk = std::mem::take(&mut out.buf);
            let start = std::mem::take(&mut out.pos);
            drop(out);
            let r = self.master.writev(&[IoSlice::new(&chunk[start..])]);
            out = lock(&self.output);
            let n = *r.as_ref().unwrap_or(&0);
            out.written += n as u64;
            // What was queued meanwhile goes after what is left of ours.
            chunk.extend_from_slice(&out.buf);
            out.buf = chunk;
            out.pos = start + n;
            out.compact();
            match r {
                Ok(0) => {
                    break Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "websocket master accepted no data",
                    ))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if arm == Arm::Yes && out.watch.is_none() {
                        self.arm_watch(&mut out);
                    }
                    break Ok(Flush::Blocked);
                }
                Err(e) => break Err(e),
            }
        };
        out.flushing = false;
        if arm == Arm::Watch && !matches!(result, Ok(Flush::Blocked)) {
            out.watch = None;
        }
        result
    }

    /// Arms the background flush: a watch on the master for OUT in the
    /// caller's context, holding the state weakly.
    fn arm_watch(self: &Arc<Self>, out: &mut Output) {
        let Some(ctx) = caller_context() else {
            return; // the next I/O, `wait` or `flush` writes it
        };
        let weak = Arc::downgrade(self);
        let func: WatchFunc =
            Box::new(move |_| weak.upgrade().is_some_and(|inner| inner.watch_flush()));
        let condition = events::OUT | events::ERR | events::HUP;
        if let Ok(h) = self.master.add_watch(condition, func, None, Some(&ctx)) {
            out.watch = Some(h);
        }
    }

    /// The watch's callback (QEMU's `qio_channel_websock_flush`): whether
    /// to keep watching.
    fn watch_flush(self: &Arc<Self>) -> bool {
        if lock(&self.status).phase == Phase::Closed {
            return false;
        }
        match self.flush(Arm::Watch) {
            Ok(Flush::Blocked) => true,
            Ok(Flush::Drained | Flush::Busy) => false,
            Err(e) => {
                self.fail_io(e);
                false
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ----- the HTTP upgrade -----

mod http {
    //! The client's upgrade request and our replies.

    use std::time::{SystemTime, UNIX_EPOCH};

    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use sha1::{Digest, Sha1};

    use super::{trace, Ptr};

    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    const MAX_HEADERS: usize = 32;
    const SERVER: &str = "corio";

    /// A request we refuse, and with which HTTP status.
    #[derive(Debug)]
    pub(super) struct Refusal {
        pub(super) status: u16,
        pub(super) message: String,
    }

    fn bad(message: impl Into<String>) -> Refusal {
        Refusal {
            status: 400,
            message: message.into(),
        }
    }

    /// An acceptable request.
    #[derive(Debug)]
    pub(super) struct Upgrade {
        key: String,
        /// The client offered protocols (`binary` among them).
        protocol: bool,
    }

    /// QEMU's `qio_channel_websock_extract_headers` and
    /// `handshake_process`, on the request up to its blank line.
    pub(super) fn parse_request(head: &[u8], ioc: Ptr) -> Result<Upgrade, Refusal> {
        let head = String::from_utf8_lossy(head);
        let Some((greeting, fields)) = head.split_once("\r\n") else {
            return Err(bad("Missing HTTP header delimiter"));
        };
        trace::qio_channel_websock_http_greeting(ioc, greeting);
        let Some((method, rest)) = greeting.split_once(' ') else {
            return Err(bad("Missing HTTP path delimiter"));
        };
        if method != "GET" {
            return Err(bad(format!("Unsupported HTTP method {method}")));
        }
        let Some((path, version)) = rest.split_once(' ') else {
            return Err(bad("Missing HTTP version delimiter"));
        };
        if path != "/" {
            return Err(Refusal {
                status: 404,
                message: format!("Unexpected HTTP path {path}"),
            });
        }
        if version != "HTTP/1.1" {
            return Err(bad(format!("Unsupported HTTP version {version}")));
        }
        let mut headers = Vec::new();
        for line in fields.split("\r\n") {
            let Some((name, value)) = line.split_once(':') else {
                return Err(bad("Malformed HTTP header"));
            };
            if headers.len() >= MAX_HEADERS {
                return Err(bad("Too many HTTP headers"));
            }
            headers.push((name.to_ascii_lowercase(), value.trim_matches([' ', '\t'])));
        }
        let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        // QEMU's messages name the header without its prefix.
        let need = |name: &str, what: &str| {
            find(name).ok_or_else(|| bad(format!("Missing websocket {what} header data")))
        };
        let protocols = find("sec-websocket-protocol");
        let version = need("sec-websocket-version", "version")?;
        let key = need("sec-websocket-key", "key")?;
        let host = need("host", "host")?;
        let connection = need("connection", "connection")?;
        let upgrade = need("upgrade", "upgrade")?;
        trace::qio_channel_websock_http_request(
            ioc,
            protocols.unwrap_or(""),
            version,
            host,
            connection,
            upgrade,
            key,
        );
        if let Some(p) = protocols {
            if !p.split(',').any(|t| t.trim() == "binary") {
                return Err(bad(format!(
                    "No 'binary' protocol is supported by client '{p}'"
                )));
            }
        }
        if version != "13" {
            return Err(bad(format!(
                "Unsupported websocket version '{version}': only '13' is supported"
            )));
        }
        if key.len() != 24 {
            return Err(bad(format!(
                "Key length '{}' was not as expected '24'",
                key.len()
            )));
        }
        if !matches!(STANDARD.decode(key), Ok(k) if k.len() == 16) {
            return Err(bad(format!(
                "Key '{key}' is not the base64 encoding of 16 bytes"
            )));
        }
        if !connection
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        {
            return Err(bad(format!(
                "No connection upgrade requested '{connection}'"
            )));
        }
        if !upgrade.eq_ignore_ascii_case("websocket") {
            return Err(bad(format!("Incorrect upgrade method '{upgrade}'")));
        }
        Ok(Upgrade {
            key: key.to_owned(),
            protocol: protocols.is_some(),
        })
    }

    /// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key + GUID)).
    pub(super) fn accept_key(key: &str) -> String {
        let mut h = Sha1::new();
        h.update(key.as_bytes());
        h.update(GUID.as_bytes());
        STANDARD.encode(h.finalize().as_slice())
    }

    /// The 101 reply (QEMU's `QIO_CHANNEL_WEBSOCK_HANDSHAKE_RES_OK`, with
    /// the protocol line when the client offered protocols).
    pub(super) fn reply_ok(up: &Upgrade, date: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\n\
             Server: {SERVER}\r\n\
             Date: {date}\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\
             {}\r\n",
            accept_key(&up.key),
            if up.protocol {
                "Sec-WebSocket-Protocol: binary\r\n"
            } else {
                ""
            },
        )
    }

    /// QEMU's error replies, with their status texts.
    pub(super) fn reply_error(status: u16, date: &str) -> String {
        let (text, extra) = match status {
            404 => ("Not Found", ""),
            403 => ("Request Entity Too Large", ""),
            500 => ("Internal Server Error", ""),
            _ => ("Bad Request", "Sec-WebSocket-Version: 13\r\n"),
        };
        format!(
            "HTTP/1.1 {status} {text}\r\n\
             Server: {SERVER}\r\n\
             Date: {date}\r\n\
             Connection: close\r\n\
             {extra}\r\n"
        )
    }

    /// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
    pub(super) fn date(t: SystemTime) -> String {
        const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let days = secs / 86_400;
        let (hh, mm, ss) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
        // Howard Hinnant's civil_from_days, for days since 1970-01-01 >= 0.
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z % 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        format!(
            "{}, {day:02} {} {year} {hh:02}:{mm:02}:{ss:02} GMT",
            DAYS[(days % 7) as usize],
            MONTHS[(month - 1) as usize]
        )
    }
}

// ----- RFC 6455 framing -----

mod frame {
    //! Frame headers, masking and the client-frame decoder.

    use super::{trace, Ptr};

    pub(super) const OP_CONTINUATION: u8 = 0x0;
    pub(super) const OP_TEXT: u8 = 0x1;
    pub(super) const OP_BINARY: u8 = 0x2;
    pub(super) const OP_CLOSE: u8 = 0x8;
    pub(super) const OP_PING: u8 = 0x9;
    pub(super) const OP_PONG: u8 = 0xA;

    const FIN: u8 = 0x80;
    const RSV: u8 = 0x70;
    const OPCODE: u8 = 0x0F;
    const MASKED: u8 = 0x80;
    const LEN7: u8 = 0x7F;
    const CONTROL: u8 = 0x8;
    const LEN_16: u8 = 126;
    const LEN_64: u8 = 127;

    /// A server frame header (unmasked, FIN set) for `len` payload bytes:
    /// the 7-, 16- or 64-bit length form, whichever is shortest.
    pub(super) fn header(opcode: u8, len: usize) -> ([u8; 10], usize) {
        let mut h = [0u8; 10];
        h[0] = FIN | (opcode & OPCODE);
        if len < LEN_16 as usize {
            h[1] = len as u8;
            (h, 2)
        } else if len <= u16::MAX as usize {
            h[1] = LEN_16;
            h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            (h, 4)
        } else {
            h[1] = LEN_64;
            h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            (h, 10)
        }
    }

    /// XORs `data` with `mask`, `data[0]` being byte `offset` of the payload.
    pub(super) fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
        let m: [u8; 4] = std::array::from_fn(|i| mask[(offset + i) % 4]);
        let wide = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
        let mut chunks = data.chunks_exact_mut(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            c.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
        }
        for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }

    /// The close codes a peer may send (RFC 6455 §7.4, and the IANA
    /// registry's 1012-1014).
    pub(super) fn valid_close_code(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// A decoded control frame.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) enum Control {
        Ping(Vec<u8>),
        Pong,
        Close(Vec<u8>),
    }

    /// A client frame we reject: the close `code` and `reason` to send, and
    /// the error `message` for our caller.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) struct ProtocolError {
        pub(super) code: u16,
        pub(super) reason: &'static str,
        pub(super) message: String,
    }

    impl ProtocolError {
        pub(super) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
            ProtocolError {
                code,
                reason,
                message: message.into(),
            }
        }
    }

    /// The frame whose payload is being decoded.
    #[derive(Debug)]
    struct Frame {
        /// `OP_BINARY` for continuation frames.
        opcode: u8,
        mask: [u8; 4],
        /// Payload bytes still to come.
        remain: u64,
        /// Payload bytes decoded so far, modulo 4 (the mask's phase).
        phase: usize,
    }

    /// Decodes client frames (QEMU's `decode_header` and `decode_payload`),
    /// streaming binary payload as it arrives; control payloads are handed
    /// over whole.
    #[derive(Debug, Default)]
    pub(super) struct Decoder {
        frame: Option<Frame>,
        /// A binary message without FIN was begun: continuation frames follow.
        fragmented: bool,
    }

    type Step = Result<Option<Control>, ProtocolError>;

    impl Decoder {
        /// Whether a frame or a fragmented message is incomplete.
        pub(super) fn mid_message(&self) -> bool {
            self.frame.is_some() || self.fragmented
        }

        /// Decodes from `input`, appending binary payload to `raw`, until the
        /// input ends inside a frame header or a control frame (`Ok(None)`),
        /// a control frame is complete, or the client broke the protocol.
        /// Returns how many bytes of `input` were consumed as well.
        pub(super) fn decode(
            &mut self,
            input: &[u8],
            raw: &mut Vec<u8>,
            ioc: Ptr,
        ) -> (usize, Step) {
            let mut used = 0;
            loop {
                let rest = &input[used..];
                let Some(f) = self.frame.as_mut() else {
                    match self.header(rest, ioc) {
                        Ok(Some((hlen, frame))) => {
                            used += hlen;
                            self.frame = Some(frame);
                            continue;
                        }
                        Ok(None) => return (used, Ok(None)),
                        Err(e) => return (used, Err(e)),
                    }
                };
                if f.opcode & CONTROL != 0 {
                    // Wait for the whole payload: it is answered whole.
                    let len = f.remain as usize;
                    if rest.len() < len {
                        return (used, Ok(None));
                    }
                    let mut payload = rest[..len].to_vec();
                    apply_mask(&mut payload, f.mask, 0);
                    let opcode = f.opcode;
                    self.frame = None;
                    trace::qio_channel_websock_payload_decode(ioc, opcode, 0);
                    let control = match opcode {
                        OP_PING => Control::Ping(payload),
                        OP_PONG => Control::Pong,
                        _ => Control::Close(payload),
                    };
                    return (used + len, Ok(Some(control)));
                }
                let n = f.remain.min(rest.len() as u64) as usize;
                if n == 0 && f.remain > 0 {
                    return (used, Ok(None));
                }
                let at = raw.len();
                raw.extend_from_slice(&rest[..n]);
                apply_mask(&mut raw[at..], f.mask, f.phase);
                f.phase = (f.phase + n) % 4;
                f.remain -= n as u64;
                used += n;
                trace::qio_channel_websock_payload_decode(ioc, f.opcode, f.remain);
                if f.remain == 0 {
                    self.frame = None;
                }
            }
        }

        /// Parses and checks one frame header: `Ok(None)` if incomplete.
        fn header(&mut self, b: &[u8], ioc: Ptr) -> Result<Option<(usize, Frame)>, ProtocolError> {
            if b.len() < 2 {
                return Ok(None);
            }
            let (fin, opcode) = (b[0] & FIN != 0, b[0] & OPCODE);
            let (masked, len7) = (b[1] & MASKED != 0, b[1] & LEN7);
            let hlen = 2
                + 4 * usize::from(masked)
                + match len7 {
                    LEN_16 => 2,
                    LEN_64 => 8,
                    _ => 0,
                };
            let partial = || {
                trace::qio_channel_websock_header_partial_decode(
                    ioc,
                    usize::from(len7),
                    b[0] & FIN,
                    opcode,
                    b[1] & MASKED,
                )
            };
            if let Err(e) = self.check(b[0], masked, len7) {
                partial();
                return Err(e);
            }
            if b.len() < hlen {
                return Ok(None);
            }
            partial();
            let (len, mask_at) = match len7 {
                LEN_16 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
                LEN_64 => {
                    let mut l = [0u8; 8];
                    l.copy_from_slice(&b[2..10]);
                    (u64::from_be_bytes(l), 10)
                }
                n => (u64::from(n), 2),
            };
            if len >> 63 != 0 || usize::try_from(len).is_err() {
                return Err(ProtocolError::new(
                    1002,
                    "invalid payload length",
                    format!("websocket frame payload length {len} is out of range"),
                ));
            }
            let mask = [b[mask_at], b[mask_at + 1], b[mask_at + 2], b[mask_at + 3]];
            trace::qio_channel_websock_header_full_decode(ioc, hlen, len, u32::from_be_bytes(mask));
            let opcode = if opcode == OP_CONTINUATION || opcode == OP_BINARY {
                self.fragmented = !fin;
                OP_BINARY
            } else {
                opcode
            };
            Ok(Some((
                hlen,
                Frame {
                    opcode,
                    mask,
                    remain: len,
                    phase: 0,
                },
            )))
        }

        /// QEMU's sanity checks, plus RFC 6455's on reserved bits and
        /// fragment order.
        fn check(&self, b0: u8, masked: bool, len7: u8) -> Result<(), ProtocolError> {
            let (fin, opcode) = (b0 & FIN != 0, b0 & OPCODE);
            if b0 & RSV != 0 {
                return Err(ProtocolError::new(
                    1002,
                    "reserved bits set",
                    format!("websocket frame with reserved bits {:#x} set", b0 & RSV),
                ));
            }
            match opcode {
                OP_CONTINUATION if !self.fragmented => {
                    return Err(ProtocolError::new(
                        1002,
                        "unexpected continuation frame",
                        "websocket continuation frame without a fragmented message",
                    ))
                }
                OP_BINARY if self.fragmented => {
                    return Err(ProtocolError::new(
                        1002,
                        "expected a continuation frame",
                        "websocket binary frame inside a fragmented message",
                    ))
                }
                OP_CONTINUATION | OP_BINARY => {}
                _ if !fin => {
                    return Err(ProtocolError::new(
                        1008,
                        "only binary frames may be fragmented",
                        "only binary websocket frames may be fragmented",
                    ))
                }
                OP_CLOSE | OP_PING | OP_PONG => {}
                _ => {
                    return Err(ProtocolError::new(
                        1003,
                        "only binary, close, ping, and pong frames are supported",
                        format!(
                            "unsupported opcode: {opcode:#04x}{}; only binary, close, ping, \
                             and pong websocket frames are supported",
                            if opcode == OP_TEXT { " (text)" } else { "" }
                        ),
                    ))
                }
            }
            if !masked {
                return Err(ProtocolError::new(
                    1002,
                    "client frames must be masked",
                    "client websocket frames must be masked",
                ));
            }
            if opcode & CONTROL != 0 && len7 > 125 {
                return Err(ProtocolError::new(
                    1002,
                    "control frame is too large",
                    "websocket control frame is too large",
                ));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::frame::{self, apply_mask, Control, Decoder};
    use super::http;
    use std::time::{Duration, UNIX_EPOCH};

    const NIL: super::Ptr = std::ptr::null();

    fn request(lines: &[&str]) -> Vec<u8> {
        let mut r = lines.join("\r\n");
        r.insert_str(0, "GET / HTTP/1.1\r\n");
        r.into_bytes()
    }

    const GOOD: [&str; 5] = [
        "Host: example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];

    #[test]
    fn accept_key_rfc6455_example() {
        assert_eq!(
            http::accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn http_date() {
        assert_eq!(http::date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http::date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // leap day
        assert_eq!(http::date(t), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn parse_good_requests() {
        assert!(http::parse_request(&request(&GOOD), NIL).is_ok());
        let mut loose = GOOD.to_vec();
        loose[1] = "upgrade:WebSocket ";
        loose[2] = "CONNECTION:  keep-alive, upgrade";
        loose.push("Sec-WebSocket-Protocol: chat, binary");
        let up = http::parse_request(&request(&loose), NIL).unwrap();
        let reply = http::reply_ok(&up, "D");
        assert!(reply.contains("Sec-WebSocket-Protocol: binary\r\n"));
        assert!(reply.ends_with("\r\n\r\n"));
    }

    #[test]
    fn parse_refusals() {
        let cases: &[(&[u8], u16, &str)] = &[
            (b"GET / HTTP/1.1", 400, "Missing HTTP header delimiter"),
            (b"garbage\r\nHost: x", 400, "Missing HTTP path delimiter"),
            (
                b"GET /x HTTP/1.1\r\nHost: x",
                404,
                "Unexpected HTTP path /x",
            ),
            (
                b"GET / HTTP/1.0\r\nHost: x",
                400,
                "Unsupported HTTP version",
            ),
            (b"GET / HTTP/1.1\r\nno colon", 400, "Malformed HTTP header"),
        ];
        for (req, status, msg) in cases {
            let r = http::parse_request(req, NIL).unwrap_err();
            assert_eq!(
                (r.status, r.message.contains(msg)),
                (*status, true),
                "{r:?}"
            );
        }
        let edits: &[(usize, &str, &str)] = &[
            (0, "X-Host: y", "Missing websocket host"),
            (1, "Upgrade: h2c", "Incorrect upgrade method 'h2c'"),
            (2, "Connection: keep-alive", "No connection upgrade"),
            (3, "Sec-WebSocket-Key: short", "Key length '5'"),
            (
                3,
                "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!",
                "not the base64",
            ),
            (4, "Sec-WebSocket-Version: 8", "version '8'"),
        ];
        for (i, line, msg) in edits {
            let mut lines = GOOD.to_vec();
            lines[*i] = line;
            let r = http::parse_request(&request(&lines), NIL).unwrap_err();
            assert!(r.status == 400 && r.message.contains(msg), "{line}: {r:?}");
        }
        let mut lines = GOOD.to_vec();
        lines.push("Sec-WebSocket-Protocol: chat, binaryish");
        let r = http::parse_request(&request(&lines), NIL).unwrap_err();
        assert!(r.message.contains("No 'binary' protocol"), "{r:?}");
        let many: Vec<String> = (0..40).map(|i| format!("X-{i}: y")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let r = http::parse_request(&request(&many), NIL).unwrap_err();
        assert!(r.message.contains("Too many HTTP headers"), "{r:?}");
    }

    #[test]
    fn error_replies_are_complete_http() {
        for status in [400, 403, 404] {
            let r = http::reply_error(status, "D");
            assert!(r.starts_with(&format!("HTTP/1.1 {status} ")));
            assert!(r.ends_with("\r\n\r\n") && r.contains("Connection: close\r\n"));
        }
        assert!(http::reply_error(400, "D").contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn header_length_forms() {
        for (len, hlen, b1) in [
            (0, 2, 0),
            (125, 2, 125),
            (126, 4, 126),
            (65535, 4, 126),
            (65536, 10, 127),
        ] {
            let (h, n) = frame::header(frame::OP_BINARY, len);
            assert_eq!((n, h[0], h[1]), (hlen, 0x82, b1), "len {len}");
        }
        let (h, _) = frame::header(frame::OP_BINARY, 65536);
        assert_eq!(&h[2..10], &65536u64.to_be_bytes());
    }

    /// A masked client frame.
    fn client_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend((n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend((n as u64).to_be_bytes());
            }
        }
        f.extend(mask);
        let at = f.len();
        f.extend(payload);
        apply_mask(&mut f[at..], mask, 0);
        f
    }

    #[test]
    fn mask_phase() {
        let data: Vec<u8> = (0..37).collect();
        let mask = [0xde, 0xad, 0xbe, 0xef];
        let mut whole = data.clone();
        apply_mask(&mut whole, mask, 0);
        let mut split = data.clone();
        let (a, b) = split.split_at_mut(13);
        apply_mask(a, mask, 0);
        apply_mask(b, mask, 13);
        assert_eq!(whole, split);
        assert!(whole
            .iter()
            .enumerate()
            .all(|(i, b)| *b == data[i] ^ mask[i % 4]));
    }

    #[test]
    fn decode_byte_by_byte_all_length_forms() {
        let mut input = Vec::new();
        let mut expect = Vec::new();
        for (n, seed) in [(1usize, 1u8), (125, 2), (126, 3), (65535, 4), (65536, 5)] {
            let payload: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(seed)).collect();
            input.extend(client_frame(0x82, &payload, [seed, 7, 9, 11]));
            expect.extend(payload);
        }
        input.extend(client_frame(0x89, b"ping!", [1, 2, 3, 4]));
        let mut dec = Decoder::default();
        let mut raw = Vec::new();
        let mut pos = 0;
        let mut pings = 0;
        // Feed growing prefixes, the way a stream delivers them.
        for end in (1..=input.len()).step_by(997).chain([input.len()]) {
            loop {
                let (used, r) = dec.decode(&input[pos..end], &mut raw, NIL);
                pos += used;
                match r.unwrap() {
                    None => break,
                    Some(Control::Ping(p)) => {
                        assert_eq!(p, b"ping!");
                        pings += 1;
                    }
                    Some(c) => panic!("unexpected {c:?}"),
                }
            }
        }
        assert_eq!(pos, input.len());
        assert_eq!(pings, 1);
        assert!(raw == expect, "decoded payload differs");
        assert!(!dec.mid_message());
    }

    #[test]
    fn decode_fragments_and_controls_between_them() {
        let mut input = client_frame(0x02, b"abc", [1, 1, 1, 1]); // binary, no FIN
        input.extend(client_frame(0x8A, b"", [2, 2, 2, 2])); // pong in between
        input.extend(client_frame(0x80, b"def", [3, 3, 3, 3])); // continuation, FIN
        input.extend(client_frame(0x88, &1001u16.to_be_bytes(), [4, 4, 4, 4]));
        let mut dec = Decoder::default();
        let mut raw = Vec::new();
        let (used, r) = dec.decode(&input, &mut raw, NIL);
        assert_eq!(r, Ok(Some(Control::Pong)));
        let (used2, r) = dec.decode(&input[used..], &mut raw, NIL);
        assert_eq!(r, Ok(Some(Control::Close(1001u16.to_be_bytes().to_vec()))));
        assert_eq!(used + used2, input.len());
        assert_eq!(raw, b"abcdef");
    }

    #[test]
    fn decode_rejects() {
        let unmasked = vec![0x82, 0x01, b'x'];
        let mut too_big_ping = vec![0x89, 0x80 | 126, 0, 126];
        too_big_ping.extend([0; 4]);
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (unmasked, 1002),
            (client_frame(0x81, b"text", [1; 4]), 1003),
            (client_frame(0x83, b"", [1; 4]), 1003),
            (client_frame(0x8F, b"", [1; 4]), 1003),
            (client_frame(0x01, b"text", [1; 4]), 1008),
            (client_frame(0x09, b"", [1; 4]), 1008),
            (too_big_ping, 1002),
            (client_frame(0xC2, b"", [1; 4]), 1002),
            (client_frame(0x80, b"", [1; 4]), 1002),
            (
                [
                    client_frame(0x02, b"a", [1; 4]),
                    client_frame(0x82, b"b", [1; 4]),
                ]
                .concat(),
                1002,
            ),
        ];
        for (input, code) in cases {
            let mut dec = Decoder::default();
            let mut raw = Vec::new();
            let (_, r) = dec.decode(&input, &mut raw, NIL);
            assert_eq!(r.map_err(|e| e.code), Err(code), "{input:x?}");
        }
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend(u64::MAX.to_be_bytes());
        huge.extend([0; 4]);
        let (_, r) = Decoder::default().decode(&huge, &mut Vec::new(), NIL);
        assert_eq!(r.map_err(|e| e.code), Err(1002));
    }

    #[test]
    fn close_codes() {
        for ok in [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert!(frame::valid_close_code(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
            assert!(!frame::valid_close_code(bad), "{bad}");
        }
    }
}
