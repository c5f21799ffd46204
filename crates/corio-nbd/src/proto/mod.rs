//! The NBD protocol codec: pure encode and decode of every message of the
//! NBD protocol, with no I/O.
//!
//! The server moves bytes and makes decisions; this module says what the
//! bytes mean. It follows the spec (`doc/proto.md` of
//! NetworkBlockDevice/nbd, extended headers from its `extension-ext-header`
//! branch) and takes qemu-nbd's limits as defaults ([`Limits`]).
//!
//! - [`handshake`]: greeting, client flags, options ([`OptionRequest`]),
//!   option replies ([`OptionReply`]), the export-name reply.
//! - [`transmission`]: request headers ([`Request`], compact and extended),
//!   simple replies, structured and extended chunks ([`Chunk`]).
//! - [`ServerDecoder`] / [`ClientDecoder`]: incremental decoding of each
//!   side's input; they answer [`Decoded::NeedMore`] or a whole message.
//! - [`ProtoError`]: every malformed input, and with
//!   [`ProtoError::action`] what the protocol says to do about it.
//!
//! Decoding never allocates: decoded messages borrow strings, lists and
//! chunk data from the input. Encoders append to a caller's `Vec<u8>`,
//! which allocates nothing once it has the capacity. Payloads (WRITE data,
//! READ data) are left to the caller: a request header tells how many
//! payload bytes follow, and [`Chunk::encode_header`] writes everything of
//! a data chunk but its data.
//!
//! # Examples
//!
//! A server's side of a handshake and one READ, bytes in and out:
//!
//! ```
//! use corio_nbd::proto::*;
//!
//! // The server greets; the client answers (here, encoded by hand).
//! let mut out = Vec::new();
//! let offered = HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES;
//! Greeting { flags: offered }.encode(&mut out);
//! assert_eq!(&out[..8], b"NBDMAGIC");
//!
//! let mut input = vec![0, 0, 0, 3]; // FIXED_NEWSTYLE | NO_ZEROES
//! let go = ExportQuery { name: "disk", requests: WireList::Items(&[info::BLOCK_SIZE]) };
//! OptionRequest::Go(go).encode(&mut input);
//!
//! let mut dec = ServerDecoder::new(offered, Limits::default());
//! let mut pos = 0;
//! let mut next = |dec: &mut ServerDecoder, pos: &mut usize| match dec.decode(&input[*pos..]) {
//!     Ok(Decoded::Complete { msg, consumed }) => { *pos += consumed; format!("{msg:?}") }
//!     other => panic!("{other:?}"),
//! };
//! assert!(next(&mut dec, &mut pos).starts_with("Flags"));
//! assert!(next(&mut dec, &mut pos).contains("name: \"disk\""));
//!
//! // Answer GO: INFO_EXPORT then ACK, and start transmission.
//! out.clear();
//! let size = 4096;
//! let flags = TransmissionFlags::HAS_FLAGS | TransmissionFlags::SEND_FLUSH;
//! let export = OptionReplyBody::Info(Info::Export { size, flags });
//! OptionReply { option: opt::GO, body: export }.encode(&mut out);
//! OptionReply { option: opt::GO, body: OptionReplyBody::Ack }.encode(&mut out);
//! dec.start_transmission(Mode::Simple);
//!
//! // A READ request arrives in two pieces.
//! let mut req = Vec::new();
//! let read = Request { cookie: 7, command: Command::Read, flags: CmdFlags::empty(), offset: 0, length: 512 };
//! read.encode(Mode::Simple, &mut req);
//! assert_eq!(dec.decode(&req[..10]).unwrap(), Decoded::NeedMore(18));
//! let Decoded::Complete { msg: ClientMessage::Request(r), consumed: 28 } = dec.decode(&req).unwrap() else {
//!     panic!()
//! };
//! assert_eq!(r, read);
//!
//! // A request for an unknown command: answer NBD_EINVAL and go on.
//! req[7] = 99;
//! let err = dec.decode(&req).unwrap_err();
//! assert_eq!(
//!     err.action(),
//!     ErrorAction::ReplyError { cookie: 7, errno: Errno::EINVAL, consumed: 28, discard: 0 }
//! );
//! ```

pub mod consts;
pub mod decoder;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod transmission;
mod wire;

pub use consts::{
    info, opt, rep, reply_type, state, ClientFlags, CmdFlags, HandshakeFlags, ReplyFlags,
    TransmissionFlags, BASE_ALLOCATION,
};
pub use decoder::{ClientDecoder, ClientMessage, ServerDecoder, ServerMessage};
pub use error::{Errno, ErrorAction, OptionCtx, ProtoError, RepError, RequestCtx, StringError};
pub use handshake::{
    ExportNameReply, ExportQuery, Greeting, Info, MetaContextQuery, MetaQueries, OptionHeader,
    OptionReply, OptionReplyBody, OptionRequest,
};
pub use transmission::{
    BlockStatusPayload, Chunk, ChunkBody, Command, Extent, ExtentExt, Mode, Reply, Request,
    SimpleReply,
};
pub use wire::{WireItem, WireList};

/// The outcome of feeding bytes to a decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<T> {
    /// The message is not whole: at least this many more bytes are needed,
    /// and no more than the rest of the current message.
    NeedMore(usize),
    /// A whole message, which used the first `consumed` bytes of the input.
    Complete {
        /// The message.
        msg: T,
        /// Bytes of input it occupied.
        consumed: usize,
    },
}

impl<T> Decoded<T> {
    /// Whether a whole message was decoded.
    pub fn is_complete(&self) -> bool {
        matches!(self, Decoded::Complete { .. })
    }

    /// The number of bytes still needed, if the message is not whole.
    pub fn need(&self) -> Option<usize> {
        match self {
            Decoded::NeedMore(n) => Some(*n),
            Decoded::Complete { .. } => None,
        }
    }

    /// Map the message.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Decoded<U> {
        match self {
            Decoded::NeedMore(n) => Decoded::NeedMore(n),
            Decoded::Complete { msg, consumed } => Decoded::Complete {
                msg: f(msg),
                consumed,
            },
        }
    }
}

/// Limits on what a peer may make the decoder wait for. The defaults are
/// qemu-nbd's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest option data, and longest option reply data (qemu-nbd drops
    /// a client whose option is longer than `NBD_MAX_BUFFER_SIZE`, 32 MiB).
    pub max_option_len: u32,
    /// Longest string: export names, queries, context names, messages
    /// (`NBD_MAX_STRING_SIZE`, 4096, the spec's limit).
    pub max_string_len: u32,
    /// Longest payload (WRITE data, READ length, data in a chunk)
    /// (`NBD_MAX_BUFFER_SIZE`, 32 MiB).
    pub max_payload: u32,
    /// Most extents in one block status chunk (qemu-nbd's
    /// `NBD_MAX_BLOCK_STATUS_EXTENTS`, 1 MiB / 8; the spec says servers
    /// should not send more than 2^20).
    pub max_extents: u32,
}

impl Limits {
    /// qemu-nbd's `NBD_MAX_BUFFER_SIZE`.
    pub const NBD_MAX_BUFFER_SIZE: u32 = 32 * 1024 * 1024;
    /// qemu-nbd's `NBD_MAX_STRING_SIZE`.
    pub const NBD_MAX_STRING_SIZE: u32 = 4096;
    /// qemu-nbd's `NBD_MAX_BLOCK_STATUS_EXTENTS`.
    pub const NBD_MAX_BLOCK_STATUS_EXTENTS: u32 = 1024 * 1024 / 8;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_option_len: Self::NBD_MAX_BUFFER_SIZE,
            max_string_len: Self::NBD_MAX_STRING_SIZE,
            max_payload: Self::NBD_MAX_BUFFER_SIZE,
            max_extents: Self::NBD_MAX_BLOCK_STATUS_EXTENTS,
        }
    }
}
