//! Round trips of random messages with proptest, fed to the decoders the
//! way a server reads: exactly the number of bytes asked for each time.

use corio_nbd::proto::*;
use proptest::prelude::*;

fn string() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9:/._-]{0,24}", "\\PC{0,12}"]
}

/// Feed `bytes` to `decode` the way a blocking server reads: start empty,
/// read exactly what `NeedMore` asks. The message must complete exactly at
/// its end: the decoder never asks for a byte past it.
fn feed(bytes: &[u8], mut decode: impl FnMut(&[u8]) -> Result<Decoded<()>, ProtoError>) -> usize {
    let mut have = 0;
    loop {
        match decode(&bytes[..have]).expect("valid message") {
            Decoded::NeedMore(n) => {
                assert!(n > 0);
                assert!(
                    have + n <= bytes.len(),
                    "asked for {n} past {have} of {}",
                    bytes.len()
                );
                have += n;
            }
            Decoded::Complete { consumed, .. } => {
                assert_eq!(consumed, bytes.len());
                assert_eq!(have, bytes.len());
                return consumed;
            }
        }
    }
}

#[derive(Debug, Clone)]
struct OwnedOption {
    kind: u8,
    name: String,
    requests: Vec<u16>,
    queries: Vec<String>,
}

impl OwnedOption {
    fn borrow<'a>(&'a self, queries: &'a [&'a str]) -> OptionRequest<'a> {
        let q = ExportQuery {
            name: &self.name,
            requests: WireList::Items(&self.requests),
        };
        let m = MetaContextQuery {
            export: &self.name,
            queries: MetaQueries::Items(queries),
        };
        match self.kind {
            0 => OptionRequest::ExportName(&self.name),
            1 => OptionRequest::Abort,
            2 => OptionRequest::List,
            3 => OptionRequest::StartTls,
            4 => OptionRequest::Info(q),
            5 => OptionRequest::Go(q),
            6 => OptionRequest::StructuredReply,
            7 => OptionRequest::ListMetaContext(m),
            8 => OptionRequest::SetMetaContext(m),
            _ => OptionRequest::ExtendedHeaders,
        }
    }
}

fn owned_option() -> impl Strategy<Value = OwnedOption> {
    (
        0u8..10,
        string(),
        prop::collection::vec(any::<u16>(), 0..8),
        prop::collection::vec(string(), 0..6),
    )
        .prop_map(|(kind, name, requests, queries)| OwnedOption {
            kind,
            name,
            requests,
            queries,
        })
}

fn request(mode: Mode) -> impl Strategy<Value = Request> {
    let commands = [
        Command::Read,
        Command::Write,
        Command::Disc,
        Command::Flush,
        Command::Trim,
        Command::Cache,
        Command::WriteZeroes,
        Command::BlockStatus,
    ];
    (
        prop::sample::select(commands.to_vec()),
        any::<u16>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(move |(command, fl, cookie, offset, length)| {
            let flags = CmdFlags::from_bits_truncate(fl) & command.valid_flags(mode);
            let max = if mode == Mode::Extended {
                u64::MAX
            } else {
                u64::from(u32::MAX)
            };
            let mut length = length % (max.min(u64::MAX - offset) + 1);
            let payload = command == Command::Write || flags.contains(CmdFlags::PAYLOAD_LEN);
            if payload || matches!(command, Command::Read | Command::Cache) {
                length %= u64::from(Limits::NBD_MAX_BUFFER_SIZE) + 1;
            }
            if command == Command::Disc {
                return Request {
                    cookie,
                    command,
                    flags: CmdFlags::empty(),
                    offset: 0,
                    length: 0,
                };
            }
            Request {
                cookie,
                command,
                flags,
                offset,
                length,
            }
        })
}

fn mode() -> impl Strategy<Value = Mode> {
    prop::sample::select(vec![Mode::Simple, Mode::Structured, Mode::Extended])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn option_round_trip(o in owned_option()) {
        let queries: Vec<&str> = o.queries.iter().map(String::as_str).collect();
        let req = o.borrow(&queries);
        let mut bytes = Vec::new();
        req.encode(&mut bytes);
        let limits = Limits::default();
        let mut dec = ServerDecoder::new(HandshakeFlags::FIXED_NEWSTYLE, limits);
        dec.decode(&[0, 0, 0, 1]).unwrap();
        feed(&bytes, |b| dec.clone().decode(b).map(|d| d.map(drop)));
        let Decoded::Complete { msg: ClientMessage::Option(got), .. } = dec.decode(&bytes).unwrap() else {
            panic!("not an option")
        };
        prop_assert_eq!(got, req);
    }

    #[test]
    fn request_round_trip((mode, req) in mode().prop_flat_map(|m| (Just(m), request(m)))) {
        let mut bytes = Vec::new();
        req.encode(mode, &mut bytes);
        prop_assert_eq!(bytes.len(), mode.request_len());
        let limits = Limits::default();
        feed(&bytes, |b| Request::decode(b, mode, &limits).map(|d| d.map(drop)));
        let got = Request::decode(&bytes, mode, &limits).unwrap();
        prop_assert_eq!(got, Decoded::Complete { msg: req, consumed: bytes.len() });
    }

    #[test]
    fn option_reply_round_trip(
        option in any::<u32>(),
        kind in 0u8..9,
        a in string(),
        b in string(),
        n in any::<u64>(),
        m in any::<u32>(),
        t in 4u16..,
        data in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let body = match kind {
            0 => OptionReplyBody::Ack,
            1 => OptionReplyBody::Server { name: &a, description: &b },
            2 => OptionReplyBody::Info(Info::Export { size: n, flags: TransmissionFlags::from_bits_retain(m as u16) }),
            3 => OptionReplyBody::Info(Info::Name(&a)),
            4 => OptionReplyBody::Info(Info::Description(&a)),
            5 => OptionReplyBody::Info(Info::BlockSize { min: m, preferred: m.rotate_left(7), max: n as u32 }),
            6 => OptionReplyBody::Info(Info::Unknown { info_type: t, data: &data }),
            7 => OptionReplyBody::MetaContext { id: m, name: &a },
            _ => OptionReplyBody::Error { error: RepError(m | 0x8000_0000), message: &b },
        };
        let reply = OptionReply { option, body };
        let mut bytes = Vec::new();
        reply.encode(&mut bytes);
        let limits = Limits::default();
        feed(&bytes, |x| OptionReply::decode(x, &limits).map(|d| d.map(drop)));
        prop_assert_eq!(
            OptionReply::decode(&bytes, &limits).unwrap(),
            Decoded::Complete { msg: reply, consumed: bytes.len() }
        );
    }

    #[test]
    fn chunk_round_trip(
        extended in any::<bool>(),
        kind in 0u8..7,
        cookie in any::<u64>(),
        offset in any::<u64>(),
        done in any::<bool>(),
        data in prop::collection::vec(any::<u8>(), 1..64),
        hole in 1u32..,
        ext in prop::collection::vec((1u32.., any::<u32>()), 1..8),
        ext64 in prop::collection::vec((1u64.., any::<u64>()), 1..8),
        error in 1u32..,
        message in string(),
    ) {
        let mode = if extended { Mode::Extended } else { Mode::Structured };
        let extents: Vec<Extent> = ext.iter().map(|&(length, flags)| Extent { length, flags }).collect();
        let extents64: Vec<ExtentExt> = ext64.iter().map(|&(length, flags)| ExtentExt { length, flags }).collect();
        let body = match kind {
            0 => ChunkBody::None,
            1 => ChunkBody::OffsetData { offset, data: &data },
            2 => ChunkBody::OffsetHole { offset, length: hole },
            3 if extended => ChunkBody::BlockStatusExt { context_id: hole, extents: WireList::Items(&extents64) },
            3 => ChunkBody::BlockStatus { context_id: hole, extents: WireList::Items(&extents) },
            4 => ChunkBody::Error { error: Errno(error), message: &message },
            5 => ChunkBody::ErrorOffset { error: Errno(error), message: &message, offset },
            _ => ChunkBody::UnknownError { chunk_type: 0x8000 | (hole as u16 | 3), error: Errno(error), message: &message },
        };
        let flags = if done { ReplyFlags::DONE } else { ReplyFlags::empty() };
        let chunk = Chunk { cookie, flags, offset: if extended { offset } else { 0 }, body };
        let mut bytes = Vec::new();
        chunk.encode(mode, &mut bytes);
        let limits = Limits::default();
        feed(&bytes, |x| Reply::decode(x, mode, &limits).map(|d| d.map(drop)));
        prop_assert_eq!(
            Reply::decode(&bytes, mode, &limits).unwrap(),
            Decoded::Complete { msg: Reply::Chunk(chunk), consumed: bytes.len() }
        );
    }

    /// Random bytes never panic either decoder, whatever the phase, and a
    /// decoded message never claims more bytes than it was given.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), phase in 0u8..6) {
        let limits = Limits::default();
        let mut s = ServerDecoder::new(HandshakeFlags::all(), limits);
        match phase {
            1 => { s.decode(&[0, 0, 0, 1]).unwrap(); }
            2 => s.start_transmission(Mode::Simple),
            3 => s.start_transmission(Mode::Extended),
            _ => {}
        }
        if let Ok(Decoded::Complete { consumed, .. }) = s.decode(&bytes) {
            prop_assert!(consumed <= bytes.len());
        }
        let _ = s.end_of_input(&bytes);
        let mut c = ClientDecoder::new(limits);
        match phase {
            4 => c.start_transmission(Mode::Structured),
            5 => c.start_transmission(Mode::Extended),
            _ => {}
        }
        if let Ok(Decoded::Complete { consumed, .. }) = c.decode(&bytes) {
            prop_assert!(consumed <= bytes.len());
        }
        let _ = OptionReply::decode(&bytes, &limits);
    }
}
