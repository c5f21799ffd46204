//! STARTTLS: the server's TLS configuration and the switch of a client's
//! channel to TLS after `NBD_OPT_STARTTLS`.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::Shutdown;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use corio::io::tls::{Authz, TlsChannel, TlsCreds};
use corio::io::{Channel, ChannelBase, ReadFlags, SocketChannel};

use super::psk::{PskChannel, PskCreds};

/// Server credentials of either kind.
#[derive(Clone, Debug)]
pub enum ServerCreds {
    /// `--object tls-creds-x509,endpoint=server,...`: corio's rustls channel.
    X509(TlsCreds),
    /// `--object tls-creds-psk,endpoint=server,...`: OpenSSL ([`super::psk`]).
    Psk(PskCreds),
}

/// TLS for every client (qemu-nbd's `--tls-creds`, with `--tls-authz`).
#[derive(Clone)]
pub struct TlsConfig {
    /// Server credentials.
    pub creds: ServerCreds,
    /// Who may connect (`--tls-authz`): with x509, by certificate DN (needs
    /// `verify-peer=on` in the credentials); with PSK, by user name, as qemu.
    pub authz: Option<Arc<dyn Authz>>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("creds", &self.creds)
            .field("authz", &self.authz.is_some())
            .finish()
    }
}

/// A client socket shared between the TLS layer that owns its master and
/// the server, which keeps a handle to shut it down (handshake timeout,
/// server shutdown).
pub struct SharedSocket(pub Arc<SocketChannel>);

impl Channel for SharedSocket {
    fn base(&self) -> &ChannelBase {
        self.0.base()
    }
    fn io_readv(
        &self,
        iov: &mut [IoSliceMut<'_>],
        fds: Option<&mut Vec<OwnedFd>>,
        flags: ReadFlags,
    ) -> io::Result<usize> {
        self.0.io_readv(iov, fds, flags)
    }
    fn io_writev(&self, iov: &[IoSlice<'_>], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        self.0.io_writev(iov, fds)
    }
    fn io_set_blocking(&self, enabled: bool) -> io::Result<()> {
        self.0.io_set_blocking(enabled)
    }
    fn io_close(&mut self) -> io::Result<()> {
        // The socket closes when its last handle goes; hang up now.
        self.0.io_shutdown(Shutdown::Both)
    }
    fn poll_fd(&self) -> io::Result<BorrowedFd<'_>> {
        self.0.poll_fd()
    }
    fn io_shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.0.io_shutdown(how)
    }
    fn io_set_delay(&self, enabled: bool) -> io::Result<()> {
        self.0.io_set_delay(enabled)
    }
    fn io_set_cork(&self, enabled: bool) -> io::Result<()> {
        self.0.io_set_cork(enabled)
    }
}

/// Runs the server side of a TLS handshake on `sock` (the calling
/// coroutine yields while it waits) and returns the TLS channel.
///
/// # Errors
/// If the credentials do not fit, the peer fails the handshake, or
/// `--tls-authz` refuses its certificate.
pub(crate) fn upgrade(sock: &Arc<SocketChannel>, cfg: &TlsConfig) -> io::Result<Arc<dyn Channel>> {
    match &cfg.creds {
        ServerCreds::X509(creds) => {
            let tls = TlsChannel::new_server(SharedSocket(sock.clone()), creds, cfg.authz.clone())
                .map_err(io::Error::other)?;
            tls.handshake_sync()?;
            Ok(Arc::new(tls))
        }
        ServerCreds::Psk(creds) => {
            let tls = PskChannel::new_server(sock.clone(), creds)?;
            tls.handshake_sync()?;
            if let Some(authz) = &cfg.authz {
                let user = tls.identity().unwrap_or_default();
                if !authz.is_allowed(&user) {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("TLS-PSK user '{user}' is not authorized"),
                    ));
                }
            }
            Ok(Arc::new(tls))
        }
    }
}
