//! Client mode: list a server's exports and their details, as
//! `qemu-nbd -L` does, and print them in its layout so that scripts that
//! parse `qemu-nbd -L` work unchanged with `corio-nbd -L`.
//!
//! The negotiation is qemu's: fixed newstyle with `NO_ZEROES`, `STARTTLS`
//! when credentials are given, extended headers (else structured replies),
//! `NBD_OPT_LIST`, then per export `NBD_OPT_INFO` (size, flags, block
//! sizes) and `NBD_OPT_LIST_META_CONTEXT` with no query (every context),
//! and `NBD_OPT_ABORT`. It runs on any connected [`Channel`], blocking the
//! calling thread (or yielding the calling coroutine) while it waits.
//!
//! # Examples
//!
//! ```
//! use corio_nbd::client::{format_list, ExportDetails};
//! use corio_nbd::proto::TransmissionFlags as F;
//!
//! let e = ExportDetails {
//!     name: "disk".into(),
//!     description: String::new(),
//!     size: Some(1 << 20),
//!     flags: Some(F::HAS_FLAGS | F::READ_ONLY | F::SEND_FLUSH),
//!     block_size: Some((512, 4096, 32 << 20)),
//!     extended: true,
//!     contexts: vec!["base:allocation".into()],
//! };
//! assert_eq!(
//!     format_list(&[e]),
//!     "exports available: 1\n export: 'disk'\n  size:  1048576\n  flags: 0x7 ( readonly flush )\n  \
//!      min block: 512\n  opt block: 4096\n  max block: 33554432\n  transaction size: 64-bit\n  \
//!      available meta contexts: 1\n   base:allocation\n"
//! );
//! ```

use std::fmt::Write as _;
use std::io;

use corio::io::Channel;

use crate::proto::{
    info, ClientDecoder, Decoded, ExportQuery, HandshakeFlags, Info, Limits, MetaContextQuery,
    MetaQueries, OptionReplyBody, OptionRequest, RepError, ServerMessage, TransmissionFlags,
    WireList,
};

/// What the listing learnt about one export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportDetails {
    /// The name, as `NBD_OPT_LIST` gave it.
    pub name: String,
    /// The description (may be empty).
    pub description: String,
    /// Size in bytes, if `NBD_OPT_INFO` answered.
    pub size: Option<u64>,
    /// Transmission flags, if `NBD_OPT_INFO` answered.
    pub flags: Option<TransmissionFlags>,
    /// Minimum, preferred and maximum block size, if the server sent them.
    pub block_size: Option<(u32, u32, u32)>,
    /// Whether extended headers (64-bit transactions) were negotiated.
    pub extended: bool,
    /// The meta contexts the server lists for the export.
    pub contexts: Vec<String>,
}

/// How a reply to one option ended.
enum Outcome {
    Ack,
    Error(RepError, String),
}

/// One option reply, owned.
enum Rep {
    Server(String, String),
    Info(OwnedInfo),
    Meta(String),
    End(Outcome),
    Other,
}

enum OwnedInfo {
    Export(u64, TransmissionFlags),
    Block(u32, u32, u32),
    Other,
}

fn protocol(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// A client's side of option haggling over a channel.
pub struct Negotiation<'c> {
    ch: &'c dyn Channel,
    buf: Vec<u8>,
    dec: ClientDecoder,
    out: Vec<u8>,
}

impl<'c> Negotiation<'c> {
    /// Reads the server's greeting and answers with fixed newstyle and
    /// `NO_ZEROES` (when offered).
    ///
    /// # Errors
    /// If the server is not a fixed-newstyle NBD server, or I/O fails.
    pub fn start(ch: &'c dyn Channel) -> io::Result<Negotiation<'c>> {
        let mut n = Negotiation {
            ch,
            buf: Vec::new(),
            dec: ClientDecoder::new(Limits::default()),
            out: Vec::new(),
        };
        let flags = n.next(|m| match m {
            ServerMessage::Greeting(g) => Ok(g.flags),
            other => Err(protocol(format!("expected the greeting, got {other:?}"))),
        })??;
        if !flags.contains(HandshakeFlags::FIXED_NEWSTYLE) {
            return Err(protocol("the server does not speak fixed newstyle".into()));
        }
        let reply = flags.bits() as u32 & 3;
        n.ch.write_all_bytes(&reply.to_be_bytes())?;
        Ok(n)
    }

    /// Switches to another channel (after `STARTTLS`): the TLS channel that
    /// wraps the old one.
    pub fn set_channel(&mut self, ch: &'c dyn Channel) {
        self.ch = ch;
    }

    /// Sends `NBD_OPT_STARTTLS`; the caller then runs the TLS handshake
    /// and [`set_channel`](Self::set_channel)s.
    ///
    /// # Errors
    /// If the server refuses TLS, or I/O fails.
    pub fn starttls(&mut self) -> io::Result<()> {
        match self.simple(OptionRequest::StartTls)? {
            Outcome::Ack => Ok(()),
            Outcome::Error(e, m) => Err(io::Error::other(format!(
                "Server rejected request to start TLS: {e} {m}"
            ))),
        }
    }

    /// Sends `NBD_OPT_ABORT` and waits for its ACK, if the server sends one.
    pub fn abort(&mut self) {
        if self.send(OptionRequest::Abort).is_ok() {
            let _ = self.next(|_| ());
        }
    }

    fn send(&mut self, o: OptionRequest<'_>) -> io::Result<()> {
        self.out.clear();
        o.encode(&mut self.out);
        self.ch.write_all_bytes(&self.out)
    }

    /// Reads the next server message and hands it to `f`.
    fn next<T>(&mut self, f: impl FnOnce(ServerMessage<'_>) -> T) -> io::Result<T> {
        loop {
            match self
                .dec
                .decode(&self.buf)
                .map_err(|e| protocol(e.to_string()))?
            {
                Decoded::NeedMore(k) => {
                    let start = self.buf.len();
                    self.buf.resize(start + k, 0);
                    self.ch.read_all(&mut self.buf[start..])?;
                }
                Decoded::Complete { msg, consumed } => {
                    let t = f(msg);
                    self.buf.drain(..consumed);
                    return Ok(t);
                }
            }
        }
    }

    fn rep(&mut self) -> io::Result<Rep> {
        self.next(|m| match m {
            ServerMessage::OptionReply(r) => match r.body {
                OptionReplyBody::Ack => Rep::End(Outcome::Ack),
                OptionReplyBody::Error { error, message } => {
                    Rep::End(Outcome::Error(error, message.to_owned()))
                }
                OptionReplyBody::Server { name, description } => {
                    Rep::Server(name.to_owned(), description.to_owned())
                }
                OptionReplyBody::MetaContext { name, .. } => Rep::Meta(name.to_owned()),
                OptionReplyBody::Info(i) => Rep::Info(match i {
                    Info::Export { size, flags } => OwnedInfo::Export(size, flags),
                    Info::BlockSize {
                        min,
                        preferred,
                        max,
                    } => OwnedInfo::Block(min, preferred, max),
                    _ => OwnedInfo::Other,
                }),
            },
            _ => Rep::Other,
        })
    }

    /// An option answered by ACK or an error alone.
    fn simple(&mut self, o: OptionRequest<'_>) -> io::Result<Outcome> {
        self.send(o)?;
        loop {
            if let Rep::End(o) = self.rep()? {
                return Ok(o);
            }
        }
    }

    /// Extended headers, else structured replies, as qemu's client asks;
    /// returns (structured, extended).
    fn modes(&mut self) -> io::Result<(bool, bool)> {
        if let Outcome::Ack = self.simple(OptionRequest::ExtendedHeaders)? {
            return Ok((true, true));
        }
        let structured = matches!(self.simple(OptionRequest::StructuredReply)?, Outcome::Ack);
        Ok((structured, false))
    }

    fn list(&mut self) -> io::Result<Vec<(String, String)>> {
        self.send(OptionRequest::List)?;
        let mut v = Vec::new();
        loop {
            match self.rep()? {
                Rep::Server(n, d) => v.push((n, d)),
                Rep::End(Outcome::Ack) => return Ok(v),
                Rep::End(Outcome::Error(e, m)) => {
                    return Err(io::Error::other(format!(
                        "Server does not support export lists: {e} {m}"
                    )))
                }
                _ => {}
            }
        }
    }

    fn details(&mut self, e: &mut ExportDetails, structured: bool) -> io::Result<()> {
        let requests = [info::BLOCK_SIZE];
        self.send(OptionRequest::Info(ExportQuery {
            name: &e.name,
            requests: WireList::Items(&requests),
        }))?;
        loop {
            match self.rep()? {
                Rep::Info(OwnedInfo::Export(size, flags)) => {
                    e.size = Some(size);
                    e.flags = Some(flags);
                }
                Rep::Info(OwnedInfo::Block(a, b, c)) => e.block_size = Some((a, b, c)),
                Rep::End(_) => break,
                _ => {}
            }
        }
        if !structured {
            return Ok(());
        }
        self.send(OptionRequest::ListMetaContext(MetaContextQuery {
            export: &e.name,
            queries: MetaQueries::Items(&[]),
        }))?;
        loop {
            match self.rep()? {
                Rep::Meta(name) => e.contexts.push(name),
                Rep::End(_) => return Ok(()),
                _ => {}
            }
        }
    }

    /// After the greeting (and TLS): negotiates modes, lists the exports
    /// and asks each for its details, then aborts the session.
    ///
    /// # Errors
    /// If the server refuses to list, breaks the protocol, or I/O fails.
    pub fn list_exports(&mut self) -> io::Result<Vec<ExportDetails>> {
        let (structured, extended) = self.modes()?;
        let mut exports = Vec::new();
        for (name, description) in self.list()? {
            let mut e = ExportDetails {
                name,
                description,
                size: None,
                flags: None,
                block_size: None,
                extended,
                contexts: Vec::new(),
            };
            self.details(&mut e, structured)?;
            exports.push(e);
        }
        self.abort();
        Ok(exports)
    }
}

/// The names `qemu-nbd -L` gives transmission flag bits 1 to 12.
const FLAG_NAMES: [(TransmissionFlags, &str); 12] = [
    (TransmissionFlags::READ_ONLY, "readonly"),
    (TransmissionFlags::SEND_FLUSH, "flush"),
    (TransmissionFlags::SEND_FUA, "fua"),
    (TransmissionFlags::ROTATIONAL, "rotational"),
    (TransmissionFlags::SEND_TRIM, "trim"),
    (TransmissionFlags::SEND_WRITE_ZEROES, "zeroes"),
    (TransmissionFlags::SEND_DF, "df"),
    (TransmissionFlags::CAN_MULTI_CONN, "multi"),
    (TransmissionFlags::SEND_RESIZE, "resize"),
    (TransmissionFlags::SEND_CACHE, "cache"),
    (TransmissionFlags::SEND_FAST_ZERO, "fast-zero"),
    (
        TransmissionFlags::BLOCK_STATUS_PAYLOAD,
        "block-status-payload",
    ),
];

/// The listing in `qemu-nbd -L`'s layout.
pub fn format_list(exports: &[ExportDetails]) -> String {
    let mut s = format!("exports available: {}\n", exports.len());
    for e in exports {
        let _ = writeln!(s, " export: '{}'", e.name);
        if !e.description.is_empty() {
            let _ = writeln!(s, "  description: {}", e.description);
        }
        if let (Some(size), Some(flags)) = (e.size, e.flags) {
            if flags.contains(TransmissionFlags::HAS_FLAGS) {
                let _ = writeln!(s, "  size:  {size}");
                let _ = write!(s, "  flags: {:#x} (", flags.bits());
                for (f, name) in FLAG_NAMES {
                    if flags.contains(f) {
                        let _ = write!(s, " {name}");
                    }
                }
                s.push_str(" )\n");
            }
        }
        if let Some((min, opt, max)) = e.block_size.filter(|b| b.0 != 0) {
            let _ = writeln!(
                s,
                "  min block: {min}\n  opt block: {opt}\n  max block: {max}"
            );
        }
        let size = if e.extended { "64-bit" } else { "32-bit" };
        let _ = writeln!(s, "  transaction size: {size}");
        if !e.contexts.is_empty() {
            let _ = writeln!(s, "  available meta contexts: {}", e.contexts.len());
            for c in &e.contexts {
                let _ = writeln!(s, "   {c}");
            }
        }
    }
    s
}
