//! How a client checks the server's certificate: webpki for the chain,
//! the validity dates, the signatures and the subjectAltName, plus
//! GnuTLS's common-name fallback (QEMU's `qcrypto_tls_session_check_certificate`
//! calls `gnutls_x509_crt_check_hostname`); and the verifier of a client
//! with verify-peer off.
//!
//! GnuTLS's rules, which QEMU's tests (test-crypto-tlssession's `basicca`,
//! `cachain`, `altname1`..`altname8`) depend on:
//!
//! * a certificate with a dNSName or an iPAddress subjectAltName matches
//!   only through them: its common name is ignored;
//! * one with neither matches through its subject's common name, compared
//!   without regard to case; `*` is a wildcard only as the whole leftmost
//!   label (`*.qemu.org` matches `www.qemu.org`, not `qemu.org` nor
//!   `a.b.qemu.org`), and not over a bare top-level domain (`*.org`).
//!   A subject with several common names matches none of them (GnuTLS
//!   refuses the ambiguity too).

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use super::dn;

/// webpki's server certificate check with GnuTLS's common-name fallback:
/// when webpki refuses the certificate *only* because no subjectAltName
/// matches the host name, and the certificate has no dNSName or iPAddress
/// subjectAltName, the subject's common name may match instead. Every
/// other check (chain, dates, signatures, key usage) is webpki's alone.
#[derive(Debug)]
pub(super) struct ServerVerifier {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerVerifier {
    pub(super) fn new(webpki: Arc<WebPkiServerVerifier>) -> ServerVerifier {
        ServerVerifier { webpki }
    }
}

/// Whether `err` is webpki's name mismatch, which it reports only after
/// the chain, the dates and the signatures passed.
fn is_name_mismatch(err: &rustls::Error) -> bool {
    matches!(
        err,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

/// The host name as GnuTLS compares it with a common name.
fn host_text(name: &ServerName<'_>) -> Option<String> {
    match name {
        ServerName::DnsName(d) => Some(d.as_ref().to_owned()),
        ServerName::IpAddress(ip) => Some(IpAddr::from(*ip).to_string()),
        _ => None,
    }
}

/// Whether the certificate `cert` (DER) has no dNSName or iPAddress
/// subjectAltName and exactly one common name, which matches `host`.
pub(super) fn common_name_matches(cert: &[u8], host: &str) -> bool {
    let Some(names) = dn::host_names(cert) else {
        return false;
    };
    match names.common_names.as_slice() {
        [cn] if !names.has_dns_or_ip_san => hostname_matches(cn, host),
        _ => false,
    }
}

/// GnuTLS's `_gnutls_hostname_compare`, without partial-label wildcards:
/// equal ignoring ASCII case, or `*.rest` where `host` is one more label
/// in front of `rest` and `rest` has at least two labels.
fn hostname_matches(pattern: &str, host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    if pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    let Some(rest) = pattern.strip_prefix("*.") else {
        return false;
    };
    if !rest.contains('.') || rest.contains('*') || host.parse::<IpAddr>().is_ok() {
        return false;
    }
    match host.split_once('.') {
        Some((label, host_rest)) => !label.is_empty() && host_rest.eq_ignore_ascii_case(rest),
        None => false,
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(e) if is_name_mismatch(&e) => match host_text(server_name) {
                Some(host) if common_name_matches(end_entity, &host) => {
                    Ok(ServerCertVerified::assertion())
                }
                _ => Err(e),
            },
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// A client with verify-peer off accepts any server certificate (QEMU then
/// skips `qcrypto_tls_session_check_certificate`), but still checks that the
/// server signed the handshake with the key of the certificate it sent.
#[derive(Debug)]
pub(super) struct NoVerify(pub(super) Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_rules() {
        let cases = [
            ("qemu.org", "qemu.org", true),
            ("QEMU.org", "qemu.ORG", true),
            ("qemu.org", "qemu.org.", true),
            ("qemu.org", "www.qemu.org", false),
            ("*.qemu.org", "www.qemu.org", true),
            ("*.qemu.org", "WWW.Qemu.Org", true),
            ("*.qemu.org", "qemu.org", false),
            ("*.qemu.org", "a.b.qemu.org", false),
            ("*.qemu.org", ".qemu.org", false),
            ("*.org", "qemu.org", false),
            ("w*.qemu.org", "www.qemu.org", false),
            ("*.*.org", "a.b.org", false),
            ("192.168.122.1", "192.168.122.1", true),
            ("*.168.122.1", "192.168.122.1", false),
        ];
        for (pattern, host, want) in cases {
            assert_eq!(hostname_matches(pattern, host), want, "{pattern} vs {host}");
        }
    }

    fn cert(cn: Option<&str>, sans: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CountryName, "UK");
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn common_name_only_without_dns_or_ip_san() {
        let qemu = cert(Some("qemu.org"), &[]);
        assert!(common_name_matches(&qemu, "qemu.org"));
        assert!(!common_name_matches(&qemu, "wiki.qemu.org"));
        let wild = cert(Some("*.qemu.org"), &[]);
        assert!(common_name_matches(&wild, "www.qemu.org"));
        // Any dNSName or iPAddress SAN hides the CN (QEMU's altname6).
        let alt = cert(Some("qemu.org"), &["www.qemu.org", "192.168.122.1"]);
        assert!(!common_name_matches(&alt, "qemu.org"));
        let ip = cert(Some("qemu.org"), &["10.0.0.1"]);
        assert!(!common_name_matches(&ip, "qemu.org"));
        // No CN at all.
        assert!(!common_name_matches(&cert(None, &[]), "qemu.org"));
        assert!(!common_name_matches(b"garbage", "qemu.org"));
    }
}
