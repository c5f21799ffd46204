//! Wire constants of the NBD protocol: magic numbers, flag sets, option,
//! reply, info, command and chunk codes.
//!
//! Names follow the spec (`doc/proto.md` of NetworkBlockDevice/nbd, with the
//! `extension-ext-header` branch for extended headers) and QEMU's
//! `include/block/nbd.h`, without the `NBD_` prefix.

use bitflags::bitflags;

/// `NBDMAGIC`: first 8 bytes of the server greeting (`INIT_PASSWD`).
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second 8 bytes of the greeting and magic of every option
/// the client sends (`NBD_OPTS_MAGIC` in QEMU).
pub const OPTS_MAGIC: u64 = 0x4948_4156_454f_5054;
/// Magic of every option reply (`NBD_REP_MAGIC`).
pub const REP_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a compact request (`NBD_REQUEST_MAGIC`).
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of an extended request (`NBD_EXTENDED_REQUEST_MAGIC`).
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Magic of a simple reply (`NBD_SIMPLE_REPLY_MAGIC`).
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk (`NBD_STRUCTURED_REPLY_MAGIC`).
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Magic of an extended reply chunk (`NBD_EXTENDED_REPLY_MAGIC`).
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

/// Size of the server greeting: magic, `IHAVEOPT`, handshake flags.
pub const GREETING_LEN: usize = 18;
/// Size of the client flags field.
pub const CLIENT_FLAGS_LEN: usize = 4;
/// Size of an option header: magic, option, length.
pub const OPTION_HEADER_LEN: usize = 16;
/// Size of an option reply header: magic, option, type, length.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Size of the reply to `NBD_OPT_EXPORT_NAME` without the 124 zeroes.
pub const EXPORT_NAME_REPLY_SHORT_LEN: usize = 10;
/// Size of the reply to `NBD_OPT_EXPORT_NAME` with the 124 zeroes.
pub const EXPORT_NAME_REPLY_LEN: usize = 134;
/// Size of a compact request header.
pub const REQUEST_LEN: usize = 28;
/// Size of an extended request header.
pub const EXTENDED_REQUEST_LEN: usize = 32;
/// Size of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;
/// Size of a structured reply chunk header.
pub const STRUCTURED_REPLY_LEN: usize = 20;
/// Size of an extended reply chunk header.
pub const EXTENDED_REPLY_LEN: usize = 32;

bitflags! {
    /// Handshake flags, sent by the server in its greeting.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct HandshakeFlags: u16 {
        /// `NBD_FLAG_FIXED_NEWSTYLE`: the server speaks fixed newstyle.
        const FIXED_NEWSTYLE = 1 << 0;
        /// `NBD_FLAG_NO_ZEROES`: the server may omit the 124 zeroes after
        /// `NBD_OPT_EXPORT_NAME`.
        const NO_ZEROES = 1 << 1;
    }
}

bitflags! {
    /// Client flags, the client's answer to the greeting.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct ClientFlags: u32 {
        /// `NBD_FLAG_C_FIXED_NEWSTYLE`.
        const FIXED_NEWSTYLE = 1 << 0;
        /// `NBD_FLAG_C_NO_ZEROES`.
        const NO_ZEROES = 1 << 1;
    }
}

bitflags! {
    /// Transmission (export) flags, sent with the export size.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct TransmissionFlags: u16 {
        /// `NBD_FLAG_HAS_FLAGS`: always set.
        const HAS_FLAGS = 1 << 0;
        /// `NBD_FLAG_READ_ONLY`.
        const READ_ONLY = 1 << 1;
        /// `NBD_FLAG_SEND_FLUSH`.
        const SEND_FLUSH = 1 << 2;
        /// `NBD_FLAG_SEND_FUA`.
        const SEND_FUA = 1 << 3;
        /// `NBD_FLAG_ROTATIONAL`.
        const ROTATIONAL = 1 << 4;
        /// `NBD_FLAG_SEND_TRIM`.
        const SEND_TRIM = 1 << 5;
        /// `NBD_FLAG_SEND_WRITE_ZEROES`.
        const SEND_WRITE_ZEROES = 1 << 6;
        /// `NBD_FLAG_SEND_DF`.
        const SEND_DF = 1 << 7;
        /// `NBD_FLAG_CAN_MULTI_CONN`.
        const CAN_MULTI_CONN = 1 << 8;
        /// `NBD_FLAG_SEND_RESIZE`.
        const SEND_RESIZE = 1 << 9;
        /// `NBD_FLAG_SEND_CACHE`.
        const SEND_CACHE = 1 << 10;
        /// `NBD_FLAG_SEND_FAST_ZERO`.
        const SEND_FAST_ZERO = 1 << 11;
        /// `NBD_FLAG_BLOCK_STATUS_PAYLOAD` (extended headers only).
        const BLOCK_STATUS_PAYLOAD = 1 << 12;
        // Clients must ignore flags they do not know.
        const _ = !0;
    }
}

bitflags! {
    /// Command flags of a request.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct CmdFlags: u16 {
        /// `NBD_CMD_FLAG_FUA`: valid on every command.
        const FUA = 1 << 0;
        /// `NBD_CMD_FLAG_NO_HOLE`: `WRITE_ZEROES` only.
        const NO_HOLE = 1 << 1;
        /// `NBD_CMD_FLAG_DF`: `READ` only, with structured replies.
        const DF = 1 << 2;
        /// `NBD_CMD_FLAG_REQ_ONE`: `BLOCK_STATUS` only.
        const REQ_ONE = 1 << 3;
        /// `NBD_CMD_FLAG_FAST_ZERO`: `WRITE_ZEROES` only.
        const FAST_ZERO = 1 << 4;
        /// `NBD_CMD_FLAG_PAYLOAD_LEN`: extended headers only; the length
        /// field is a payload length.
        const PAYLOAD_LEN = 1 << 5;
    }
}

bitflags! {
    /// Flags of a structured or extended reply chunk.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct ReplyFlags: u16 {
        /// `NBD_REPLY_FLAG_DONE`: the last chunk of the reply.
        const DONE = 1 << 0;
        // Clients must ignore flags they do not know.
        const _ = !0;
    }
}

/// Option codes (`NBD_OPT_*`), as sent in an option header.
pub mod opt {
    /// `NBD_OPT_EXPORT_NAME`.
    pub const EXPORT_NAME: u32 = 1;
    /// `NBD_OPT_ABORT`.
    pub const ABORT: u32 = 2;
    /// `NBD_OPT_LIST`.
    pub const LIST: u32 = 3;
    /// `NBD_OPT_STARTTLS`.
    pub const STARTTLS: u32 = 5;
    /// `NBD_OPT_INFO`.
    pub const INFO: u32 = 6;
    /// `NBD_OPT_GO`.
    pub const GO: u32 = 7;
    /// `NBD_OPT_STRUCTURED_REPLY`.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// `NBD_OPT_LIST_META_CONTEXT`.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// `NBD_OPT_SET_META_CONTEXT`.
    pub const SET_META_CONTEXT: u32 = 10;
    /// `NBD_OPT_EXTENDED_HEADERS`.
    pub const EXTENDED_HEADERS: u32 = 11;

    /// The spec's name of an option code, for messages and traces.
    pub fn name(option: u32) -> &'static str {
        match option {
            EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
            ABORT => "NBD_OPT_ABORT",
            LIST => "NBD_OPT_LIST",
            4 => "NBD_OPT_PEEK_EXPORT",
            STARTTLS => "NBD_OPT_STARTTLS",
            INFO => "NBD_OPT_INFO",
            GO => "NBD_OPT_GO",
            STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
            LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT",
            SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
            EXTENDED_HEADERS => "NBD_OPT_EXTENDED_HEADERS",
            _ => "<unknown>",
        }
    }
}

/// Option reply types (`NBD_REP_*`) that are not errors.
pub mod rep {
    /// `NBD_REP_ACK`.
    pub const ACK: u32 = 1;
    /// `NBD_REP_SERVER`.
    pub const SERVER: u32 = 2;
    /// `NBD_REP_INFO`.
    pub const INFO: u32 = 3;
    /// `NBD_REP_META_CONTEXT`.
    pub const META_CONTEXT: u32 = 4;
}

/// Information types (`NBD_INFO_*`) of `NBD_REP_INFO` and of the requests
/// in `NBD_OPT_INFO` / `NBD_OPT_GO`.
pub mod info {
    /// `NBD_INFO_EXPORT`.
    pub const EXPORT: u16 = 0;
    /// `NBD_INFO_NAME`.
    pub const NAME: u16 = 1;
    /// `NBD_INFO_DESCRIPTION`.
    pub const DESCRIPTION: u16 = 2;
    /// `NBD_INFO_BLOCK_SIZE`.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Structured reply chunk types (`NBD_REPLY_TYPE_*`).
pub mod reply_type {
    /// `NBD_REPLY_TYPE_NONE`.
    pub const NONE: u16 = 0;
    /// `NBD_REPLY_TYPE_OFFSET_DATA`.
    pub const OFFSET_DATA: u16 = 1;
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`.
    pub const OFFSET_HOLE: u16 = 2;
    /// `NBD_REPLY_TYPE_BLOCK_STATUS`.
    pub const BLOCK_STATUS: u16 = 5;
    /// `NBD_REPLY_TYPE_BLOCK_STATUS_EXT`.
    pub const BLOCK_STATUS_EXT: u16 = 6;
    /// `NBD_REPLY_TYPE_ERROR`.
    pub const ERROR: u16 = (1 << 15) | 1;
    /// `NBD_REPLY_TYPE_ERROR_OFFSET`.
    pub const ERROR_OFFSET: u16 = (1 << 15) | 2;

    /// Whether a chunk type is in the error category (bit 15 set).
    pub fn is_error(chunk_type: u16) -> bool {
        chunk_type & (1 << 15) != 0
    }
}

/// Flags of the `base:allocation` metadata context.
pub mod state {
    /// `NBD_STATE_HOLE`: the extent is not allocated.
    pub const HOLE: u32 = 1 << 0;
    /// `NBD_STATE_ZERO`: the extent reads as zeroes.
    pub const ZERO: u32 = 1 << 1;
}

/// The `base:allocation` metadata context name.
pub const BASE_ALLOCATION: &str = "base:allocation";
