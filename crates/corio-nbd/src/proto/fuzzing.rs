//! The fuzz target's checks, shared by `fuzz/fuzz_targets/decoder.rs` and
//! the regression test that replays every crash ever found
//! (`tests/fuzz_regressions.rs`). Not part of the API.

use super::*;

fn check_server(mut dec: ServerDecoder, input: &[u8]) {
    let mut pos = 0;
    while pos < input.len() {
        match dec.decode(&input[pos..]) {
            Ok(Decoded::NeedMore(n)) => {
                assert!(n > 0);
                let _ = dec.end_of_input(&input[pos..]);
                return;
            }
            Ok(Decoded::Complete { msg, consumed }) => {
                assert!(consumed > 0 && consumed <= input.len() - pos);
                if let ClientMessage::Option(OptionRequest::Go(_)) = msg {
                    dec.start_transmission(Mode::Structured);
                }
                if let ClientMessage::Option(OptionRequest::ExtendedHeaders) = msg {
                    dec.start_transmission(Mode::Extended);
                }
                pos += consumed;
            }
            Err(e) => match e.action() {
                ErrorAction::ReplyOption { consumed, .. }
                | ErrorAction::ReplyError { consumed, .. } => {
                    assert!(consumed > 0 && consumed <= input.len() - pos, "{e}");
                    pos += consumed;
                }
                _ => return,
            },
        }
    }
}

fn check_client(mut dec: ClientDecoder, input: &[u8]) {
    let mut pos = 0;
    while pos < input.len() {
        match dec.decode(&input[pos..]) {
            Ok(Decoded::Complete { consumed, msg }) => {
                assert!(consumed > 0 && consumed <= input.len() - pos);
                if let ServerMessage::OptionReply(r) = msg {
                    if r.option == opt::GO && r.body == OptionReplyBody::Ack {
                        dec.start_transmission(Mode::Structured);
                    }
                }
                pos += consumed;
            }
            _ => return,
        }
    }
}

/// Run both decoders over `data` through every phase: the first byte
/// picks the phase and limits, the rest is the peer's bytes. Panics if a
/// decoder panics, claims more bytes than it was given, or reports a
/// recoverable error that used bytes outside the input.
pub fn check_decoders(data: &[u8]) {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let limits = if sel & 0x80 != 0 {
        Limits {
            max_option_len: 64,
            max_string_len: 16,
            max_payload: 512,
            max_extents: 4,
        }
    } else {
        Limits::default()
    };
    let mut s = ServerDecoder::new(
        HandshakeFlags::from_bits_truncate(u16::from(sel >> 4)),
        limits,
    );
    match sel & 7 {
        0 => {}
        1 => {
            let _ = s.decode(&[0, 0, 0, 3]);
        }
        2 => s.start_transmission(Mode::Simple),
        3 => s.start_transmission(Mode::Structured),
        4 => s.start_transmission(Mode::Extended),
        _ => {
            let mut c = ClientDecoder::new(limits);
            match sel & 7 {
                5 => {}
                6 => c.start_transmission(Mode::Structured),
                _ => c.start_transmission(Mode::Extended),
            }
            check_client(c, input);
            return;
        }
    }
    check_server(s, input);
    for mode in [Mode::Simple, Mode::Structured, Mode::Extended] {
        let _ = Reply::decode(input, mode, &limits);
    }
    let _ = BlockStatusPayload::decode(input);
}
