//! Option haggling: the fixed newstyle handshake, from the greeting to the
//! start of transmission (qemu's `nbd_negotiate`).

use std::io;
use std::sync::Arc;

use corio::io::{Channel, SocketChannel};

use super::export::{Export, MAX_BLOCK, PREFERRED_BLOCK};
use super::tls::{self, TlsConfig};
use super::Shared;
use crate::proto::{
    info, ClientFlags, ClientMessage, Decoded, ErrorAction, ExportNameReply, ExportQuery, Greeting,
    HandshakeFlags, Info, MetaContextQuery, Mode, OptionReply, OptionReplyBody, OptionRequest,
    ProtoError, RepError, ServerDecoder,
};

/// What the handshake agreed on.
pub(crate) struct Negotiated {
    /// The channel for transmission (TLS once STARTTLS succeeded).
    pub ch: Arc<dyn Channel>,
    /// Request and reply style.
    pub mode: Mode,
    /// The metadata context ids set by `NBD_OPT_SET_META_CONTEXT`.
    pub contexts: Vec<(&'static str, u32)>,
    /// Requests must be aligned to this (1: no constraint): the minimum
    /// block size, when the client asked for block sizes.
    pub align: u32,
    /// The decoder, in transmission state.
    pub decoder: ServerDecoder,
}

enum Flow {
    Continue,
    Close,
    Transmission,
}

struct Haggle<'s> {
    ch: Arc<dyn Channel>,
    sock: &'s Arc<SocketChannel>,
    export: &'s Export,
    tls: Option<&'s TlsConfig>,
    tls_done: bool,
    dec: ServerDecoder,
    no_zeroes: bool,
    mode: Mode,
    contexts: Vec<(&'static str, u32)>,
    align: u32,
    out: Vec<u8>,
}

/// Negotiates with a client on `sock`. `Ok(None)` when the client leaves
/// or must be dropped (the reason is traced, not returned: the protocol
/// has said all it can).
///
/// # Errors
/// I/O errors of the channel.
pub(crate) fn negotiate(
    sock: &Arc<SocketChannel>,
    shared: &Shared,
) -> io::Result<Option<Negotiated>> {
    let offered = HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES;
    let mut h = Haggle {
        ch: sock.clone(),
        sock,
        export: &shared.export,
        tls: shared.tls.as_ref(),
        tls_done: false,
        dec: ServerDecoder::new(offered, shared.limits),
        no_zeroes: false,
        mode: Mode::Simple,
        contexts: Vec::new(),
        align: 1,
        out: Vec::with_capacity(256),
    };
    Greeting { flags: offered }.encode(&mut h.out);
    h.send()?;
    let mut buf = Vec::new();
    loop {
        match h.fill(&mut buf)? {
            Fill::Eof => return Ok(None),
            Fill::Bad(e) => match e.action() {
                ErrorAction::ReplyOption { option, error, .. } => {
                    h.error(option, error, &e.to_string())?;
                    continue;
                }
                _ => {
                    shared.log(format_args!("dropping client: {e}"));
                    return Ok(None);
                }
            },
            Fill::Whole => {}
        }
        let Ok(Decoded::Complete { msg, .. }) = h.dec.decode(&buf) else {
            unreachable!("fill checked that the message is whole");
        };
        let flow = match msg {
            ClientMessage::Flags(f) => {
                h.no_zeroes = f.contains(ClientFlags::NO_ZEROES);
                Flow::Continue
            }
            ClientMessage::Option(o) => h.option(o)?,
            ClientMessage::Request(_) => Flow::Close,
        };
        match flow {
            Flow::Continue => {}
            Flow::Close => return Ok(None),
            Flow::Transmission => {
                h.dec.start_transmission(h.mode);
                return Ok(Some(Negotiated {
                    ch: h.ch,
                    mode: h.mode,
                    contexts: h.contexts,
                    align: h.align,
                    decoder: h.dec,
                }));
            }
        }
    }
}

enum Fill {
    Whole,
    Eof,
    Bad(ProtoError),
}

impl Haggle<'_> {
    fn send(&mut self) -> io::Result<()> {
        let r = self.ch.write_all_bytes(&self.out);
        self.out.clear();
        r
    }

    /// Reads into `buf` exactly one whole message (the decoder never asks
    /// past its end).
    fn fill(&mut self, buf: &mut Vec<u8>) -> io::Result<Fill> {
        buf.clear();
        loop {
            match self.dec.clone().decode(buf) {
                Ok(Decoded::NeedMore(n)) => {
                    let start = buf.len();
                    buf.resize(start + n, 0);
                    if !self.ch.read_all_eof(&mut buf[start..])? {
                        if start == 0 {
                            return Ok(Fill::Eof);
                        }
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Ok(Decoded::Complete { .. }) => return Ok(Fill::Whole),
                Err(e) => return Ok(Fill::Bad(e)),
            }
        }
    }

    fn reply(&mut self, option: u32, body: OptionReplyBody<'_>) {
        OptionReply { option, body }.encode(&mut self.out);
    }

    fn error(&mut self, option: u32, error: RepError, message: &str) -> io::Result<()> {
        self.reply(option, OptionReplyBody::Error { error, message });
        self.send()
    }

    fn ack(&mut self, option: u32) -> io::Result<()> {
        self.reply(option, OptionReplyBody::Ack);
        self.send()
    }

    fn option(&mut self, req: OptionRequest<'_>) -> io::Result<Flow> {
        let code = req.code();
        if self.tls.is_some() && !self.tls_done {
            return self.before_tls(req);
        }
        match req {
            OptionRequest::ExportName(name) => return self.export_name(name),
            OptionRequest::Abort => {
                // The client may not wait for it; it may be gone.
                let _ = self.ack(code);
                return Ok(Flow::Close);
            }
            OptionRequest::List => {
                let body = OptionReplyBody::Server {
                    name: &self.export.name,
                    description: &self.export.description,
                };
                self.reply(code, body);
                self.ack(code)?;
            }
            OptionRequest::StartTls if self.tls_done => {
                self.error(code, RepError::INVALID, "TLS already enabled")?
            }
            OptionRequest::StartTls => self.error(code, RepError::POLICY, "TLS not configured")?,
            OptionRequest::Info(q) => {
                self.info(code, q, false)?;
            }
            OptionRequest::Go(q) => return self.info(code, q, true),
            OptionRequest::StructuredReply => self.set_mode(code, Mode::Structured)?,
            OptionRequest::ExtendedHeaders => self.set_mode(code, Mode::Extended)?,
            OptionRequest::ListMetaContext(m) => self.meta(code, m, false)?,
            OptionRequest::SetMetaContext(m) => self.meta(code, m, true)?,
        }
        Ok(Flow::Continue)
    }

    /// TLS is required and not yet running (qemu's rules).
    fn before_tls(&mut self, req: OptionRequest<'_>) -> io::Result<Flow> {
        let code = req.code();
        match req {
            OptionRequest::StartTls => {
                self.ack(code)?;
                let cfg = self.tls.expect("checked by the caller");
                match tls::upgrade(self.sock, cfg) {
                    Ok(ch) => {
                        self.ch = ch;
                        self.tls_done = true;
                        Ok(Flow::Continue)
                    }
                    Err(_) => Ok(Flow::Close),
                }
            }
            // No error reply exists for EXPORT_NAME: hang up.
            OptionRequest::ExportName(_) => Ok(Flow::Close),
            OptionRequest::Abort => {
                let _ = self.error(code, RepError::TLS_REQD, "TLS is required");
                Ok(Flow::Close)
            }
            _ => {
                let msg = format!("option {code:#x} not permitted before TLS");
                self.error(code, RepError::TLS_REQD, &msg)?;
                Ok(Flow::Continue)
            }
        }
    }

    fn flags_for_export(&self) -> crate::proto::TransmissionFlags {
        self.export.transmission_flags(self.mode)
    }

    fn export_name(&mut self, name: &str) -> io::Result<Flow> {
        if name != self.export.name {
            return Ok(Flow::Close);
        }
        ExportNameReply {
            size: self.export.storage.size(),
            flags: self.flags_for_export(),
            zeroes: !self.no_zeroes,
        }
        .encode(&mut self.out);
        self.send()?;
        Ok(Flow::Transmission)
    }

    fn info(&mut self, code: u32, q: ExportQuery<'_>, go: bool) -> io::Result<Flow> {
        if q.name != self.export.name {
            let msg = format!("export '{}' not present", q.name);
            self.error(code, RepError::UNKNOWN, &msg)?;
            return Ok(Flow::Continue);
        }
        let asked = |t: u16| q.requests.iter().any(|r| r == t);
        let block_size = asked(info::BLOCK_SIZE);
        let min = self.export.min_block;
        if !go && !block_size && min > 1 {
            let msg = "request NBD_INFO_BLOCK_SIZE to use this export";
            self.error(code, RepError::BLOCK_SIZE_REQD, msg)?;
            return Ok(Flow::Continue);
        }
        let export = self.export;
        if asked(info::NAME) {
            self.reply(code, OptionReplyBody::Info(Info::Name(&export.name)));
        }
        if asked(info::DESCRIPTION) && !export.description.is_empty() {
            let d = Info::Description(&export.description);
            self.reply(code, OptionReplyBody::Info(d));
        }
        // As qemu: the real minimum to clients that asked (or for INFO),
        // 1 to a client that did not ask (it cannot honour it).
        let advertised_min = if !go || block_size { min } else { 1 };
        let sizes = Info::BlockSize {
            min: advertised_min,
            preferred: PREFERRED_BLOCK.max(advertised_min),
            max: MAX_BLOCK,
        };
        self.reply(code, OptionReplyBody::Info(sizes));
        let size = export.storage.size();
        let flags = self.flags_for_export();
        self.reply(code, OptionReplyBody::Info(Info::Export { size, flags }));
        self.ack(code)?;
        if go {
            self.align = if block_size { min } else { 1 };
            return Ok(Flow::Transmission);
        }
        Ok(Flow::Continue)
    }

    fn set_mode(&mut self, code: u32, mode: Mode) -> io::Result<()> {
        if self.mode == Mode::Extended {
            return self.error(
                code,
                RepError::INVALID,
                "extended headers already negotiated",
            );
        }
        if self.mode == mode {
            return self.error(
                code,
                RepError::INVALID,
                "structured reply already negotiated",
            );
        }
        self.mode = mode;
        self.ack(code)
    }

    fn meta(&mut self, code: u32, m: MetaContextQuery<'_>, set: bool) -> io::Result<()> {
        if set && self.mode == Mode::Simple {
            let msg = "use NBD_OPT_STRUCTURED_REPLY or NBD_OPT_EXTENDED_HEADERS first";
            return self.error(code, RepError::INVALID, msg);
        }
        if m.export != self.export.name {
            let msg = format!("export '{}' not present", m.export);
            return self.error(code, RepError::UNKNOWN, &msg);
        }
        let offered = self.export.contexts();
        let mut chosen: Vec<(&'static str, u32)> = Vec::new();
        if m.queries.is_empty() {
            if !set {
                chosen = offered;
            }
        } else {
            for q in m.queries.iter() {
                for &(name, id) in &offered {
                    let namespace = name.split_once(':').map_or(name, |(ns, _)| ns);
                    let whole_ns = !set && q.strip_suffix(':') == Some(namespace);
                    if (q == name || whole_ns) && !chosen.iter().any(|c| c.1 == id) {
                        chosen.push((name, id));
                    }
                }
            }
        }
        for &(name, id) in &chosen {
            let id = if set { id } else { 0 };
            self.reply(code, OptionReplyBody::MetaContext { id, name });
        }
        if set {
            self.contexts = chosen;
        }
        self.ack(code)
    }
}
