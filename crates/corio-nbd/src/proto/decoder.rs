//! Incremental decoders for each side of a connection.
//!
//! A decoder is fed the bytes received so far and answers with a whole
//! message and how many bytes it used, or with how many more bytes the
//! current message needs. It never asks for a byte past the end of the
//! current message, so a server that reads exactly what is asked for with
//! a blocking `read_all` never reads into the next one; and it asks for at
//! most the limits of [`Limits`] at a time.

use super::consts::{ClientFlags, HandshakeFlags, CLIENT_FLAGS_LEN};
use super::error::ProtoError;
use super::handshake::{ExportNameReply, Greeting, OptionHeader, OptionReply, OptionRequest};
use super::transmission::{Mode, Reply, Request};
use super::{Decoded, Limits};

/// A message from a client, as the server decodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMessage<'a> {
    /// The client flags that answer the greeting.
    Flags(ClientFlags),
    /// An option during option haggling.
    Option(OptionRequest<'a>),
    /// A request header in transmission; [`Request::payload_len`] bytes of
    /// payload follow, for the caller to read.
    Request(Request),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    ClientFlags,
    Options,
    Transmission(Mode),
}

/// Decodes what a client sends: client flags, then options, then (once
/// the server calls [`start_transmission`](Self::start_transmission))
/// request headers.
///
/// # Examples
///
/// ```
/// use corio_nbd::proto::*;
///
/// let mut dec = ServerDecoder::new(HandshakeFlags::FIXED_NEWSTYLE, Limits::default());
/// assert_eq!(dec.decode(&[0, 0]).unwrap(), Decoded::NeedMore(2));
/// let Decoded::Complete { msg, consumed } = dec.decode(&[0, 0, 0, 1]).unwrap() else { panic!() };
/// assert_eq!(msg, ClientMessage::Flags(ClientFlags::FIXED_NEWSTYLE));
/// assert_eq!(consumed, 4);
///
/// let mut opt = Vec::new();
/// OptionRequest::List.encode(&mut opt);
/// let Decoded::Complete { msg, .. } = dec.decode(&opt).unwrap() else { panic!() };
/// assert_eq!(msg, ClientMessage::Option(OptionRequest::List));
/// ```
#[derive(Debug, Clone)]
pub struct ServerDecoder {
    limits: Limits,
    /// The handshake flags this server offered; client flags must be a
    /// subset of the ones they mirror.
    offered: HandshakeFlags,
    state: ServerState,
}

impl ServerDecoder {
    /// A decoder for a connection whose greeting offered `offered`.
    pub fn new(offered: HandshakeFlags, limits: Limits) -> Self {
        ServerDecoder {
            limits,
            offered,
            state: ServerState::ClientFlags,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The transmission mode, once transmission has started.
    pub fn mode(&self) -> Option<Mode> {
        match self.state {
            ServerState::Transmission(m) => Some(m),
            _ => None,
        }
    }

    /// Switch to the transmission phase, after a successful `NBD_OPT_GO`
    /// or `NBD_OPT_EXPORT_NAME`, with the mode the options negotiated.
    pub fn start_transmission(&mut self, mode: Mode) {
        self.state = ServerState::Transmission(mode);
    }

    /// Decode the next message from `buf`, the bytes received and not yet
    /// consumed.
    ///
    /// # Errors
    ///
    /// Any [`ProtoError`]; its [`action`](ProtoError::action) says whether
    /// to answer and go on (the error then says how many bytes the bad
    /// message used) or to drop the connection.
    pub fn decode<'b>(&mut self, buf: &'b [u8]) -> Result<Decoded<ClientMessage<'b>>, ProtoError> {
        match self.state {
            ServerState::ClientFlags => {
                if buf.len() < CLIENT_FLAGS_LEN {
                    return Ok(Decoded::NeedMore(CLIENT_FLAGS_LEN - buf.len()));
                }
                let raw = super::wire::be32(buf, 0);
                let mut allowed = ClientFlags::FIXED_NEWSTYLE;
                if self.offered.contains(HandshakeFlags::NO_ZEROES) {
                    allowed |= ClientFlags::NO_ZEROES;
                }
                if raw & !allowed.bits() != 0 {
                    return Err(ProtoError::BadClientFlags {
                        flags: raw & !allowed.bits(),
                    });
                }
                self.state = ServerState::Options;
                Ok(Decoded::Complete {
                    msg: ClientMessage::Flags(ClientFlags::from_bits_retain(raw)),
                    consumed: CLIENT_FLAGS_LEN,
                })
            }
            ServerState::Options => {
                let header = match OptionHeader::decode(buf, &self.limits)? {
                    Decoded::NeedMore(n) => return Ok(Decoded::NeedMore(n)),
                    Decoded::Complete { msg, .. } => msg,
                };
                let total = super::consts::OPTION_HEADER_LEN + header.length as usize;
                if buf.len() < total {
                    return Ok(Decoded::NeedMore(total - buf.len()));
                }
                let data = &buf[super::consts::OPTION_HEADER_LEN..total];
                let msg = OptionRequest::decode_data(header.option, data, &self.limits)?;
                Ok(Decoded::Complete {
                    msg: ClientMessage::Option(msg),
                    consumed: total,
                })
            }
            ServerState::Transmission(mode) => {
                Ok(match Request::decode(buf, mode, &self.limits)? {
                    Decoded::NeedMore(n) => Decoded::NeedMore(n),
                    Decoded::Complete { msg, consumed } => Decoded::Complete {
                        msg: ClientMessage::Request(msg),
                        consumed,
                    },
                })
            }
        }
    }

    /// Check that the input may end here, with `buffered` bytes received
    /// and not consumed.
    ///
    /// # Errors
    ///
    /// [`ProtoError::Truncated`] if those bytes are part of an unfinished
    /// message.
    pub fn end_of_input(&mut self, buffered: &[u8]) -> Result<(), ProtoError> {
        let what = match self.state {
            ServerState::ClientFlags => "the client flags",
            ServerState::Options => "an option",
            ServerState::Transmission(_) => "a request",
        };
        end_of_input(buffered, what, |b| self.clone().decode(b).map(|d| d.need()))
    }
}

fn end_of_input(
    buffered: &[u8],
    what: &'static str,
    need: impl FnOnce(&[u8]) -> Result<Option<usize>, ProtoError>,
) -> Result<(), ProtoError> {
    if buffered.is_empty() {
        return Ok(());
    }
    match need(buffered)? {
        Some(missing) => Err(ProtoError::Truncated { what, missing }),
        None => Ok(()),
    }
}

/// A message from a server, as the client decodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// The greeting.
    Greeting(Greeting),
    /// A reply to an option.
    OptionReply(OptionReply<'a>),
    /// The reply to `NBD_OPT_EXPORT_NAME`.
    ExportName(ExportNameReply),
    /// A reply in transmission.
    Reply(Reply<'a>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    Greeting,
    OptionReplies,
    ExportNameReply { zeroes: bool },
    Transmission(Mode),
}

/// Decodes what a server sends: greeting, option replies, the export-name
/// reply, replies. The client side, used by tests and tools.
#[derive(Debug, Clone)]
pub struct ClientDecoder {
    limits: Limits,
    state: ClientState,
}

impl ClientDecoder {
    /// A decoder that expects the greeting first.
    pub fn new(limits: Limits) -> Self {
        ClientDecoder {
            limits,
            state: ClientState::Greeting,
        }
    }

    /// After sending `NBD_OPT_EXPORT_NAME`: expect its reply, with or
    /// without the 124 zeroes; transmission follows in `Mode::Simple`
    /// or with whatever was negotiated, set by
    /// [`start_transmission`](Self::start_transmission).
    pub fn expect_export_name_reply(&mut self, zeroes: bool) {
        self.state = ClientState::ExportNameReply { zeroes };
    }

    /// Switch to transmission with the negotiated mode.
    pub fn start_transmission(&mut self, mode: Mode) {
        self.state = ClientState::Transmission(mode);
    }

    /// Decode the next message from `buf`.
    ///
    /// # Errors
    ///
    /// Any [`ProtoError`]; on the client side they all mean disconnect.
    pub fn decode<'b>(&mut self, buf: &'b [u8]) -> Result<Decoded<ServerMessage<'b>>, ProtoError> {
        match self.state {
            ClientState::Greeting => {
                let d = Greeting::decode(buf)?;
                if d.is_complete() {
                    self.state = ClientState::OptionReplies;
                }
                Ok(d.map(ServerMessage::Greeting))
            }
            ClientState::OptionReplies => {
                Ok(OptionReply::decode(buf, &self.limits)?.map(ServerMessage::OptionReply))
            }
            ClientState::ExportNameReply { zeroes } => {
                Ok(ExportNameReply::decode(buf, zeroes)?.map(ServerMessage::ExportName))
            }
            ClientState::Transmission(mode) => {
                Ok(Reply::decode(buf, mode, &self.limits)?.map(ServerMessage::Reply))
            }
        }
    }
}
