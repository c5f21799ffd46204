//! TLS with pre-shared keys (qemu-nbd's `tls-creds-psk`), on OpenSSL.
//!
//! rustls, under corio's [`TlsChannel`](corio::io::TlsChannel), has no
//! external pre-shared keys, so this is a second TLS backend behind the
//! same [`Channel`] contract: an OpenSSL `SslStream` over the client's
//! non-blocking socket. OpenSSL's server PSK callback serves both TLS 1.3
//! (an external PSK with a SHA-256 binder, which is what GnuTLS clients
//! such as libnbd and qemu offer first) and TLS 1.2's PSK cipher suites.
//!
//! The key file is qemu's (GnuTLS's): `DIR/keys.psk`, one `username:hexkey`
//! per line. A client names its user as the PSK identity; an unknown
//! identity or a wrong key fails that client's handshake only.
//!
//! # The wait contract
//!
//! As [`TlsChannel`](corio::io::TlsChannel)'s: a read reports
//! [`WouldBlock`](io::ErrorKind::WouldBlock) only when OpenSSL holds no
//! decrypted byte and the socket has nothing to read; whatever OpenSSL
//! has to send while reading (alerts, key-update replies) goes at once if
//! the socket takes it, else ahead of the next write. A write that
//! returned `Ok(n)` has reached the socket; a write that reported
//! `WouldBlock` is retried with the same data (the `_all` loops do).

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::Shutdown;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};

use corio::io::watch::PendingProbe;
use corio::io::{events, Channel, ChannelBase, ReadFlags, SocketChannel};
use openssl::ex_data::Index;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslMode, SslOptions, SslStream,
    SslVersion,
};

/// The key file's name in a `tls-creds-psk` directory (qemu's
/// `QCRYPTO_TLS_CREDS_PSKFILE`).
pub const PSK_FILE: &str = "keys.psk";

/// The most one write hands OpenSSL when it gathers several buffers.
const GATHER_MAX: usize = 256 * 1024;

/// OpenSSL's limit on a pre-shared key (`PSK_MAX_PSK_LEN`).
const MAX_KEY_LEN: usize = 512;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Server credentials with pre-shared keys: the users of a `keys.psk` file
/// and the OpenSSL context that checks them.
#[derive(Clone)]
pub struct PskCreds {
    users: Arc<HashMap<String, Vec<u8>>>,
    ctx: SslContext,
}

impl std::fmt::Debug for PskCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("PskCreds")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

/// Parses a `keys.psk` file: `username:hexkey` lines; blank lines are
/// skipped.
///
/// # Errors
/// A line without `:`, an empty user name, or a key that is not an even
/// number of hex digits (at most 512 bytes), named by its line number.
pub fn parse_keys(text: &str) -> Result<HashMap<String, Vec<u8>>, String> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: &str| format!("line {}: {what}", i + 1);
        let (user, hex) = line
            .split_once(':')
            .ok_or_else(|| bad("expected username:hexkey"))?;
        if user.is_empty() {
            return Err(bad("empty user name"));
        }
        let key = decode_hex(hex.trim()).ok_or_else(|| bad("the key is not hex digits"))?;
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(bad("the key must be 1 to 512 bytes"));
        }
        users.insert(user.to_owned(), key);
    }
    Ok(users)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some((digit(p[0])? * 16 + digit(p[1])?) as u8))
        .collect()
}

impl PskCreds {
    /// Loads `dir/keys.psk` (qemu's `tls-creds-psk,dir=DIR,endpoint=server`).
    ///
    /// # Errors
    /// If the file cannot be read or parsed, or OpenSSL refuses the setup.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<PskCreds, String> {
        let path = dir.as_ref().join(PSK_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read PSK file {}: {e}", path.display()))?;
        let users = parse_keys(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_users(users)
    }

    /// Credentials for these users and keys.
    ///
    /// # Errors
    /// If OpenSSL refuses the context setup.
    pub fn from_users(users: HashMap<String, Vec<u8>>) -> Result<PskCreds, String> {
        let users = Arc::new(users);
        let ctx = server_context(users.clone()).map_err(|e| format!("OpenSSL PSK setup: {e}"))?;
        Ok(PskCreds { users, ctx })
    }

    /// How many users the key file names.
    pub fn users(&self) -> usize {
        self.users.len()
    }
}

fn server_context(
    users: Arc<HashMap<String, Vec<u8>>>,
) -> Result<SslContext, openssl::error::ErrorStack> {
    let mut b = SslContextBuilder::new(SslMethod::tls_server())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    // No certificate: TLS 1.2 can only pick a PSK suite. TLS 1.3 (first
    // choice) needs a suite with the PSK's hash, SHA-256; AES-GCM first
    // (GnuTLS clients list ChaCha20 before it, but AES has hardware help).
    b.set_cipher_list("ECDHE-PSK:DHE-PSK:PSK:!aNULL:!eNULL")?;
    b.set_ciphersuites(
        "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384",
    )?;
    b.set_options(SslOptions::CIPHER_SERVER_PREFERENCE);
    // Resumption tickets would be a second way in; PSK clients never use them.
    b.set_num_tickets(0)?;
    b.set_mode(SslMode::ACCEPT_MOVING_WRITE_BUFFER | SslMode::ENABLE_PARTIAL_WRITE);
    let index = identity_index()?;
    b.set_psk_server_callback(move |ssl, identity, psk| {
        let id = identity.and_then(|id| std::str::from_utf8(id).ok());
        match id.and_then(|id| users.get(id).map(|k| (id, k))) {
            Some((id, key)) if key.len() <= psk.len() => {
                // OpenSSL keeps no identity for TLS 1.3's external PSK.
                ssl.set_ex_data(index, id.to_owned());
                psk[..key.len()].copy_from_slice(key);
                Ok(key.len())
            }
            // 0: unknown identity; OpenSSL fails the handshake.
            _ => Ok(0),
        }
    });
    Ok(b.build())
}

fn client_context(user: Vec<u8>, key: Vec<u8>) -> Result<SslContext, openssl::error::ErrorStack> {
    let mut b = SslContextBuilder::new(SslMethod::tls_client())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    b.set_cipher_list("ECDHE-PSK:DHE-PSK:PSK:!aNULL:!eNULL")?;
    b.set_mode(SslMode::ACCEPT_MOVING_WRITE_BUFFER | SslMode::ENABLE_PARTIAL_WRITE);
    b.set_psk_client_callback(move |_ssl, _hint, identity, psk| {
        // The identity is a C string: it and its NUL must fit.
        if user.len() >= identity.len() || key.len() > psk.len() {
            return Ok(0);
        }
        identity[..user.len()].copy_from_slice(&user);
        identity[user.len()] = 0;
        psk[..key.len()].copy_from_slice(&key);
        Ok(key.len())
    });
    Ok(b.build())
}

/// Where the server callback leaves the identity it accepted.
fn identity_index() -> Result<Index<Ssl, String>, openssl::error::ErrorStack> {
    static INDEX: OnceLock<Index<Ssl, String>> = OnceLock::new();
    if let Some(i) = INDEX.get() {
        return Ok(*i);
    }
    let i = Ssl::new_ex_index::<String>()?;
    Ok(*INDEX.get_or_init(|| i))
}

/// The socket under OpenSSL: one non-blocking read or write per call.
struct SockIo {
    sock: Arc<SocketChannel>,
    /// Ciphertext OpenSSL produced while reading that the socket did not
    /// take; it goes before anything else.
    out: Vec<u8>,
    /// In a read: writes the socket refuses are queued in `out` instead of
    /// failing the read.
    reading: bool,
}

impl SockIo {
    /// Sends what is queued; `WouldBlock` if some stays.
    fn flush_out(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            let n = self.sock.io_writev(&[IoSlice::new(&self.out)], &[])?;
            self.out.drain(..n);
        }
        Ok(())
    }
}

impl Read for SockIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock
            .io_readv(&mut [IoSliceMut::new(buf)], None, ReadFlags::default())
    }
}

impl Write for SockIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let sent = match self.flush_out() {
            Ok(()) => self.sock.io_writev(&[IoSlice::new(buf)], &[]),
            Err(e) => Err(e),
        };
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.reading => {
                self.out.extend_from_slice(buf);
                Ok(buf.len())
            }
            other => other,
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What an OpenSSL error means to a caller of the channel.
fn map_err(e: openssl::ssl::Error, what: &str) -> io::Error {
    match e.code() {
        ErrorCode::WANT_READ | ErrorCode::WANT_WRITE => io::ErrorKind::WouldBlock.into(),
        ErrorCode::SYSCALL if e.io_error().is_none() => io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("TLS-PSK {what}: the peer closed the connection without close_notify"),
        ),
        _ => match e.into_io_error() {
            Ok(io) => io,
            Err(e) => io::Error::other(format!("TLS-PSK {what}: {e}")),
        },
    }
}

/// A TLS channel keyed by a pre-shared key, either side (see the module
/// documentation for its wait contract).
pub struct PskChannel {
    base: ChannelBase,
    server: bool,
    sock: Arc<SocketChannel>,
    /// Shared with the pending-input probe that `IN` watches keep.
    stream: Arc<Mutex<SslStream<SockIo>>>,
}

impl std::fmt::Debug for PskChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PskChannel")
            .field("identity", &self.identity())
            .finish_non_exhaustive()
    }
}

impl PskChannel {
    /// Wraps a connected, non-blocking socket for a server handshake.
    ///
    /// # Errors
    /// If OpenSSL cannot make the session.
    pub fn new_server(sock: Arc<SocketChannel>, creds: &PskCreds) -> io::Result<PskChannel> {
        let ssl = Ssl::new(&creds.ctx).map_err(io::Error::other)?;
        let io = SockIo {
            sock: sock.clone(),
            out: Vec::new(),
            reading: false,
        };
        let stream = SslStream::new(ssl, io).map_err(io::Error::other)?;
        Ok(PskChannel {
            base: ChannelBase::new(),
            server: true,
            sock,
            stream: Arc::new(Mutex::new(stream)),
        })
    }

    /// Wraps a connected socket for a client handshake as `user` with
    /// `key` (qemu's `tls-creds-psk,endpoint=client,username=USER`).
    ///
    /// # Errors
    /// If the key is empty or too long, or OpenSSL cannot make the session.
    pub fn new_client(sock: Arc<SocketChannel>, user: &str, key: &[u8]) -> io::Result<PskChannel> {
        if key.is_empty() || key.len() > MAX_KEY_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a pre-shared key must be 1 to 512 bytes",
            ));
        }
        let ctx =
            client_context(user.as_bytes().to_vec(), key.to_vec()).map_err(io::Error::other)?;
        let ssl = Ssl::new(&ctx).map_err(io::Error::other)?;
        let io = SockIo {
            sock: sock.clone(),
            out: Vec::new(),
            reading: false,
        };
        let stream = SslStream::new(ssl, io).map_err(io::Error::other)?;
        Ok(PskChannel {
            base: ChannelBase::new(),
            server: false,
            sock,
            stream: Arc::new(Mutex::new(stream)),
        })
    }

    /// Runs the handshake, yielding the calling coroutine (or
    /// waiting in poll(2) outside one) while the socket would block.
    ///
    /// # Errors
    /// An unknown identity, a wrong key (the peer's Finished does not
    /// verify), no shared protocol, or the connection failing.
    pub fn handshake_sync(&self) -> io::Result<()> {
        loop {
            let r = if self.server {
                lock(&self.stream).accept()
            } else {
                lock(&self.stream).connect()
            };
            let cond = match r {
                Ok(()) => return Ok(()),
                Err(e) if e.code() == ErrorCode::WANT_READ => events::IN,
                Err(e) if e.code() == ErrorCode::WANT_WRITE => events::OUT,
                Err(e) => {
                    let e = map_err(e, "handshake");
                    return Err(io::Error::new(e.kind(), format!("TLS-PSK handshake: {e}")));
                }
            };
            self.wait_io(cond)?;
        }
    }

    /// The PSK identity (user name) the client presented, once known.
    pub fn identity(&self) -> Option<String> {
        let index = identity_index().ok()?;
        lock(&self.stream).ssl().ex_data(index).cloned()
    }

    /// Sends `close_notify` if the socket takes it now; never waits.
    fn close_notify_nowait(&self) {
        let mut s = lock(&self.stream);
        if s.ssl().is_init_finished() {
            s.get_mut().reading = false;
            let _ = s.shutdown();
        }
    }
}

fn has_pending(stream: &Mutex<SslStream<SockIo>>) -> bool {
    match stream.try_lock() {
        Ok(s) => s.ssl().pending() > 0,
        Err(TryLockError::Poisoned(e)) => e.into_inner().ssl().pending() > 0,
        // Someone reads or writes right now; they will see it.
        Err(TryLockError::WouldBlock) => false,
    }
}

impl Channel for PskChannel {
    fn base(&self) -> &ChannelBase {
        &self.base
    }

    fn io_readv(
        &self,
        iov: &mut [IoSliceMut<'_>],
        fds: Option<&mut Vec<OwnedFd>>,
        flags: ReadFlags,
    ) -> io::Result<usize> {
        if fds.is_some() || flags.peek {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "TLS-PSK channel: no fd passing or peeking",
            ));
        }
        let mut s = lock(&self.stream);
        s.get_mut().reading = true;
        // Best effort: what an earlier read queued.
        let _ = s.get_mut().flush_out();
        let mut total = 0;
        for buf in iov.iter_mut().filter(|b| !b.is_empty()) {
            if total > 0 && s.ssl().pending() == 0 {
                break;
            }
            match s.ssl_read(buf) {
                Ok(n) => {
                    total += n;
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => break,
                Err(_) if total > 0 => break,
                Err(e) => return Err(map_err(e, "read")),
            }
        }
        Ok(total)
    }

    fn io_writev(&self, iov: &[IoSlice<'_>], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        if !fds.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "TLS-PSK channel: no fd passing",
            ));
        }
        let mut s = lock(&self.stream);
        s.get_mut().reading = false;
        s.get_mut().flush_out()?;
        let mut bufs = iov.iter().filter(|b| !b.is_empty());
        let Some(first) = bufs.next() else {
            return Ok(0);
        };
        let r = if first.len() >= GATHER_MAX || iov.len() == 1 {
            s.ssl_write(first)
        } else {
            // Header and data in one record, as the socket's writev would.
            let mut gathered =
                Vec::with_capacity(GATHER_MAX.min(iov.iter().map(|b| b.len()).sum()));
            for b in iov {
                let room = GATHER_MAX - gathered.len();
                gathered.extend_from_slice(&b[..b.len().min(room)]);
                if gathered.len() == GATHER_MAX {
                    break;
                }
            }
            s.ssl_write(&gathered)
        };
        r.map_err(|e| map_err(e, "write"))
    }

    fn io_set_blocking(&self, enabled: bool) -> io::Result<()> {
        self.sock.io_set_blocking(enabled)
    }

    fn io_close(&mut self) -> io::Result<()> {
        self.close_notify_nowait();
        self.base.close_watches();
        self.sock.io_shutdown(Shutdown::Both)
    }

    fn poll_fd(&self) -> io::Result<BorrowedFd<'_>> {
        self.sock.poll_fd()
    }

    fn io_shutdown(&self, how: Shutdown) -> io::Result<()> {
        if how != Shutdown::Read {
            self.close_notify_nowait();
        }
        self.sock.io_shutdown(how)
    }

    fn io_set_delay(&self, enabled: bool) -> io::Result<()> {
        self.sock.io_set_delay(enabled)
    }

    fn io_set_cork(&self, enabled: bool) -> io::Result<()> {
        self.sock.io_set_cork(enabled)
    }

    /// Decrypted bytes OpenSSL holds that no read took yet.
    fn io_has_pending_input(&self) -> bool {
        has_pending(&self.stream)
    }

    fn pending_input_probe(&self) -> Option<PendingProbe> {
        let stream = self.stream.clone();
        Some(Arc::new(move || has_pending(&stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file() {
        let users = parse_keys("alice:00ff10\n\nbob:ABCDEF0123\r\n").unwrap();
        assert_eq!(users["alice"], vec![0x00, 0xff, 0x10]);
        assert_eq!(users["bob"], vec![0xab, 0xcd, 0xef, 0x01, 0x23]);
        assert!(parse_keys("alice").unwrap_err().contains("line 1"));
        assert!(parse_keys("a:01\n:01").unwrap_err().contains("line 2"));
        assert!(parse_keys("a:0g").unwrap_err().contains("hex"));
        assert!(parse_keys("a:012").unwrap_err().contains("hex"));
        assert!(parse_keys("a:").unwrap_err().contains("1 to 512"));
    }
}
