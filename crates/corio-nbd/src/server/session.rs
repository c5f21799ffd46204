//! One client: its coroutine reads requests, each request runs in a
//! coroutine of its own, and replies are serialised by a `CoMutex`
//! (qemu's `nbd_co_client_start`, `nbd_trip` and `send_lock`).
//!
//! Every coroutine of a client lives on the client's context (the main
//! loop or one IOThread), so they share the session through an `Rc`.

use std::cell::Cell;
use std::io;
use std::net::Shutdown;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use corio::io::{Channel, SocketChannel};
use corio::sync::CoMutex;
use corio::{yield_now, AioContext, Clock, CoHandle, Coroutine};

use super::handshake::{self, Negotiated};
use super::reply::{ReplyBuf, IOV_MAX};
use super::{request, Shared};
use crate::proto::{ClientMessage, Command, Decoded, Errno, ErrorAction, Mode, Request};

/// Requests in flight per client (qemu's `MAX_NBD_REQUESTS`).
pub const MAX_REQUESTS: usize = 16;

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
    });
    let r = s.read_requests(decoder);
    // Answer what is in flight before hanging up (no request lost).
    s.wait_below(1);
    r
}

impl Session {
    /// Sleeps until fewer than `n` requests are in flight.
    fn wait_below(&self, n: usize) {
        while self.in_flight.get() >= n {
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

    /// The reader: one request header (and payload) at a time, each
    /// request handed to a coroutine of its own.
    fn read_requests(self: &Rc<Self>, mut dec: crate::proto::ServerDecoder) -> io::Result<()> {
        let hlen = self.mode.request_len();
        let mut hdr = [0u8; 32];
        loop {
            self.wait_below(MAX_REQUESTS);
            if self.broken.get() || !self.ch.read_all_eof(&mut hdr[..hlen])? {
                return Ok(());
            }
            match dec.decode(&hdr[..hlen]) {
                Ok(Decoded::Complete {
                    msg: ClientMessage::Request(r),
                    ..
                }) => {
                    if r.command == Command::Disc {
                        return Ok(());
                    }
                    let mut payload = Vec::new();
                    if r.payload_len() > 0 {
                        payload.resize(r.payload_len() as usize, 0);
                        // A client that hangs up mid-payload loses only
                        // this request.
                        self.ch.read_all(&mut payload)?;
                    }
                    self.spawn(r, payload);
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
                            self.discard(discard)?;
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

    fn discard(&self, mut n: u64) -> io::Result<()> {
        let mut scratch = vec![0u8; n.min(64 * 1024) as usize];
        while n > 0 {
            let k = n.min(scratch.len() as u64) as usize;
            self.ch.read_all(&mut scratch[..k])?;
            n -= k as u64;
        }
        Ok(())
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

    /// Writes one whole reply, after the replies before it.
    pub(crate) fn send(&self, rb: &ReplyBuf<'_>) {
        if self.broken.get() {
            return;
        }
        let _guard = self.send_lock.lock();
        let mut iov = rb.iovecs();
        let r = if iov.len() <= IOV_MAX {
            self.ch.writev_all(&mut iov)
        } else {
            // More than one writev: cork, so that it still leaves whole.
            let _ = self.ch.set_cork(true);
            let r = iov
                .chunks_mut(IOV_MAX)
                .try_for_each(|part| self.ch.writev_all(part));
            let _ = self.ch.set_cork(false);
            r
        };
        if r.is_err() {
            self.fail();
        }
    }
}
