//! Golden bytes: every message type encoded and compared with bytes written
//! out by hand from the spec (doc/proto.md), then decoded back.

use corio_nbd::proto::*;

/// Concatenate hand-written fields.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

const IHAVEOPT: &[u8] = b"IHAVEOPT";
/// 0x3e889045565a9, the option reply magic, as 64 bits.
const REP: &[u8] = &[0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9];
const REQ: &[u8] = &[0x25, 0x60, 0x95, 0x13];
const EXT_REQ: &[u8] = &[0x21, 0xe4, 0x1c, 0x71];
const SIMPLE: &[u8] = &[0x67, 0x44, 0x66, 0x98];
const STRUCT: &[u8] = &[0x66, 0x8e, 0x33, 0xef];
const EXT_REP: &[u8] = &[0x6e, 0x8a, 0x27, 0x8c];
const COOKIE: &[u8] = &[0xde, 0xad, 0xbe, 0xef, 0x00, 0x00, 0x00, 0x01];
const COOKIE_V: u64 = 0xdead_beef_0000_0001;

fn be32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

/// Server side: the option encodes to `bytes` and decodes back from them.
fn golden_option(req: OptionRequest<'_>, bytes: &[u8]) {
    let mut out = Vec::new();
    req.encode(&mut out);
    assert_eq!(out, bytes, "encoding of {req:?}");
    let mut dec = ServerDecoder::new(HandshakeFlags::all(), Limits::default());
    dec.decode(&[0, 0, 0, 1]).unwrap();
    match dec.decode(bytes).unwrap() {
        Decoded::Complete {
            msg: ClientMessage::Option(got),
            consumed,
        } => {
            assert_eq!(got, req);
            assert_eq!(consumed, bytes.len());
        }
        other => panic!("{other:?}"),
    }
}

/// Client side: the option reply encodes to `bytes` and decodes back.
fn golden_option_reply(reply: OptionReply<'_>, bytes: &[u8]) {
    let mut out = Vec::new();
    reply.encode(&mut out);
    assert_eq!(out, bytes, "encoding of {reply:?}");
    match OptionReply::decode(bytes, &Limits::default()).unwrap() {
        Decoded::Complete { msg, consumed } => {
            assert_eq!(msg, reply);
            assert_eq!(consumed, bytes.len());
        }
        other => panic!("{other:?}"),
    }
}

fn golden_request(req: Request, mode: Mode, bytes: &[u8]) {
    let mut out = Vec::new();
    req.encode(mode, &mut out);
    assert_eq!(out, bytes, "encoding of {req:?}");
    assert_eq!(
        Request::decode(bytes, mode, &Limits::default()).unwrap(),
        Decoded::Complete {
            msg: req,
            consumed: bytes.len()
        }
    );
}

fn golden_chunk(chunk: Chunk<'_>, mode: Mode, bytes: &[u8]) {
    let mut out = Vec::new();
    chunk.encode(mode, &mut out);
    assert_eq!(out, bytes, "encoding of {chunk:?}");
    match Reply::decode(bytes, mode, &Limits::default()).unwrap() {
        Decoded::Complete {
            msg: Reply::Chunk(c),
            consumed,
        } => {
            assert_eq!(c, chunk);
            assert_eq!(consumed, bytes.len());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn greeting_fixed_newstyle_no_zeroes() {
    let bytes = cat(&[b"NBDMAGIC", IHAVEOPT, &[0x00, 0x03]]);
    let g = Greeting {
        flags: HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES,
    };
    let mut out = Vec::new();
    g.encode(&mut out);
    assert_eq!(out, bytes);
    assert_eq!(
        Greeting::decode(&bytes).unwrap(),
        Decoded::Complete {
            msg: g,
            consumed: 18
        }
    );
}

#[test]
fn client_flags() {
    let mut dec = ServerDecoder::new(HandshakeFlags::all(), Limits::default());
    assert_eq!(
        dec.decode(&[0, 0, 0, 3]).unwrap(),
        Decoded::Complete {
            msg: ClientMessage::Flags(ClientFlags::FIXED_NEWSTYLE | ClientFlags::NO_ZEROES),
            consumed: 4
        }
    );
}

#[test]
fn options_without_data() {
    for (req, code) in [
        (OptionRequest::Abort, 2u8),
        (OptionRequest::List, 3),
        (OptionRequest::StartTls, 5),
        (OptionRequest::StructuredReply, 8),
        (OptionRequest::ExtendedHeaders, 11),
    ] {
        golden_option(req, &cat(&[IHAVEOPT, &[0, 0, 0, code], &[0, 0, 0, 0]]));
    }
}

#[test]
fn option_export_name() {
    golden_option(
        OptionRequest::ExportName("disk"),
        &cat(&[IHAVEOPT, &[0, 0, 0, 1], &[0, 0, 0, 4], b"disk"]),
    );
    golden_option(
        OptionRequest::ExportName(""),
        &cat(&[IHAVEOPT, &[0, 0, 0, 1], &[0, 0, 0, 0]]),
    );
}

#[test]
fn option_info_and_go() {
    for (code, make) in [
        (
            6u8,
            OptionRequest::Info as fn(ExportQuery<'static>) -> OptionRequest<'static>,
        ),
        (7, OptionRequest::Go),
    ] {
        let q = ExportQuery {
            name: "disk",
            requests: WireList::Items(&[3, 1]),
        };
        // length: 4 (name length) + 4 (name) + 2 (count) + 2 * 2 (requests)
        let bytes = cat(&[
            IHAVEOPT,
            &[0, 0, 0, code],
            &[0, 0, 0, 14],
            &[0, 0, 0, 4],
            b"disk",
            &[0, 2],
            &[0, 3],
            &[0, 1],
        ]);
        golden_option(make(q), &bytes);
        let empty = ExportQuery {
            name: "",
            requests: WireList::Items(&[]),
        };
        golden_option(
            make(empty),
            &cat(&[
                IHAVEOPT,
                &[0, 0, 0, code],
                &[0, 0, 0, 6],
                &[0, 0, 0, 0],
                &[0, 0],
            ]),
        );
    }
}

#[test]
fn option_meta_context() {
    for (code, list) in [(9u8, true), (10, false)] {
        let m = MetaContextQuery {
            export: "disk",
            queries: MetaQueries::Items(&["base:allocation"]),
        };
        let req = if list {
            OptionRequest::ListMetaContext(m)
        } else {
            OptionRequest::SetMetaContext(m)
        };
        // 4 + 4 ("disk") + 4 (count) + 4 + 15 ("base:allocation") = 31
        let bytes = cat(&[
            IHAVEOPT,
            &[0, 0, 0, code],
            &[0, 0, 0, 31],
            &[0, 0, 0, 4],
            b"disk",
            &[0, 0, 0, 1],
            &[0, 0, 0, 15],
            b"base:allocation",
        ]);
        golden_option(req, &bytes);
    }
}

#[test]
fn option_reply_ack_and_server() {
    golden_option_reply(
        OptionReply {
            option: opt::GO,
            body: OptionReplyBody::Ack,
        },
        &cat(&[REP, &[0, 0, 0, 7], &[0, 0, 0, 1], &[0, 0, 0, 0]]),
    );
    golden_option_reply(
        OptionReply {
            option: opt::LIST,
            body: OptionReplyBody::Server {
                name: "disk",
                description: "a disk",
            },
        },
        &cat(&[
            REP,
            &[0, 0, 0, 3],
            &[0, 0, 0, 2],
            &[0, 0, 0, 14],
            &[0, 0, 0, 4],
            b"disk",
            b"a disk",
        ]),
    );
}

#[test]
fn option_reply_infos() {
    let flags =
        TransmissionFlags::HAS_FLAGS | TransmissionFlags::SEND_FLUSH | TransmissionFlags::SEND_DF;
    golden_option_reply(
        OptionReply {
            option: opt::GO,
            body: OptionReplyBody::Info(Info::Export {
                size: 0x1_0000_0200,
                flags,
            }),
        },
        &cat(&[
            REP,
            &[0, 0, 0, 7],
            &[0, 0, 0, 3],
            &[0, 0, 0, 12],
            &[0, 0],
            &[0, 0, 0, 1, 0, 0, 2, 0],
            &[0x00, 0x85],
        ]),
    );
    golden_option_reply(
        OptionReply {
            option: opt::INFO,
            body: OptionReplyBody::Info(Info::Name("disk")),
        },
        &cat(&[
            REP,
            &[0, 0, 0, 6],
            &[0, 0, 0, 3],
            &[0, 0, 0, 6],
            &[0, 1],
            b"disk",
        ]),
    );
    golden_option_reply(
        OptionReply {
            option: opt::INFO,
            body: OptionReplyBody::Info(Info::Description("d")),
        },
        &cat(&[
            REP,
            &[0, 0, 0, 6],
            &[0, 0, 0, 3],
            &[0, 0, 0, 3],
            &[0, 2],
            b"d",
        ]),
    );
    golden_option_reply(
        OptionReply {
            option: opt::GO,
            body: OptionReplyBody::Info(Info::BlockSize {
                min: 1,
                preferred: 4096,
                max: 32 << 20,
            }),
        },
        &cat(&[
            REP,
            &[0, 0, 0, 7],
            &[0, 0, 0, 3],
            &[0, 0, 0, 14],
            &[0, 3],
            &[0, 0, 0, 1],
            &[0, 0, 0x10, 0],
            &[0x02, 0, 0, 0],
        ]),
    );
    // Unknown info types decode as Unknown (clients must ignore them).
    golden_option_reply(
        OptionReply {
            option: opt::GO,
            body: OptionReplyBody::Info(Info::Unknown {
                info_type: 9,
                data: b"xy",
            }),
        },
        &cat(&[
            REP,
            &[0, 0, 0, 7],
            &[0, 0, 0, 3],
            &[0, 0, 0, 4],
            &[0, 9],
            b"xy",
        ]),
    );
}

#[test]
fn option_reply_meta_context() {
    golden_option_reply(
        OptionReply {
            option: opt::SET_META_CONTEXT,
            body: OptionReplyBody::MetaContext {
                id: 1,
                name: "base:allocation",
            },
        },
        &cat(&[
            REP,
            &[0, 0, 0, 10],
            &[0, 0, 0, 4],
            &[0, 0, 0, 19],
            &[0, 0, 0, 1],
            b"base:allocation",
        ]),
    );
}

#[test]
fn option_reply_every_error() {
    for n in 1u8..=10 {
        let error = RepError(0x8000_0000 | u32::from(n));
        golden_option_reply(
            OptionReply {
                option: opt::GO,
                body: OptionReplyBody::Error {
                    error,
                    message: "no",
                },
            },
            &cat(&[REP, &[0, 0, 0, 7], &[0x80, 0, 0, n], &[0, 0, 0, 2], b"no"]),
        );
    }
    assert_eq!(RepError::UNSUP.0, 0x8000_0001);
    assert_eq!(RepError::EXT_HEADER_REQD.0, 0x8000_000a);
    assert_eq!(RepError::TOO_BIG.to_string(), "NBD_REP_ERR_TOO_BIG");
}

#[test]
fn export_name_reply_with_and_without_zeroes() {
    let r = ExportNameReply {
        size: 4096,
        flags: TransmissionFlags::HAS_FLAGS | TransmissionFlags::READ_ONLY,
        zeroes: false,
    };
    let short = cat(&[&[0, 0, 0, 0, 0, 0, 0x10, 0], &[0, 3]]);
    let mut out = Vec::new();
    r.encode(&mut out);
    assert_eq!(out, short);
    assert_eq!(
        ExportNameReply::decode(&short, false).unwrap(),
        Decoded::Complete {
            msg: r,
            consumed: 10
        }
    );

    let r = ExportNameReply { zeroes: true, ..r };
    let long = cat(&[&short, &[0u8; 124]]);
    out.clear();
    r.encode(&mut out);
    assert_eq!(out, long);
    assert_eq!(
        ExportNameReply::decode(&long, true).unwrap(),
        Decoded::Complete {
            msg: r,
            consumed: 134
        }
    );
    assert_eq!(
        ExportNameReply::decode(&long[..10], true).unwrap(),
        Decoded::NeedMore(124)
    );
}

#[test]
fn compact_requests_every_command() {
    let off: &[u8] = &[0, 0, 0, 0, 0, 0, 0x02, 0x00];
    for (command, code, flags) in [
        (Command::Read, 0u8, CmdFlags::DF),
        (Command::Write, 1, CmdFlags::FUA),
        (Command::Disc, 2, CmdFlags::empty()),
        (Command::Flush, 3, CmdFlags::empty()),
        (Command::Trim, 4, CmdFlags::FUA),
        (Command::Cache, 5, CmdFlags::empty()),
        (
            Command::WriteZeroes,
            6,
            CmdFlags::NO_HOLE | CmdFlags::FAST_ZERO,
        ),
        (Command::BlockStatus, 7, CmdFlags::REQ_ONE),
    ] {
        let req = Request {
            cookie: COOKIE_V,
            command,
            flags,
            offset: 512,
            length: 4096,
        };
        let f = flags.bits().to_be_bytes();
        let bytes = cat(&[REQ, &f, &[0, code], COOKIE, off, &[0, 0, 0x10, 0]]);
        golden_request(req, Mode::Structured, &bytes);
    }
}

#[test]
fn extended_requests() {
    // WRITE with PAYLOAD_LEN | FUA (0x21), 64-bit length.
    let req = Request {
        cookie: COOKIE_V,
        command: Command::Write,
        flags: CmdFlags::PAYLOAD_LEN | CmdFlags::FUA,
        offset: 0,
        length: 4096,
    };
    let bytes = cat(&[
        EXT_REQ,
        &[0, 0x21],
        &[0, 1],
        COOKIE,
        &[0; 8],
        &[0, 0, 0, 0, 0, 0, 0x10, 0],
    ]);
    golden_request(req, Mode::Extended, &bytes);
    assert_eq!(req.payload_len(), 4096);
    // TRIM with an effect length over 32 bits.
    let req = Request {
        cookie: COOKIE_V,
        command: Command::Trim,
        flags: CmdFlags::empty(),
        offset: 0,
        length: 1 << 33,
    };
    let bytes = cat(&[
        EXT_REQ,
        &[0, 0],
        &[0, 4],
        COOKIE,
        &[0; 8],
        &[0, 0, 0, 2, 0, 0, 0, 0],
    ]);
    golden_request(req, Mode::Extended, &bytes);
    assert_eq!(req.payload_len(), 0);
    // BLOCK_STATUS with a payload: effect length then context ids.
    let req = Request {
        cookie: COOKIE_V,
        command: Command::BlockStatus,
        flags: CmdFlags::PAYLOAD_LEN,
        offset: 0,
        length: 12,
    };
    let bytes = cat(&[
        EXT_REQ,
        &[0, 0x20],
        &[0, 7],
        COOKIE,
        &[0; 8],
        &[0, 0, 0, 0, 0, 0, 0, 12],
    ]);
    golden_request(req, Mode::Extended, &bytes);
    let payload = cat(&[&[0, 0, 0, 0, 0, 0x10, 0, 0], &[0, 0, 0, 1]]);
    let p = BlockStatusPayload::decode(&payload).unwrap();
    assert_eq!(
        p,
        BlockStatusPayload {
            effect_length: 1 << 20,
            ids: WireList::Items(&[1])
        }
    );
    let mut out = Vec::new();
    p.encode(&mut out);
    assert_eq!(out, payload);
}

#[test]
fn simple_reply() {
    let bytes = cat(&[SIMPLE, &[0, 0, 0, 22], COOKIE]);
    let r = SimpleReply {
        cookie: COOKIE_V,
        error: Errno::EINVAL,
    };
    let mut out = Vec::new();
    r.encode(&mut out);
    assert_eq!(out, bytes);
    for mode in [Mode::Simple, Mode::Structured] {
        assert_eq!(
            Reply::decode(&bytes, mode, &Limits::default()).unwrap(),
            Decoded::Complete {
                msg: Reply::Simple(r),
                consumed: 16
            }
        );
    }
}

fn chunk(flags: ReplyFlags, body: ChunkBody<'_>) -> Chunk<'_> {
    Chunk {
        cookie: COOKIE_V,
        flags,
        offset: 0,
        body,
    }
}

#[test]
fn structured_chunks() {
    let done = ReplyFlags::DONE;
    let s = Mode::Structured;
    golden_chunk(
        chunk(done, ChunkBody::None),
        s,
        &cat(&[STRUCT, &[0, 1], &[0, 0], COOKIE, &[0, 0, 0, 0]]),
    );
    golden_chunk(
        chunk(
            ReplyFlags::empty(),
            ChunkBody::OffsetData {
                offset: 512,
                data: b"abc",
            },
        ),
        s,
        &cat(&[
            STRUCT,
            &[0, 0],
            &[0, 1],
            COOKIE,
            &[0, 0, 0, 11],
            &[0, 0, 0, 0, 0, 0, 2, 0],
            b"abc",
        ]),
    );
    golden_chunk(
        chunk(
            done,
            ChunkBody::OffsetHole {
                offset: 512,
                length: 4096,
            },
        ),
        s,
        &cat(&[
            STRUCT,
            &[0, 1],
            &[0, 2],
            COOKIE,
            &[0, 0, 0, 12],
            &[0, 0, 0, 0, 0, 0, 2, 0],
            &[0, 0, 0x10, 0],
        ]),
    );
    let extents = [
        Extent {
            length: 4096,
            flags: state::HOLE | state::ZERO,
        },
        Extent {
            length: 512,
            flags: 0,
        },
    ];
    golden_chunk(
        chunk(
            done,
            ChunkBody::BlockStatus {
                context_id: 1,
                extents: WireList::Items(&extents),
            },
        ),
        s,
        &cat(&[
            STRUCT,
            &[0, 1],
            &[0, 5],
            COOKIE,
            &[0, 0, 0, 20],
            &[0, 0, 0, 1],
            &[0, 0, 0x10, 0],
            &[0, 0, 0, 3],
            &[0, 0, 2, 0],
            &[0, 0, 0, 0],
        ]),
    );
    golden_chunk(
        chunk(
            done,
            ChunkBody::Error {
                error: Errno::EIO,
                message: "bad",
            },
        ),
        s,
        &cat(&[
            STRUCT,
            &[0, 1],
            &[0x80, 1],
            COOKIE,
            &[0, 0, 0, 9],
            &[0, 0, 0, 5],
            &[0, 3],
            b"bad",
        ]),
    );
    golden_chunk(
        chunk(
            ReplyFlags::empty(),
            ChunkBody::ErrorOffset {
                error: Errno::EIO,
                message: "",
                offset: 1024,
            },
        ),
        s,
        &cat(&[
            STRUCT,
            &[0, 0],
            &[0x80, 2],
            COOKIE,
            &[0, 0, 0, 14],
            &[0, 0, 0, 5],
            &[0, 0],
            &[0, 0, 0, 0, 0, 0, 4, 0],
        ]),
    );
    // An unknown error chunk decodes (the client fails the request but may go on).
    golden_chunk(
        chunk(
            done,
            ChunkBody::UnknownError {
                chunk_type: 0x8005,
                error: Errno::EPERM,
                message: "",
            },
        ),
        s,
        &cat(&[
            STRUCT,
            &[0, 1],
            &[0x80, 5],
            COOKIE,
            &[0, 0, 0, 6],
            &[0, 0, 0, 1],
            &[0, 0],
        ]),
    );
}

#[test]
fn extended_chunks() {
    let e = Mode::Extended;
    let c = Chunk {
        cookie: COOKIE_V,
        flags: ReplyFlags::DONE,
        offset: 4096,
        body: ChunkBody::None,
    };
    golden_chunk(
        c,
        e,
        &cat(&[
            EXT_REP,
            &[0, 1],
            &[0, 0],
            COOKIE,
            &[0, 0, 0, 0, 0, 0, 0x10, 0],
            &[0; 8],
        ]),
    );
    let extents = [ExtentExt {
        length: 1 << 32,
        flags: u64::from(state::ZERO),
    }];
    let c = Chunk {
        cookie: COOKIE_V,
        flags: ReplyFlags::DONE,
        offset: 0,
        body: ChunkBody::BlockStatusExt {
            context_id: 2,
            extents: WireList::Items(&extents),
        },
    };
    golden_chunk(
        c,
        e,
        &cat(&[
            EXT_REP,
            &[0, 1],
            &[0, 6],
            COOKIE,
            &[0; 8],
            &[0, 0, 0, 0, 0, 0, 0, 24],
            &[0, 0, 0, 2],
            &[0, 0, 0, 1],
            &[0, 0, 0, 1, 0, 0, 0, 0],
            &[0, 0, 0, 0, 0, 0, 0, 2],
        ]),
    );
    let c = Chunk {
        cookie: COOKIE_V,
        flags: ReplyFlags::DONE,
        offset: 512,
        body: ChunkBody::OffsetData {
            offset: 512,
            data: b"z",
        },
    };
    golden_chunk(
        c,
        e,
        &cat(&[
            EXT_REP,
            &[0, 1],
            &[0, 1],
            COOKIE,
            &[0, 0, 0, 0, 0, 0, 2, 0],
            &[0, 0, 0, 0, 0, 0, 0, 9],
            &[0, 0, 0, 0, 0, 0, 2, 0],
            b"z",
        ]),
    );
}

#[test]
fn chunk_encode_header_leaves_data_to_caller() {
    let data = [7u8; 4096];
    let c = chunk(
        ReplyFlags::DONE,
        ChunkBody::OffsetData {
            offset: 0,
            data: &data,
        },
    );
    let mut out = Vec::new();
    c.encode_header(Mode::Structured, &mut out);
    assert_eq!(
        out,
        cat(&[STRUCT, &[0, 1], &[0, 1], COOKIE, &be32(4104), &[0; 8]])
    );
}
