//! The fixed newstyle handshake: greeting, client flags, options and option
//! replies, in both directions.
//!
//! Decoded messages borrow their strings and lists from the input buffer;
//! nothing here allocates.

use std::fmt;

use super::consts::{
    info, opt, rep, HandshakeFlags, TransmissionFlags, EXPORT_NAME_REPLY_LEN,
    EXPORT_NAME_REPLY_SHORT_LEN, GREETING_LEN, NBD_MAGIC, OPTION_HEADER_LEN,
    OPTION_REPLY_HEADER_LEN, OPTS_MAGIC, REP_MAGIC,
};
use super::error::{OptionCtx, ProtoError, RepError};
use super::wire::{be16, be64, check_str, put_lstr, Reader, WireList};
use super::{Decoded, Limits};

/// The server's greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greeting {
    /// Handshake flags offered by the server.
    pub flags: HandshakeFlags,
}

impl Greeting {
    /// Append the 18-byte greeting.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&NBD_MAGIC.to_be_bytes());
        out.extend_from_slice(&OPTS_MAGIC.to_be_bytes());
        out.extend_from_slice(&self.flags.bits().to_be_bytes());
    }

    /// Decode a greeting (client side).
    ///
    /// # Errors
    ///
    /// A bad magic (oldstyle servers included) or a server without
    /// `NBD_FLAG_FIXED_NEWSTYLE`: both mean [`ErrorAction::Disconnect`](super::ErrorAction::Disconnect).
    pub fn decode(buf: &[u8]) -> Result<Decoded<Greeting>, ProtoError> {
        if buf.len() < GREETING_LEN {
            return Ok(Decoded::NeedMore(GREETING_LEN - buf.len()));
        }
        let magic = be64(buf, 0);
        if magic != NBD_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "greeting",
                expected: NBD_MAGIC,
                found: magic,
            });
        }
        let magic = be64(buf, 8);
        if magic != OPTS_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "greeting IHAVEOPT",
                expected: OPTS_MAGIC,
                found: magic,
            });
        }
        let raw = be16(buf, 16);
        let flags = HandshakeFlags::from_bits_retain(raw);
        if !flags.contains(HandshakeFlags::FIXED_NEWSTYLE) {
            return Err(ProtoError::NotFixedNewstyle { flags: raw });
        }
        Ok(Decoded::Complete {
            msg: Greeting { flags },
            consumed: GREETING_LEN,
        })
    }
}

/// The strings a client sends in `NBD_OPT_LIST_META_CONTEXT` and
/// `NBD_OPT_SET_META_CONTEXT`: borrowed from the wire (already checked) or
/// from the caller.
#[derive(Clone, Copy)]
pub enum MetaQueries<'a> {
    /// Queries still in wire format (`count` times a u32 length and a
    /// string), validated by the decoder.
    Wire {
        /// The encoded queries.
        bytes: &'a [u8],
        /// How many there are.
        count: u32,
    },
    /// Queries given by the caller.
    Items(&'a [&'a str]),
}

impl<'a> MetaQueries<'a> {
    /// Number of queries.
    pub fn len(&self) -> usize {
        match self {
            MetaQueries::Wire { count, .. } => *count as usize,
            MetaQueries::Items(s) => s.len(),
        }
    }

    /// Whether there are no queries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Iterate over the queries.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        let (mut r, items): (Reader<'a>, &'a [&'a str]) = match *self {
            MetaQueries::Wire { bytes, .. } => (Reader::new(bytes), &[]),
            MetaQueries::Items(s) => (Reader::new(&[]), s),
        };
        std::iter::from_fn(move || {
            let len = r.u32()? as usize;
            // Validated by the decoder; a failure here only ends the list.
            std::str::from_utf8(r.bytes(len)?).ok()
        })
        .chain(items.iter().copied())
    }

    fn wire_len(&self) -> usize {
        match self {
            MetaQueries::Wire { bytes, .. } => bytes.len(),
            MetaQueries::Items(s) => s.iter().map(|q| 4 + q.len()).sum(),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.len() as u32).to_be_bytes());
        match self {
            MetaQueries::Wire { bytes, .. } => out.extend_from_slice(bytes),
            MetaQueries::Items(s) => s.iter().for_each(|q| put_lstr(out, q)),
        }
    }
}

impl PartialEq for MetaQueries<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for MetaQueries<'_> {}

impl fmt::Debug for MetaQueries<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportQuery<'a> {
    /// The export name (empty: the default export).
    pub name: &'a str,
    /// The `NBD_INFO_*` types the client asks for.
    pub requests: WireList<'a, u16>,
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaContextQuery<'a> {
    /// The export the contexts are for.
    pub export: &'a str,
    /// The queries (`namespace:leaf`).
    pub queries: MetaQueries<'a>,
}

/// An option the client sends during option haggling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionRequest<'a> {
    /// `NBD_OPT_EXPORT_NAME`: choose an export and start transmission.
    ExportName(&'a str),
    /// `NBD_OPT_ABORT` (any data is ignored, as the spec asks).
    Abort,
    /// `NBD_OPT_LIST`.
    List,
    /// `NBD_OPT_STARTTLS`.
    StartTls,
    /// `NBD_OPT_INFO`.
    Info(ExportQuery<'a>),
    /// `NBD_OPT_GO`.
    Go(ExportQuery<'a>),
    /// `NBD_OPT_STRUCTURED_REPLY`.
    StructuredReply,
    /// `NBD_OPT_LIST_META_CONTEXT`.
    ListMetaContext(MetaContextQuery<'a>),
    /// `NBD_OPT_SET_META_CONTEXT`.
    SetMetaContext(MetaContextQuery<'a>),
    /// `NBD_OPT_EXTENDED_HEADERS`.
    ExtendedHeaders,
}

impl<'a> OptionRequest<'a> {
    /// The option code.
    pub fn code(&self) -> u32 {
        match self {
            OptionRequest::ExportName(_) => opt::EXPORT_NAME,
            OptionRequest::Abort => opt::ABORT,
            OptionRequest::List => opt::LIST,
            OptionRequest::StartTls => opt::STARTTLS,
            OptionRequest::Info(_) => opt::INFO,
            OptionRequest::Go(_) => opt::GO,
            OptionRequest::StructuredReply => opt::STRUCTURED_REPLY,
            OptionRequest::ListMetaContext(_) => opt::LIST_META_CONTEXT,
            OptionRequest::SetMetaContext(_) => opt::SET_META_CONTEXT,
            OptionRequest::ExtendedHeaders => opt::EXTENDED_HEADERS,
        }
    }

    fn data_len(&self) -> usize {
        match self {
            OptionRequest::ExportName(n) => n.len(),
            OptionRequest::Info(q) | OptionRequest::Go(q) => {
                4 + q.name.len() + 2 + q.requests.wire_len()
            }
            OptionRequest::ListMetaContext(m) | OptionRequest::SetMetaContext(m) => {
                4 + m.export.len() + 4 + m.queries.wire_len()
            }
            _ => 0,
        }
    }

    /// Append the option: header (`IHAVEOPT`, code, length) and data.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&OPTS_MAGIC.to_be_bytes());
        out.extend_from_slice(&self.code().to_be_bytes());
        out.extend_from_slice(&(self.data_len() as u32).to_be_bytes());
        match self {
            OptionRequest::ExportName(n) => out.extend_from_slice(n.as_bytes()),
            OptionRequest::Info(q) | OptionRequest::Go(q) => {
                put_lstr(out, q.name);
                out.extend_from_slice(&(q.requests.len() as u16).to_be_bytes());
                q.requests.encode(out);
            }
            OptionRequest::ListMetaContext(m) | OptionRequest::SetMetaContext(m) => {
                put_lstr(out, m.export);
                m.queries.encode(out);
            }
            _ => {}
        }
    }

    /// Decode an option's data, once its header has given `option` and
    /// the data is whole.
    ///
    /// # Errors
    ///
    /// An unknown option, data where none is allowed, inner lengths that
    /// do not add up, or a bad string; see [`ProtoError::action`].
    pub fn decode_data(option: u32, data: &'a [u8], limits: &Limits) -> Result<Self, ProtoError> {
        let ctx = OptionCtx {
            option,
            length: data.len() as u32,
        };
        let no_data = |req| {
            if data.is_empty() {
                Ok(req)
            } else {
                Err(ProtoError::UnexpectedOptionData { ctx })
            }
        };
        let string =
            |bytes, field| {
                check_str(bytes, limits.max_string_len)
                    .map_err(|error| ProtoError::BadOptionString { ctx, field, error })
            };
        let mismatch = |reason| ProtoError::OptionLengthMismatch { ctx, reason };
        match option {
            opt::EXPORT_NAME => Ok(OptionRequest::ExportName(string(data, "export name")?)),
            opt::ABORT => Ok(OptionRequest::Abort),
            opt::LIST => no_data(OptionRequest::List),
            opt::STARTTLS => no_data(OptionRequest::StartTls),
            opt::STRUCTURED_REPLY => no_data(OptionRequest::StructuredReply),
            opt::EXTENDED_HEADERS => no_data(OptionRequest::ExtendedHeaders),
            opt::INFO | opt::GO => {
                let mut r = Reader::new(data);
                let name = read_lstr(&mut r, limits, &ctx, "export name")?;
                let count = r
                    .u16()
                    .ok_or_else(|| mismatch("no room for the request count"))?;
                let list = r
                    .bytes(usize::from(count) * 2)
                    .ok_or_else(|| mismatch("information requests run past the end"))?;
                if r.remaining() != 0 {
                    return Err(mismatch("bytes left after the information requests"));
                }
                let q = ExportQuery {
                    name,
                    requests: WireList::Wire(list),
                };
                Ok(if option == opt::INFO {
                    OptionRequest::Info(q)
                } else {
                    OptionRequest::Go(q)
                })
            }
            opt::LIST_META_CONTEXT | opt::SET_META_CONTEXT => {
                let mut r = Reader::new(data);
                let export = read_lstr(&mut r, limits, &ctx, "export name")?;
                let count = r
                    .u32()
                    .ok_or_else(|| mismatch("no room for the query count"))?;
                let bytes = r.rest();
                // Each query takes at least 4 bytes, so this loop is bounded
                // by the data length whatever `count` claims.
                for _ in 0..count {
                    read_lstr(&mut r, limits, &ctx, "metadata context query")?;
                }
                if r.remaining() != 0 {
                    return Err(mismatch("bytes left after the queries"));
                }
                let used = bytes.len() - r.remaining();
                let m = MetaContextQuery {
                    export,
                    queries: MetaQueries::Wire {
                        bytes: &bytes[..used],
                        count,
                    },
                };
                Ok(if option == opt::LIST_META_CONTEXT {
                    OptionRequest::ListMetaContext(m)
                } else {
                    OptionRequest::SetMetaContext(m)
                })
            }
            _ => Err(ProtoError::UnknownOption { ctx }),
        }
    }
}

/// Read a u32-length-prefixed string from an option.
fn read_lstr<'a>(
    r: &mut Reader<'a>,
    limits: &Limits,
    ctx: &OptionCtx,
    field: &'static str,
) -> Result<&'a str, ProtoError> {
    let mismatch = |reason| ProtoError::OptionLengthMismatch { ctx: *ctx, reason };
    let len = r
        .u32()
        .ok_or_else(|| mismatch("a string length runs past the end"))?;
    if len > limits.max_string_len {
        return Err(ProtoError::BadOptionString {
            ctx: *ctx,
            field,
            error: super::error::StringError::TooLong {
                length: u64::from(len),
                max: limits.max_string_len,
            },
        });
    }
    let bytes = r
        .bytes(len as usize)
        .ok_or_else(|| mismatch("a string runs past the end"))?;
    check_str(bytes, limits.max_string_len).map_err(|error| ProtoError::BadOptionString {
        ctx: *ctx,
        field,
        error,
    })
}

/// One piece of information in an `NBD_REP_INFO` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Info<'a> {
    /// `NBD_INFO_EXPORT`: size and transmission flags (mandatory before
    /// a successful `NBD_REP_ACK`).
    Export {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags.
        flags: TransmissionFlags,
    },
    /// `NBD_INFO_NAME`: the canonical export name.
    Name(&'a str),
    /// `NBD_INFO_DESCRIPTION`: a human-readable description.
    Description(&'a str),
    /// `NBD_INFO_BLOCK_SIZE`: size constraints.
    BlockSize {
        /// Minimum block size (power of two, at most 64 KiB).
        min: u32,
        /// Preferred block size.
        preferred: u32,
        /// Maximum payload size.
        max: u32,
    },
    /// An information type this decoder does not know (clients must
    /// ignore it).
    Unknown {
        /// The `NBD_INFO_*` code.
        info_type: u16,
        /// Its payload.
        data: &'a [u8],
    },
}

impl Info<'_> {
    fn wire_len(&self) -> usize {
        2 + match self {
            Info::Export { .. } => 10,
            Info::Name(s) | Info::Description(s) => s.len(),
            Info::BlockSize { .. } => 12,
            Info::Unknown { data, .. } => data.len(),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let t = match self {
            Info::Export { .. } => info::EXPORT,
            Info::Name(_) => info::NAME,
            Info::Description(_) => info::DESCRIPTION,
            Info::BlockSize { .. } => info::BLOCK_SIZE,
            Info::Unknown { info_type, .. } => *info_type,
        };
        out.extend_from_slice(&t.to_be_bytes());
        match self {
            Info::Export { size, flags } => {
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(&flags.bits().to_be_bytes());
            }
            Info::Name(s) | Info::Description(s) => out.extend_from_slice(s.as_bytes()),
            Info::BlockSize {
                min,
                preferred,
                max,
            } => {
                for v in [min, preferred, max] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
            Info::Unknown { data, .. } => out.extend_from_slice(data),
        }
    }
}

/// The body of an option reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionReplyBody<'a> {
    /// `NBD_REP_ACK`.
    Ack,
    /// `NBD_REP_SERVER`: one export in the answer to `NBD_OPT_LIST`.
    Server {
        /// Export name.
        name: &'a str,
        /// Free-form details (may be empty).
        description: &'a str,
    },
    /// `NBD_REP_INFO`.
    Info(Info<'a>),
    /// `NBD_REP_META_CONTEXT`.
    MetaContext {
        /// Context id (zero in answers to LIST).
        id: u32,
        /// Context name.
        name: &'a str,
    },
    /// Any `NBD_REP_ERR_*`, with an optional message for humans.
    Error {
        /// The error type.
        error: RepError,
        /// The message (may be empty).
        message: &'a str,
    },
}

/// A reply to an option, as the server sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReply<'a> {
    /// The option being answered.
    pub option: u32,
    /// The reply.
    pub body: OptionReplyBody<'a>,
}

impl<'a> OptionReply<'a> {
    /// The reply type code.
    pub fn reply_type(&self) -> u32 {
        match self.body {
            OptionReplyBody::Ack => rep::ACK,
            OptionReplyBody::Server { .. } => rep::SERVER,
            OptionReplyBody::Info(_) => rep::INFO,
            OptionReplyBody::MetaContext { .. } => rep::META_CONTEXT,
            OptionReplyBody::Error { error, .. } => error.0,
        }
    }

    fn data_len(&self) -> usize {
        match self.body {
            OptionReplyBody::Ack => 0,
            OptionReplyBody::Server { name, description } => 4 + name.len() + description.len(),
            OptionReplyBody::Info(i) => i.wire_len(),
            OptionReplyBody::MetaContext { name, .. } => 4 + name.len(),
            OptionReplyBody::Error { message, .. } => message.len(),
        }
    }

    /// Append the reply: 20-byte header and data.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&REP_MAGIC.to_be_bytes());
        out.extend_from_slice(&self.option.to_be_bytes());
        out.extend_from_slice(&self.reply_type().to_be_bytes());
        out.extend_from_slice(&(self.data_len() as u32).to_be_bytes());
        match self.body {
            OptionReplyBody::Ack => {}
            OptionReplyBody::Server { name, description } => {
                put_lstr(out, name);
                out.extend_from_slice(description.as_bytes());
            }
            OptionReplyBody::Info(i) => i.encode(out),
            OptionReplyBody::MetaContext { id, name } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(name.as_bytes());
            }
            OptionReplyBody::Error { message, .. } => out.extend_from_slice(message.as_bytes()),
        }
    }

    /// Decode an option reply (client side).
    ///
    /// # Errors
    ///
    /// Every malformed reply drops the connection (the client cannot
    /// answer a server).
    pub fn decode(buf: &'a [u8], limits: &Limits) -> Result<Decoded<Self>, ProtoError> {
        if buf.len() < OPTION_REPLY_HEADER_LEN {
            return Ok(Decoded::NeedMore(OPTION_REPLY_HEADER_LEN - buf.len()));
        }
        let magic = be64(buf, 0);
        if magic != REP_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "option reply",
                expected: REP_MAGIC,
                found: magic,
            });
        }
        let option = super::wire::be32(buf, 8);
        let reply_type = super::wire::be32(buf, 12);
        let len = super::wire::be32(buf, 16);
        if len > limits.max_option_len {
            return Err(ProtoError::BadLength {
                what: "option reply",
                length: u64::from(len),
            });
        }
        let total = OPTION_REPLY_HEADER_LEN + len as usize;
        if buf.len() < total {
            return Ok(Decoded::NeedMore(total - buf.len()));
        }
        let data = &buf[OPTION_REPLY_HEADER_LEN..total];
        let string = |bytes, field| {
            check_str(bytes, limits.max_string_len)
                .map_err(|error| ProtoError::BadString { field, error })
        };
        let bad_len = |what| ProtoError::BadLength {
            what,
            length: u64::from(len),
        };
        let body = match reply_type {
            rep::ACK if data.is_empty() => OptionReplyBody::Ack,
            rep::ACK => return Err(bad_len("NBD_REP_ACK")),
            rep::SERVER => {
                let mut r = Reader::new(data);
                let n = r.u32().ok_or_else(|| bad_len("NBD_REP_SERVER"))?;
                let name = r
                    .bytes(n as usize)
                    .ok_or_else(|| bad_len("NBD_REP_SERVER name"))?;
                OptionReplyBody::Server {
                    name: string(name, "NBD_REP_SERVER name")?,
                    description: string(r.rest(), "NBD_REP_SERVER description")?,
                }
            }
            rep::INFO => OptionReplyBody::Info(decode_info(data, limits, len)?),
            rep::META_CONTEXT => {
                if data.len() < 4 {
                    return Err(bad_len("NBD_REP_META_CONTEXT"));
                }
                OptionReplyBody::MetaContext {
                    id: super::wire::be32(data, 0),
                    name: string(&data[4..], "metadata context name")?,
                }
            }
            t if RepError::is_error(t) => OptionReplyBody::Error {
                error: RepError(t),
                message: string(data, "option error message")?,
            },
            t => {
                return Err(ProtoError::UnknownType {
                    what: "option reply",
                    value: t,
                })
            }
        };
        Ok(Decoded::Complete {
            msg: OptionReply { option, body },
            consumed: total,
        })
    }
}

fn decode_info<'a>(data: &'a [u8], limits: &Limits, len: u32) -> Result<Info<'a>, ProtoError> {
    let bad_len = |what| ProtoError::BadLength {
        what,
        length: u64::from(len),
    };
    if data.len() < 2 {
        return Err(bad_len("NBD_REP_INFO"));
    }
    let t = be16(data, 0);
    let body = &data[2..];
    let string = |field| {
        check_str(body, limits.max_string_len)
            .map_err(|error| ProtoError::BadString { field, error })
    };
    Ok(match t {
        info::EXPORT if body.len() == 10 => Info::Export {
            size: be64(body, 0),
            flags: TransmissionFlags::from_bits_retain(be16(body, 8)),
        },
        info::EXPORT => return Err(bad_len("NBD_INFO_EXPORT")),
        info::NAME => Info::Name(string("NBD_INFO_NAME")?),
        info::DESCRIPTION => Info::Description(string("NBD_INFO_DESCRIPTION")?),
        info::BLOCK_SIZE if body.len() == 12 => Info::BlockSize {
            min: super::wire::be32(body, 0),
            preferred: super::wire::be32(body, 4),
            max: super::wire::be32(body, 8),
        },
        info::BLOCK_SIZE => return Err(bad_len("NBD_INFO_BLOCK_SIZE")),
        info_type => Info::Unknown {
            info_type,
            data: body,
        },
    })
}

/// The server's answer to `NBD_OPT_EXPORT_NAME`: size, flags and, unless
/// both sides agreed on `NO_ZEROES`, 124 zero bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportNameReply {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: TransmissionFlags,
    /// Whether the 124 zeroes are sent (false when the client set
    /// `NBD_FLAG_C_NO_ZEROES`).
    pub zeroes: bool,
}

impl ExportNameReply {
    /// Encoded size: 134 bytes with zeroes, 10 without.
    pub fn wire_len(zeroes: bool) -> usize {
        if zeroes {
            EXPORT_NAME_REPLY_LEN
        } else {
            EXPORT_NAME_REPLY_SHORT_LEN
        }
    }

    /// Append the reply.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.flags.bits().to_be_bytes());
        if self.zeroes {
            out.extend_from_slice(&[0u8; 124]);
        }
    }

    /// Decode the reply (client side); `zeroes` says which form to expect.
    ///
    /// # Errors
    ///
    /// None today: every byte pattern is a valid reply (non-zero padding
    /// is ignored); the `Result` keeps the shape of the other decoders.
    pub fn decode(buf: &[u8], zeroes: bool) -> Result<Decoded<Self>, ProtoError> {
        let n = Self::wire_len(zeroes);
        if buf.len() < n {
            return Ok(Decoded::NeedMore(n - buf.len()));
        }
        Ok(Decoded::Complete {
            msg: ExportNameReply {
                size: be64(buf, 0),
                flags: TransmissionFlags::from_bits_retain(be16(buf, 8)),
                zeroes,
            },
            consumed: n,
        })
    }
}

/// The 16-byte header of a client option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option code.
    pub option: u32,
    /// The length of the data that follows.
    pub length: u32,
}

impl OptionHeader {
    /// Decode the header from its 16 bytes (server side).
    ///
    /// # Errors
    ///
    /// A bad magic or data longer than `limits.max_option_len` (qemu-nbd
    /// drops the connection for both).
    pub fn decode(buf: &[u8], limits: &Limits) -> Result<Decoded<Self>, ProtoError> {
        if buf.len() < OPTION_HEADER_LEN {
            return Ok(Decoded::NeedMore(OPTION_HEADER_LEN - buf.len()));
        }
        let magic = be64(buf, 0);
        if magic != OPTS_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "option",
                expected: OPTS_MAGIC,
                found: magic,
            });
        }
        let option = super::wire::be32(buf, 8);
        let length = super::wire::be32(buf, 12);
        if length > limits.max_option_len {
            return Err(ProtoError::OptionTooLong {
                ctx: OptionCtx { option, length },
                max: limits.max_option_len,
            });
        }
        Ok(Decoded::Complete {
            msg: OptionHeader { option, length },
            consumed: OPTION_HEADER_LEN,
        })
    }
}
