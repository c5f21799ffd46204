//! TLS with x509 certificates (`--object tls-creds-x509`), end to end
//! against libnbd's GnuTLS client (nbdinfo, nbdsh) and qemu-img's, with
//! QEMU's directory layout (`ca-cert.pem`, `server-cert.pem`,
//! `server-key.pem`, `client-cert.pem`, `client-key.pem`) generated per
//! test with rcgen. `--tls-authz` and `-L` are checked against qemu-nbd
//! too: the same credentials and DN let in, and refuse, the same clients.
//! A missing client fails the test.

mod helpers;

use std::path::PathBuf;

use helpers::process::{corio_nbd, run, ServerProc, TempDir};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

const SIZE: usize = 4 << 20;

/// The DN of the good client's certificate as GnuTLS (and so qemu's
/// authz-simple) spells it.
const CLIENT_DN: &str = "C=UK,O=Corio Test,CN=alice";

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

/// A DN from `(type, value)` pairs, UTF8Strings but for a PrintableString
/// country when `printable_country` (X.520's type for it).
fn dn_with(parts: &[(DnType, &str)], printable_country: bool) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (t, v) in parts {
        if *t == DnType::CountryName && printable_country {
            let p = rcgen::string::PrintableString::try_from(*v).unwrap();
            dn.push(t.clone(), rcgen::DnValue::PrintableString(p));
        } else {
            dn.push(t.clone(), *v);
        }
    }
    dn
}

fn dn(parts: &[(DnType, &str)]) -> DistinguishedName {
    dn_with(parts, true)
}

fn make_ca(cn: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = dn(&[(DnType::CountryName, "UK"), (DnType::CommonName, cn)]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { params, key, pem }
}

/// A certificate and key (PEM) signed by `ca`.
fn make_leaf(
    ca: &Ca,
    subject: DistinguishedName,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name = subject;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A PKI in QEMU's layout under a temporary directory:
/// - `server/`: the CA, a server certificate for `localhost`;
/// - `alice/`: the CA, a client certificate with [`CLIENT_DN`];
/// - `mallory/`: the CA, a client certificate with another DN;
/// - `carol/`: the CA, a client certificate whose country is a UTF8String
///   (not X.520's PrintableString: GnuTLS prints it in hex);
/// - `nocert/`: the CA only;
/// - `stranger/`: a client certificate from a CA the server does not
///   trust (and that CA).
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("x509");
        let ca = make_ca("corio test CA");
        let write = |sub: &str, files: &[(&str, &str)]| {
            let d = dir.path(sub);
            std::fs::create_dir_all(&d).unwrap();
            for (name, text) in files {
                std::fs::write(d.join(name), text).unwrap();
            }
        };
        let (cert, key) = make_leaf(
            &ca,
            dn(&[(DnType::CountryName, "UK"), (DnType::CommonName, "server")]),
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        write(
            "server",
            &[
                ("ca-cert.pem", &ca.pem),
                ("server-cert.pem", &cert),
                ("server-key.pem", &key),
            ],
        );
        let client = |ca: &Ca, cn: &str| {
            make_leaf(
                ca,
                dn_with(
                    &[
                        (DnType::CountryName, "UK"),
                        (DnType::OrganizationName, "Corio Test"),
                        (DnType::CommonName, cn),
                    ],
                    cn != "carol",
                ),
                &[],
                ExtendedKeyUsagePurpose::ClientAuth,
            )
        };
        for (sub, cn) in [
            ("alice", "alice"),
            ("mallory", "mallory"),
            ("carol", "carol"),
        ] {
            let (cert, key) = client(&ca, cn);
            write(
                sub,
                &[
                    ("ca-cert.pem", &ca.pem),
                    ("client-cert.pem", &cert),
                    ("client-key.pem", &key),
                ],
            );
        }
        write("nocert", &[("ca-cert.pem", &ca.pem)]);
        let other = make_ca("stranger CA");
        let (cert, key) = client(&other, "alice");
        write(
            "stranger",
            &[
                ("ca-cert.pem", &ca.pem),
                ("client-cert.pem", &cert),
                ("client-key.pem", &key),
            ],
        );
        Pki { dir }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path(sub)
    }

    /// `--object` for the server credentials.
    fn server_object(&self, extra: &str) -> String {
        format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=server{extra}",
            self.path("server").display()
        )
    }

    /// `--object` for the client credentials in `sub/`.
    fn client_object(&self, sub: &str) -> String {
        format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=client",
            self.path(sub).display()
        )
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + i / 4096) as u8).collect()
}

/// A server (`program`: corio-nbd or qemu-nbd) on an image with a
/// pattern, requiring x509 TLS.
struct Setup {
    pki: Pki,
    server: ServerProc,
    image: Vec<u8>,
}

impl Setup {
    fn start(program: &str, extra: &[&str]) -> Setup {
        let pki = Pki::new();
        let image = pattern(SIZE);
        let disk = pki.path("disk.img");
        std::fs::write(&disk, &image).unwrap();
        let sock = pki.path("nbd.sock");
        let object = pki.server_object("");
        let mut args = vec![
            "-k",
            sock.to_str().unwrap(),
            "-t",
            "-f",
            "raw",
            "--object",
            &object,
            "--tls-creds",
            "tls0",
        ];
        args.extend_from_slice(extra);
        args.push(disk.to_str().unwrap());
        let server = ServerProc::start(program, &args, &sock);
        Setup { pki, server, image }
    }

    /// libnbd's URI with the certificates in `sub/`.
    fn uri(&self, sub: &str) -> String {
        format!(
            "nbds+unix:///?socket={}&tls-certificates={}",
            self.server.socket.display(),
            self.pki.path(sub).display()
        )
    }

    /// qemu's `--image-opts` for this server with `tls-creds=tls0`.
    fn image_opts(&self) -> String {
        format!(
            "driver=nbd,path={},tls-creds=tls0,tls-hostname=localhost",
            self.server.socket.display()
        )
    }
}

#[test]
fn nbdinfo_with_certificates_sees_the_export() {
    let s = Setup::start(corio_nbd(), &[]);
    let r = run("nbdinfo", &["--json", &s.uri("alice")]);
    assert!(r.ok, "nbdinfo failed: {}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!("\"export-size\": {SIZE}")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("\"TLS\": true"), "{}", r.stdout);
}

#[test]
fn nbdsh_set_tls_certificates_writes_and_reads() {
    let s = Setup::start(corio_nbd(), &[]);
    let script = format!(
        "h.set_tls(nbd.TLS_REQUIRE)\n\
         h.set_tls_certificates({certs:?})\n\
         h.connect_unix({sock:?})\n\
         assert h.get_size() == {SIZE}\n\
         buf = bytes(range(256)) * 1024\n\
         h.pwrite(buf, 8192)\n\
         assert h.pread(len(buf), 8192) == buf\n\
         h.flush()\n\
         h.shutdown()\n\
         print('roundtrip ok')\n",
        certs = s.pki.path("alice").to_str().unwrap(),
        sock = s.server.socket.to_str().unwrap(),
    );
    let r = run("nbdsh", &["-c", &script]);
    assert!(r.ok, "nbdsh: {}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("roundtrip ok"), "{}", r.stdout);
    let disk = std::fs::read(s.pki.path("disk.img")).unwrap();
    let written: Vec<u8> = (0..=255u8).cycle().take(256 * 1024).collect();
    assert_eq!(&disk[8192..8192 + written.len()], &written[..]);
    assert_eq!(&disk[..8192], &s.image[..8192]);
}

#[test]
fn qemu_img_x509_info_compare_and_convert_both_ways() {
    let s = Setup::start(corio_nbd(), &[]);
    let object = s.pki.client_object("alice");
    let opts = s.image_opts();
    let r = run(
        "qemu-img",
        &["info", "--object", &object, "--image-opts", &opts],
    );
    assert!(r.ok, "qemu-img info: {}", r.stderr);
    assert!(
        r.stdout.contains(&format!("({SIZE} bytes)")),
        "{}",
        r.stdout
    );

    let out = s.pki.path("out.img");
    let r = run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            "--object",
            &object,
            "--image-opts",
            &opts,
            out.to_str().unwrap(),
        ],
    );
    assert!(r.ok, "qemu-img convert from the server: {}", r.stderr);
    assert!(
        std::fs::read(&out).unwrap() == s.image,
        "the export read back differs"
    );

    let new: Vec<u8> = s.image.iter().map(|b| b ^ 0xa5).collect();
    let src = s.pki.path("new.img");
    std::fs::write(&src, &new).unwrap();
    let r = run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            src.to_str().unwrap(),
            "--object",
            &object,
            "--target-image-opts",
            &opts,
        ],
    );
    assert!(r.ok, "qemu-img convert to the server: {}", r.stderr);
    assert!(
        std::fs::read(s.pki.path("disk.img")).unwrap() == new,
        "the export does not hold what qemu-img wrote"
    );

    // The json: filename form, and compare against the source.
    let json = format!(
        "json:{{\"driver\":\"nbd\",\"path\":\"{}\",\"tls-creds\":\"tls0\",\"tls-hostname\":\"localhost\"}}",
        s.server.socket.display()
    );
    let r = run(
        "qemu-img",
        &[
            "compare",
            "--object",
            &object,
            "-f",
            "raw",
            src.to_str().unwrap(),
            &json,
        ],
    );
    assert!(r.ok, "qemu-img compare: {}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("Images are identical"), "{}", r.stdout);
}

/// A client without TLS, without a certificate, or with one from a CA the
/// server does not trust, is refused; the server goes on serving a good
/// one. `program` is the server.
fn refusals(program: &str) -> Vec<(String, bool)> {
    let mut s = Setup::start(program, &[]);
    let plain = format!("nbd+unix:///?socket={}", s.server.socket.display());
    let mut seen = Vec::new();
    let r = run("nbdinfo", &["--size", &plain]);
    seen.push(("nbdinfo without TLS".to_owned(), r.ok));
    if program == corio_nbd() {
        let all = r.stdout.clone() + &r.stderr;
        assert!(all.contains("TLS"), "{all}");
    }
    let r = run("qemu-img", &["info", "-f", "raw", &plain]);
    seen.push(("qemu-img without TLS".to_owned(), r.ok));
    for sub in ["nocert", "stranger"] {
        let r = run("nbdinfo", &["--size", &s.uri(sub)]);
        seen.push((format!("nbdinfo with {sub}"), r.ok));
        let r = run(
            "qemu-img",
            &[
                "info",
                "--object",
                &s.pki.client_object(sub),
                "--image-opts",
                &s.image_opts(),
            ],
        );
        seen.push((format!("qemu-img with {sub}"), r.ok));
    }
    assert!(s.server.alive(), "{program} died after refusing clients");
    let r = run("nbdinfo", &["--size", &s.uri("alice")]);
    assert!(r.ok, "{program}: a good client was refused: {}", r.stderr);
    assert_eq!(r.stdout.trim(), SIZE.to_string());
    seen
}

#[test]
fn clients_without_good_credentials_are_refused_as_by_qemu_nbd() {
    let ours = refusals(corio_nbd());
    for (what, ok) in &ours {
        assert!(!ok, "corio-nbd let in {what}");
    }
    assert_eq!(ours, refusals("qemu-nbd"), "corio-nbd and qemu-nbd differ");
}

/// Whether `sub`'s certificate gets into `program` serving with
/// `--tls-authz` for `identity`.
fn authz_outcomes(program: &str, identity: &str) -> (bool, bool, String) {
    let authz = format!(
        "authz-simple,id=auth0,identity={}",
        identity.replace(',', ",,")
    );
    let mut s = Setup::start(program, &["--object", &authz, "--tls-authz", "auth0"]);
    let alice = run("nbdinfo", &["--size", &s.uri("alice")]);
    let object = s.pki.client_object("mallory");
    let mallory = run(
        "qemu-img",
        &["info", "--object", &object, "--image-opts", &s.image_opts()],
    );
    assert!(s.server.alive(), "{program} died after refusing a client");
    let log = s.server.kill_and_stderr();
    (
        alice.ok,
        mallory.ok,
        format!("{}{}{log}", alice.stderr, mallory.stderr),
    )
}

#[test]
fn tls_authz_lets_in_the_named_dn_only_as_qemu_nbd() {
    for program in [corio_nbd(), "qemu-nbd"] {
        let (alice, mallory, err) = authz_outcomes(program, CLIENT_DN);
        assert!(alice, "{program}: alice ({CLIENT_DN}) was refused: {err}");
        assert!(!mallory, "{program}: mallory got in");
    }
    // A country that is a UTF8String is printed as its DER in hex.
    for program in [corio_nbd(), "qemu-nbd"] {
        let carol = "C=#0c02554b,O=Corio Test,CN=carol";
        let mut s = Setup::start(
            program,
            &[
                "--object",
                &format!(
                    "authz-simple,id=auth0,identity={}",
                    carol.replace(',', ",,")
                ),
                "--tls-authz",
                "auth0",
            ],
        );
        let r = run("nbdinfo", &["--size", &s.uri("carol")]);
        assert!(s.server.alive());
        assert!(r.ok, "{program}: carol ({carol}) was refused: {}", r.stderr);
        let r = run("nbdinfo", &["--size", &s.uri("alice")]);
        assert!(!r.ok, "{program}: alice got in as carol");
    }
    // The DN in RFC 4514 order (CN first) is not how qemu spells it.
    let reversed = "CN=alice,O=Corio Test,C=UK";
    for program in [corio_nbd(), "qemu-nbd"] {
        let (alice, _, _) = authz_outcomes(program, reversed);
        assert!(!alice, "{program}: alice got in with {reversed}");
    }
}

/// `-L` with x509 client credentials: corio-nbd's and qemu-nbd's listers
/// print the same bytes against both servers.
#[test]
fn list_over_x509_is_byte_identical_to_qemu_nbd() {
    let pki = Pki::new();
    let img = pki.path("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let server_obj = pki.server_object("");
    let client_obj = pki.client_object("alice");
    let mut outputs = Vec::new();
    for server in ["qemu-nbd", corio_nbd()] {
        let sock = pki.path("list.sock");
        let _ = std::fs::remove_file(&sock);
        let args = [
            "-k",
            sock.to_str().unwrap(),
            "-t",
            "-x",
            "foo",
            "-D",
            "over x509",
            "-f",
            "raw",
            "--object",
            &server_obj,
            "--tls-creds",
            "tls0",
            img.to_str().unwrap(),
        ];
        let _srv = ServerProc::start(server, &args, &sock);
        for lister in ["qemu-nbd", corio_nbd()] {
            let r = run(
                lister,
                &[
                    "-L",
                    "-k",
                    sock.to_str().unwrap(),
                    "--object",
                    &client_obj,
                    "--tls-creds",
                    "tls0",
                    "--tls-hostname",
                    "localhost",
                ],
            );
            assert!(r.ok, "{lister} -L against {server}: {}", r.stderr);
            outputs.push((format!("{lister} -L against {server}"), r.stdout));
        }
        // Without a client certificate the listing is refused.
        let r = run(
            corio_nbd(),
            &[
                "-L",
                "-k",
                sock.to_str().unwrap(),
                "--object",
                &pki.client_object("stranger"),
                "--tls-creds",
                "tls0",
            ],
        );
        assert!(!r.ok, "listed {server} with an untrusted certificate");
        assert!(r.stderr.starts_with("corio-nbd: "), "{}", r.stderr);
    }
    let (first, want) = &outputs[0];
    assert!(want.contains(" export: 'foo'\n"), "{want}");
    assert!(want.contains("  description: over x509\n"), "{want}");
    for (what, got) in &outputs[1..] {
        assert_eq!(got, want, "{what} differs from {first}");
    }
}
