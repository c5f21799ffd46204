//! The transmission phase: requests (compact and extended headers), simple
//! replies, structured and extended reply chunks.
//!
//! Payloads are never copied by the decoder: a request header says how many
//! payload bytes follow ([`Request::payload_len`]) and the caller reads them
//! where it wants; a decoded chunk borrows its data from the input.

use super::consts::{
    reply_type, CmdFlags, ReplyFlags, EXTENDED_REPLY_LEN, EXTENDED_REPLY_MAGIC,
    EXTENDED_REQUEST_LEN, EXTENDED_REQUEST_MAGIC, REQUEST_LEN, REQUEST_MAGIC, SIMPLE_REPLY_LEN,
    SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_LEN, STRUCTURED_REPLY_MAGIC,
};
use super::error::{Errno, ProtoError, RequestCtx};
use super::wire::{be16, be32, be64, check_str, WireItem, WireList};
use super::{Decoded, Limits};

/// The header style and reply style negotiated in the handshake (QEMU's
/// `NBDMode`, without the pre-fixed-newstyle modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// Compact requests, simple replies only.
    Simple,
    /// Compact requests; structured replies (`NBD_OPT_STRUCTURED_REPLY`).
    Structured,
    /// Extended requests and extended replies (`NBD_OPT_EXTENDED_HEADERS`).
    Extended,
}

impl Mode {
    /// Size of a request header in this mode.
    pub fn request_len(self) -> usize {
        if self == Mode::Extended {
            EXTENDED_REQUEST_LEN
        } else {
            REQUEST_LEN
        }
    }
}

/// A command (`NBD_CMD_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Command {
    /// `NBD_CMD_READ`.
    Read = 0,
    /// `NBD_CMD_WRITE`.
    Write = 1,
    /// `NBD_CMD_DISC`.
    Disc = 2,
    /// `NBD_CMD_FLUSH`.
    Flush = 3,
    /// `NBD_CMD_TRIM`.
    Trim = 4,
    /// `NBD_CMD_CACHE`.
    Cache = 5,
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes = 6,
    /// `NBD_CMD_BLOCK_STATUS`.
    BlockStatus = 7,
}

impl Command {
    /// The command for a wire code, if the protocol defines it.
    pub fn from_code(code: u16) -> Option<Command> {
        Some(match code {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disc,
            3 => Command::Flush,
            4 => Command::Trim,
            5 => Command::Cache,
            6 => Command::WriteZeroes,
            7 => Command::BlockStatus,
            _ => return None,
        })
    }

    /// The flags the spec allows on this command in `mode`: FUA on all;
    /// DF on READ with structured or extended replies; NO_HOLE and
    /// FAST_ZERO on WRITE_ZEROES; REQ_ONE on BLOCK_STATUS; PAYLOAD_LEN on
    /// WRITE and BLOCK_STATUS with extended headers.
    pub fn valid_flags(self, mode: Mode) -> CmdFlags {
        let mut f = CmdFlags::FUA;
        match self {
            Command::Read if mode >= Mode::Structured => f |= CmdFlags::DF,
            Command::WriteZeroes => f |= CmdFlags::NO_HOLE | CmdFlags::FAST_ZERO,
            Command::BlockStatus => f |= CmdFlags::REQ_ONE,
            _ => {}
        }
        if mode == Mode::Extended && matches!(self, Command::Write | Command::BlockStatus) {
            f |= CmdFlags::PAYLOAD_LEN;
        }
        f
    }
}

/// A request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// The client's opaque cookie (handle), echoed in every reply.
    pub cookie: u64,
    /// The command.
    pub command: Command,
    /// Command flags.
    pub flags: CmdFlags,
    /// Offset in the export.
    pub offset: u64,
    /// Length: the payload length for WRITE and for requests with
    /// `PAYLOAD_LEN`, otherwise the effect length (32 bits in compact mode).
    pub length: u64,
}

impl Request {
    /// Bytes of payload that follow this header on the wire: `length` for
    /// WRITE and for requests with `PAYLOAD_LEN`, else none.
    pub fn payload_len(&self) -> u64 {
        if self.command == Command::Write || self.flags.contains(CmdFlags::PAYLOAD_LEN) {
            self.length
        } else {
            0
        }
    }

    /// Append the header in the style of `mode` (the caller sends any
    /// payload after it). In compact mode `length` is truncated to 32 bits.
    pub fn encode(&self, mode: Mode, out: &mut Vec<u8>) {
        let extended = mode == Mode::Extended;
        let magic = if extended {
            EXTENDED_REQUEST_MAGIC
        } else {
            REQUEST_MAGIC
        };
        out.extend_from_slice(&magic.to_be_bytes());
        out.extend_from_slice(&self.flags.bits().to_be_bytes());
        out.extend_from_slice(&(self.command as u16).to_be_bytes());
        out.extend_from_slice(&self.cookie.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        if extended {
            out.extend_from_slice(&self.length.to_be_bytes());
        } else {
            out.extend_from_slice(&(self.length as u32).to_be_bytes());
        }
    }

    /// Decode a request header (server side). Never reads past the header:
    /// with fewer than [`Mode::request_len`] bytes it asks for the rest.
    ///
    /// `NBD_CMD_DISC` is returned whatever its flags, offset and length
    /// (as qemu-nbd does: the connection ends anyway). An extended WRITE
    /// without `PAYLOAD_LEN` is tolerated as qemu-nbd does, its length
    /// taken as the payload length.
    ///
    /// # Errors
    ///
    /// A bad magic; a payload over `limits.max_payload`; an unknown
    /// command; a flag not valid for the command in `mode`; a READ or CACHE
    /// longer than `limits.max_payload`; `offset + length` overflowing. See
    /// [`ProtoError::action`] for what to do with each.
    pub fn decode(buf: &[u8], mode: Mode, limits: &Limits) -> Result<Decoded<Request>, ProtoError> {
        let header_len = mode.request_len();
        if buf.len() < header_len {
            return Ok(Decoded::NeedMore(header_len - buf.len()));
        }
        let extended = mode == Mode::Extended;
        let expected = if extended {
            EXTENDED_REQUEST_MAGIC
        } else {
            REQUEST_MAGIC
        };
        let magic = be32(buf, 0);
        if magic != expected {
            return Err(ProtoError::BadRequestMagic {
                expected,
                found: magic,
            });
        }
        let raw_flags = be16(buf, 4);
        let code = be16(buf, 6);
        let cookie = be64(buf, 8);
        let offset = be64(buf, 16);
        let length = if extended {
            be64(buf, 24)
        } else {
            u64::from(be32(buf, 24))
        };
        let flags = CmdFlags::from_bits_retain(raw_flags);
        let command = Command::from_code(code);
        let payload_len = if command == Some(Command::Write)
            || (extended && flags.contains(CmdFlags::PAYLOAD_LEN))
        {
            length
        } else {
            0
        };
        let ctx = RequestCtx {
            cookie,
            command: code,
            flags: raw_flags,
            offset,
            length,
            payload_len,
            header_len: header_len as u8,
        };
        let done = |command| {
            Ok(Decoded::Complete {
                msg: Request {
                    cookie,
                    command,
                    flags,
                    offset,
                    length,
                },
                consumed: header_len,
            })
        };
        if command == Some(Command::Disc) {
            return done(Command::Disc);
        }
        if payload_len > u64::from(limits.max_payload) {
            return Err(ProtoError::PayloadTooLarge {
                ctx,
                max: limits.max_payload,
            });
        }
        let Some(command) = command else {
            return Err(ProtoError::UnknownCommand { ctx });
        };
        let invalid = flags - command.valid_flags(mode);
        if !invalid.is_empty() {
            return Err(ProtoError::InvalidCommandFlags {
                ctx,
                invalid: invalid.bits(),
            });
        }
        if matches!(command, Command::Read | Command::Cache)
            && length > u64::from(limits.max_payload)
        {
            return Err(ProtoError::LengthTooLarge {
                ctx,
                max: limits.max_payload,
            });
        }
        // With a block-status payload the effect length is in the payload.
        let effect = if command == Command::BlockStatus && payload_len != 0 {
            0
        } else {
            length
        };
        if offset.checked_add(effect).is_none() {
            return Err(ProtoError::LengthOverflow { ctx });
        }
        done(command)
    }
}

/// The payload of an extended `NBD_CMD_BLOCK_STATUS` with `PAYLOAD_LEN`:
/// the effect length and the context ids the client wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockStatusPayload<'a> {
    /// The effect length (the header's length is the payload length).
    pub effect_length: u64,
    /// The metadata context ids to report.
    pub ids: WireList<'a, u32>,
}

impl<'a> BlockStatusPayload<'a> {
    /// Decode the payload; `None` if it is not 8 + 4n bytes (the server
    /// then answers `NBD_EINVAL`, the payload already consumed).
    pub fn decode(payload: &'a [u8]) -> Option<Self> {
        if payload.len() < 8 {
            return None;
        }
        Some(BlockStatusPayload {
            effect_length: be64(payload, 0),
            ids: WireList::from_wire(&payload[8..])?,
        })
    }

    /// Append the payload.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.effect_length.to_be_bytes());
        self.ids.encode(out);
    }

    /// Encoded size.
    pub fn wire_len(&self) -> usize {
        8 + self.ids.wire_len()
    }
}

/// A simple reply header; for a successful READ the data follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    /// The request's cookie.
    pub cookie: u64,
    /// Zero for success.
    pub error: Errno,
}

impl SimpleReply {
    /// Append the 16-byte header.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        out.extend_from_slice(&self.error.0.to_be_bytes());
        out.extend_from_slice(&self.cookie.to_be_bytes());
    }
}

/// A block status descriptor of `NBD_REPLY_TYPE_BLOCK_STATUS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent {
    /// Length of the extent (nonzero).
    pub length: u32,
    /// Status flags (for `base:allocation`, [`state`](super::consts::state)).
    pub flags: u32,
}

impl WireItem for Extent {
    const SIZE: usize = 8;
    fn decode(b: &[u8]) -> Self {
        Extent {
            length: be32(b, 0),
            flags: be32(b, 4),
        }
    }
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.length.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
    }
}

/// A block status descriptor of `NBD_REPLY_TYPE_BLOCK_STATUS_EXT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExtentExt {
    /// Length of the extent (nonzero).
    pub length: u64,
    /// Status flags.
    pub flags: u64,
}

impl WireItem for ExtentExt {
    const SIZE: usize = 16;
    fn decode(b: &[u8]) -> Self {
        ExtentExt {
            length: be64(b, 0),
            flags: be64(b, 8),
        }
    }
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.length.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
    }
}

/// The payload of a structured or extended reply chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkBody<'a> {
    /// `NBD_REPLY_TYPE_NONE` (always with `DONE`).
    None,
    /// `NBD_REPLY_TYPE_OFFSET_DATA`: data read at `offset`.
    OffsetData {
        /// Absolute offset of the data.
        offset: u64,
        /// The data (at least one byte).
        data: &'a [u8],
    },
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`: `length` bytes at `offset` read as zeroes.
    OffsetHole {
        /// Absolute offset of the hole.
        offset: u64,
        /// Hole size (nonzero).
        length: u32,
    },
    /// `NBD_REPLY_TYPE_BLOCK_STATUS` (not with extended headers).
    BlockStatus {
        /// The metadata context id.
        context_id: u32,
        /// One or more descriptors.
        extents: WireList<'a, Extent>,
    },
    /// `NBD_REPLY_TYPE_BLOCK_STATUS_EXT` (extended headers only).
    BlockStatusExt {
        /// The metadata context id.
        context_id: u32,
        /// One or more descriptors.
        extents: WireList<'a, ExtentExt>,
    },
    /// `NBD_REPLY_TYPE_ERROR`.
    Error {
        /// The error (nonzero).
        error: Errno,
        /// A message for humans (may be empty).
        message: &'a str,
    },
    /// `NBD_REPLY_TYPE_ERROR_OFFSET`.
    ErrorOffset {
        /// The error (nonzero).
        error: Errno,
        /// A message for humans (may be empty).
        message: &'a str,
        /// Where the error happened.
        offset: u64,
    },
    /// An error chunk type this decoder does not know (bit 15 set): the
    /// client must treat the reply as failed and may go on.
    UnknownError {
        /// The chunk type.
        chunk_type: u16,
        /// The error.
        error: Errno,
        /// The message.
        message: &'a str,
    },
}

impl ChunkBody<'_> {
    /// The chunk type code.
    pub fn chunk_type(&self) -> u16 {
        match self {
            ChunkBody::None => reply_type::NONE,
            ChunkBody::OffsetData { .. } => reply_type::OFFSET_DATA,
            ChunkBody::OffsetHole { .. } => reply_type::OFFSET_HOLE,
            ChunkBody::BlockStatus { .. } => reply_type::BLOCK_STATUS,
            ChunkBody::BlockStatusExt { .. } => reply_type::BLOCK_STATUS_EXT,
            ChunkBody::Error { .. } => reply_type::ERROR,
            ChunkBody::ErrorOffset { .. } => reply_type::ERROR_OFFSET,
            ChunkBody::UnknownError { chunk_type, .. } => *chunk_type,
        }
    }

    /// Length of the payload on the wire.
    pub fn payload_len(&self) -> usize {
        match self {
            ChunkBody::None => 0,
            ChunkBody::OffsetData { data, .. } => 8 + data.len(),
            ChunkBody::OffsetHole { .. } => 12,
            ChunkBody::BlockStatus { extents, .. } => 4 + extents.wire_len(),
            ChunkBody::BlockStatusExt { extents, .. } => 8 + extents.wire_len(),
            ChunkBody::Error { message, .. } | ChunkBody::UnknownError { message, .. } => {
                6 + message.len()
            }
            ChunkBody::ErrorOffset { message, .. } => 14 + message.len(),
        }
    }
}

/// A structured or extended reply chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// The request's cookie.
    pub cookie: u64,
    /// Reply flags (`DONE` on the last chunk).
    pub flags: ReplyFlags,
    /// The request's offset: sent only in extended headers (decoded as 0
    /// from a structured header).
    pub offset: u64,
    /// The payload.
    pub body: ChunkBody<'a>,
}

impl<'a> Chunk<'a> {
    /// Append the chunk header and payload, except the data of an
    /// `OFFSET_DATA` chunk, which the caller sends next (so that a server
    /// can write the header and its buffer with one `writev`). `mode` must
    /// be [`Mode::Structured`] or [`Mode::Extended`].
    pub fn encode_header(&self, mode: Mode, out: &mut Vec<u8>) {
        let len = self.body.payload_len();
        if mode == Mode::Extended {
            out.extend_from_slice(&EXTENDED_REPLY_MAGIC.to_be_bytes());
        } else {
            out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        }
        out.extend_from_slice(&self.flags.bits().to_be_bytes());
        out.extend_from_slice(&self.body.chunk_type().to_be_bytes());
        out.extend_from_slice(&self.cookie.to_be_bytes());
        if mode == Mode::Extended {
            out.extend_from_slice(&self.offset.to_be_bytes());
            out.extend_from_slice(&(len as u64).to_be_bytes());
        } else {
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
        let put_err = |out: &mut Vec<u8>, error: Errno, message: &str| {
            out.extend_from_slice(&error.0.to_be_bytes());
            out.extend_from_slice(&(message.len() as u16).to_be_bytes());
            out.extend_from_slice(message.as_bytes());
        };
        match self.body {
            ChunkBody::None => {}
            ChunkBody::OffsetData { offset, .. } => out.extend_from_slice(&offset.to_be_bytes()),
            ChunkBody::OffsetHole { offset, length } => {
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(&length.to_be_bytes());
            }
            ChunkBody::BlockStatus {
                context_id,
                extents,
            } => {
                out.extend_from_slice(&context_id.to_be_bytes());
                extents.encode(out);
            }
            ChunkBody::BlockStatusExt {
                context_id,
                extents,
            } => {
                out.extend_from_slice(&context_id.to_be_bytes());
                out.extend_from_slice(&(extents.len() as u32).to_be_bytes());
                extents.encode(out);
            }
            ChunkBody::Error { error, message }
            | ChunkBody::UnknownError { error, message, .. } => put_err(out, error, message),
            ChunkBody::ErrorOffset {
                error,
                message,
                offset,
            } => {
                put_err(out, error, message);
                out.extend_from_slice(&offset.to_be_bytes());
            }
        }
    }

    /// Append the whole chunk, data included.
    pub fn encode(&self, mode: Mode, out: &mut Vec<u8>) {
        self.encode_header(mode, out);
        if let ChunkBody::OffsetData { data, .. } = self.body {
            out.extend_from_slice(data);
        }
    }

    /// Size of the chunk header in `mode`.
    pub fn header_len(mode: Mode) -> usize {
        if mode == Mode::Extended {
            EXTENDED_REPLY_LEN
        } else {
            STRUCTURED_REPLY_LEN
        }
    }
}

/// A reply as a client receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// A simple reply header; if it answers a successful READ, the
    /// client reads the data (whose length it knows) after it.
    Simple(SimpleReply),
    /// A structured or extended chunk, payload included.
    Chunk(Chunk<'a>),
}

impl<'a> Reply<'a> {
    /// Decode a reply (client side). In [`Mode::Simple`] only simple
    /// replies are allowed, in [`Mode::Extended`] only extended chunks, in
    /// [`Mode::Structured`] simple replies and structured chunks.
    ///
    /// # Errors
    ///
    /// A bad magic, a chunk length that is impossible for its type or over
    /// the limits, an unknown non-error chunk type, or a bad message
    /// string; all mean [`ErrorAction::Disconnect`](super::ErrorAction::Disconnect).
    pub fn decode(buf: &'a [u8], mode: Mode, limits: &Limits) -> Result<Decoded<Self>, ProtoError> {
        if buf.len() < 4 {
            return Ok(Decoded::NeedMore(4 - buf.len()));
        }
        let magic = be32(buf, 0);
        let expected = match mode {
            Mode::Simple => SIMPLE_REPLY_MAGIC,
            Mode::Structured if magic == SIMPLE_REPLY_MAGIC => SIMPLE_REPLY_MAGIC,
            Mode::Structured => STRUCTURED_REPLY_MAGIC,
            Mode::Extended => EXTENDED_REPLY_MAGIC,
        };
        if magic != expected {
            return Err(ProtoError::BadMagic {
                what: "reply",
                expected: expected.into(),
                found: magic.into(),
            });
        }
        if magic == SIMPLE_REPLY_MAGIC {
            if buf.len() < SIMPLE_REPLY_LEN {
                return Ok(Decoded::NeedMore(SIMPLE_REPLY_LEN - buf.len()));
            }
            let msg = SimpleReply {
                error: Errno(be32(buf, 4)),
                cookie: be64(buf, 8),
            };
            return Ok(Decoded::Complete {
                msg: Reply::Simple(msg),
                consumed: SIMPLE_REPLY_LEN,
            });
        }
        let hlen = Chunk::header_len(mode);
        if buf.len() < hlen {
            return Ok(Decoded::NeedMore(hlen - buf.len()));
        }
        let flags = ReplyFlags::from_bits_retain(be16(buf, 4));
        let chunk_type = be16(buf, 6);
        let cookie = be64(buf, 8);
        let (offset, length) = if mode == Mode::Extended {
            (be64(buf, 16), be64(buf, 24))
        } else {
            (0, u64::from(be32(buf, 16)))
        };
        let bad = |what| ProtoError::BadLength { what, length };
        // Bound the payload before asking for it, by the largest the type
        // can legitimately have.
        let max = u64::from(limits.max_payload);
        let limit = match chunk_type {
            reply_type::NONE => 0,
            reply_type::OFFSET_DATA => max + 8,
            reply_type::OFFSET_HOLE => 12,
            reply_type::BLOCK_STATUS => 4 + 8 * u64::from(limits.max_extents),
            reply_type::BLOCK_STATUS_EXT => 8 + 16 * u64::from(limits.max_extents),
            t if reply_type::is_error(t) => {
                14 + u64::from(limits.max_string_len).max(u64::from(u16::MAX))
            }
            t => {
                return Err(ProtoError::UnknownType {
                    what: "reply chunk",
                    value: t.into(),
                })
            }
        };
        if length > limit {
            return Err(bad("reply chunk"));
        }
        let total = hlen + length as usize;
        if buf.len() < total {
            return Ok(Decoded::NeedMore(total - buf.len()));
        }
        let p = &buf[hlen..total];
        let body = decode_chunk_body(chunk_type, p, limits).map_err(|e| match e {
            ChunkErr::Len(what) => bad(what),
            ChunkErr::Proto(e) => e,
        })?;
        let msg = Reply::Chunk(Chunk {
            cookie,
            flags,
            offset,
            body,
        });
        Ok(Decoded::Complete {
            msg,
            consumed: total,
        })
    }
}

enum ChunkErr {
    Len(&'static str),
    Proto(ProtoError),
}

fn decode_chunk_body<'a>(t: u16, p: &'a [u8], limits: &Limits) -> Result<ChunkBody<'a>, ChunkErr> {
    let n = p.len();
    Ok(match t {
        reply_type::NONE => ChunkBody::None,
        reply_type::OFFSET_DATA if n >= 9 => ChunkBody::OffsetData {
            offset: be64(p, 0),
            data: &p[8..],
        },
        reply_type::OFFSET_DATA => return Err(ChunkErr::Len("NBD_REPLY_TYPE_OFFSET_DATA")),
        reply_type::OFFSET_HOLE if n == 12 && be32(p, 8) != 0 => ChunkBody::OffsetHole {
            offset: be64(p, 0),
            length: be32(p, 8),
        },
        reply_type::OFFSET_HOLE => {
            return Err(ChunkErr::Len("NBD_REPLY_TYPE_OFFSET_HOLE hole size"))
        }
        reply_type::BLOCK_STATUS if n >= 12 && (n - 4) % 8 == 0 => {
            let extents = WireList::Wire(&p[4..]);
            if extents.iter().any(|e: Extent| e.length == 0) {
                return Err(ChunkErr::Len("block status extent"));
            }
            ChunkBody::BlockStatus {
                context_id: be32(p, 0),
                extents,
            }
        }
        reply_type::BLOCK_STATUS => return Err(ChunkErr::Len("NBD_REPLY_TYPE_BLOCK_STATUS")),
        reply_type::BLOCK_STATUS_EXT
            if n >= 24 && (n - 8) % 16 == 0 && be32(p, 4) as usize == (n - 8) / 16 =>
        {
            let extents = WireList::Wire(&p[8..]);
            if extents.iter().any(|e: ExtentExt| e.length == 0) {
                return Err(ChunkErr::Len("block status extent"));
            }
            ChunkBody::BlockStatusExt {
                context_id: be32(p, 0),
                extents,
            }
        }
        reply_type::BLOCK_STATUS_EXT => {
            return Err(ChunkErr::Len("NBD_REPLY_TYPE_BLOCK_STATUS_EXT"))
        }
        _ => {
            // Error chunks (the caller checked bit 15).
            if n < 6 {
                return Err(ChunkErr::Len("error chunk"));
            }
            let error = Errno(be32(p, 0));
            let mlen = usize::from(be16(p, 4));
            let tail = match t {
                reply_type::ERROR_OFFSET => 8,
                _ => 0,
            };
            let fits = match t {
                reply_type::ERROR | reply_type::ERROR_OFFSET => 6 + mlen + tail == n,
                _ => 6 + mlen <= n,
            };
            if !fits {
                return Err(ChunkErr::Len("error chunk message length"));
            }
            let message = check_str(&p[6..6 + mlen], limits.max_string_len).map_err(|error| {
                ChunkErr::Proto(ProtoError::BadString {
                    field: "error chunk message",
                    error,
                })
            })?;
            match t {
                reply_type::ERROR => ChunkBody::Error { error, message },
                reply_type::ERROR_OFFSET => ChunkBody::ErrorOffset {
                    error,
                    message,
                    offset: be64(p, 6 + mlen),
                },
                chunk_type => ChunkBody::UnknownError {
                    chunk_type,
                    error,
                    message,
                },
            }
        }
    })
}
