//! QEMU's tests/unit/io-channel-helpers.c: 1 MB in 250 iovecs of 4194
//! bytes, written by one thread and read by another, then compared.
//!
//! Uses `helpers`: a test crate that declares `mod io_channel_helpers;`
//! declares `mod helpers;` too.

#![allow(dead_code)]

use std::io::{IoSlice, IoSliceMut};
use std::sync::Arc;

use corio::io::Channel;

use crate::helpers::join_within;

pub const IOV_COUNT: usize = 250;
pub const IOV_LEN: usize = 4194;
pub const TOTAL: usize = IOV_COUNT * IOV_LEN;

/// Deterministic test data.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(7) as u8 ^ seed)
        .collect()
}

/// QEMU's `qio_channel_test_run_threads`: writes the pattern from `src` in
/// one thread, reads it from `dst` in another, and compares. `blocking`
/// selects the mode of both channels; non-blocking mode goes through the
/// channels' poll(2) wait.
pub fn run_threads<S, D>(blocking: bool, src: Arc<S>, dst: Arc<D>)
where
    S: Channel + 'static,
    D: Channel + 'static,
{
    src.set_blocking(blocking).unwrap();
    dst.set_blocking(blocking).unwrap();
    let data = pattern(TOTAL, 0x5a);
    let expect = data.clone();
    let writer = std::thread::spawn(move || {
        let mut iov: Vec<IoSlice<'_>> = data.chunks(IOV_LEN).map(IoSlice::new).collect();
        assert_eq!(iov.len(), IOV_COUNT);
        src.writev_all(&mut iov).unwrap();
    });
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; TOTAL];
        let mut iov: Vec<IoSliceMut<'_>> = got.chunks_mut(IOV_LEN).map(IoSliceMut::new).collect();
        dst.readv_all(&mut iov).unwrap();
        got
    });
    join_within(writer, "writer");
    let got = join_within(reader, "reader");
    assert!(got == expect, "data read differs from data written");
}

/// A well-formed WebSocket upgrade request (RFC 6455's example key).
pub const GOOD_REQUEST: &str = "GET / HTTP/1.1\r\n\
    Host: localhost\r\n\
    Upgrade: websocket\r\n\
    Connection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// A masked client WebSocket frame (7- or 16-bit length forms).
pub fn frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![b0];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend(u16::try_from(n).expect("a 16-bit length").to_be_bytes());
        }
    }
    f.extend(mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}
