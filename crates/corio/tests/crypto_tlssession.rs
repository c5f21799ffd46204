//! QEMU's tests/unit/test-crypto-tlssession.c: its X.509 matrix (a CA,
//! a different CA, altnames, authz wildcards, a CA chain) run as TLS
//! sessions over socket pairs, handshakes in threads, plus common-name
//! wildcards and revocation lists (`ca-crl.pem`).
//!
//! Every test generates its own certificates with rcgen (see
//! `tls_helpers`).

mod helpers;
mod io_channel_helpers;
mod tls_helpers;

use std::sync::Arc;

use corio::io::tls::{Endpoint, TlsCreds, X509Pem};
use corio::io::Channel;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams,
    SerialNumber,
};
use tls_helpers::{
    dn, handshake_threads, make_ca, make_leaf, make_leaf_serial, ping_pong, socket_pair, Ca, Leaf,
    Pki, Tls,
};

// ----- test-crypto-tlssession's X.509 matrix -----

/// A CA signed by `parent` (test-crypto-tlssession's `cacertlevel*`).
fn make_sub_ca(parent: &Ca, cn: &str) -> Ca {
    make_sub_ca_serial(parent, cn, None)
}

/// As `make_sub_ca`, with a chosen serial number (for CRLs).
fn make_sub_ca_serial(parent: &Ca, cn: &str, serial: Option<u64>) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = dn(cn);
    params.serial_number = serial.map(SerialNumber::from);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = Issuer::from_params(&parent.params, &parent.key);
    let pem = params.signed_by(&key, &issuer).unwrap().pem();
    Ca { params, key, pem }
}

/// QEMU's `QAUTHZ_LIST_FORMAT_GLOB` rules (fnmatch with `*` only).
fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, tail)) => {
            s.starts_with(head)
                && (0..=s.len() - head.len())
                    .any(|i| s.is_char_boundary(head.len() + i) && glob(tail, &s[head.len() + i..]))
        }
    }
}

/// One row of test-crypto-tlssession: the CA each side trusts, the
/// certificates each side presents, the host name the client checks, the
/// authz globs of the server, and how each side ends (`Err` names a part
/// of the error).
struct SessionCase<'a> {
    name: &'a str,
    server_ca: &'a str,
    client_ca: &'a str,
    server: &'a Leaf,
    client: &'a Leaf,
    hostname: &'a str,
    authz: Option<&'a [&'a str]>,
    server_result: Result<(), &'a str>,
    client_result: Result<(), &'a str>,
}

impl<'a> SessionCase<'a> {
    /// Both sides trust `ca` and accept each other.
    fn ok(
        name: &'a str,
        ca: &'a str,
        server: &'a Leaf,
        client: &'a Leaf,
        hostname: &'a str,
    ) -> SessionCase<'a> {
        SessionCase {
            name,
            server_ca: ca,
            client_ca: ca,
            server,
            client,
            hostname,
            authz: None,
            server_result: Ok(()),
            client_result: Ok(()),
        }
    }
}

fn run_session_case(case: &SessionCase<'_>) {
    let server_creds = TlsCreds::x509_from_pem(
        Endpoint::Server,
        &X509Pem {
            ca_cert: Some(case.server_ca.as_bytes()),
            cert: Some(case.server.cert.as_bytes()),
            key: Some(case.server.key.as_bytes()),
            ..Default::default()
        },
        true,
    )
    .unwrap();
    let client_creds = TlsCreds::x509_from_pem(
        Endpoint::Client,
        &X509Pem {
            ca_cert: Some(case.client_ca.as_bytes()),
            cert: Some(case.client.cert.as_bytes()),
            key: Some(case.client.key.as_bytes()),
            ..Default::default()
        },
        true,
    )
    .unwrap();
    let authz = case.authz.map(|rules| {
        let rules: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
        Arc::new(move |dn: &str| rules.iter().any(|r| glob(r, dn)))
            as Arc<dyn corio::io::tls::Authz>
    });
    let (a, b) = socket_pair();
    let client = Arc::new(Tls::new_client(a, &client_creds, Some(case.hostname)).unwrap());
    let server = Arc::new(Tls::new_server(b, &server_creds, authz).unwrap());
    let (cr, sr) = handshake_threads(&client, &server);
    for (side, got, want) in [
        ("client", &cr, case.client_result),
        ("server", &sr, case.server_result),
    ] {
        match (got, want) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(part)) => assert!(e.contains(part), "{}: {side}: {e}", case.name),
            (got, want) => panic!("{}: {side}: got {got:?}, want {want:?}", case.name),
        }
    }
}

/// QEMU's /qcrypto/tlssession/{basicca, differentca, altname1..8,
/// wildcard1..6, cachain}, plus common-name wildcards. GnuTLS checks the
/// peer after the handshake, rustls during it: a client that refuses the
/// server's certificate also fails the server's handshake (with its
/// alert), where QEMU's server-side check passes.
#[test]
fn crypto_tlssession_x509_matrix() {
    let ca = make_ca("qemu CA");
    let alt_ca = make_ca("qemu CA 1");
    let server = ExtendedKeyUsagePurpose::ServerAuth;
    let client = ExtendedKeyUsagePurpose::ClientAuth;
    let server_cert = make_leaf(&ca, "qemu.org", &[], server.clone());
    let client_cert = make_leaf(&ca, "qemu", &[], client.clone());
    let client_alt_cert = make_leaf(&alt_ca, "qemu", &[], client.clone());
    // "When an altname is set, the CN is ignored, so it must be duplicated
    // as an altname for it to match"; alt2 intentionally doesn't.
    let ips = ["192.168.122.1", "fec0::dead:beaf"];
    let alt1 = [&["www.qemu.org", "qemu.org"][..], &ips].concat();
    let alt2 = [&["www.qemu.org", "wiki.qemu.org"][..], &ips].concat();
    let server_alt1 = make_leaf(&ca, "qemu.org", &alt1, server.clone());
    let server_alt2 = make_leaf(&ca, "qemu.org", &alt2, server.clone());
    let server_wild = make_leaf(&ca, "*.qemu.org", &[], server.clone());
    // The chain: root, level 1a and 1b, level 2a under 1a, all trusted.
    let root = make_ca("qemu root");
    let level1a = make_sub_ca(&root, "qemu level 1a");
    let level1b = make_sub_ca(&root, "qemu level 1b");
    let level2a = make_sub_ca(&level1a, "qemu level 2a");
    let server_level3a = make_leaf(&level2a, "qemu.org", &[], server);
    let client_level2b = make_leaf(&level1b, "qemu client level 2b", &[], client);
    let chain = [&root, &level1a, &level1b, &level2a]
        .map(|c| c.pem.as_str())
        .concat();

    let mismatch = "Certificate does not match the hostname";
    let refused = "does not accept our certificate";
    let denied = "authz check for C=UK,CN=qemu is denied";
    let ok =
        |name, server, hostname| SessionCase::ok(name, &ca.pem, server, &client_cert, hostname);
    let client_refuses = |name, server, hostname| SessionCase {
        client_result: Err(mismatch),
        server_result: Err(refused),
        ..ok(name, server, hostname)
    };
    let authz = |name, rules, server_result| SessionCase {
        authz: Some(rules),
        server_result,
        ..ok(name, &server_cert, "qemu.org")
    };
    let cases = [
        ok("basicca", &server_cert, "qemu.org"),
        SessionCase {
            client_ca: &alt_ca.pem,
            client_result: Err("hasn't got a known issuer"),
            server_result: Err(refused),
            ..SessionCase::ok(
                "differentca",
                &ca.pem,
                &server_cert,
                &client_alt_cert,
                "qemu.org",
            )
        },
        ok("altname1", &server_alt1, "qemu.org"),
        ok("altname2", &server_alt1, "www.qemu.org"),
        client_refuses("altname3", &server_alt1, "wiki.qemu.org"),
        ok("altname4", &server_alt1, "192.168.122.1"),
        ok("altname5", &server_alt1, "fec0::dead:beaf"),
        client_refuses("altname6", &server_alt2, "qemu.org"),
        ok("altname7", &server_alt2, "www.qemu.org"),
        ok("altname8", &server_alt2, "wiki.qemu.org"),
        // The CN only matches without dNSName/iPAddress SANs.
        client_refuses("cn-not-ip", &server_cert, "192.168.122.1"),
        client_refuses("cn-other-host", &server_cert, "www.qemu.org"),
        ok("cn-case", &server_cert, "QEMU.Org"),
        ok("cn-wildcard", &server_wild, "www.qemu.org"),
        client_refuses("cn-wildcard-bare", &server_wild, "qemu.org"),
        client_refuses("cn-wildcard-two-labels", &server_wild, "a.www.qemu.org"),
        authz("wildcard1", &["C=UK,CN=dogfood"], Err(denied)),
        authz("wildcard2", &["C=UK,CN=qemu"], Ok(())),
        authz("wildcard3", &["C=UK,CN=dogfood", "C=UK,CN=qemu"], Ok(())),
        authz("wildcard4", &["C=UK,CN=qemustuff"], Err(denied)),
        authz("wildcard5", &["C=UK,CN=qemu*"], Ok(())),
        authz("wildcard6", &["C=UK,CN=*emu*"], Ok(())),
        SessionCase::ok(
            "cachain",
            &chain,
            &server_level3a,
            &client_level2b,
            "qemu.org",
        ),
    ];
    for case in &cases {
        run_session_case(case);
    }
}

// ----- revocation lists -----

/// A CRL from `ca` listing `revoked` serial numbers.
fn make_crl(ca: &Ca, revoked: &[u64]) -> String {
    let params = CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2020, 1, 1),
        next_update: rcgen::date_time_ymd(2999, 1, 1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|&serial| RevokedCertParams {
                serial_number: SerialNumber::from(serial),
                revocation_time: rcgen::date_time_ymd(2021, 1, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    params.signed_by(&issuer).unwrap().pem().unwrap()
}

/// `ca-crl.pem` as QEMU (GnuTLS) reads it: a client certificate a CRL
/// lists is refused with a clear error, and so is one under an
/// intermediate CA that its issuer's CRL lists; one no CRL lists passes,
/// and so does one from a trusted CA that published no CRL.
#[test]
fn io_channel_tls_crl_revoked_client() {
    let pki = Pki::new("crl");
    let intermediate = make_sub_ca_serial(&pki.ca, "qemu intermediate CA", Some(10));
    let revoked_ca = make_sub_ca_serial(&pki.ca, "qemu revoked CA", Some(11));
    let second_ca = make_ca("qemu CA 2");
    let usage = ExtendedKeyUsagePurpose::ClientAuth;
    let leaf = |ca: &Ca, serial| make_leaf_serial(ca, "qemu", &[], usage.clone(), Some(serial));
    let good = leaf(&intermediate, 1001);
    let revoked = leaf(&intermediate, 1002);
    let under_revoked_ca = leaf(&revoked_ca, 1001);
    let uncovered = leaf(&second_ca, 1002);
    let sdir = pki.server_dir();
    let cas = [&*pki.ca.pem, &second_ca.pem].concat();
    std::fs::write(sdir.join("ca-cert.pem"), cas).unwrap();
    let crls = [make_crl(&intermediate, &[1002]), make_crl(&pki.ca, &[11])].concat();
    std::fs::write(sdir.join("ca-crl.pem"), crls).unwrap();
    let screds = TlsCreds::x509_from_dir(Endpoint::Server, &sdir, true).unwrap();

    let handshake = |name: &str, leaf: &Leaf, chain: &str| {
        let cdir = pki.client_dir(name, &pki.ca, false);
        let pem = [&*leaf.cert, chain].concat();
        std::fs::write(cdir.join("client-cert.pem"), pem).unwrap();
        std::fs::write(cdir.join("client-key.pem"), &leaf.key).unwrap();
        let ccreds = TlsCreds::x509_from_dir(Endpoint::Client, cdir, true).unwrap();
        let (a, b) = socket_pair();
        let client = Arc::new(Tls::new_client(a, &ccreds, Some("localhost")).unwrap());
        let server = Arc::new(Tls::new_server(b, &screds, None).unwrap());
        let (cr, sr) = handshake_threads(&client, &server);
        (client, server, cr, sr)
    };

    let (client, server, cr, sr) = handshake("client-good", &good, &intermediate.pem);
    assert_eq!((cr, sr), (Ok(()), Ok(())), "a certificate no CRL lists");
    ping_pong(&client, &server);

    let (client, server, cr, sr) = handshake("client-uncovered", &uncovered, "");
    assert_eq!((cr, sr), (Ok(()), Ok(())), "a CA without a CRL");
    ping_pong(&client, &server);

    for (name, leaf, chain) in [
        ("client-revoked", &revoked, &intermediate.pem),
        ("client-revoked-ca", &under_revoked_ca, &revoked_ca.pem),
    ] {
        let (client, server, cr, sr) = handshake(name, leaf, chain);
        let se = sr.unwrap_err();
        assert!(se.contains("certificate verify failed"), "{name}: {se}");
        assert!(
            se.contains("The certificate has been revoked"),
            "{name}: {se}"
        );
        assert!(!server.is_handshake_complete());
        // In TLS 1.3 the client learns of the refusal on its first read.
        assert_eq!(cr, Ok(()), "{name}");
        let mut buf = [0u8; 1];
        let e = client.read_all(&mut buf).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("does not accept our certificate"), "{name}: {e}");
    }
}
