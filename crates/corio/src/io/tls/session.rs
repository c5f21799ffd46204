//! The state of one TLS session (QEMU's `QCryptoTLSSession`): the rustls
//! connection, the ciphertext staged on each side of it, and the pure
//! helpers of the read and write paths.

use std::io::{self, IoSlice, IoSliceMut, Read};
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::{Arc, Mutex};

use super::{Authz, Endpoint};

/// Where a session is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum State {
    /// Before or during the handshake: no application data yet.
    Handshaking,
    /// The handshake completed and the credentials were accepted.
    Ready,
    /// The handshake or the session failed; the sentence says why.
    Failed(String),
}

/// The rustls connection and what we learn about it.
pub(super) struct Conn {
    pub(super) tls: rustls::Connection,
    pub(super) state: State,
    /// The distinguished name of the peer's certificate.
    pub(super) peer_name: Option<String>,
    /// `close_notify` is queued: no more application data may be written.
    pub(super) close_sent: bool,
    /// rustls refused a received record: reads report it once the
    /// plaintext decrypted before it has been read.
    pub(super) read_error: Option<rustls::Error>,
}

/// Ciphertext read from the master and not yet taken by rustls:
/// `buf[start..end]`.
pub(super) struct ReadSide {
    pub(super) buf: Box<[u8]>,
    pub(super) start: usize,
    pub(super) end: usize,
}

/// Ciphertext taken from rustls and not yet written to the master:
/// `out[sent..]`.
pub(super) struct WriteSide {
    pub(super) out: Vec<u8>,
    pub(super) sent: usize,
    /// Plaintext already encrypted (and queued in `out`) by a write that
    /// then reported `WouldBlock` because the master did not take it all;
    /// the retry must pass the same bytes first and is then told they were
    /// written.
    pub(super) owed: Option<Vec<u8>>,
}

/// The TLS session of one channel (QEMU's `QCryptoTLSSession`). Boxed so
/// that its address, used as the channel's id in trace events, stays put
/// when the channel moves.
///
/// Locks are taken in the order `rd`, `wr`, `conn`, never the other way;
/// `conn` is only held for rustls calls, never across master I/O, so that
/// a reader blocked in the master (blocking mode) never holds up a writer,
/// nor the reverse.
pub(super) struct Session {
    /// The rustls state; every lock holder may call into rustls.
    pub(super) conn: Mutex<Conn>,
    /// Held by the one reader while it reads the master and feeds rustls.
    pub(super) rd: Mutex<ReadSide>,
    /// Held by the one writer while it writes the master.
    pub(super) wr: Mutex<WriteSide>,
    pub(super) endpoint: Endpoint,
    /// The name a client checks the server's certificate against.
    pub(super) hostname: Option<String>,
    pub(super) verify_peer: bool,
    pub(super) authz: Option<Arc<dyn Authz>>,
    /// QEMU's `tioc->shutdown`: the directions shut down locally (a
    /// truncated stream then reads as end of stream). A plain flag word.
    pub(super) shutdown: AtomicU8,
    /// A handshake is running (task or synchronous): a second one fails.
    pub(super) handshaking: AtomicBool,
}

impl Session {
    /// A session around `tls`, before its handshake.
    pub(super) fn new(
        tls: rustls::Connection,
        endpoint: Endpoint,
        hostname: Option<String>,
        verify_peer: bool,
        authz: Option<Arc<dyn Authz>>,
    ) -> Session {
        Session {
            conn: Mutex::new(Conn {
                tls,
                state: State::Handshaking,
                peer_name: None,
                close_sent: false,
                read_error: None,
            }),
            rd: Mutex::new(ReadSide {
                buf: vec![0u8; READ_CHUNK].into_boxed_slice(),
                start: 0,
                end: 0,
            }),
            wr: Mutex::new(WriteSide {
                out: Vec::new(),
                sent: 0,
                owed: None,
            }),
            endpoint,
            hostname,
            verify_peer,
            authz,
            shutdown: AtomicU8::new(0),
            handshaking: AtomicBool::new(false),
        }
    }
}

/// How much ciphertext one read from the master asks for.
const READ_CHUNK: usize = 64 * 1024;

/// Hands staged ciphertext to rustls and decrypts it, until the stage is
/// empty or rustls wants no more (it holds plaintext, has seen
/// `close_notify`, or has handshake messages to send first). Returns
/// whether anything was taken.
pub(super) fn feed(tls: &mut rustls::Connection, rd: &mut ReadSide) -> Result<bool, rustls::Error> {
    let mut progress = false;
    while rd.start < rd.end && tls.wants_read() {
        let n = match tls.read_tls(&mut &rd.buf[rd.start..rd.end]) {
            Ok(n) => n,
            Err(e) => return Err(rustls::Error::General(e.to_string())),
        };
        if n == 0 {
            break;
        }
        rd.start += n;
        progress = true;
        tls.process_new_packets()?;
    }
    Ok(progress)
}

/// Copies decrypted plaintext into `iov`. `Ok(0)`: `close_notify` was
/// received. Errors: `WouldBlock` (nothing decrypted), `UnexpectedEof`
/// (the transport ended without `close_notify`); both only when no byte
/// was copied.
pub(super) fn read_plain(
    tls: &mut rustls::Connection,
    iov: &mut [IoSliceMut<'_>],
) -> io::Result<usize> {
    let mut reader = tls.reader();
    let mut total = 0;
    for buf in iov.iter_mut().filter(|b| !b.is_empty()) {
        match reader.read(buf) {
            Ok(n) => {
                total += n;
                if n < buf.len() {
                    break;
                }
            }
            Err(_) if total > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Whether the bytes of `iov` start with `owed`.
pub(super) fn starts_with(iov: &[IoSlice<'_>], owed: &[u8]) -> bool {
    let mut rest = owed;
    for b in iov {
        if rest.is_empty() {
            break;
        }
        let k = b.len().min(rest.len());
        if b[..k] != rest[..k] {
            return false;
        }
        rest = &rest[k..];
    }
    rest.is_empty()
}

/// The first `n` bytes of `iov`, copied.
pub(super) fn prefix(iov: &[IoSlice<'_>], n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    for b in iov {
        let k = b.len().min(n - v.len());
        v.extend_from_slice(&b[..k]);
        if v.len() == n {
            break;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_prefix_matching() {
        let a = [IoSlice::new(b"hel"), IoSlice::new(b"lo world")];
        assert_eq!(prefix(&a, 5), b"hello");
        assert!(starts_with(&a, b"hello"));
        assert!(starts_with(&a, b"hello world"));
        assert!(!starts_with(&a, b"help"));
        assert!(!starts_with(&a, b"hello world!"));
    }
}
