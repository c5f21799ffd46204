//! The state a [`WebsockChannel`](super::WebsockChannel) shares with its
//! background flush watch: the status, the input and output buffers, and
//! the reading, writing and handshake logic on them.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::Shutdown;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use super::frame::{self, Control, Decoder, ProtocolError};
use super::http;
use super::{Ptr, WebsockError, HANDSHAKE_MAX, MAX_OUTPUT, READ_CHUNK, STATUS_NORMAL};
use crate::aio::events;
use crate::aio::AioContext;
use crate::coroutine::Coroutine;
use crate::io::channel::{Channel, Feature};
use crate::io::watch::{WatchFunc, WatchHandle};
use crate::trace;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn ebadf() -> io::Error {
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
pub(super) enum Phase {
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
pub(super) struct StoredError {
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

pub(super) struct Status {
    pub(super) phase: Phase,
    /// The first fatal error (a refused handshake, a protocol error, a
    /// failed write, a hang-up mid-frame); reads return it once the decoded
    /// payload is consumed, writes at once.
    pub(super) error: Option<StoredError>,
    /// The master reached end of stream (QEMU's `io_eof`): writes fail.
    pub(super) eof: bool,
}

/// Bytes from the master and what they decoded to. Held by the reader for
/// its whole read, across the master read.
#[derive(Default)]
pub(super) struct Input {
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
    pub(super) eof: bool,
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

    pub(super) fn has_raw(&self) -> bool {
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
pub(super) struct Output {
    /// Unwritten bytes are `buf[pos..]`; always whole frames after the
    /// part of a frame the master took.
    buf: Vec<u8>,
    pos: usize,
    /// A flusher is writing; bytes queued meanwhile are its to write.
    flushing: bool,
    /// The background flush watch, while armed.
    pub(super) watch: Option<WatchHandle>,
    /// A close frame (or an HTTP error reply) was queued: no more frames.
    pub(super) close_queued: bool,
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
    pub(super) fn pending(&self) -> usize {
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
    pub(super) fn encode_close(&mut self, ioc: Ptr, code: u16, reason: &[u8]) {
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
pub(super) enum Arm {
    /// No: the caller waits for the master itself.
    No,
    /// Yes, in the caller's context, unless one is armed.
    Yes,
    /// The caller is the watch: it stays armed only if the master is full.
    Watch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Flush {
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
pub(super) struct Inner {
    /// The wrapped channel: read under `input`, written by the flusher.
    pub(super) master: Box<dyn Channel>,
    pub(super) status: Mutex<Status>,
    pub(super) input: Mutex<Input>,
    pub(super) output: Mutex<Output>,
    /// Whether the master was made non-blocking through this channel;
    /// `Relaxed`: a hint for `io_shutdown`, which orders nothing by it.
    pub(super) nonblocking: AtomicBool,
}

impl Inner {
    pub(super) fn ptr(&self) -> Ptr {
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

    /// Whether a read returns at once without waiting for the master's fd:
    /// decoded payload, the end of stream or error a read would report, or
    /// input the master itself holds decoded (a TLS master's plaintext).
    /// Bytes read from the master but not decoded yet (frames that came
    /// with the upgrade request) are decoded first, as a read would; what
    /// then stays undecoded is part of a frame, which needs the master.
    ///
    /// Never blocks: if a reader holds the input (perhaps in a blocking
    /// master read), the answer is no, and that reader reports what comes.
    /// Decoding may answer a ping, so it is done only on a non-blocking
    /// master, where that answer cannot block a watch's event loop.
    pub(super) fn has_pending_input(self: &Arc<Self>) -> bool {
        let Ok(mut input) = self.input.try_lock() else {
            return false;
        };
        if input.has_raw() || input.eof {
            return true;
        }
        if lock(&self.status).phase != Phase::Open {
            return false;
        }
        if input.start < input.end && self.nonblocking.load(std::sync::atomic::Ordering::Relaxed) {
            self.decode(&mut input);
            if input.has_raw() || input.eof {
                return true;
            }
        }
        if lock(&self.status).error.is_some() {
            return true;
        }
        drop(input);
        self.master.io_has_pending_input()
    }

    pub(super) fn sticky(&self) -> Option<io::Error> {
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
    pub(super) fn fail_io(&self, e: io::Error) -> io::Error {
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
    pub(super) fn handshake_read(&self) -> io::Result<Option<io::Result<()>>> {
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
    pub(super) fn handshake_done(&self, outcome: io::Result<()>) -> io::Result<()> {
        match outcome {
            Ok(()) => {
                lock(&self.status).phase = Phase::Open;
                trace::qio_channel_websock_handshake_complete(self.ptr());
                Ok(())
            }
            Err(e) => Err(self.handshake_failed(e)),
        }
    }

    pub(super) fn handshake_failed(&self, e: io::Error) -> io::Error {
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
    pub(super) fn read(self: &Arc<Self>, iov: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
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
    pub(super) fn write(self: &Arc<Self>, iov: &[IoSlice<'_>]) -> io::Result<usize> {
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
    pub(super) fn flush(self: &Arc<Self>, arm: Arm) -> io::Result<Flush> {
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
