//! One client: its coroutine reads requests, each request runs in a
//! coroutine of its own, and replies are serialised by a `CoMutex`
//! (qemu's `nbd_co_client_start`, `nbd_trip` and `send_lock`).
//!
//! Every coroutine of a client lives on the client's context (the main
//! loop or one IOThread), so they share the session through an `Rc`.
//!
//! System calls are what a request costs, so the reader reads ahead
//! (`InBuf`: one `readv` for every header the socket holds), and the
//! small replies of requests that complete while it hands them out (reads
//! served from the page cache) are queued and leave together, in one
//! write, before the reader next waits for input. Buffers for read data
//! and write payloads are reused per client rather than allocated and
//! zeroed per request.

use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use corio::io::{Channel, SocketChannel};
use corio::sync::CoMutex;
use corio::{yield_now, AioContext, Clock, CoHandle, Coroutine};

use super::handshake::{self, Negotiated};
use super::inbuf::InBuf;
use super::reply::{ReplyBuf, IOV_MAX};
use super::{request, Shared};
use crate::proto::{ClientMessage, Command, Decoded, Errno, ErrorAction, Mode, Request};

/// Requests in flight per client (qemu's `MAX_NBD_REQUESTS`).
pub const MAX_REQUESTS: usize = 16;

/// Replies up to this size may wait in the queue.
const QUEUE_REPLY_MAX: usize = 64 * 1024;

/// Most bytes queued before a reply is written directly.
const QUEUE_MAX: usize = 256 * 1024;

/// Buffers kept for reuse per client, and the largest kept.
const SPARE_BUFFERS: usize = 8;
const SPARE_BUFFER_MAX: usize = 1 << 20;

/// The state a client's coroutines share.
pub(crate) struct Session {
    pub(crate) ch: Arc<dyn Channel>,
    pub(crate) sock: Arc<SocketChannel>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) mode: Mode,
    pub(crate) contexts: Vec<(&'static str, u32)>,
    pub(crate) align: u32,
    /// Held while a reply is written: one reply at a time, whole.
    send_lock: CoMutex<()>,
    /// Requests received and not yet answered.
    in_flight: Cell<usize>,
    /// The reader, while it waits for `in_flight` to drop.
    waiter: Cell<Option<CoHandle>>,
    /// A reply could not be written: the connection is finished.
    broken: Cell<bool>,
    /// The reader is handing out requests: small replies are queued.
    batching: Cell<bool>,
    /// Whole replies waiting to be written, in order.
    queue: RefCell<Vec<u8>>,
    /// Buffers for reuse (see [`take_buf`](Session::take_buf)).
    spare: RefCell<Vec<Vec<u8>>>,
}

/// A client connection as the server's lifecycle sees it, from any
/// thread: its socket and, once negotiated, the channel its replies go
/// out on (TLS or the socket).
pub(crate) struct Conn {
    pub(crate) sock: Arc<SocketChannel>,
    ch: std::sync::Mutex<Option<Arc<dyn Channel>>>,
}

impl Conn {
    pub(crate) fn new(sock: SocketChannel) -> Conn {
        Conn {
            sock: Arc::new(sock),
            ch: std::sync::Mutex::new(None),
        }
    }

    /// Hangs up and wakes a reply blocked on a client that does not read
    /// (its write then fails and the session ends).
    pub(crate) fn hang_up(&self) {
        let _ = self.sock.shutdown(Shutdown::Both);
        self.sock.wake_write();
        let ch = self.ch.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(ch) = ch {
            ch.wake_write();
        }
    }
}

/// Serves one accepted client to the end, in the calling coroutine.
pub(crate) fn run_client(conn: &Conn, shared: Arc<Shared>) {
    let sock = &conn.sock;
    let ok = sock
        .set_blocking(false)
        .and_then(|()| sock.set_delay(false));
    if ok.is_ok() {
        let r = catch_unwind(AssertUnwindSafe(|| client(conn, &shared)));
        match r {
            Ok(Err(e)) => shared.log(format_args!("client: {e}")),
            Err(_) => shared.log(format_args!("client: panicked; connection dropped")),
            Ok(Ok(())) => {}
        }
    }
    let _ = sock.shutdown(Shutdown::Both);
}

fn client(conn: &Conn, shared: &Arc<Shared>) -> io::Result<()> {
    let sock = &conn.sock;
    let timer = shared.handshake_limit.map(|limit| {
        let s = sock.clone();
        let t = AioContext::current().timer_new(Clock::Realtime, move || {
            let _ = s.shutdown(Shutdown::Both);
        });
        t.modify_in(i64::try_from(limit.as_nanos()).unwrap_or(i64::MAX));
        t
    });
    let negotiated = handshake::negotiate(sock, shared);
    if let Some(t) = timer {
        t.delete();
    }
    let Some(Negotiated {
        ch,
        mode,
        contexts,
        align,
        decoder,
    }) = negotiated?
    else {
        return Ok(());
    };
    *conn.ch.lock().unwrap_or_else(|e| e.into_inner()) = Some(ch.clone());
    let s = Rc::new(Session {
        ch,
        sock: sock.clone(),
        shared: shared.clone(),
        mode,
        contexts,
        align,
        send_lock: CoMutex::new(()),
        in_flight: Cell::new(0),
        waiter: Cell::new(None),
        broken: Cell::new(false),
        batching: Cell::new(false),
        queue: RefCell::new(Vec::new()),
        spare: RefCell::new(Vec::new()),
    });
    let r = s.read_requests(decoder);
    // Answer what is in flight before hanging up (no request lost).
    s.wait_below(1);
    s.flush_queue();
    if let Err(e) = shared.export.storage.disconnected() {
        eprintln!("corio-nbd: writing back the image after a client left: {e}");
    }
    r
}

impl Session {
    /// Sleeps until fewer than `n` requests are in flight.
    fn wait_below(&self, n: usize) {
        while self.in_flight.get() >= n {
            // Flushing may yield, and requests may finish meanwhile: look
            // again before sleeping.
            self.flush_queue();
            if self.in_flight.get() < n {
                break;
            }
            let me = Coroutine::current().expect("a session runs in a coroutine");
            self.waiter.set(Some(me.handle()));
            drop(me);
            yield_now();
            self.waiter.set(None);
        }
    }

    fn request_done(&self) {
        self.in_flight.set(self.in_flight.get() - 1);
        if let Some(w) = self.waiter.take() {
            w.wake();
        }
    }

    /// The reader: request headers (and payloads) from the input buffer,
    /// each request handed to a coroutine of its own.
    fn read_requests(self: &Rc<Self>, mut dec: crate::proto::ServerDecoder) -> io::Result<()> {
        let hlen = self.mode.request_len();
        let mut hdr = [0u8; 32];
        let mut input = InBuf::new();
        loop {
            self.wait_below(MAX_REQUESTS);
            while input.data().len() < hlen {
                if self.broken.get() {
                    return Ok(());
                }
                if !input.fill(&*self.ch, || self.flush_queue())? {
                    if input.data().is_empty() {
                        return Ok(());
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "client hung up in the middle of a request header",
                    ));
                }
            }
            if self.broken.get() {
                return Ok(());
            }
            hdr[..hlen].copy_from_slice(&input.data()[..hlen]);
            input.consume(hlen);
            match dec.decode(&hdr[..hlen]) {
                Ok(Decoded::Complete {
                    msg: ClientMessage::Request(r),
                    ..
                }) => {
                    if r.command == Command::Disc {
                        return Ok(());
                    }
                    let payload = self.read_payload(&mut input, r.payload_len() as usize)?;
                    self.batching.set(true);
                    self.spawn(r, payload);
                    self.batching.set(false);
                }
                Ok(_) => return Ok(()),
                Err(e) => {
                    let offset = u64::from_be_bytes(hdr[16..24].try_into().expect("8 bytes"));
                    self.shared.log(format_args!("bad request: {e}"));
                    match e.action() {
                        ErrorAction::ReplyError {
                            cookie,
                            errno,
                            discard,
                            ..
                        } => {
                            self.discard(&mut input, discard)?;
                            self.reply_error(cookie, offset, errno, &e.to_string());
                        }
                        ErrorAction::ReplyErrorThenDisconnect { cookie, errno } => {
                            self.reply_error(cookie, offset, errno, &e.to_string());
                            return Ok(());
                        }
                        _ => return Ok(()),
                    }
                }
            }
        }
    }

    /// A payload of `len` bytes: what is buffered, then the rest straight
    /// from the channel.
    fn read_payload(&self, input: &mut InBuf, len: usize) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut payload = self.take_buf(len);
        let k = input.data().len().min(len);
        payload[..k].copy_from_slice(&input.data()[..k]);
        input.consume(k);
        if k < len {
            // A client that hangs up mid-payload loses only this request.
            self.flush_queue();
            self.ch.read_all(&mut payload[k..])?;
        }
        Ok(payload)
    }

    fn discard(&self, input: &mut InBuf, mut n: u64) -> io::Result<()> {
        let k = (input.data().len() as u64).min(n);
        input.consume(k as usize);
        n -= k;
        let mut scratch = vec![0u8; n.min(64 * 1024) as usize];
        while n > 0 {
            let k = n.min(scratch.len() as u64) as usize;
            self.ch.read_all(&mut scratch[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// A buffer of `len` bytes, reused when one is spare (its old bytes
    /// are not cleared: the caller overwrites all of it before use).
    pub(crate) fn take_buf(&self, len: usize) -> Vec<u8> {
        let mut spare = self.spare.borrow_mut();
        let found = spare
            .iter()
            .position(|b| b.len() == len)
            .or_else(|| spare.iter().position(|b| b.capacity() >= len));
        let Some(i) = found else {
            return vec![0; len];
        };
        let mut b = spare.swap_remove(i);
        b.resize(len, 0);
        b
    }

    /// Gives a buffer back for reuse.
    pub(crate) fn give_buf(&self, b: Vec<u8>) {
        let mut spare = self.spare.borrow_mut();
        if spare.len() < SPARE_BUFFERS && b.capacity() <= SPARE_BUFFER_MAX && !b.is_empty() {
            spare.push(b);
        }
    }

    fn reply_error(&self, cookie: u64, offset: u64, errno: Errno, message: &str) {
        self.shared.stats.requests.fetch_add(1, Relaxed);
        let mut rb = ReplyBuf::new(self.mode, cookie, offset);
        rb.error(errno, message);
        self.send(&rb);
    }

    fn spawn(self: &Rc<Self>, r: Request, payload: Vec<u8>) {
        self.in_flight.set(self.in_flight.get() + 1);
        let s = self.clone();
        Coroutine::new(move || {
            let served = catch_unwind(AssertUnwindSafe(|| request::handle(&s, r, payload)));
            if served.is_err() {
                s.shared
                    .log(format_args!("request {r:?} panicked; dropping the client"));
                s.fail();
            }
            s.request_done();
        })
        .enter();
    }

    /// Marks the connection finished and hangs up, so that the reader
    /// stops too.
    fn fail(&self) {
        self.broken.set(true);
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    /// Writes one whole reply, after the replies before it; while the
    /// reader hands out requests, a small reply only joins the queue.
    pub(crate) fn send(&self, rb: &ReplyBuf<'_>) {
        if self.broken.get() {
            return;
        }
        if self.batching.get() {
            let len = rb.len();
            let mut q = self.queue.borrow_mut();
            if len <= QUEUE_REPLY_MAX && q.len() + len <= QUEUE_MAX {
                rb.append_to(&mut q);
                return;
            }
        }
        let _guard = self.send_lock.lock();
        // What is queued goes first, in the same write.
        let queued = self.queue.take();
        let mut iov = Vec::with_capacity(rb.segments() + 1);
        if !queued.is_empty() {
            iov.push(IoSlice::new(&queued));
        }
        rb.push_iovecs(&mut iov);
        let r = self.write_locked(&mut iov);
        drop(iov);
        self.recycle_queue(queued);
        if r.is_err() {
            self.fail();
        }
    }

    /// Writes the queued replies.
    pub(crate) fn flush_queue(&self) {
        if self.broken.get() || self.queue.borrow().is_empty() {
            return;
        }
        let _guard = self.send_lock.lock();
        let queued = self.queue.take();
        if queued.is_empty() {
            return self.recycle_queue(queued);
        }
        let r = self.ch.write_all_bytes(&queued);
        self.recycle_queue(queued);
        if r.is_err() {
            self.fail();
        }
    }

    /// Keeps the queue's allocation for the next batch.
    fn recycle_queue(&self, mut queued: Vec<u8>) {
        let mut q = self.queue.borrow_mut();
        if q.is_empty() && queued.capacity() <= QUEUE_MAX * 2 {
            queued.clear();
            *q = queued;
        }
    }

    /// Writes `iov` whole; the send lock is held.
    fn write_locked(&self, iov: &mut [IoSlice<'_>]) -> io::Result<()> {
        if iov.len() <= IOV_MAX {
            return self.ch.writev_all(iov);
        }
        // More than one writev: cork, so that it still leaves whole.
        let _ = self.ch.set_cork(true);
        let r = iov
            .chunks_mut(IOV_MAX)
            .try_for_each(|part| self.ch.writev_all(part));
        let _ = self.ch.set_cork(false);
        r
    }
}
