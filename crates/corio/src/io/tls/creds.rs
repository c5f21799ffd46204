//! TLS credentials: QEMU's `tls-creds-x509` object (crypto/tlscredsx509.c,
//! crypto/tlscreds.c), on rustls with the *ring* provider.
//!
//! A [`TlsCreds`] is loaded once and shared by every channel that uses it
//! (cloning is cheap). From a directory it reads QEMU's file names:
//!
//! | endpoint | file | |
//! | --- | --- | --- |
//! | both | `ca-cert.pem` | required: the CA(s) that sign the peer's certificate |
//! | server | `server-cert.pem`, `server-key.pem` | required |
//! | server | `ca-crl.pem` | optional: revoked client certificates (see below) |
//! | client | `client-cert.pem`, `client-key.pem` | optional, both or neither |
//!
//! `verify-peer` (QEMU's default: on): a server requires a client
//! certificate signed by the CA, a client checks the server's certificate
//! against the CA and the host name it connects to (its dNSName and
//! iPAddress subjectAltNames; when it has none, its common name, as GnuTLS
//! does). With it off, a server
//! asks for no client certificate and a client accepts any server
//! certificate (still checking that the server holds its key).
//!
//! With `ca-crl.pem`, a server refuses a client whose certificate, or an
//! intermediate CA certificate of its chain, one of the CRLs lists as
//! revoked ("The certificate has been revoked"); a certificate that no CRL
//! covers (its issuer published none here) passes. Both as GnuTLS does.
//!
//! QEMU's `dh-params.pem` is not read: rustls only does (EC)DHE with
//! built-in groups. `priority` strings are GnuTLS's and have no rustls
//! equivalent; rustls's safe defaults (TLS 1.2 and 1.3) are used.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::error::TlsError;
use super::verify::{NoVerify, ServerVerifier};
use crate::trace;

/// QEMU's `QCRYPTO_TLS_CREDS_X509_CA_CERT`.
pub const CA_CERT: &str = "ca-cert.pem";
/// QEMU's `QCRYPTO_TLS_CREDS_X509_CA_CRL`.
pub const CA_CRL: &str = "ca-crl.pem";
/// QEMU's `QCRYPTO_TLS_CREDS_X509_SERVER_CERT`.
pub const SERVER_CERT: &str = "server-cert.pem";
/// QEMU's `QCRYPTO_TLS_CREDS_X509_SERVER_KEY`.
pub const SERVER_KEY: &str = "server-key.pem";
/// QEMU's `QCRYPTO_TLS_CREDS_X509_CLIENT_CERT`.
pub const CLIENT_CERT: &str = "client-cert.pem";
/// QEMU's `QCRYPTO_TLS_CREDS_X509_CLIENT_KEY`.
pub const CLIENT_KEY: &str = "client-key.pem";

/// Which end of a TLS connection credentials are for (QEMU's
/// `QCryptoTLSCredsEndpoint`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Accepts connections: presents `server-cert.pem`.
    Server,
    /// Connects: checks the server's certificate, may present its own.
    Client,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Endpoint::Server => "server",
            Endpoint::Client => "client",
        })
    }
}

/// PEM text held in memory, for [`TlsCreds::x509_from_pem`]: the contents
/// of the files a directory would hold. `cert` and `key` are the server's
/// for a server, the client's (optional) for a client.
#[derive(Clone, Copy, Debug, Default)]
pub struct X509Pem<'a> {
    /// `ca-cert.pem`: one or more CA certificates.
    pub ca_cert: Option<&'a [u8]>,
    /// `ca-crl.pem`: revocation lists (servers only).
    pub ca_crl: Option<&'a [u8]>,
    /// `server-cert.pem` / `client-cert.pem`: the certificate chain, leaf first.
    pub cert: Option<&'a [u8]>,
    /// `server-key.pem` / `client-key.pem`: the private key (PKCS#8,
    /// PKCS#1 or SEC1).
    pub key: Option<&'a [u8]>,
}

/// X.509 credentials for one endpoint (QEMU's `QCryptoTLSCredsX509`).
///
/// # Examples
///
/// ```
/// use corio::io::tls::{Endpoint, TlsCreds, TlsError};
///
/// let err = TlsCreds::x509_from_dir(Endpoint::Server, "/nonexistent", true).unwrap_err();
/// assert!(matches!(err, TlsError::Access { .. }));
/// assert!(err.to_string().contains("/nonexistent/ca-cert.pem"), "{err}");
/// ```
#[derive(Clone)]
pub struct TlsCreds {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    verify_peer: bool,
    dir: Option<PathBuf>,
    config: Config,
}

enum Config {
    Server(Arc<ServerConfig>),
    Client(Arc<ClientConfig>),
}

impl fmt::Debug for TlsCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCreds")
            .field("endpoint", &self.inner.endpoint)
            .field("verify_peer", &self.inner.verify_peer)
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// Where the PEM text came from, for error messages.
struct Source<'a> {
    bytes: &'a [u8],
    origin: String,
}

fn read(dir: &Path, name: &str, required: bool) -> Result<Option<(Vec<u8>, String)>, TlsError> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some((b, path.display().to_string()))),
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TlsError::Access { path, source: e }),
    }
}

fn parse_err(what: &'static str, origin: &str, reason: impl fmt::Display) -> TlsError {
    TlsError::Parse {
        what,
        origin: origin.to_string(),
        reason: reason.to_string(),
    }
}

fn certs(what: &'static str, s: &Source<'_>) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(s.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_err(what, &s.origin, e))?;
    if certs.is_empty() {
        return Err(parse_err(
            what,
            &s.origin,
            "no PEM CERTIFICATE section found",
        ));
    }
    Ok(certs)
}

fn private_key(s: &Source<'_>) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(s.bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => parse_err(
            "private key",
            &s.origin,
            "no PEM PRIVATE KEY section (PKCS#8, RSA or EC) found",
        ),
        e => parse_err("private key", &s.origin, e),
    })
}

fn roots(s: &Source<'_>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for (i, c) in certs("CA certificate", s)?.into_iter().enumerate() {
        store
            .add(c)
            .map_err(|e| parse_err("CA certificate", &s.origin, format!("certificate {i}: {e}")))?;
    }
    Ok(store)
}

fn crls(s: &Source<'_>) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    CertificateRevocationListDer::pem_slice_iter(s.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_err("CRL", &s.origin, e))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

impl TlsCreds {
    /// Loads credentials from `dir`, laid out as QEMU's
    /// `-object tls-creds-x509,endpoint=...,dir=...,verify-peer=...` expects
    /// (see the module documentation for the files).
    ///
    /// # Errors
    /// [`TlsError::Access`] naming a required file that is missing or
    /// unreadable; [`TlsError::Parse`] naming a file that holds no usable
    /// PEM; [`TlsError::Config`] if a client certificate comes without its
    /// key (or the reverse) or the key does not fit the certificate.
    pub fn x509_from_dir(
        endpoint: Endpoint,
        dir: impl AsRef<Path>,
        verify_peer: bool,
    ) -> Result<TlsCreds, TlsError> {
        let dir = dir.as_ref();
        let (cert_name, key_name) = match endpoint {
            Endpoint::Server => (SERVER_CERT, SERVER_KEY),
            Endpoint::Client => (CLIENT_CERT, CLIENT_KEY),
        };
        let required = endpoint == Endpoint::Server;
        let ca = read(dir, CA_CERT, true)?;
        let crl = match endpoint {
            Endpoint::Server => read(dir, CA_CRL, false)?,
            Endpoint::Client => None,
        };
        let cert = read(dir, cert_name, required)?;
        let key = read(dir, key_name, required)?;
        fn src(f: &Option<(Vec<u8>, String)>) -> Option<Source<'_>> {
            f.as_ref().map(|(b, o)| Source {
                bytes: b,
                origin: o.clone(),
            })
        }
        let creds = build(
            endpoint,
            verify_peer,
            Some(dir.to_path_buf()),
            src(&ca),
            src(&crl),
            src(&cert),
            src(&key),
        )?;
        trace::qcrypto_tls_creds_x509_load(creds.ptr(), &dir.display().to_string());
        Ok(creds)
    }

    /// Builds credentials from PEM text in memory (for tests and embedders
    /// that keep their keys elsewhere). `ca_cert` is required when
    /// `verify_peer` is on; a server needs `cert` and `key`.
    ///
    /// # Errors
    /// As [`x509_from_dir`](TlsCreds::x509_from_dir), with
    /// "(in-memory PEM)" where a file name would be.
    pub fn x509_from_pem(
        endpoint: Endpoint,
        pem: &X509Pem<'_>,
        verify_peer: bool,
    ) -> Result<TlsCreds, TlsError> {
        fn src<'a>(b: Option<&'a [u8]>, name: &str) -> Option<Source<'a>> {
            b.map(|bytes| Source {
                bytes,
                origin: format!("{name} (in-memory PEM)"),
            })
        }
        let (cert_name, key_name) = match endpoint {
            Endpoint::Server => (SERVER_CERT, SERVER_KEY),
            Endpoint::Client => (CLIENT_CERT, CLIENT_KEY),
        };
        let creds = build(
            endpoint,
            verify_peer,
            None,
            src(pem.ca_cert, CA_CERT),
            src(pem.ca_crl, CA_CRL),
            src(pem.cert, cert_name),
            src(pem.key, key_name),
        )?;
        trace::qcrypto_tls_creds_x509_load(creds.ptr(), "<memory>");
        Ok(creds)
    }

    /// The endpoint these credentials are for.
    pub fn endpoint(&self) -> Endpoint {
        self.inner.endpoint
    }

    /// Whether the peer's certificate is required and checked.
    pub fn verify_peer(&self) -> bool {
        self.inner.verify_peer
    }

    /// The directory the credentials were loaded from, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.inner.dir.as_deref()
    }

    pub(crate) fn ptr(&self) -> *const () {
        Arc::as_ptr(&self.inner) as *const ()
    }

    pub(crate) fn server_config(&self) -> Option<Arc<ServerConfig>> {
        match &self.inner.config {
            Config::Server(c) => Some(c.clone()),
            Config::Client(_) => None,
        }
    }

    pub(crate) fn client_config(&self) -> Option<Arc<ClientConfig>> {
        match &self.inner.config {
            Config::Client(c) => Some(c.clone()),
            Config::Server(_) => None,
        }
    }
}

fn config_err(what: impl fmt::Display) -> TlsError {
    TlsError::Config(what.to_string())
}

#[allow(clippy::too_many_arguments)]
fn build(
    endpoint: Endpoint,
    verify_peer: bool,
    dir: Option<PathBuf>,
    ca: Option<Source<'_>>,
    crl: Option<Source<'_>>,
    cert: Option<Source<'_>>,
    key: Option<Source<'_>>,
) -> Result<TlsCreds, TlsError> {
    let provider = provider();
    // Parse everything given, needed or not: a broken file is an error
    // even where verify-peer=off would not use it (QEMU loads it too).
    let roots = ca.as_ref().map(roots).transpose()?;
    let crls = crl.as_ref().map(crls).transpose()?.unwrap_or_default();
    let chain = cert.as_ref().map(|c| certs("certificate", c)).transpose()?;
    let key_der = key.as_ref().map(private_key).transpose()?;
    let names = || {
        format!(
            "'{}' & key '{}'",
            cert.as_ref().map_or("(none)", |s| &s.origin),
            key.as_ref().map_or("(none)", |s| &s.origin)
        )
    };
    let config = match endpoint {
        Endpoint::Server => {
            let (Some(chain), Some(key_der)) = (chain, key_der) else {
                return Err(config_err(format!(
                    "TLS server credentials need a certificate and its key ({SERVER_CERT}, {SERVER_KEY})"
                )));
            };
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(config_err)?;
            let builder = if verify_peer {
                let roots = roots.ok_or_else(no_ca_for_verify_peer)?;
                // GnuTLS's semantics (verify-high.c checks each
                // certificate of the chain against the CRLs of its issuer):
                // a certificate that no CRL covers is not revoked. webpki's
                // default would refuse every certificate whose issuer
                // published no CRL here, intermediates included.
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .with_crls(crls)
                        .allow_unknown_revocation_status()
                        .build()
                        .map_err(|e| {
                            config_err(format!("Cannot verify client certificates: {e}"))
                        })?;
                builder.with_client_cert_verifier(verifier)
            } else {
                builder.with_no_client_auth()
            };
            let cfg = builder
                .with_single_cert(chain, key_der)
                .map_err(|e| config_err(format!("Cannot load certificate {}: {e}", names())))?;
            Config::Server(Arc::new(cfg))
        }
        Endpoint::Client => {
            let builder = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(config_err)?;
            let builder = if verify_peer {
                let roots = roots.ok_or_else(no_ca_for_verify_peer)?;
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| config_err(format!("Cannot verify server certificates: {e}")))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ServerVerifier::new(webpki)))
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            };
            let cfg = match (chain, key_der) {
                (Some(chain), Some(key_der)) => builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| config_err(format!("Cannot load certificate {}: {e}", names())))?,
                (None, None) => builder.with_no_client_auth(),
                _ => {
                    return Err(config_err(format!(
                        "A client certificate needs its key and the reverse: got {}",
                        names()
                    )))
                }
            };
            Config::Client(Arc::new(cfg))
        }
    };
    Ok(TlsCreds {
        inner: Arc::new(Inner {
            endpoint,
            verify_peer,
            dir,
            config,
        }),
    })
}

/// verify-peer without `ca-cert.pem`.
fn no_ca_for_verify_peer() -> TlsError {
    config_err(format!("verify-peer needs the CA certificate ({CA_CERT})"))
}
