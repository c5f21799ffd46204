//! TLS channels: QEMU's `QIOChannelTLS` (io/channel-tls.c) with the
//! session it drives (crypto/tlssession.c) and its X.509 credentials
//! (crypto/tlscredsx509.c), on rustls with the *ring* provider.
//!
//! A [`TlsChannel`] wraps another channel, its *master* (usually a
//! [`SocketChannel`](super::SocketChannel)), and is a [`Channel`] itself:
//! after the handshake, [`read_all`](Channel::read_all),
//! [`write_all_bytes`](Channel::write_all_bytes) and `std::io::Read`/`Write` move
//! plaintext, yielding the calling coroutine (or blocking in poll(2)
//! outside one) while the master would block, exactly as on a socket.
//!
//! 1. Load [`TlsCreds`] for each side ([`TlsCreds::x509_from_dir`], QEMU's
//!    `tls-creds-x509` directory layout, or [`TlsCreds::x509_from_pem`]).
//! 2. Wrap a connected channel: [`TlsChannel::new_server`] (with an
//!    optional [`Authz`] check on the client's distinguished name) or
//!    [`TlsChannel::new_client`] (with the host name to check).
//! 3. Handshake: [`TlsChannel::handshake`] as a QIOTask whose completion
//!    runs in a context and receives the channel (QEMU's
//!    `qio_channel_tls_handshake`), or [`TlsChannel::handshake_sync`] in a
//!    coroutine or a thread. Both report failures as an [`io::Error`]
//!    carrying a [`TlsError`] ([`TlsError::from_io`]).
//! 4. Use it; [`TlsChannel::bye`] or [`shutdown`](Channel::shutdown) sends
//!    `close_notify`, which the peer reads as a clean end of stream. A
//!    stream cut without it reads as an error, never as a short EOF.
//!
//! # The wait contract
//!
//! Plaintext can sit decrypted inside the channel while the master's fd
//! has nothing to read. So this channel reports
//! [`WouldBlock`](io::ErrorKind::WouldBlock) from a read only when nothing
//! is buffered *and* the master itself would block: waiting for `IN` on
//! the fd after a `WouldBlock` is always right (the `_all` loops and
//! `std::io::Read` do just that). [`yield_for`](Channel::yield_for) and
//! [`wait`](Channel::wait) for `IN` also return at once while plaintext is
//! buffered ([`Channel::io_has_pending_input`]), and `IN` watches fire
//! from a bottom half while it is (QEMU's TLS GSource checks gnutls'
//! pending bytes the same way).
//!
//! A read never has to wait for the master to become writable: what rustls
//! queues while reading (alerts, key-update replies; TLS 1.3 and rustls
//! have no renegotiation) is sent at once if the master takes it without
//! blocking, else ahead of the next write, [`bye`](TlsChannel::bye) or
//! handshake step. The peer never waits for those to send us data.
//!
//! Writes encrypt the caller's data and push the ciphertext to the master.
//! If the master takes only part of it, the rest stays queued and the
//! write reports `WouldBlock`; the retry (with the same data, as the `_all`
//! loops and `std::io::Write` do, and as GnuTLS requires in QEMU) flushes
//! the queue and then reports the bytes as written. So a write that
//! returned `Ok(n)` has reached the master, and no ciphertext is left
//! behind for a later call to send.
//!
//! # Examples
//!
//! [`TlsChannel`] has a complete runnable example with in-memory PEM; the
//! tests (`tests/io_channel_tls.rs`) generate whole PKIs with rcgen. A
//! client with credentials in QEMU's directory layout:
//!
//! ```no_run
//! // no_run: needs a certificate directory and a server to talk to.
//! use corio::io::tls::{Endpoint, TlsChannel, TlsCreds};
//! use corio::io::{Channel, SocketChannel};
//!
//! let creds = TlsCreds::x509_from_dir(Endpoint::Client, "/etc/pki/qemu", true)?;
//! let addr = "nbd.example.org:10809".parse()?;
//! let sock = SocketChannel::connect_sync(&addr)?;
//! let tls = TlsChannel::new_client(sock, &creds, Some("nbd.example.org"))?;
//! tls.handshake_sync()?;
//! tls.write_all_bytes(b"hello")?;
//! let mut reply = [0u8; 5];
//! tls.read_all(&mut reply)?;
//! tls.bye()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod channel;
mod creds;
mod dn;
mod error;
mod handshake;
mod session;
mod verify;

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::net::Shutdown;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use rustls::pki_types::{CertificateDer, ServerName};

pub use creds::{
    Endpoint, TlsCreds, X509Pem, CA_CERT, CA_CRL, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY,
};
pub use error::TlsError;

use self::session::{
    feed, prefix, read_plain, starts_with, Conn, ReadSide, Session, State, WriteSide,
};
use super::channel::{std_read, std_write, Channel, ChannelBase, Feature, ReadFlags};
use super::watch::PendingProbe;
use crate::aio::events;
use crate::trace;

/// An authorization check on the distinguished name of a client's
/// certificate, run by a server after the handshake (QEMU's `QAuthZ`, the
/// `tls-authz` object). The name is in certificate order,
/// `C=UK,O=Example,CN=client` (see [`TlsChannel::peer_name`]).
///
/// Any `Fn(&str) -> bool` is an `Authz`.
pub trait Authz: Send + Sync {
    /// Whether the client named `identity` may connect (QEMU's
    /// `qauthz_is_allowed`).
    fn is_allowed(&self, identity: &str) -> bool;
}

impl<F: Fn(&str) -> bool + Send + Sync> Authz for F {
    fn is_allowed(&self, identity: &str) -> bool {
        self(identity)
    }
}

/// The most one best-effort write ([`Flush::IfReady`]) hands a master that
/// polled writable: small enough not to block a blocking socket.
const NOWAIT_CHUNK: usize = 4096;

/// Shutdown bits, QEMU's `QIO_CHANNEL_SHUTDOWN_*`.
const SHUT_READ: u8 = 1;
const SHUT_WRITE: u8 = 2;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A TLS channel over a master channel (QEMU's `QIOChannelTLS`); see the
/// [module documentation](self) for the read/write contract.
///
/// # Examples
///
/// A client and a server over a socket pair, the server in a thread; the
/// credentials are in-memory PEM (a test-only CA, and a certificate for
/// `localhost` with its key, made with rcgen and valid until 4096).
///
/// ```
/// use corio::io::tls::{Endpoint, TlsChannel, TlsCreds, X509Pem};
/// use corio::io::{Channel, SocketChannel};
/// use std::error::Error;
/// # const CA_PEM: &str = "\
/// # -----BEGIN CERTIFICATE-----\n\
/// # MIIBfDCCASKgAwIBAgIUdzzm274+NMUcGqz/+AlwsKxfIbcwCgYIKoZIzj0EAwIw\n\
/// # GzEZMBcGA1UEAwwQY29yaW8gZXhhbXBsZSBDQTAgFw03NTAxMDEwMDAwMDBaGA80\n\
/// # MDk2MDEwMTAwMDAwMFowGzEZMBcGA1UEAwwQY29yaW8gZXhhbXBsZSBDQTBZMBMG\n\
/// # ByqGSM49AgEGCCqGSM49AwEHA0IABOsb2Akdd+MbtjwenVgEr8ss2NUKLSs5wLwm\n\
/// # 7Jc9aIJ/MFvDvtURjU1WmrX0neodPZpVMcHH1RPTPltDhM/0DT2jQjBAMA4GA1Ud\n\
/// # DwEB/wQEAwICBDAdBgNVHQ4EFgQUYIonMfoQBz3Y5q6wI0FnfHnBCeAwDwYDVR0T\n\
/// # AQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiBVkLF4v4KEgqWAT1qcniLrOPhE\n\
/// # 6/F3SArq0AVdA2NM5QIhAINAzBYBIbnwoeb+yYIcpejClJ9QRXin3zl4VIPD5j9R\n\
/// # -----END CERTIFICATE-----\n";
/// # const SERVER_PEM: &str = "\
/// # -----BEGIN CERTIFICATE-----\n\
/// # MIIBXzCCAQagAwIBAgIUCVFQSUUvig3rGzZfh+lRIpIfJAQwCgYIKoZIzj0EAwIw\n\
/// # GzEZMBcGA1UEAwwQY29yaW8gZXhhbXBsZSBDQTAgFw03NTAxMDEwMDAwMDBaGA80\n\
/// # MDk2MDEwMTAwMDAwMFowFDESMBAGA1UEAwwJbG9jYWxob3N0MFkwEwYHKoZIzj0C\n\
/// # AQYIKoZIzj0DAQcDQgAEDHZgtOmYp8mRYtv4deDtes1BPkJxrrTazBOnddHm2xju\n\
/// # NRHia06+WQouaOy1r5Iq5gUw6qCaai0xlKxrjN6p2KMtMCswFAYDVR0RBA0wC4IJ\n\
/// # bG9jYWxob3N0MBMGA1UdJQQMMAoGCCsGAQUFBwMBMAoGCCqGSM49BAMCA0cAMEQC\n\
/// # IFkcypEQ2yIkuRqAavnnZ13ZzI2u8reASXnd3mZbHLxcAiAMtMOVv0FpyZDIqtyB\n\
/// # kjxHrC8WGHronMT/JNkOn8INHg==\n\
/// # -----END CERTIFICATE-----\n";
/// # const SERVER_KEY: &str = "\
/// # -----BEGIN PRIVATE KEY-----\n\
/// # MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg3sv6at/Ai078DJh4\n\
/// # tYBPPDXRPu/RTCyKHxTCddo7uUuhRANCAAQMdmC06ZinyZFi2/h14O16zUE+QnGu\n\
/// # tNrME6d10ebbGO41EeJrTr5ZCi5o7LWvkirmBTDqoJpqLTGUrGuM3qnY\n\
/// # -----END PRIVATE KEY-----\n";
///
/// let server_creds = TlsCreds::x509_from_pem(
///     Endpoint::Server,
///     &X509Pem {
///         cert: Some(SERVER_PEM.as_bytes()),
///         key: Some(SERVER_KEY.as_bytes()),
///         ..Default::default()
///     },
///     false, // verify-peer off: no client certificate asked for
/// )?;
/// let client_creds = TlsCreds::x509_from_pem(
///     Endpoint::Client,
///     &X509Pem { ca_cert: Some(CA_PEM.as_bytes()), ..Default::default() },
///     true, // check the server's certificate against the CA and the name
/// )?;
/// let (a, b) = SocketChannel::pair()?;
/// let server = TlsChannel::new_server(b, &server_creds, None)?;
/// let client = TlsChannel::new_client(a, &client_creds, Some("localhost"))?;
///
/// let server = std::thread::spawn(move || -> Result<Vec<u8>, Box<dyn Error + Send + Sync>> {
///     server.handshake_sync()?;
///     let mut request = [0u8; 5];
///     server.read_all(&mut request)?;
///     server.write_all_bytes(b"world")?;
///     server.bye()?; // close_notify
///     Ok(request.to_vec())
/// });
/// client.handshake_sync()?;
/// assert_eq!(client.peer_name().as_deref(), Some("CN=localhost"));
/// client.write_all_bytes(b"hello")?;
/// let mut reply = [0u8; 5];
/// client.read_all(&mut reply)?;
/// assert_eq!(&reply, b"world");
/// assert!(!client.read_all_eof(&mut reply)?, "a clean end of stream");
/// assert_eq!(server.join().unwrap()?, b"hello");
/// # Ok::<(), Box<dyn Error + Send + Sync>>(())
/// ```
pub struct TlsChannel<C: Channel> {
    base: ChannelBase,
    master: C,
    /// Shared with the pending-input probe that `IN` watches keep.
    session: Arc<Session>,
    /// Set by `io_close` (which has `&mut self`), read by `Drop`.
    closed: bool,
}

impl<C: Channel> fmt::Debug for TlsChannel<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let conn = lock(&self.session.conn);
        f.debug_struct("TlsChannel")
            .field("endpoint", &self.session.endpoint)
            .field("state", &conn.state)
            .field("peer_name", &conn.peer_name)
            .finish_non_exhaustive()
    }
}

/// How a flush may wait for the master.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// Write as the master's mode says (blocking masters block).
    Wait,
    /// Write only what a writable master takes at once, never blocking:
    /// `WouldBlock` when it is not writable.
    IfReady,
}

fn would_block() -> io::Error {
    io::ErrorKind::WouldBlock.into()
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "TLS peer closed the connection without close_notify: the stream was truncated",
    )
}

/// Whether `fd` polls writable right now.
fn writable_now(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::OUT,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut pfd, Some(&zero)), Ok(n) if n > 0)
}

impl<C: Channel> TlsChannel<C> {
    /// Wraps `master` as the server end of a TLS session (QEMU's
    /// `qio_channel_tls_new_server`). After the handshake, if `authz` is
    /// given, the client's certificate name must pass it. The channel has
    /// [`Feature::Shutdown`] if the master has.
    ///
    /// # Errors
    /// [`TlsError::Config`] if `creds` are client credentials ("Credentials
    /// endpoint doesn't match session"), or if `authz` is given with
    /// `verify-peer` off (there would be no certificate to check: QEMU
    /// silently skips the check, we refuse). `master` is dropped then.
    pub fn new_server(
        master: C,
        creds: &TlsCreds,
        authz: Option<Arc<dyn Authz>>,
    ) -> Result<TlsChannel<C>, TlsError> {
        let config = creds.server_config().ok_or_else(endpoint_mismatch)?;
        if authz.is_some() && !creds.verify_peer() {
            return Err(TlsError::Config(
                "A TLS authz check needs verify-peer on the server credentials".into(),
            ));
        }
        let tls = rustls::ServerConnection::new(config)
            .map_err(|e| TlsError::Config(format!("Cannot initialize TLS session: {e}")))?;
        let has_authz = authz.is_some();
        let ch = TlsChannel::wrap(master, tls.into(), Endpoint::Server, None, creds, authz);
        trace::qio_channel_tls_new_server(
            ch.ptr(),
            ch.master_ptr(),
            creds.ptr(),
            if has_authz { "<authz>" } else { "<none>" },
        );
        Ok(ch)
    }

    /// Wraps `master` as the client end of a TLS session (QEMU's
    /// `qio_channel_tls_new_client`). With `verify-peer` on, the server's
    /// certificate must be valid for `hostname` (a DNS name or an IP
    /// address).
    ///
    /// # Errors
    /// [`TlsError::Config`] if `creds` are server credentials, if
    /// `hostname` is not a valid name, or if it is `None` with
    /// `verify-peer` on ("No hostname for certificate validation").
    /// `master` is dropped then.
    pub fn new_client(
        master: C,
        creds: &TlsCreds,
        hostname: Option<&str>,
    ) -> Result<TlsChannel<C>, TlsError> {
        let config = creds.client_config().ok_or_else(endpoint_mismatch)?;
        let name = match hostname {
            Some(h) => ServerName::try_from(h.to_owned())
                .map_err(|e| TlsError::Config(format!("Invalid TLS host name '{h}': {e}")))?,
            None if creds.verify_peer() => {
                return Err(TlsError::Config(
                    "No hostname for certificate validation".into(),
                ))
            }
            // Not checked without verify-peer; an address sends no SNI.
            None => ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        };
        let tls = rustls::ClientConnection::new(config, name)
            .map_err(|e| TlsError::Config(format!("Cannot initialize TLS session: {e}")))?;
        let ch = TlsChannel::wrap(
            master,
            tls.into(),
            Endpoint::Client,
            hostname.map(str::to_owned),
            creds,
            None,
        );
        trace::qio_channel_tls_new_client(
            ch.ptr(),
            ch.master_ptr(),
            creds.ptr(),
            hostname.unwrap_or("<none>"),
        );
        Ok(ch)
    }

    fn wrap(
        master: C,
        tls: rustls::Connection,
        endpoint: Endpoint,
        hostname: Option<String>,
        creds: &TlsCreds,
        authz: Option<Arc<dyn Authz>>,
    ) -> TlsChannel<C> {
        let ch = TlsChannel {
            base: ChannelBase::new(),
            session: Arc::new(Session::new(
                tls,
                endpoint,
                hostname,
                creds.verify_peer(),
                authz,
            )),
            master,
            closed: false,
        };
        ch.base.record_blocking(ch.master.is_blocking());
        if ch.master.has_feature(Feature::Shutdown) {
            ch.set_feature(Feature::Shutdown);
        }
        ch
    }

    /// The channel's id in trace events: its session's address, which
    /// stays put when the channel moves.
    fn ptr(&self) -> *const () {
        &*self.session as *const Session as *const ()
    }

    fn master_ptr(&self) -> *const () {
        &self.master as *const C as *const ()
    }

    /// The channel underneath (QEMU's `tioc->master`). Reading or writing
    /// it directly bypasses TLS and corrupts the session; shutting it down
    /// hangs up without `close_notify`.
    pub fn master(&self) -> &C {
        &self.master
    }

    /// Which end of the session this is.
    pub fn endpoint(&self) -> Endpoint {
        self.session.endpoint
    }

    /// Whether the handshake completed and the peer was accepted.
    pub fn is_handshake_complete(&self) -> bool {
        lock(&self.session.conn).state == State::Ready
    }

    /// The distinguished name of the peer's certificate, in certificate
    /// order (`C=UK,CN=qemu`), once the handshake completed (QEMU's
    /// `qcrypto_tls_session_get_peer_name`). `None` if the peer sent no
    /// certificate.
    pub fn peer_name(&self) -> Option<String> {
        lock(&self.session.conn).peer_name.clone()
    }

    /// The peer's certificate chain (DER, leaf first), if it sent one.
    pub fn peer_certificates(&self) -> Option<Vec<CertificateDer<'static>>> {
        lock(&self.session.conn)
            .tls
            .peer_certificates()
            .map(<[_]>::to_vec)
    }

    /// The negotiated TLS version, once the handshake got far enough.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        lock(&self.session.conn).tls.protocol_version()
    }

    /// Ends the session cleanly (QEMU's `qio_channel_tls_bye`): sends
    /// `close_notify` after everything already written, and waits until
    /// the master took it, yielding the calling coroutine (or blocking in
    /// poll(2) outside one) while the master would block. Later writes
    /// fail; reads go on until the peer's own `close_notify`. Does nothing
    /// before the handshake completed or after a failure.
    ///
    /// # Errors
    /// The master's write error.
    pub fn bye(&self) -> io::Result<()> {
        trace::qio_channel_tls_bye_start(self.ptr());
        {
            let mut conn = lock(&self.session.conn);
            if conn.state != State::Ready {
                return Ok(());
            }
            conn.tls.send_close_notify();
            conn.close_sent = true;
        }
        loop {
            let r = self.flush(&mut lock(&self.session.wr), Flush::Wait);
            match r {
                Ok(()) => {
                    trace::qio_channel_tls_bye_complete(self.ptr());
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait_io(events::OUT)?;
                }
                Err(e) => {
                    trace::qio_channel_tls_bye_fail(self.ptr());
                    return Err(e);
                }
            }
        }
    }

    /// Writes queued ciphertext, ours and then whatever rustls queued since,
    /// until none is left. `wr` is the locked write side.
    ///
    /// # Errors
    /// `WouldBlock` if the master would block (what was written stays
    /// written, the rest queued); the master's errors.
    fn flush(&self, wr: &mut WriteSide, mode: Flush) -> io::Result<()> {
        loop {
            if wr.sent == wr.out.len() {
                wr.out.clear();
                wr.sent = 0;
                let mut conn = lock(&self.session.conn);
                while conn.tls.wants_write() {
                    conn.tls.write_tls(&mut wr.out)?;
                }
                if wr.out.is_empty() {
                    return Ok(());
                }
            }
            let mut chunk = &wr.out[wr.sent..];
            if mode == Flush::IfReady {
                if !writable_now(self.master.poll_fd()?) {
                    return Err(would_block());
                }
                chunk = &chunk[..chunk.len().min(NOWAIT_CHUNK)];
            }
            match self.master.writev(&[IoSlice::new(chunk)]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "TLS channel: the master accepted no data",
                    ))
                }
                Ok(n) => wr.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends what rustls queued while reading (alerts, key updates) if the
    /// writer is idle and the master takes it now; otherwise the next
    /// write, flush or `bye` sends it.
    fn flush_nowait(&self) {
        if let Ok(mut wr) = self.session.wr.try_lock() {
            let _ = self.flush(&mut wr, Flush::IfReady);
        }
    }

    /// Queues `close_notify` and sends it if that cannot block (shutdown,
    /// close and drop: they must not hang on a peer that reads nothing).
    fn close_notify_nowait(&self) {
        let Ok(mut wr) = self.session.wr.try_lock() else {
            return; // a writer is busy in the master: it would come first
        };
        {
            let mut conn = lock(&self.session.conn);
            if conn.state != State::Ready {
                return;
            }
            conn.tls.send_close_notify();
            conn.close_sent = true;
        }
        let _ = self.flush(&mut wr, Flush::IfReady);
    }

    /// Records a session failure so that later I/O reports it.
    fn fail(&self, e: &TlsError) {
        lock(&self.session.conn).state = State::Failed(e.to_string());
    }

    /// Checks that application data may move.
    fn check_ready(conn: &Conn) -> io::Result<()> {
        match &conn.state {
            State::Ready => Ok(()),
            State::Handshaking => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "TLS handshake not complete",
            )),
            State::Failed(why) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("TLS session unusable: {why}"),
            )),
        }
    }

    /// Reads ciphertext from the master into the (empty) stage. `Ok(false)`
    /// at the master's end of stream, which rustls is told about.
    fn fill(&self, rd: &mut ReadSide) -> io::Result<bool> {
        debug_assert!(rd.start == rd.end);
        loop {
            match self.master.readv(&mut [IoSliceMut::new(&mut rd.buf)]) {
                Ok(0) => {
                    rd.start = 0;
                    rd.end = 0;
                    // An empty reader is how rustls learns of the EOF.
                    let _ = lock(&self.session.conn).tls.read_tls(&mut io::empty());
                    return Ok(false);
                }
                Ok(n) => {
                    rd.start = 0;
                    rd.end = n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Plaintext rustls decrypted and the last read did not take, a record
/// error or the peer's close_notify waiting to be reported, or ciphertext
/// staged here and not yet handed to rustls: a read returns at once,
/// whatever the master's fd says.
///
/// Never blocks: a watch probes this from its event loop, and a reader
/// holds `rd` across a read of the master, which blocks on a blocking
/// master until data comes. While a reader holds it, the answer is "not
/// pending": that reader reports what it finds. `conn` is only held for
/// rustls calls, never across the master's I/O, so waiting for it is
/// short.
fn has_pending_input(session: &Session) -> bool {
    let staged = match session.rd.try_lock() {
        Ok(rd) => rd.start < rd.end,
        Err(TryLockError::Poisoned(e)) => {
            let rd = e.into_inner();
            rd.start < rd.end
        }
        Err(TryLockError::WouldBlock) => return false,
    };
    let mut conn = lock(&session.conn);
    if conn.state != State::Ready {
        // Errors are reported at once; the handshake drives itself.
        return matches!(conn.state, State::Failed(_));
    }
    if staged || conn.read_error.is_some() {
        return true;
    }
    match conn.tls.process_new_packets() {
        Ok(io) => io.plaintext_bytes_to_read() > 0 || io.peer_has_closed(),
        Err(e) => {
            // Kept for the read to report, as `io_readv` does.
            conn.read_error = Some(e);
            true
        }
    }
}

fn endpoint_mismatch() -> TlsError {
    TlsError::Config("Credentials endpoint doesn't match session".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authz_closures() {
        let a: Arc<dyn Authz> = Arc::new(|dn: &str| dn.ends_with("CN=qemu"));
        assert!(a.is_allowed("C=UK,CN=qemu"));
        assert!(!a.is_allowed("C=UK,CN=other"));
    }
}
