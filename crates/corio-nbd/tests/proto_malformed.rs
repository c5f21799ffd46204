//! A table of malformed inputs, each with the error it must produce and
//! what the protocol says to do about it.

use corio_nbd::proto::*;

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

const IHAVEOPT: &[u8] = b"IHAVEOPT";
const REQ: &[u8] = &[0x25, 0x60, 0x95, 0x13];
const EXT_REQ: &[u8] = &[0x21, 0xe4, 0x1c, 0x71];
const COOKIE: &[u8] = &[0, 0, 0, 0, 0, 0, 0, 9];

fn option(code: u32, data: &[u8]) -> Vec<u8> {
    cat(&[
        IHAVEOPT,
        &code.to_be_bytes(),
        &(data.len() as u32).to_be_bytes(),
        data,
    ])
}

fn request(magic: &[u8], flags: u16, cmd: u16, offset: u64, len: u32) -> Vec<u8> {
    cat(&[
        magic,
        &flags.to_be_bytes(),
        &cmd.to_be_bytes(),
        COOKIE,
        &offset.to_be_bytes(),
        &len.to_be_bytes(),
    ])
}

fn ext_request(flags: u16, cmd: u16, offset: u64, len: u64) -> Vec<u8> {
    cat(&[
        EXT_REQ,
        &flags.to_be_bytes(),
        &cmd.to_be_bytes(),
        COOKIE,
        &offset.to_be_bytes(),
        &len.to_be_bytes(),
    ])
}

/// Decode an option as the server does after the client flags.
fn server_option(bytes: &[u8]) -> Result<Decoded<ClientMessage<'_>>, ProtoError> {
    let mut dec = ServerDecoder::new(HandshakeFlags::FIXED_NEWSTYLE, Limits::default());
    dec.decode(&[0, 0, 0, 1]).unwrap();
    dec.decode(bytes)
}

fn server_request(bytes: &[u8], mode: Mode) -> Result<Decoded<ClientMessage<'_>>, ProtoError> {
    let mut dec = ServerDecoder::new(HandshakeFlags::FIXED_NEWSTYLE, Limits::default());
    dec.start_transmission(mode);
    dec.decode(bytes)
}

fn opt_reply(option: u32, error: RepError, len: usize) -> ErrorAction {
    ErrorAction::ReplyOption {
        option,
        error,
        consumed: 16 + len,
    }
}

fn req_reply(errno: Errno, consumed: usize, discard: u64) -> ErrorAction {
    ErrorAction::ReplyError {
        cookie: 9,
        errno,
        consumed,
        discard,
    }
}

/// Each row: a name, the input, the expected error (by its message
/// prefix), and the expected action.
#[test]
fn malformed_handshake_table() {
    let go_bad_utf8 = cat(&[&[0, 0, 0, 2], &[0xff, 0xfe], &[0, 0]]);
    let go_nul = cat(&[&[0, 0, 0, 2], b"a\0", &[0, 0]]);
    let go_name_past_end = cat(&[&[0, 0, 0, 9], b"ab", &[0, 0]]);
    let go_requests_past_end = cat(&[&[0, 0, 0, 1], b"a", &[0, 3], &[0, 1]]);
    let go_leftover = cat(&[&[0, 0, 0, 1], b"a", &[0, 0], b"x"]);
    let mut long_name = vec![0, 0, 0x10, 0x01];
    long_name.extend(std::iter::repeat_n(b'a', 4097));
    long_name.extend([0, 0]);
    let meta_query_past_end = cat(&[&[0, 0, 0, 1], b"a", &[0, 0, 0, 2], &[0, 0, 0, 5], b"base:"]);
    let meta_query_not_utf8 = cat(&[&[0, 0, 0, 1], b"a", &[0, 0, 0, 1], &[0, 0, 0, 1], &[0x80]]);
    let meta_huge_count = cat(&[&[0, 0, 0, 0], &[0xff, 0xff, 0xff, 0xff]]);

    let rows: Vec<(&str, Vec<u8>, &str, ErrorAction)> = vec![
        (
            "bad option magic",
            cat(&[b"IHAVEOPX", &[0, 0, 0, 3], &[0, 0, 0, 0]]),
            "bad option magic",
            ErrorAction::Disconnect,
        ),
        (
            "option longer than 32 MiB",
            cat(&[IHAVEOPT, &[0, 0, 0, 7], &[0x02, 0, 0, 1]]),
            "option NBD_OPT_GO (7), 33554433 bytes: longer than the limit",
            ErrorAction::Disconnect,
        ),
        (
            "unknown option",
            option(4, b"xyz"),
            "unknown option",
            opt_reply(4, RepError::UNSUP, 3),
        ),
        (
            "LIST with data",
            option(3, b"x"),
            "option NBD_OPT_LIST",
            opt_reply(3, RepError::INVALID, 1),
        ),
        (
            "STARTTLS with data",
            option(5, b"x"),
            "option NBD_OPT_STARTTLS",
            opt_reply(5, RepError::INVALID, 1),
        ),
        (
            "STRUCTURED_REPLY with data",
            option(8, b"xy"),
            "option NBD_OPT_STRUCTURED_REPLY",
            opt_reply(8, RepError::INVALID, 2),
        ),
        (
            "EXTENDED_HEADERS with data",
            option(11, b"x"),
            "option NBD_OPT_EXTENDED_HEADERS",
            opt_reply(11, RepError::INVALID, 1),
        ),
        (
            "GO name not UTF-8",
            option(7, &go_bad_utf8),
            "option NBD_OPT_GO (7), 8 bytes: export name not UTF-8",
            opt_reply(7, RepError::INVALID, 8),
        ),
        (
            "GO name with NUL",
            option(7, &go_nul),
            "option NBD_OPT_GO (7), 8 bytes: export name contains a NUL",
            opt_reply(7, RepError::INVALID, 8),
        ),
        (
            "GO name past the end",
            option(7, &go_name_past_end),
            "option NBD_OPT_GO (7), 8 bytes: a string runs past the end",
            opt_reply(7, RepError::INVALID, 8),
        ),
        (
            "GO name too long",
            option(7, &long_name),
            "option NBD_OPT_GO (7), 4103 bytes: export name 4097 bytes long",
            opt_reply(7, RepError::INVALID, 4103),
        ),
        (
            "GO requests past the end",
            option(7, &go_requests_past_end),
            "option NBD_OPT_GO",
            opt_reply(7, RepError::INVALID, 9),
        ),
        (
            "INFO with bytes left over",
            option(6, &go_leftover),
            "option NBD_OPT_INFO",
            opt_reply(6, RepError::INVALID, 8),
        ),
        (
            "GO without room for the count",
            option(7, &[0, 0, 0, 0]),
            "option NBD_OPT_GO",
            opt_reply(7, RepError::INVALID, 4),
        ),
        (
            "GO with a truncated name length",
            option(7, &[0, 0]),
            "option NBD_OPT_GO",
            opt_reply(7, RepError::INVALID, 2),
        ),
        (
            "SET_META_CONTEXT query past the end",
            option(10, &meta_query_past_end),
            "option NBD_OPT_SET_META_CONTEXT",
            opt_reply(10, RepError::INVALID, 18),
        ),
        (
            "LIST_META_CONTEXT query not UTF-8",
            option(9, &meta_query_not_utf8),
            "option NBD_OPT_LIST_META_CONTEXT (9), 14 bytes: metadata context query not UTF-8",
            opt_reply(9, RepError::INVALID, 14),
        ),
        (
            "SET_META_CONTEXT claims 2^32-1 queries",
            option(10, &meta_huge_count),
            "option NBD_OPT_SET_META_CONTEXT",
            opt_reply(10, RepError::INVALID, 8),
        ),
        (
            "EXPORT_NAME not UTF-8 (no error reply exists)",
            option(1, &[0xc3, 0x28]),
            "option NBD_OPT_EXPORT_NAME",
            ErrorAction::Disconnect,
        ),
        (
            "EXPORT_NAME too long",
            option(1, &[b'a'; 4097]),
            "option NBD_OPT_EXPORT_NAME",
            ErrorAction::Disconnect,
        ),
    ];
    for (name, input, message, action) in rows {
        let err = server_option(&input).expect_err(name);
        assert!(err.to_string().starts_with(message), "{name}: got `{err}`");
        assert_eq!(err.action(), action, "{name}");
    }
}

#[test]
fn malformed_client_flags() {
    for (offered, flags, bad) in [
        (HandshakeFlags::FIXED_NEWSTYLE, 4u32, 4u32),
        (HandshakeFlags::FIXED_NEWSTYLE, 2, 2), // NO_ZEROES not offered
        (HandshakeFlags::all(), 0x8000_0003, 0x8000_0000),
    ] {
        let mut dec = ServerDecoder::new(offered, Limits::default());
        let err = dec.decode(&flags.to_be_bytes()).unwrap_err();
        assert_eq!(err, ProtoError::BadClientFlags { flags: bad });
        assert_eq!(err.action(), ErrorAction::Disconnect);
    }
}

#[test]
fn malformed_request_table() {
    let s = Mode::Structured;
    let rows: Vec<(&str, Vec<u8>, Mode, &str, ErrorAction)> = vec![
        (
            "bad request magic",
            request(&[0x25, 0x60, 0x95, 0x14], 0, 0, 0, 512),
            s,
            "bad request magic",
            ErrorAction::Disconnect,
        ),
        (
            "extended magic in compact mode",
            ext_request(0, 0, 0, 512)[..28].to_vec(),
            s,
            "bad request magic",
            ErrorAction::Disconnect,
        ),
        (
            "compact magic in extended mode",
            cat(&[&request(REQ, 0, 0, 0, 512), &[0; 4]]),
            Mode::Extended,
            "bad request magic",
            ErrorAction::Disconnect,
        ),
        (
            "unknown command",
            request(REQ, 0, 9, 0, 512),
            s,
            "unknown command: command 9",
            req_reply(Errno::EINVAL, 28, 0),
        ),
        (
            "unknown command with a payload (extended)",
            ext_request(0x20, 99, 0, 100),
            Mode::Extended,
            "unknown command",
            req_reply(Errno::EINVAL, 32, 100),
        ),
        (
            "unknown flag bit",
            request(REQ, 0x40, 0, 0, 512),
            s,
            "flags 0x40 not valid",
            req_reply(Errno::EINVAL, 28, 0),
        ),
        (
            "DF on READ without structured replies",
            request(REQ, 0x04, 0, 0, 512),
            Mode::Simple,
            "flags 0x4 not valid",
            req_reply(Errno::EINVAL, 28, 0),
        ),
        (
            "NO_HOLE on WRITE (payload still to skip)",
            request(REQ, 0x02, 1, 0, 512),
            s,
            "flags 0x2 not valid",
            req_reply(Errno::EINVAL, 28, 512),
        ),
        (
            "REQ_ONE on READ",
            request(REQ, 0x08, 0, 0, 512),
            s,
            "flags 0x8 not valid",
            req_reply(Errno::EINVAL, 28, 0),
        ),
        (
            "FAST_ZERO on TRIM",
            request(REQ, 0x10, 4, 0, 512),
            s,
            "flags 0x10 not valid",
            req_reply(Errno::EINVAL, 28, 0),
        ),
        (
            "PAYLOAD_LEN in compact mode",
            request(REQ, 0x20, 7, 0, 512),
            s,
            "flags 0x20 not valid",
            req_reply(Errno::EINVAL, 28, 0),
        ),
        (
            "PAYLOAD_LEN on TRIM (extended)",
            ext_request(0x20, 4, 0, 64),
            Mode::Extended,
            "flags 0x20 not valid",
            req_reply(Errno::EINVAL, 32, 64),
        ),
        (
            "READ offset + length overflows",
            request(REQ, 0, 0, u64::MAX - 10, 512),
            s,
            "offset + length overflows",
            req_reply(Errno::EINVAL, 28, 0),
        ),
        (
            "WRITE offset + length overflows",
            request(REQ, 0, 1, u64::MAX, 1),
            s,
            "offset + length overflows",
            req_reply(Errno::ENOSPC, 28, 1),
        ),
        (
            "TRIM 64-bit length overflows",
            ext_request(0, 4, 1, u64::MAX),
            Mode::Extended,
            "offset + length overflows",
            req_reply(Errno::EINVAL, 32, 0),
        ),
        (
            "READ longer than 32 MiB",
            request(REQ, 0, 0, 0, (32 << 20) + 1),
            s,
            "length larger than the limit",
            req_reply(Errno::EINVAL, 28, 0),
        ),
        (
            "CACHE longer than 32 MiB",
            ext_request(0, 5, 0, 1 << 40),
            Mode::Extended,
            "length larger than the limit",
            req_reply(Errno::EINVAL, 32, 0),
        ),
        (
            "WRITE payload longer than 32 MiB",
            request(REQ, 0, 1, 0, (32 << 20) + 1),
            s,
            "payload larger than the limit",
            ErrorAction::ReplyErrorThenDisconnect {
                cookie: 9,
                errno: Errno::EINVAL,
            },
        ),
        (
            "extended payload of 2^40 bytes",
            ext_request(0x20, 7, 0, 1 << 40),
            Mode::Extended,
            "payload larger than the limit",
            ErrorAction::ReplyErrorThenDisconnect {
                cookie: 9,
                errno: Errno::EINVAL,
            },
        ),
    ];
    for (name, input, mode, message, action) in rows {
        let err = server_request(&input, mode).expect_err(name);
        assert!(err.to_string().starts_with(message), "{name}: got `{err}`");
        assert_eq!(err.action(), action, "{name}");
    }
}

#[test]
fn disc_is_accepted_whatever_its_fields() {
    let input = request(REQ, 0xffff, 2, 7, 7);
    let d = server_request(&input, Mode::Simple).unwrap();
    assert!(matches!(
        d,
        Decoded::Complete {
            msg: ClientMessage::Request(Request {
                command: Command::Disc,
                ..
            }),
            consumed: 28
        }
    ));
}

#[test]
fn truncated_messages() {
    let mut dec = ServerDecoder::new(HandshakeFlags::FIXED_NEWSTYLE, Limits::default());
    assert_eq!(dec.end_of_input(&[]), Ok(()));
    assert_eq!(
        dec.end_of_input(&[0, 0]),
        Err(ProtoError::Truncated {
            what: "the client flags",
            missing: 2
        })
    );
    dec.decode(&[0, 0, 0, 1]).unwrap();
    let go = option(7, &[0, 0, 0, 0, 0, 0]);
    let err = dec.end_of_input(&go[..20]).unwrap_err();
    assert_eq!(
        err,
        ProtoError::Truncated {
            what: "an option",
            missing: 2
        }
    );
    assert_eq!(err.action(), ErrorAction::Disconnect);
    dec.start_transmission(Mode::Simple);
    assert_eq!(
        dec.end_of_input(&request(REQ, 0, 0, 0, 1)[..27]),
        Err(ProtoError::Truncated {
            what: "a request",
            missing: 1
        })
    );
}

#[test]
fn malformed_server_messages_disconnect() {
    let l = Limits::default();
    let rep = |t: u32, data: &[u8]| {
        cat(&[
            &[0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9],
            &[0, 0, 0, 7],
            &t.to_be_bytes(),
            &(data.len() as u32).to_be_bytes(),
            data,
        ])
    };
    let chunk = |t: u16, data: &[u8]| {
        cat(&[
            &[0x66, 0x8e, 0x33, 0xef],
            &[0, 1],
            &t.to_be_bytes(),
            COOKIE,
            &(data.len() as u32).to_be_bytes(),
            data,
        ])
    };
    let bad_replies: Vec<(&str, Vec<u8>)> = vec![
        (
            "oldstyle greeting",
            cat(&[
                b"NBDMAGIC",
                &[0, 0, 0x42, 0x02, 0x81, 0x86, 0x12, 0x53],
                &[0, 1],
            ]),
        ),
        ("ACK with data", rep(1, b"x")),
        ("SERVER name past the end", rep(2, &[0, 0, 0, 5, b'a'])),
        (
            "INFO_EXPORT of 11 bytes",
            rep(3, &[0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ),
        (
            "INFO_BLOCK_SIZE of 8 bytes",
            rep(3, &[0, 3, 0, 0, 0, 1, 0, 0]),
        ),
        ("INFO without a type", rep(3, &[0])),
        ("META_CONTEXT without an id", rep(4, &[0, 0])),
        ("unknown non-error reply type", rep(5, b"")),
        ("error message not UTF-8", rep(0x8000_0001, &[0xff])),
        ("OFFSET_DATA without data", chunk(1, &[0; 8])),
        ("OFFSET_HOLE of 11 bytes", chunk(2, &[0; 11])),
        ("OFFSET_HOLE of size 0", chunk(2, &[0; 12])),
        ("BLOCK_STATUS with a partial extent", chunk(5, &[0; 16])),
        ("BLOCK_STATUS with a zero-length extent", chunk(5, &[0; 12])),
        (
            "ERROR message longer than the chunk",
            chunk(0x8001, &[0, 0, 0, 5, 0, 9, b'a']),
        ),
        (
            "ERROR_OFFSET without the offset",
            chunk(0x8002, &[0, 0, 0, 5, 0, 0]),
        ),
        ("unknown non-error chunk type", chunk(3, b"")),
        (
            "chunk longer than any OFFSET_DATA can be",
            cat(&[
                &[0x66, 0x8e, 0x33, 0xef],
                &[0, 1],
                &[0, 1],
                COOKIE,
                &[0x02, 0, 0, 9],
            ]),
        ),
    ];
    for (name, input) in bad_replies {
        let err = if name.contains("greeting") {
            Greeting::decode(&input).unwrap_err()
        } else if input[0] == 0 {
            OptionReply::decode(&input, &l).unwrap_err()
        } else {
            Reply::decode(&input, Mode::Structured, &l).unwrap_err()
        };
        assert_eq!(err.action(), ErrorAction::Disconnect, "{name}: {err}");
    }
    // Extended chunks: a descriptor count that disagrees with the length.
    let ext = cat(&[
        &[0x6e, 0x8a, 0x27, 0x8c],
        &[0, 1],
        &[0, 6],
        COOKIE,
        &[0; 8],
        &24u64.to_be_bytes(),
        &[0, 0, 0, 1],
        &[0, 0, 0, 2],
        &[0, 0, 0, 0, 0, 0, 0, 1],
        &[0; 8],
    ]);
    assert!(matches!(
        Reply::decode(&ext, Mode::Extended, &l),
        Err(ProtoError::BadLength { .. })
    ));
    // A structured chunk where extended headers were negotiated.
    let c = chunk(0, b"");
    assert!(matches!(
        Reply::decode(&c, Mode::Extended, &l),
        Err(ProtoError::BadMagic { .. })
    ));
}
