//! The TLS error type: loading credentials, handshaking, and the TLS layer
//! of reads and writes.

use std::io;
use std::path::PathBuf;

use rustls::{AlertDescription, CertificateError};

/// Why TLS credentials could not be loaded, a handshake failed, or a TLS
/// record was refused (QEMU reports these through `Error **errp`).
///
/// Inside [`io::Error`]s (from handshakes, reads and writes on a
/// [`TlsChannel`](super::TlsChannel)) a `TlsError` is the inner error:
/// [`TlsError::from_io`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A credentials file is missing or unreadable (QEMU's wording).
    #[error("Unable to access credentials {}: {source}", path.display())]
    Access {
        /// The file that could not be read.
        path: PathBuf,
        /// What reading it reported.
        source: io::Error,
    },
    /// A credentials file (or in-memory PEM) does not hold what it should.
    #[error("Unable to parse {what} {origin}: {reason}")]
    Parse {
        /// What was expected: "CA certificate", "certificate", "private key", "CRL".
        what: &'static str,
        /// The file name, or "(in-memory PEM)".
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The credentials do not fit together or do not fit the channel
    /// (wrong endpoint, a certificate without its key, no host name).
    #[error("{0}")]
    Config(String),
    /// The TLS handshake failed: a certificate was not accepted, the peer
    /// refused ours, or the peer does not speak our TLS.
    #[error("TLS handshake failed: {reason}")]
    Handshake {
        /// A sentence saying why, naming the certificate problem.
        reason: String,
        /// rustls's own error, when it reported one.
        #[source]
        source: Option<rustls::Error>,
    },
    /// The authorization check on the client's distinguished name refused
    /// it (QEMU's `tls-authz`).
    #[error("TLS x509 authz check for {0} is denied")]
    Denied(String),
    /// A TLS record received after the handshake was refused (a fatal alert
    /// from the peer, a record that does not decrypt).
    #[error("TLS session failed: {reason}")]
    Session {
        /// A sentence saying why.
        reason: String,
        /// rustls's own error.
        #[source]
        source: Option<rustls::Error>,
    },
    /// The channel underneath failed (or the peer hung up) during the
    /// handshake.
    #[error("TLS handshake failed: {what}: {source}")]
    Io {
        /// What the handshake was doing.
        what: &'static str,
        /// The underlying channel's error.
        source: io::Error,
    },
}

impl TlsError {
    /// The `TlsError` inside `e`, if it carries one (errors from
    /// [`TlsChannel::handshake`](super::TlsChannel::handshake),
    /// [`handshake_sync`](super::TlsChannel::handshake_sync) and reads of a
    /// channel whose peer sent a bad record).
    ///
    /// ```
    /// use corio::io::tls::TlsError;
    /// use std::io;
    ///
    /// let e: io::Error = TlsError::Denied("C=UK,CN=qemu".into()).into();
    /// assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    /// assert!(matches!(TlsError::from_io(&e), Some(TlsError::Denied(dn)) if dn == "C=UK,CN=qemu"));
    /// assert!(TlsError::from_io(&io::Error::other("plain")).is_none());
    /// ```
    pub fn from_io(e: &io::Error) -> Option<&TlsError> {
        e.get_ref()?.downcast_ref()
    }

    /// A rustls error met while handshaking, with a sentence QEMU users
    /// would recognise. `hostname` is the name a client checked.
    pub(crate) fn handshake(e: rustls::Error, hostname: Option<&str>) -> TlsError {
        TlsError::Handshake {
            reason: describe(&e, hostname),
            source: Some(e),
        }
    }

    /// A rustls error met after the handshake.
    pub(crate) fn session(e: rustls::Error) -> TlsError {
        TlsError::Session {
            reason: describe(&e, None),
            source: Some(e),
        }
    }

    /// The `io::ErrorKind` this error has when it travels as an
    /// `io::Error`.
    fn kind(&self) -> io::ErrorKind {
        match self {
            TlsError::Access { source, .. } | TlsError::Io { source, .. } => source.kind(),
            TlsError::Config(_) => io::ErrorKind::InvalidInput,
            TlsError::Denied(_) => io::ErrorKind::PermissionDenied,
            _ => io::ErrorKind::InvalidData,
        }
    }
}

impl From<TlsError> for io::Error {
    fn from(e: TlsError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

/// QEMU's (GnuTLS's) sentence for a certificate problem.
fn certificate_reason(e: &CertificateError) -> &'static str {
    match e {
        CertificateError::UnknownIssuer => "The certificate hasn't got a known issuer",
        CertificateError::BadSignature => "The certificate's signature is invalid",
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "The certificate has expired"
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "The certificate is not yet activated"
        }
        CertificateError::Revoked => "The certificate has been revoked",
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "The certificate is not valid for this purpose (extended key usage)"
        }
        CertificateError::BadEncoding => "The certificate is not valid DER",
        _ => "The certificate is not trusted",
    }
}

/// What an alert from the peer most likely means for us.
fn alert_hint(a: AlertDescription) -> &'static str {
    match a {
        AlertDescription::UnknownCA
        | AlertDescription::BadCertificate
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::CertificateUnknown
        | AlertDescription::CertificateExpired
        | AlertDescription::CertificateRevoked => {
            ": the peer does not accept our certificate (certificate verify failed on its side)"
        }
        AlertDescription::CertificateRequired => {
            ": the peer requires a client certificate and we sent none"
        }
        AlertDescription::AccessDenied => ": the peer denied access",
        AlertDescription::HandshakeFailure | AlertDescription::ProtocolVersion => {
            ": no protocol version or cipher suite in common"
        }
        _ => "",
    }
}

/// One sentence for a rustls error.
pub(crate) fn describe(e: &rustls::Error, hostname: Option<&str>) -> String {
    match e {
        rustls::Error::InvalidCertificate(
            c @ (CertificateError::NotValidForName
            | CertificateError::NotValidForNameContext { .. }),
        ) => format!(
            "certificate verify failed: Certificate does not match the hostname {} ({c})",
            hostname.unwrap_or("(none)")
        ),
        rustls::Error::InvalidCertificate(c) => {
            format!("certificate verify failed: {} ({c})", certificate_reason(c))
        }
        rustls::Error::NoCertificatesPresented => {
            "No certificate peers: the peer sent no certificate, but verify-peer requires one"
                .to_string()
        }
        rustls::Error::AlertReceived(a) => {
            format!("the peer sent the fatal alert {a:?}{}", alert_hint(*a))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_cause() {
        let e = TlsError::handshake(
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
            Some("localhost"),
        );
        let s = e.to_string();
        assert!(s.contains("certificate verify failed"), "{s}");
        assert!(s.contains("known issuer"), "{s}");
        let e = TlsError::handshake(
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
            Some("wrong.example"),
        );
        assert!(e.to_string().contains("hostname wrong.example"), "{e}");
        let e = TlsError::session(rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired,
        ));
        assert!(
            e.to_string().contains("requires a client certificate"),
            "{e}"
        );
        let io: io::Error = TlsError::Denied("CN=x".into()).into();
        assert_eq!(io.kind(), io::ErrorKind::PermissionDenied);
    }
}
