//! Protocol errors, what the protocol says to do about each, and the two
//! error vocabularies of the wire: option reply errors (`NBD_REP_ERR_*`)
//! and transmission errno values (`NBD_E*`).

use std::fmt;
use std::io;

use super::consts::opt;

/// An NBD error value (`NBD_E*`), as carried by simple replies and error
/// chunks.
///
/// Any `u32` can be received; the constants are the values the spec
/// defines, and a client should treat unknown values as [`Errno::EINVAL`].
///
/// # Examples
///
/// ```
/// use corio_nbd::proto::Errno;
/// use std::io;
///
/// let e = io::Error::from_raw_os_error(libc::EDQUOT);
/// assert_eq!(Errno::from(&e), Errno::ENOSPC);
/// assert_eq!(Errno::from(&io::Error::from(io::ErrorKind::PermissionDenied)), Errno::EPERM);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub u32);

impl Errno {
    /// Success (only in a simple reply).
    pub const OK: Errno = Errno(0);
    /// `NBD_EPERM`: operation not permitted.
    pub const EPERM: Errno = Errno(1);
    /// `NBD_EIO`: input/output error.
    pub const EIO: Errno = Errno(5);
    /// `NBD_ENOMEM`: cannot allocate memory.
    pub const ENOMEM: Errno = Errno(12);
    /// `NBD_EINVAL`: invalid argument.
    pub const EINVAL: Errno = Errno(22);
    /// `NBD_ENOSPC`: no space left on device.
    pub const ENOSPC: Errno = Errno(28);
    /// `NBD_EOVERFLOW`: value too large.
    pub const EOVERFLOW: Errno = Errno(75);
    /// `NBD_ENOTSUP`: operation not supported.
    pub const ENOTSUP: Errno = Errno(95);
    /// `NBD_ESHUTDOWN`: server is shutting down.
    pub const ESHUTDOWN: Errno = Errno(108);

    /// Whether this is one of the values the spec defines (or success).
    pub fn is_known(self) -> bool {
        matches!(self.0, 0 | 1 | 5 | 12 | 22 | 28 | 75 | 95 | 108)
    }

    /// An `io::Error` for this value, as a client reports it: unknown
    /// values count as `EINVAL`, as the spec asks.
    pub fn to_io_error(self) -> io::Error {
        let os = match self {
            Errno::EPERM => libc::EPERM,
            Errno::EIO => libc::EIO,
            Errno::ENOMEM => libc::ENOMEM,
            Errno::ENOSPC => libc::ENOSPC,
            Errno::EOVERFLOW => libc::EOVERFLOW,
            Errno::ENOTSUP => libc::ENOTSUP,
            Errno::ESHUTDOWN => libc::ESHUTDOWN,
            _ => libc::EINVAL,
        };
        io::Error::from_raw_os_error(os)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            Errno::OK => "success",
            Errno::EPERM => "NBD_EPERM",
            Errno::EIO => "NBD_EIO",
            Errno::ENOMEM => "NBD_ENOMEM",
            Errno::EINVAL => "NBD_EINVAL",
            Errno::ENOSPC => "NBD_ENOSPC",
            Errno::EOVERFLOW => "NBD_EOVERFLOW",
            Errno::ENOTSUP => "NBD_ENOTSUP",
            Errno::ESHUTDOWN => "NBD_ESHUTDOWN",
            _ => return write!(f, "NBD error {}", self.0),
        };
        f.write_str(name)
    }
}

/// Map an I/O error to the value to send, as qemu-nbd's
/// `system_errno_to_nbd_errno` does: `EROFS` is `EPERM`; `EDQUOT` and
/// `EFBIG` are `ENOSPC`; `EOPNOTSUPP` is `ENOTSUP`; everything the spec
/// does not name is `EINVAL`. Errors without an OS code are mapped by
/// their kind.
impl From<&io::Error> for Errno {
    fn from(e: &io::Error) -> Errno {
        if let Some(code) = e.raw_os_error() {
            return match code {
                0 => Errno::OK,
                libc::EPERM | libc::EROFS => Errno::EPERM,
                libc::EIO => Errno::EIO,
                libc::ENOMEM => Errno::ENOMEM,
                libc::EDQUOT | libc::EFBIG | libc::ENOSPC => Errno::ENOSPC,
                libc::EOVERFLOW => Errno::EOVERFLOW,
                #[allow(unreachable_patterns)] // equal on Linux, not everywhere
                libc::ENOTSUP | libc::EOPNOTSUPP => Errno::ENOTSUP,
                libc::ESHUTDOWN => Errno::ESHUTDOWN,
                _ => Errno::EINVAL,
            };
        }
        match e.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => Errno::EPERM,
            io::ErrorKind::OutOfMemory => Errno::ENOMEM,
            io::ErrorKind::StorageFull
            | io::ErrorKind::QuotaExceeded
            | io::ErrorKind::FileTooLarge => Errno::ENOSPC,
            io::ErrorKind::Unsupported => Errno::ENOTSUP,
            io::ErrorKind::UnexpectedEof => Errno::EIO,
            _ => Errno::EINVAL,
        }
    }
}

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Errno {
        Errno::from(&e)
    }
}

/// An option reply error type (`NBD_REP_ERR_*`, bit 31 set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RepError(pub u32);

impl RepError {
    /// `NBD_REP_ERR_UNSUP`: unknown option.
    pub const UNSUP: RepError = RepError(0x8000_0001);
    /// `NBD_REP_ERR_POLICY`: forbidden by server policy.
    pub const POLICY: RepError = RepError(0x8000_0002);
    /// `NBD_REP_ERR_INVALID`: syntactically or semantically invalid.
    pub const INVALID: RepError = RepError(0x8000_0003);
    /// `NBD_REP_ERR_PLATFORM`: not supported on this platform.
    pub const PLATFORM: RepError = RepError(0x8000_0004);
    /// `NBD_REP_ERR_TLS_REQD`: TLS required first.
    pub const TLS_REQD: RepError = RepError(0x8000_0005);
    /// `NBD_REP_ERR_UNKNOWN`: export not available.
    pub const UNKNOWN: RepError = RepError(0x8000_0006);
    /// `NBD_REP_ERR_SHUTDOWN`: server shutting down.
    pub const SHUTDOWN: RepError = RepError(0x8000_0007);
    /// `NBD_REP_ERR_BLOCK_SIZE_REQD`: `NBD_INFO_BLOCK_SIZE` must be requested.
    pub const BLOCK_SIZE_REQD: RepError = RepError(0x8000_0008);
    /// `NBD_REP_ERR_TOO_BIG`: request or reply too large.
    pub const TOO_BIG: RepError = RepError(0x8000_0009);
    /// `NBD_REP_ERR_EXT_HEADER_REQD`: extended headers required.
    pub const EXT_HEADER_REQD: RepError = RepError(0x8000_000a);

    /// Whether a reply type is an error (bit 31 set).
    pub fn is_error(reply_type: u32) -> bool {
        reply_type & 0x8000_0000 != 0
    }
}

impl fmt::Display for RepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            RepError::UNSUP => "NBD_REP_ERR_UNSUP",
            RepError::POLICY => "NBD_REP_ERR_POLICY",
            RepError::INVALID => "NBD_REP_ERR_INVALID",
            RepError::PLATFORM => "NBD_REP_ERR_PLATFORM",
            RepError::TLS_REQD => "NBD_REP_ERR_TLS_REQD",
            RepError::UNKNOWN => "NBD_REP_ERR_UNKNOWN",
            RepError::SHUTDOWN => "NBD_REP_ERR_SHUTDOWN",
            RepError::BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD",
            RepError::TOO_BIG => "NBD_REP_ERR_TOO_BIG",
            RepError::EXT_HEADER_REQD => "NBD_REP_ERR_EXT_HEADER_REQD",
            _ => return write!(f, "NBD_REP_ERR({:#x})", self.0),
        };
        f.write_str(name)
    }
}

/// What the protocol says to do after a [`ProtoError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// Drop the connection (a hard disconnect).
    Disconnect,
    /// Handshake: the whole option (`consumed` bytes, header and data) is
    /// used up; answer `option` with the error reply `error` and wait for
    /// the next option.
    ReplyOption {
        /// The option code to echo in the reply.
        option: u32,
        /// The error reply type to send.
        error: RepError,
        /// Bytes of input the option occupied (header plus data).
        consumed: usize,
    },
    /// Transmission: the request header (`consumed` bytes) is used up;
    /// read and discard `discard` more bytes of payload, then reply to
    /// `cookie` with `errno` and go on with the next request.
    ReplyError {
        /// The request's cookie (handle).
        cookie: u64,
        /// The error to send.
        errno: Errno,
        /// Bytes of the header.
        consumed: usize,
        /// Bytes of payload that follow the header and must be discarded.
        discard: u64,
    },
    /// Transmission: reply to `cookie` with `errno`, then drop the
    /// connection, because the payload that follows is too large to be
    /// skipped (what qemu-nbd does for an oversized `NBD_CMD_WRITE`).
    ReplyErrorThenDisconnect {
        /// The request's cookie (handle).
        cookie: u64,
        /// The error to send.
        errno: Errno,
    },
}

/// Why a string field was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringError {
    /// The bytes are not UTF-8.
    NotUtf8,
    /// The string contains a NUL byte.
    ContainsNul,
    /// Longer than the string limit.
    TooLong {
        /// The length received.
        length: u64,
        /// The limit.
        max: u32,
    },
}

impl fmt::Display for StringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StringError::NotUtf8 => f.write_str("not UTF-8"),
            StringError::ContainsNul => f.write_str("contains a NUL byte"),
            StringError::TooLong { length, max } => {
                write!(f, "{length} bytes long, limit {max}")
            }
        }
    }
}

/// The context of an option that failed to decode, in the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionCtx {
    /// The option code.
    pub option: u32,
    /// The length of the option's data.
    pub length: u32,
}

impl fmt::Display for OptionCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}), {} bytes",
            opt::name(self.option),
            self.option,
            self.length
        )
    }
}

/// The context of a request that failed to decode, in the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestCtx {
    /// The request's cookie.
    pub cookie: u64,
    /// The raw command code.
    pub command: u16,
    /// The raw command flags.
    pub flags: u16,
    /// The offset field.
    pub offset: u64,
    /// The length field.
    pub length: u64,
    /// Bytes of payload that follow the header.
    pub payload_len: u64,
    /// Size of the header (28 compact, 32 extended).
    pub header_len: u8,
}

impl fmt::Display for RequestCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "command {} flags {:#x} offset {} length {} cookie {:#x}",
            self.command, self.flags, self.offset, self.length, self.cookie
        )
    }
}

/// Every way a peer's bytes can be wrong.
///
/// Each variant says what was wrong; [`ProtoError::action`] says what the
/// protocol asks the decoding side to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// A magic number did not match.
    #[error("bad {what} magic: expected {expected:#x}, got {found:#x}")]
    BadMagic {
        /// Which magic (greeting, option, request, ...).
        what: &'static str,
        /// The value the protocol requires here.
        expected: u64,
        /// The value received.
        found: u64,
    },
    /// The client set client flags the server does not know or did not
    /// offer.
    #[error("unknown or unoffered client flags {flags:#x}")]
    BadClientFlags {
        /// The offending bits.
        flags: u32,
    },
    /// The server's greeting is not fixed newstyle.
    #[error("server does not speak fixed newstyle (handshake flags {flags:#x})")]
    NotFixedNewstyle {
        /// The handshake flags received.
        flags: u16,
    },
    /// An option's data is longer than the limit.
    #[error("option {ctx}: longer than the limit of {max} bytes")]
    OptionTooLong {
        /// The option.
        ctx: OptionCtx,
        /// The limit.
        max: u32,
    },
    /// An option code the server does not know.
    #[error("unknown option {ctx}")]
    UnknownOption {
        /// The option.
        ctx: OptionCtx,
    },
    /// An option that takes no data came with data.
    #[error("option {ctx}: takes no data")]
    UnexpectedOptionData {
        /// The option.
        ctx: OptionCtx,
    },
    /// The fields inside an option do not add up to its length: a field
    /// would run past the end, or bytes are left over.
    #[error("option {ctx}: {reason}")]
    OptionLengthMismatch {
        /// The option.
        ctx: OptionCtx,
        /// What did not fit.
        reason: &'static str,
    },
    /// A string in an option (export name, query) is not valid.
    #[error("option {ctx}: {field} {error}")]
    BadOptionString {
        /// The option.
        ctx: OptionCtx,
        /// Which string.
        field: &'static str,
        /// What is wrong with it.
        error: StringError,
    },
    /// A request's magic is wrong (the stream is out of sync).
    #[error("bad request magic {found:#x} (expected {expected:#x})")]
    BadRequestMagic {
        /// The magic required by the negotiated header style.
        expected: u32,
        /// The value received.
        found: u32,
    },
    /// A command code the protocol does not define.
    #[error("unknown command: {ctx}")]
    UnknownCommand {
        /// The request.
        ctx: RequestCtx,
    },
    /// A command flag not valid for this command (or in this mode).
    #[error("flags {invalid:#x} not valid for this command: {ctx}")]
    InvalidCommandFlags {
        /// The request.
        ctx: RequestCtx,
        /// The offending bits.
        invalid: u16,
    },
    /// `offset + length` does not fit in 64 bits.
    #[error("offset + length overflows: {ctx}")]
    LengthOverflow {
        /// The request.
        ctx: RequestCtx,
    },
    /// A data length (read or cache) larger than the payload limit.
    #[error("length larger than the limit of {max} bytes: {ctx}")]
    LengthTooLarge {
        /// The request.
        ctx: RequestCtx,
        /// The limit.
        max: u32,
    },
    /// A payload that follows the header is larger than the limit.
    #[error("payload larger than the limit of {max} bytes: {ctx}")]
    PayloadTooLarge {
        /// The request.
        ctx: RequestCtx,
        /// The limit.
        max: u32,
    },
    /// A length field has a value the message type does not allow.
    #[error("{what}: impossible length {length}")]
    BadLength {
        /// Which message or field.
        what: &'static str,
        /// The length received.
        length: u64,
    },
    /// A reply or info type the decoder does not know and may not ignore.
    #[error("unknown {what} type {value:#x}")]
    UnknownType {
        /// Which kind of type field.
        what: &'static str,
        /// The value received.
        value: u32,
    },
    /// A string in a reply is not valid.
    #[error("{field} {error}")]
    BadString {
        /// Which string.
        field: &'static str,
        /// What is wrong with it.
        error: StringError,
    },
    /// The input ended in the middle of a message.
    #[error("input ended inside {what}: {missing} more bytes were due")]
    Truncated {
        /// The message being read.
        what: &'static str,
        /// Bytes still missing.
        missing: usize,
    },
}

impl ProtoError {
    /// What the protocol says to do about this error.
    ///
    /// Handshake errors in an option that can be answered get the option
    /// error reply the spec names (`NBD_REP_ERR_UNSUP` for an unknown
    /// option, `NBD_REP_ERR_INVALID` for bad contents); errors in
    /// `NBD_OPT_EXPORT_NAME`, which has no error reply, drop the
    /// connection. Transmission errors in a request whose framing is
    /// intact get `NBD_EINVAL` (`NBD_ENOSPC` for writes past the end) and
    /// the connection goes on; a bad magic or an unskippable payload drops
    /// it. Everything in what a server sends, as seen by a client, drops
    /// the connection.
    pub fn action(&self) -> ErrorAction {
        use ProtoError as E;
        let option_reply = |ctx: &OptionCtx, error| {
            if ctx.option == opt::EXPORT_NAME {
                ErrorAction::Disconnect
            } else {
                ErrorAction::ReplyOption {
                    option: ctx.option,
                    error,
                    consumed: super::consts::OPTION_HEADER_LEN + ctx.length as usize,
                }
            }
        };
        let reply = |ctx: &RequestCtx, errno| ErrorAction::ReplyError {
            cookie: ctx.cookie,
            errno,
            consumed: usize::from(ctx.header_len),
            discard: ctx.payload_len,
        };
        match self {
            E::UnknownOption { ctx } => option_reply(ctx, RepError::UNSUP),
            E::UnexpectedOptionData { ctx }
            | E::OptionLengthMismatch { ctx, .. }
            | E::BadOptionString { ctx, .. } => option_reply(ctx, RepError::INVALID),
            E::UnknownCommand { ctx } | E::InvalidCommandFlags { ctx, .. } => {
                reply(ctx, Errno::EINVAL)
            }
            E::LengthOverflow { ctx } => {
                // Past the end of any export: qemu-nbd's choice of errno.
                if ctx.command == 1 || ctx.command == 6 {
                    reply(ctx, Errno::ENOSPC)
                } else {
                    reply(ctx, Errno::EINVAL)
                }
            }
            E::LengthTooLarge { ctx, .. } => reply(ctx, Errno::EINVAL),
            E::PayloadTooLarge { ctx, .. } => ErrorAction::ReplyErrorThenDisconnect {
                cookie: ctx.cookie,
                errno: Errno::EINVAL,
            },
            E::BadMagic { .. }
            | E::BadClientFlags { .. }
            | E::NotFixedNewstyle { .. }
            | E::OptionTooLong { .. }
            | E::BadRequestMagic { .. }
            | E::BadLength { .. }
            | E::UnknownType { .. }
            | E::BadString { .. }
            | E::Truncated { .. } => ErrorAction::Disconnect,
        }
    }
}
