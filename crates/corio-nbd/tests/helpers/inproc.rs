//! A server started in-process on a Unix socket, and a raw-socket client
//! that speaks through the codec (`ClientDecoder`), for the server tests.
//! Every read has a deadline: a lost reply fails with a name, never hangs.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use corio::io::address::SocketAddress;
use corio_nbd::proto::*;
use corio_nbd::server::{Export, Server, ServerConfig, ServerHandle};
use corio_nbd::storage::memory::MemoryStorage;
use corio_nbd::storage::Storage;

#[allow(unused_imports)] // re-exported for the server tests
pub use super::{TempDir, DEADLINE};

pub struct TestServer {
    pub handle: ServerHandle,
    pub thread: Option<JoinHandle<io::Result<()>>>,
    pub path: PathBuf,
    _dir: TempDir,
}

pub fn memory(size: u64) -> Arc<MemoryStorage> {
    Arc::new(MemoryStorage::new(size, false))
}

pub fn export(name: &str, storage: Arc<dyn Storage>) -> Export {
    let mut e = Export::new(name, storage);
    e.description = format!("test export {name}");
    e
}

/// A persistent server for any number of clients, on a Unix socket.
pub fn start(export: Export, tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let dir = TempDir::new("srv");
    let path = dir.0.join("nbd.sock");
    let mut config = ServerConfig::new(export);
    config.listen = vec![SocketAddress::unix(path.to_str().unwrap())];
    config.persistent = true;
    config.shared = 0;
    tweak(&mut config);
    let (handle, thread) = Server::spawn(config).expect("server starts");
    TestServer {
        handle,
        thread: Some(thread),
        path,
        _dir: dir,
    }
}

impl TestServer {
    pub fn connect(&self) -> Client {
        Client::connect(&self.path)
    }

    /// Shuts down and waits for `run` to return.
    pub fn stop(mut self) -> io::Result<()> {
        self.handle.shutdown();
        self.join()
    }

    pub fn join(&mut self) -> io::Result<()> {
        let t = self.thread.take().expect("joined once");
        // A deadline for the join: poll is_finished.
        let start = std::time::Instant::now();
        while !t.is_finished() {
            assert!(start.elapsed() < DEADLINE, "server did not stop in time");
            std::thread::sleep(Duration::from_millis(5));
        }
        t.join().expect("server thread panicked")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.thread.is_some() && !std::thread::panicking() {
            self.handle.shutdown();
            let _ = self.join();
        }
    }
}

/// A reply, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Simple {
        cookie: u64,
        error: u32,
    },
    Chunk {
        cookie: u64,
        done: bool,
        offset: u64,
        kind: Kind,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    None,
    Data { offset: u64, data: Vec<u8> },
    Hole { offset: u64, length: u32 },
    Status { id: u32, extents: Vec<(u64, u64)> },
    Error { error: u32, message: String },
}

/// An owned option reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptReply {
    pub option: u32,
    pub reply_type: u32,
    pub body: String,
}

pub struct Client {
    pub s: UnixStream,
    buf: Vec<u8>,
    dec: ClientDecoder,
    pub mode: Mode,
    next_cookie: u64,
}

impl Client {
    pub fn connect(path: &std::path::Path) -> Client {
        let s = UnixStream::connect(path).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.set_write_timeout(Some(DEADLINE)).unwrap();
        Client {
            s,
            buf: Vec::new(),
            dec: ClientDecoder::new(Limits::default()),
            mode: Mode::Simple,
            next_cookie: 1,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send to server");
    }

    /// Reads the next server message (as the decoder sees it) and hands
    /// it to `f`; `None` at end of stream.
    fn next<T>(&mut self, f: impl FnOnce(ServerMessage<'_>) -> T) -> Option<T> {
        loop {
            match self.dec.decode(&self.buf).expect("server sent valid bytes") {
                Decoded::NeedMore(n) => {
                    let start = self.buf.len();
                    self.buf.resize(start + n, 0);
                    let mut got = 0;
                    while got < n {
                        match self.s.read(&mut self.buf[start + got..]) {
                            Ok(0) => {
                                self.buf.truncate(start + got);
                                return None;
                            }
                            Ok(k) => got += k,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                                self.buf.truncate(start + got);
                                return None;
                            }
                            Err(e) => panic!("reading from the server: {e}"),
                        }
                    }
                }
                Decoded::Complete { msg, consumed } => {
                    let t = f(msg);
                    self.buf.drain(..consumed);
                    return Some(t);
                }
            }
        }
    }

    /// Whether the server hung up (EOF or reset) within the deadline.
    pub fn closed_by_server(&mut self) -> bool {
        super::closed_by_server(&mut self.s)
    }

    pub fn greeting(&mut self) -> HandshakeFlags {
        self.next(|m| match m {
            ServerMessage::Greeting(g) => g.flags,
            other => panic!("expected the greeting, got {other:?}"),
        })
        .expect("greeting")
    }

    pub fn client_flags(&mut self, flags: u32) {
        self.send(&flags.to_be_bytes());
    }

    /// Greeting and client flags (fixed newstyle, no zeroes).
    pub fn hello(&mut self) {
        let g = self.greeting();
        assert!(g.contains(HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES));
        self.client_flags(3);
    }

    pub fn option(&mut self, o: OptionRequest<'_>) {
        let mut out = Vec::new();
        o.encode(&mut out);
        self.send(&out);
    }

    pub fn opt_reply(&mut self) -> Option<OptReply> {
        self.next(|m| match m {
            ServerMessage::OptionReply(r) => OptReply {
                option: r.option,
                reply_type: r.reply_type(),
                body: format!("{:?}", r.body),
            },
            other => panic!("expected an option reply, got {other:?}"),
        })
    }

    /// Option replies up to and including the final one (ACK or error).
    pub fn opt_replies(&mut self) -> Vec<OptReply> {
        let mut v = Vec::new();
        loop {
            let r = self.opt_reply().expect("option reply before EOF");
            let last = r.reply_type == rep::ACK || RepError::is_error(r.reply_type);
            v.push(r);
            if last {
                return v;
            }
        }
    }

    /// Negotiates `mode` and, with structured replies, `base:allocation`;
    /// then GO on `name`. Returns size and flags.
    pub fn go(&mut self, name: &str, mode: Mode) -> (u64, TransmissionFlags) {
        self.go_with(name, mode, &[BASE_ALLOCATION], &[])
    }

    pub fn go_with(
        &mut self,
        name: &str,
        mode: Mode,
        contexts: &[&str],
        infos: &[u16],
    ) -> (u64, TransmissionFlags) {
        self.hello();
        if mode >= Mode::Structured {
            let o = if mode == Mode::Extended {
                OptionRequest::ExtendedHeaders
            } else {
                OptionRequest::StructuredReply
            };
            self.option(o);
            assert_eq!(self.opt_replies().last().unwrap().reply_type, rep::ACK);
            if !contexts.is_empty() {
                let q = MetaContextQuery {
                    export: name,
                    queries: MetaQueries::Items(contexts),
                };
                self.option(OptionRequest::SetMetaContext(q));
                let r = self.opt_replies();
                assert_eq!(r.len(), contexts.len() + 1, "{r:?}");
            }
        }
        self.option(OptionRequest::Go(ExportQuery {
            name,
            requests: WireList::Items(infos),
        }));
        let mut export = None;
        for r in self.opt_replies() {
            assert!(!RepError::is_error(r.reply_type), "GO failed: {r:?}");
            if r.body.starts_with("Info(Export") {
                export = Some(r.body);
            }
        }
        let body = export.expect("NBD_INFO_EXPORT before ACK");
        // "Info(Export { size: N, flags: TransmissionFlags(...) })"
        let size: u64 = body
            .split("size: ")
            .nth(1)
            .and_then(|t| t.split(',').next())
            .and_then(|t| t.trim().parse().ok())
            .expect("size in NBD_INFO_EXPORT");
        self.mode = mode;
        self.dec.start_transmission(mode);
        let flags = self.flags_from(&body);
        (size, flags)
    }

    fn flags_from(&self, body: &str) -> TransmissionFlags {
        let mut f = TransmissionFlags::empty();
        for (name, bit) in TransmissionFlags::all().iter_names() {
            if body.contains(name) {
                f |= bit;
            }
        }
        f
    }

    /// Switches to transmission after a hand-made handshake.
    pub fn start_transmission(&mut self, mode: Mode) {
        self.mode = mode;
        self.dec.start_transmission(mode);
    }

    pub fn cookie(&mut self) -> u64 {
        self.next_cookie += 1;
        self.next_cookie
    }

    /// Sends a request with its payload; returns the cookie.
    pub fn request(
        &mut self,
        command: Command,
        flags: CmdFlags,
        offset: u64,
        length: u64,
        payload: &[u8],
    ) -> u64 {
        let cookie = self.cookie();
        let mut out = encode_request(self.mode, cookie, command, flags, offset, length);
        out.extend_from_slice(payload);
        self.send(&out);
        cookie
    }

    /// Sends a request unless the server has hung up; the cookie if sent.
    pub fn try_request(&mut self, command: Command, offset: u64, payload: &[u8]) -> Option<u64> {
        let cookie = self.cookie();
        let len = payload.len() as u64;
        let mut out = encode_request(self.mode, cookie, command, CmdFlags::empty(), offset, len);
        out.extend_from_slice(payload);
        self.s.write_all(&out).ok().map(|()| cookie)
    }

    /// The next reply message (a simple READ's data is not included:
    /// see [`read_data`]).
    pub fn reply(&mut self) -> Option<Msg> {
        self.next(|m| match m {
            ServerMessage::Reply(Reply::Simple(r)) => Msg::Simple {
                cookie: r.cookie,
                error: r.error.0,
            },
            ServerMessage::Reply(Reply::Chunk(c)) => Msg::Chunk {
                cookie: c.cookie,
                done: c.flags.contains(ReplyFlags::DONE),
                offset: c.offset,
                kind: match c.body {
                    ChunkBody::None => Kind::None,
                    ChunkBody::OffsetData { offset, data } => Kind::Data {
                        offset,
                        data: data.to_vec(),
                    },
                    ChunkBody::OffsetHole { offset, length } => Kind::Hole { offset, length },
                    ChunkBody::BlockStatus {
                        context_id,
                        extents,
                    } => Kind::Status {
                        id: context_id,
                        extents: extents
                            .iter()
                            .map(|e| (e.length.into(), e.flags.into()))
                            .collect(),
                    },
                    ChunkBody::BlockStatusExt {
                        context_id,
                        extents,
                    } => Kind::Status {
                        id: context_id,
                        extents: extents.iter().map(|e| (e.length, e.flags)).collect(),
                    },
                    ChunkBody::Error { error, message }
                    | ChunkBody::ErrorOffset { error, message, .. }
                    | ChunkBody::UnknownError { error, message, .. } => Kind::Error {
                        error: error.0,
                        message: message.to_owned(),
                    },
                },
            },
            other => panic!("expected a reply, got {other:?}"),
        })
    }

    /// The data after a simple READ reply.
    pub fn read_data(&mut self, len: usize) -> Vec<u8> {
        let mut v = self
            .buf
            .drain(..len.min(self.buf.len()))
            .collect::<Vec<_>>();
        let start = v.len();
        v.resize(len, 0);
        self.s.read_exact(&mut v[start..]).expect("read data");
        v
    }

    /// Every chunk of one structured reply, up to DONE.
    pub fn chunks(&mut self) -> Vec<Msg> {
        let mut v = Vec::new();
        loop {
            let m = self.reply().expect("a chunk before EOF");
            let done = match &m {
                Msg::Simple { .. } => true,
                Msg::Chunk { done, .. } => *done,
            };
            v.push(m);
            if done {
                return v;
            }
        }
    }

    /// The errno of a one-message reply to `cookie` (0 for success).
    pub fn status(&mut self, cookie: u64) -> u32 {
        let v = self.chunks();
        assert_eq!(v.len(), 1, "one message expected: {v:?}");
        match &v[0] {
            Msg::Simple { cookie: c, error } => {
                assert_eq!(*c, cookie);
                *error
            }
            Msg::Chunk {
                cookie: c,
                kind: Kind::None,
                ..
            } => {
                assert_eq!(*c, cookie);
                0
            }
            Msg::Chunk {
                cookie: c,
                kind: Kind::Error { error, .. },
                ..
            } => {
                assert_eq!(*c, cookie);
                *error
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        let c = self.request(
            Command::Write,
            CmdFlags::empty(),
            offset,
            data.len() as u64,
            data,
        );
        self.status(c)
    }

    /// A READ, whatever the mode; the bytes (holes filled in).
    pub fn read(&mut self, offset: u64, len: u64) -> Result<Vec<u8>, u32> {
        let c = self.request(Command::Read, CmdFlags::empty(), offset, len, &[]);
        if self.mode == Mode::Simple {
            match self.reply().expect("read reply") {
                Msg::Simple { cookie, error: 0 } => {
                    assert_eq!(cookie, c);
                    Ok(self.read_data(len as usize))
                }
                Msg::Simple { error, .. } => Err(error),
                other => panic!("{other:?}"),
            }
        } else {
            let mut out = vec![0xAAu8; len as usize];
            let mut covered = 0;
            for m in self.chunks() {
                match m {
                    Msg::Chunk {
                        kind: Kind::Data { offset: o, data },
                        ..
                    } => {
                        let s = (o - offset) as usize;
                        out[s..s + data.len()].copy_from_slice(&data);
                        covered += data.len() as u64;
                    }
                    Msg::Chunk {
                        kind: Kind::Hole { offset: o, length },
                        ..
                    } => {
                        let s = (o - offset) as usize;
                        out[s..s + length as usize].fill(0);
                        covered += u64::from(length);
                    }
                    Msg::Chunk {
                        kind: Kind::Error { error, .. },
                        ..
                    } => return Err(error),
                    Msg::Chunk {
                        kind: Kind::None, ..
                    } => {}
                    other => panic!("unexpected read chunk {other:?}"),
                }
            }
            assert_eq!(covered, len, "chunks cover the read");
            Ok(out)
        }
    }
}

/// A pattern of `len` bytes (any length), different per `seed`, with no
/// zero byte (so no block of it reads as a hole). The real-client tests
/// use [`super::clients::image::pattern`]: 8-byte words that never repeat.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// One request header, encoded for `mode`.
pub fn encode_request(
    mode: Mode,
    cookie: u64,
    command: Command,
    flags: CmdFlags,
    offset: u64,
    length: u64,
) -> Vec<u8> {
    let mut out = Vec::new();
    Request {
        cookie,
        command,
        flags,
        offset,
        length,
    }
    .encode(mode, &mut out);
    out
}
