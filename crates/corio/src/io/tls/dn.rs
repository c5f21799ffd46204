//! The names in an X.509 certificate, read from its DER with a small
//! reader of the few shapes a certificate's header has.
//!
//! * The subject distinguished name as a string (QEMU's
//!   `gnutls_x509_crt_get_dn`): what [`Authz`](super::Authz) checks and
//!   [`TlsChannel::peer_name`](super::TlsChannel::peer_name) returns. The
//!   attributes come in certificate order, `C=UK,O=Example,CN=qemu`, the
//!   order GnuTLS's compatible output (and so QEMU's authz rules) uses; a
//!   multi-valued RDN joins its attributes with `+`; special characters are
//!   escaped as RFC 4514 says.
//! * The subject's common names and whether the subjectAltName extension
//!   holds a dNSName or an iPAddress: what the host name check falls back
//!   on as GnuTLS does (see `verify.rs`).

use std::fmt::Write;

/// One DER element: its tag and contents, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The element `input` starts with if it has `tag`.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match element(input)? {
        (t, body, rest) if t == tag => Some((body, rest)),
        _ => None,
    }
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0; // [0] EXPLICIT

const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const ISSUER_UID: u8 = 0x81; // [1] IMPLICIT
const SUBJECT_UID: u8 = 0x82; // [2] IMPLICIT
const EXTENSIONS: u8 = 0xa3; // [3] EXPLICIT
/// GeneralName's `dNSName [2] IA5String` and `iPAddress [7] OCTET STRING`.
const SAN_DNS_NAME: u8 = 0x82;
const SAN_IP_ADDRESS: u8 = 0x87;
/// 2.5.4.3, commonName.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
/// 2.5.29.17, subjectAltName.
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

/// The contents of the TBSCertificate of `cert` from its subject on:
/// subject, subjectPublicKeyInfo, then the optional unique ids and
/// extensions.
fn tbs_from_subject(cert: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = expect(cert, SEQUENCE)?;
    let (mut tbs, _) = expect(certificate, SEQUENCE)?;
    if let Some((_, rest)) = expect(tbs, VERSION) {
        tbs = rest;
    }
    let (_, tbs) = expect(tbs, INTEGER)?; // serialNumber
    let (_, tbs) = expect(tbs, SEQUENCE)?; // signature algorithm
    let (_, tbs) = expect(tbs, SEQUENCE)?; // issuer
    let (_, tbs) = expect(tbs, SEQUENCE)?; // validity
    Some(tbs)
}

/// The subject DN of the DER certificate `cert`, or `None` if it does not
/// parse.
pub(crate) fn subject_dn(cert: &[u8]) -> Option<String> {
    let (subject, _) = expect(tbs_from_subject(cert)?, SEQUENCE)?;
    name_to_string(subject)
}

/// What a host name can be checked against in a certificate besides what
/// webpki checks (see `verify.rs`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HostNames {
    /// The subject's commonName values, in certificate order.
    pub(crate) common_names: Vec<String>,
    /// The subjectAltName extension has a dNSName or an iPAddress entry
    /// (GnuTLS then ignores the common name).
    pub(crate) has_dns_or_ip_san: bool,
}

/// The subject's common names and the kinds of subjectAltName of the DER
/// certificate `cert`, or `None` if it does not parse.
pub(crate) fn host_names(cert: &[u8]) -> Option<HostNames> {
    let tbs = tbs_from_subject(cert)?;
    let (subject, tbs) = expect(tbs, SEQUENCE)?;
    let (_, mut tbs) = expect(tbs, SEQUENCE)?; // subjectPublicKeyInfo
    for tag in [ISSUER_UID, SUBJECT_UID] {
        if let Some((_, rest)) = expect(tbs, tag) {
            tbs = rest;
        }
    }
    let has_dns_or_ip_san = match expect(tbs, EXTENSIONS) {
        Some((exts, _)) => san_has_dns_or_ip(exts)?,
        None => false, // a v1 certificate, or no extensions
    };
    Some(HostNames {
        common_names: common_names(subject)?,
        has_dns_or_ip_san,
    })
}

/// The commonName values of an RDNSequence's contents.
fn common_names(mut rdns: &[u8]) -> Option<Vec<String>> {
    let mut names = Vec::new();
    while !rdns.is_empty() {
        let (mut set, rest) = expect(rdns, SET)?;
        rdns = rest;
        while !set.is_empty() {
            let (atv, rest) = expect(set, SEQUENCE)?;
            set = rest;
            let (oid, value) = expect(atv, OID)?;
            if oid == OID_CN {
                let (vtag, vbody, _) = element(value)?;
                names.push(decode_string(vtag, vbody)?);
            }
        }
    }
    Some(names)
}

/// Whether the `[3] EXPLICIT Extensions` contents hold a subjectAltName
/// with a dNSName or an iPAddress.
fn san_has_dns_or_ip(exts: &[u8]) -> Option<bool> {
    let (mut exts, _) = expect(exts, SEQUENCE)?;
    while !exts.is_empty() {
        let (ext, rest) = expect(exts, SEQUENCE)?;
        exts = rest;
        let (oid, mut ext) = expect(ext, OID)?;
        if oid != OID_SAN {
            continue;
        }
        if let Some((_, rest)) = expect(ext, BOOLEAN) {
            ext = rest; // critical
        }
        let (value, _) = expect(ext, OCTET_STRING)?;
        let (mut names, _) = expect(value, SEQUENCE)?;
        while !names.is_empty() {
            let (tag, _, rest) = element(names)?;
            names = rest;
            if tag == SAN_DNS_NAME || tag == SAN_IP_ADDRESS {
                return Some(true);
            }
        }
    }
    Some(false)
}

/// RDNSequence contents to `A=v,B=w+C=x`.
fn name_to_string(mut rdns: &[u8]) -> Option<String> {
    let mut out = String::new();
    while !rdns.is_empty() {
        let (mut set, rest) = expect(rdns, SET)?;
        rdns = rest;
        if !out.is_empty() {
            out.push(',');
        }
        let mut first = true;
        while !set.is_empty() {
            let (atv, rest) = expect(set, SEQUENCE)?;
            set = rest;
            let (oid, value) = expect(atv, OID)?;
            let (vtag, vbody, _) = element(value)?;
            if !first {
                out.push('+');
            }
            first = false;
            let attr = attribute(oid);
            match attr {
                Some((name, _)) => out.push_str(name),
                None => out.push_str(&oid_to_string(oid)?),
            }
            out.push('=');
            let text = attr
                .filter(|(_, syntax)| syntax.allows(vtag))
                .and_then(|_| decode_string(vtag, vbody));
            match text {
                Some(s) => escape_into(&mut out, &s),
                None => {
                    // An unknown attribute, or a value whose string type
                    // its attribute does not allow (a UTF8String country):
                    // `#` and its DER in hex, as RFC 4514 and GnuTLS.
                    let der_len = value.len() - element(value)?.2.len();
                    out.push('#');
                    for b in &value[..der_len] {
                        let _ = write!(out, "{b:02x}");
                    }
                }
            }
        }
    }
    Some(out)
}

/// The string types an attribute's value may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Syntax {
    /// X.520 DirectoryString: TeletexString, PrintableString,
    /// UniversalString, UTF8String or BMPString.
    Directory,
    /// PrintableString only (countryName, serialNumber, ...).
    Printable,
    /// IA5String only (emailAddress, domainComponent).
    Ia5,
    /// UTF8String only.
    Utf8,
}

impl Syntax {
    fn allows(self, tag: u8) -> bool {
        match self {
            Syntax::Directory => matches!(tag, 0x14 | 0x13 | 0x1c | 0x0c | 0x1e),
            Syntax::Printable => tag == 0x13,
            Syntax::Ia5 => tag == 0x16,
            Syntax::Utf8 => tag == 0x0c,
        }
    }
}

/// GnuTLS's names for the attributes it prints as text (DER of the OID
/// body), and the string types it decodes for each: a value of another
/// type, or an attribute not listed, is printed as `#` and hex.
fn attribute(oid: &[u8]) -> Option<(&'static str, Syntax)> {
    use Syntax::{Directory, Ia5, Printable, Utf8};
    Some(match oid {
        [0x55, 0x04, 0x03] => ("CN", Directory),
        [0x55, 0x04, 0x04] => ("surName", Directory),
        [0x55, 0x04, 0x05] => ("serialNumber", Printable),
        [0x55, 0x04, 0x06] => ("C", Printable),
        [0x55, 0x04, 0x07] => ("L", Directory),
        [0x55, 0x04, 0x08] => ("ST", Directory),
        [0x55, 0x04, 0x09] => ("street", Directory),
        [0x55, 0x04, 0x0a] => ("O", Directory),
        [0x55, 0x04, 0x0b] => ("OU", Directory),
        [0x55, 0x04, 0x0c] => ("title", Directory),
        [0x55, 0x04, 0x0d] => ("description", Directory),
        [0x55, 0x04, 0x0f] => ("businessCategory", Directory),
        [0x55, 0x04, 0x11] => ("postalCode", Directory),
        [0x55, 0x04, 0x14] => ("telephoneNumber", Printable),
        [0x55, 0x04, 0x29] => ("name", Directory),
        [0x55, 0x04, 0x2a] => ("givenName", Directory),
        [0x55, 0x04, 0x2b] => ("initials", Directory),
        [0x55, 0x04, 0x2c] => ("generationQualifier", Directory),
        [0x55, 0x04, 0x2e] => ("dnQualifier", Printable),
        [0x55, 0x04, 0x41] => ("pseudonym", Directory),
        // 1.3.6.1.5.5.7.9.{2,3,4,5}: PKIX personal data.
        [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x09, 0x02] => ("placeOfBirth", Directory),
        [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x09, 0x03] => ("gender", Printable),
        [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x09, 0x04] => ("countryOfCitizenship", Printable),
        [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x09, 0x05] => ("countryOfResidence", Printable),
        // 1.3.6.1.5.5.7.8.5: XmppAddr.
        [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x05] => ("XmppAddr", Utf8),
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => ("EMAIL", Ia5),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => ("DC", Ia5),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => ("UID", Directory),
        _ => return None,
    })
}

/// An OID body in dotted form.
fn oid_to_string(oid: &[u8]) -> Option<String> {
    let (&first, rest) = oid.split_first()?;
    let mut out = format!("{}.{}", first / 40, first % 40);
    let mut acc: u64 = 0;
    for &b in rest {
        acc = acc.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            let _ = write!(out, ".{acc}");
            acc = 0;
        }
    }
    Some(out)
}

/// The text of a directory string, for the string types certificates use.
fn decode_string(tag: u8, body: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, NumericString, VisibleString
        0x0c | 0x13 | 0x16 | 0x12 | 0x1a => String::from_utf8(body.to_vec()).ok(),
        // TeletexString: in practice Latin-1
        0x14 => Some(body.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UCS-2 big endian
        0x1e if body.len() % 2 == 0 => {
            let units: Vec<u16> = body
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        // UniversalString: UCS-4 big endian
        0x1c if body.len() % 4 == 0 => body
            .chunks(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => None,
    }
}

/// Appends `value` with RFC 4514's escapes.
fn escape_into(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        if body.len() < 0x80 {
            v.push(body.len() as u8);
        } else {
            v.push(0x82);
            v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(body);
        v
    }

    fn atv(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        let mut body = tlv(OID, oid);
        body.extend(tlv(tag, value));
        tlv(SEQUENCE, &body)
    }

    fn cert_with_subject(subject: &[u8]) -> Vec<u8> {
        cert_with(subject, None)
    }

    /// A certificate with `subject` and, if given, the contents of the
    /// Extensions SEQUENCE.
    fn cert_with(subject: &[u8], extensions: Option<&[u8]>) -> Vec<u8> {
        let mut tbs = tlv(VERSION, &tlv(INTEGER, &[2]));
        tbs.extend(tlv(INTEGER, &[1, 2, 3]));
        tbs.extend(tlv(SEQUENCE, &tlv(OID, &[0x2a, 0x03])));
        tbs.extend(tlv(SEQUENCE, &[]));
        tbs.extend(tlv(SEQUENCE, &[]));
        tbs.extend(tlv(SEQUENCE, subject));
        tbs.extend(tlv(SEQUENCE, &[0u8; 200])); // a long SPKI: long-form length
        if let Some(exts) = extensions {
            tbs.extend(tlv(SUBJECT_UID, &[0, 1]));
            tbs.extend(tlv(EXTENSIONS, &tlv(SEQUENCE, exts)));
        }
        let mut cert = tlv(SEQUENCE, &tbs);
        cert.extend(tlv(SEQUENCE, &tlv(OID, &[0x2a, 0x03])));
        tlv(SEQUENCE, &cert)
    }

    /// An Extension: `oid`, critical if asked, and `value` as extnValue.
    fn extension(oid: &[u8], critical: bool, value: &[u8]) -> Vec<u8> {
        let mut body = tlv(OID, oid);
        if critical {
            body.extend(tlv(BOOLEAN, &[0xff]));
        }
        body.extend(tlv(OCTET_STRING, value));
        tlv(SEQUENCE, &body)
    }

    #[test]
    fn host_names_common_names_and_san_kinds() {
        let mut subject = tlv(SET, &atv(OID_CN, 0x0c, b"qemu.org"));
        subject.extend(tlv(SET, &atv(&[0x55, 4, 6], 0x13, b"UK")));
        subject.extend(tlv(SET, &atv(OID_CN, 0x13, b"other")));
        let names = host_names(&cert_with(&subject, None)).unwrap();
        assert_eq!(names.common_names, ["qemu.org", "other"]);
        assert!(!names.has_dns_or_ip_san);

        // Basic constraints, then a critical SAN with only an rfc822Name
        // ([1]): not a host name.
        let bc = extension(&[0x55, 0x1d, 0x13], true, &tlv(SEQUENCE, &[]));
        let email = tlv(SEQUENCE, &tlv(0x81, b"a@qemu.org"));
        let mut exts = bc.clone();
        exts.extend(extension(OID_SAN, true, &email));
        let names = host_names(&cert_with(&subject, Some(&exts))).unwrap();
        assert!(!names.has_dns_or_ip_san);

        for entry in [
            tlv(SAN_DNS_NAME, b"qemu.org"),
            tlv(SAN_IP_ADDRESS, &[10, 0, 0, 1]),
        ] {
            let mut general_names = tlv(0x81, b"a@qemu.org");
            general_names.extend(entry);
            let mut exts = bc.clone();
            exts.extend(extension(OID_SAN, false, &tlv(SEQUENCE, &general_names)));
            let names = host_names(&cert_with(&subject, Some(&exts))).unwrap();
            assert!(names.has_dns_or_ip_san);
        }
        assert_eq!(host_names(b"\x30\x00"), None);
    }

    #[test]
    fn certificate_order_and_escapes() {
        let mut subject = tlv(SET, &atv(&[0x55, 4, 6], 0x13, b"UK"));
        subject.extend(tlv(SET, &atv(&[0x55, 4, 10], 0x0c, b"A, B")));
        let mut multi = atv(&[0x55, 4, 3], 0x0c, b"qemu");
        multi.extend(atv(&[0x55, 4, 11], 0x0c, b" x"));
        subject.extend(tlv(SET, &multi));
        subject.extend(tlv(
            SET,
            &atv(&[0x2b, 0x06, 0x01, 0x82, 0x37], 0x04, &[0xab]),
        ));
        let dn = subject_dn(&cert_with_subject(&subject)).unwrap();
        assert_eq!(dn, r"C=UK,O=A\, B,CN=qemu+OU=\ x,1.3.6.1.311=#0401ab");
    }

    /// GnuTLS (and so qemu's authz) prints a value whose string type its
    /// attribute does not allow as hex: qemu-nbd reports an rcgen client
    /// certificate's UTF8String country as `C=#0c02554b`.
    #[test]
    fn values_of_a_type_the_attribute_does_not_allow_are_hex() {
        let mut subject = tlv(SET, &atv(&[0x55, 4, 6], 0x0c, b"UK"));
        subject.extend(tlv(SET, &atv(&[0x55, 4, 10], 0x13, b"Org")));
        subject.extend(tlv(SET, &atv(&[0x55, 4, 3], 0x16, b"ia5")));
        let email = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01];
        subject.extend(tlv(SET, &atv(&email, 0x16, b"a@b")));
        subject.extend(tlv(SET, &atv(&email, 0x0c, b"a@b")));
        let dn = subject_dn(&cert_with_subject(&subject)).unwrap();
        assert_eq!(
            dn,
            "C=#0c02554b,O=Org,CN=#1603696135,EMAIL=a@b,EMAIL=#0c03614062"
        );
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(subject_dn(b""), None);
        assert_eq!(subject_dn(&[0x30, 0x85, 1, 2, 3, 4, 5]), None);
        assert_eq!(subject_dn(&tlv(SEQUENCE, &tlv(SEQUENCE, &[]))), None);
    }
}
