//! Frame headers, masking and the client-frame decoder.

use super::{trace, Ptr};

pub(super) const OP_CONTINUATION: u8 = 0x0;
pub(super) const OP_TEXT: u8 = 0x1;
pub(super) const OP_BINARY: u8 = 0x2;
pub(super) const OP_CLOSE: u8 = 0x8;
pub(super) const OP_PING: u8 = 0x9;
pub(super) const OP_PONG: u8 = 0xA;

const FIN: u8 = 0x80;
const RSV: u8 = 0x70;
const OPCODE: u8 = 0x0F;
const MASKED: u8 = 0x80;
const LEN7: u8 = 0x7F;
const CONTROL: u8 = 0x8;
const LEN_16: u8 = 126;
const LEN_64: u8 = 127;

/// A server frame header (unmasked, FIN set) for `len` payload bytes:
/// the 7-, 16- or 64-bit length form, whichever is shortest.
pub(super) fn header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = FIN | (opcode & OPCODE);
    if len < LEN_16 as usize {
        h[1] = len as u8;
        (h, 2)
    } else if len <= u16::MAX as usize {
        h[1] = LEN_16;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = LEN_64;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// XORs `data` with `mask`, `data[0]` being byte `offset` of the payload.
pub(super) fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let m: [u8; 4] = std::array::from_fn(|i| mask[(offset + i) % 4]);
    let wide = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

/// The close codes a peer may send (RFC 6455 §7.4, and the IANA
/// registry's 1012-1014).
pub(super) fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A decoded control frame.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Control {
    Ping(Vec<u8>),
    Pong,
    Close(Vec<u8>),
}

/// A client frame we reject: the close `code` and `reason` to send, and
/// the error `message` for our caller.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ProtocolError {
    pub(super) code: u16,
    pub(super) reason: &'static str,
    pub(super) message: String,
}

impl ProtocolError {
    pub(super) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            reason,
            message: message.into(),
        }
    }
}

/// The frame whose payload is being decoded.
#[derive(Debug)]
struct Frame {
    /// `OP_BINARY` for continuation frames.
    opcode: u8,
    mask: [u8; 4],
    /// Payload bytes still to come.
    remain: u64,
    /// Payload bytes decoded so far, modulo 4 (the mask's phase).
    phase: usize,
}

/// Decodes client frames (QEMU's `decode_header` and `decode_payload`),
/// streaming binary payload as it arrives; control payloads are handed
/// over whole.
#[derive(Debug, Default)]
pub(super) struct Decoder {
    frame: Option<Frame>,
    /// A binary message without FIN was begun: continuation frames follow.
    fragmented: bool,
}

type Step = Result<Option<Control>, ProtocolError>;

impl Decoder {
    /// Whether a frame or a fragmented message is incomplete.
    pub(super) fn mid_message(&self) -> bool {
        self.frame.is_some() || self.fragmented
    }

    /// Decodes from `input`, appending binary payload to `raw`, until the
    /// input ends inside a frame header or a control frame (`Ok(None)`),
    /// a control frame is complete, or the client broke the protocol.
    /// Returns how many bytes of `input` were consumed as well.
    pub(super) fn decode(&mut self, input: &[u8], raw: &mut Vec<u8>, ioc: Ptr) -> (usize, Step) {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            let Some(f) = self.frame.as_mut() else {
                match self.header(rest, ioc) {
                    Ok(Some((hlen, frame))) => {
                        used += hlen;
                        self.frame = Some(frame);
                        continue;
                    }
                    Ok(None) => return (used, Ok(None)),
                    Err(e) => return (used, Err(e)),
                }
            };
            if f.opcode & CONTROL != 0 {
                // Wait for the whole payload: it is answered whole.
                let len = f.remain as usize;
                if rest.len() < len {
                    return (used, Ok(None));
                }
                let mut payload = rest[..len].to_vec();
                apply_mask(&mut payload, f.mask, 0);
                let opcode = f.opcode;
                self.frame = None;
                trace::qio_channel_websock_payload_decode(ioc, opcode, 0);
                let control = match opcode {
                    OP_PING => Control::Ping(payload),
                    OP_PONG => Control::Pong,
                    _ => Control::Close(payload),
                };
                return (used + len, Ok(Some(control)));
            }
            let n = f.remain.min(rest.len() as u64) as usize;
            if n == 0 && f.remain > 0 {
                return (used, Ok(None));
            }
            let at = raw.len();
            raw.extend_from_slice(&rest[..n]);
            apply_mask(&mut raw[at..], f.mask, f.phase);
            f.phase = (f.phase + n) % 4;
            f.remain -= n as u64;
            used += n;
            trace::qio_channel_websock_payload_decode(ioc, f.opcode, f.remain);
            if f.remain == 0 {
                self.frame = None;
            }
        }
    }

    /// Parses and checks one frame header: `Ok(None)` if incomplete.
    fn header(&mut self, b: &[u8], ioc: Ptr) -> Result<Option<(usize, Frame)>, ProtocolError> {
        if b.len() < 2 {
            return Ok(None);
        }
        let (fin, opcode) = (b[0] & FIN != 0, b[0] & OPCODE);
        let (masked, len7) = (b[1] & MASKED != 0, b[1] & LEN7);
        let hlen = 2
            + 4 * usize::from(masked)
            + match len7 {
                LEN_16 => 2,
                LEN_64 => 8,
                _ => 0,
            };
        let partial = || {
            trace::qio_channel_websock_header_partial_decode(
                ioc,
                usize::from(len7),
                b[0] & FIN,
                opcode,
                b[1] & MASKED,
            )
        };
        if let Err(e) = self.check(b[0], masked, len7) {
            partial();
            return Err(e);
        }
        if b.len() < hlen {
            return Ok(None);
        }
        partial();
        let (len, mask_at) = match len7 {
            LEN_16 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            LEN_64 => {
                let mut l = [0u8; 8];
                l.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(l), 10)
            }
            n => (u64::from(n), 2),
        };
        if len >> 63 != 0 || usize::try_from(len).is_err() {
            return Err(ProtocolError::new(
                1002,
                "invalid payload length",
                format!("websocket frame payload length {len} is out of range"),
            ));
        }
        let mask = [b[mask_at], b[mask_at + 1], b[mask_at + 2], b[mask_at + 3]];
        trace::qio_channel_websock_header_full_decode(ioc, hlen, len, u32::from_be_bytes(mask));
        let opcode = if opcode == OP_CONTINUATION || opcode == OP_BINARY {
            self.fragmented = !fin;
            OP_BINARY
        } else {
            opcode
        };
        Ok(Some((
            hlen,
            Frame {
                opcode,
                mask,
                remain: len,
                phase: 0,
            },
        )))
    }

    /// QEMU's sanity checks, plus RFC 6455's on reserved bits and
    /// fragment order.
    fn check(&self, b0: u8, masked: bool, len7: u8) -> Result<(), ProtocolError> {
        let (fin, opcode) = (b0 & FIN != 0, b0 & OPCODE);
        if b0 & RSV != 0 {
            return Err(ProtocolError::new(
                1002,
                "reserved bits set",
                format!("websocket frame with reserved bits {:#x} set", b0 & RSV),
            ));
        }
        match opcode {
            OP_CONTINUATION if !self.fragmented => {
                return Err(ProtocolError::new(
                    1002,
                    "unexpected continuation frame",
                    "websocket continuation frame without a fragmented message",
                ))
            }
            OP_BINARY if self.fragmented => {
                return Err(ProtocolError::new(
                    1002,
                    "expected a continuation frame",
                    "websocket binary frame inside a fragmented message",
                ))
            }
            OP_CONTINUATION | OP_BINARY => {}
            _ if !fin => {
                return Err(ProtocolError::new(
                    1008,
                    "only binary frames may be fragmented",
                    "only binary websocket frames may be fragmented",
                ))
            }
            OP_CLOSE | OP_PING | OP_PONG => {}
            _ => {
                return Err(ProtocolError::new(
                    1003,
                    "only binary, close, ping, and pong frames are supported",
                    format!(
                        "unsupported opcode: {opcode:#04x}{}; only binary, close, ping, \
                         and pong websocket frames are supported",
                        if opcode == OP_TEXT { " (text)" } else { "" }
                    ),
                ))
            }
        }
        if !masked {
            return Err(ProtocolError::new(
                1002,
                "client frames must be masked",
                "client websocket frames must be masked",
            ));
        }
        if opcode & CONTROL != 0 && len7 > 125 {
            return Err(ProtocolError::new(
                1002,
                "control frame is too large",
                "websocket control frame is too large",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{apply_mask, header, valid_close_code, Control, Decoder, OP_BINARY};

    const NIL: super::Ptr = std::ptr::null();

    #[test]
    fn header_length_forms() {
        for (len, hlen, b1) in [
            (0, 2, 0),
            (125, 2, 125),
            (126, 4, 126),
            (65535, 4, 126),
            (65536, 10, 127),
        ] {
            let (h, n) = header(OP_BINARY, len);
            assert_eq!((n, h[0], h[1]), (hlen, 0x82, b1), "len {len}");
        }
        let (h, _) = header(OP_BINARY, 65536);
        assert_eq!(&h[2..10], &65536u64.to_be_bytes());
    }

    /// A masked client frame.
    fn client_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend((n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend((n as u64).to_be_bytes());
            }
        }
        f.extend(mask);
        let at = f.len();
        f.extend(payload);
        apply_mask(&mut f[at..], mask, 0);
        f
    }

    #[test]
    fn mask_phase() {
        let data: Vec<u8> = (0..37).collect();
        let mask = [0xde, 0xad, 0xbe, 0xef];
        let mut whole = data.clone();
        apply_mask(&mut whole, mask, 0);
        let mut split = data.clone();
        let (a, b) = split.split_at_mut(13);
        apply_mask(a, mask, 0);
        apply_mask(b, mask, 13);
        assert_eq!(whole, split);
        assert!(whole
            .iter()
            .enumerate()
            .all(|(i, b)| *b == data[i] ^ mask[i % 4]));
    }

    #[test]
    fn decode_byte_by_byte_all_length_forms() {
        let mut input = Vec::new();
        let mut expect = Vec::new();
        for (n, seed) in [(1usize, 1u8), (125, 2), (126, 3), (65535, 4), (65536, 5)] {
            let payload: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_mul(seed)).collect();
            input.extend(client_frame(0x82, &payload, [seed, 7, 9, 11]));
            expect.extend(payload);
        }
        input.extend(client_frame(0x89, b"ping!", [1, 2, 3, 4]));
        let mut dec = Decoder::default();
        let mut raw = Vec::new();
        let mut pos = 0;
        let mut pings = 0;
        // Feed growing prefixes, the way a stream delivers them.
        for end in (1..=input.len()).step_by(997).chain([input.len()]) {
            loop {
                let (used, r) = dec.decode(&input[pos..end], &mut raw, NIL);
                pos += used;
                match r.unwrap() {
                    None => break,
                    Some(Control::Ping(p)) => {
                        assert_eq!(p, b"ping!");
                        pings += 1;
                    }
                    Some(c) => panic!("unexpected {c:?}"),
                }
            }
        }
        assert_eq!(pos, input.len());
        assert_eq!(pings, 1);
        assert!(raw == expect, "decoded payload differs");
        assert!(!dec.mid_message());
    }

    #[test]
    fn decode_fragments_and_controls_between_them() {
        let mut input = client_frame(0x02, b"abc", [1, 1, 1, 1]); // binary, no FIN
        input.extend(client_frame(0x8A, b"", [2, 2, 2, 2])); // pong in between
        input.extend(client_frame(0x80, b"def", [3, 3, 3, 3])); // continuation, FIN
        input.extend(client_frame(0x88, &1001u16.to_be_bytes(), [4, 4, 4, 4]));
        let mut dec = Decoder::default();
        let mut raw = Vec::new();
        let (used, r) = dec.decode(&input, &mut raw, NIL);
        assert_eq!(r, Ok(Some(Control::Pong)));
        let (used2, r) = dec.decode(&input[used..], &mut raw, NIL);
        assert_eq!(r, Ok(Some(Control::Close(1001u16.to_be_bytes().to_vec()))));
        assert_eq!(used + used2, input.len());
        assert_eq!(raw, b"abcdef");
    }

    #[test]
    fn decode_rejects() {
        let unmasked = vec![0x82, 0x01, b'x'];
        let mut too_big_ping = vec![0x89, 0x80 | 126, 0, 126];
        too_big_ping.extend([0; 4]);
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (unmasked, 1002),
            (client_frame(0x81, b"text", [1; 4]), 1003),
            (client_frame(0x83, b"", [1; 4]), 1003),
            (client_frame(0x8F, b"", [1; 4]), 1003),
            (client_frame(0x01, b"text", [1; 4]), 1008),
            (client_frame(0x09, b"", [1; 4]), 1008),
            (too_big_ping, 1002),
            (client_frame(0xC2, b"", [1; 4]), 1002),
            (client_frame(0x80, b"", [1; 4]), 1002),
            (
                [
                    client_frame(0x02, b"a", [1; 4]),
                    client_frame(0x82, b"b", [1; 4]),
                ]
                .concat(),
                1002,
            ),
        ];
        for (input, code) in cases {
            let mut dec = Decoder::default();
            let mut raw = Vec::new();
            let (_, r) = dec.decode(&input, &mut raw, NIL);
            assert_eq!(r.map_err(|e| e.code), Err(code), "{input:x?}");
        }
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend(u64::MAX.to_be_bytes());
        huge.extend([0; 4]);
        let (_, r) = Decoder::default().decode(&huge, &mut Vec::new(), NIL);
        assert_eq!(r.map_err(|e| e.code), Err(1002));
    }

    #[test]
    fn close_codes() {
        for ok in [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert!(valid_close_code(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
            assert!(!valid_close_code(bad), "{bad}");
        }
    }
}
