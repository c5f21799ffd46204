//! Shared by the TLS tests (`io_channel_tls`, `crypto_tlssession`,
//! `io_channel_tls_websock`): a PKI per test, generated with rcgen into a
//! temporary directory in QEMU's layout (a CA, a server certificate for
//! `localhost` and `127.0.0.1`, a client certificate, and an unrelated
//! second CA), and connections: socket pairs and TCP loopback, handshakes
//! as QIOTasks and in threads, and QEMU's data transfer checks.
//!
//! Uses `io_channel_helpers`: a test crate that declares `mod tls_helpers;`
//! declares `mod io_channel_helpers;` too.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::helpers::LockExt;
use std::thread::ThreadId;
use std::time::Duration;

use corio::io::address::SocketAddress;
use corio::io::tls::{Endpoint, TlsChannel, TlsCreds, TlsError};
use corio::io::{Channel, SocketChannel};
use corio::AioContext;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};

use crate::helpers::join_within;
use crate::helpers::poll_until;
use crate::io_channel_helpers::run_threads;

pub type Tls = TlsChannel<SocketChannel>;

pub const DEADLINE: Duration = Duration::from_secs(60);

/// Bytes moved each way by the coroutine transfers.
pub fn big() -> usize {
    crate::helpers::quick_or_thorough(4 << 20, 64 << 20)
}

// ----- a PKI per test -----

pub struct Ca {
    pub params: CertificateParams,
    pub key: KeyPair,
    pub pem: String,
}

pub struct Leaf {
    pub cert: String,
    pub key: String,
}

/// `C=UK,CN=cn`, the country as a PrintableString as X.520 wants it (and
/// as QEMU's certtool-made test certificates have it): GnuTLS, and so
/// corio's DN, prints a UTF8String country as hex.
pub fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    let uk = rcgen::string::PrintableString::try_from("UK").unwrap();
    dn.push(DnType::CountryName, rcgen::DnValue::PrintableString(uk));
    dn.push(DnType::CommonName, cn);
    dn
}

pub fn make_ca(cn: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = dn(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { params, key, pem }
}

pub fn make_leaf(ca: &Ca, cn: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
    make_leaf_serial(ca, cn, sans, usage, None)
}

/// As `make_leaf`, with a chosen serial number (for CRLs).
pub fn make_leaf_serial(
    ca: &Ca,
    cn: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
    serial: Option<u64>,
) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name = dn(cn);
    params.serial_number = serial.map(SerialNumber::from);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    Leaf {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// QEMU's test PKI: a CA, a server and a client certificate signed by it,
/// and a CA that signed neither.
pub struct Pki {
    pub ca: Ca,
    pub other_ca: Ca,
    pub server: Leaf,
    pub client: Leaf,
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(test: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("corio-tls-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = make_ca("qemu CA");
        let other_ca = make_ca("other CA");
        let server = make_leaf(
            &ca,
            "qemu.org",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = make_leaf(&ca, "qemu", &[], ExtendedKeyUsagePurpose::ClientAuth);
        Pki {
            ca,
            other_ca,
            server,
            client,
            dir,
        }
    }

    /// `dir/server/`: ca-cert.pem, server-cert.pem, server-key.pem.
    pub fn server_dir(&self) -> PathBuf {
        let d = self.dir.join("server");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("ca-cert.pem"), &self.ca.pem).unwrap();
        std::fs::write(d.join("server-cert.pem"), &self.server.cert).unwrap();
        std::fs::write(d.join("server-key.pem"), &self.server.key).unwrap();
        d
    }

    /// `dir/<name>/`: ca-cert.pem (of `ca`), and the client certificate
    /// and key if `with_cert`.
    pub fn client_dir(&self, name: &str, ca: &Ca, with_cert: bool) -> PathBuf {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("ca-cert.pem"), &ca.pem).unwrap();
        if with_cert {
            std::fs::write(d.join("client-cert.pem"), &self.client.cert).unwrap();
            std::fs::write(d.join("client-key.pem"), &self.client.key).unwrap();
        }
        d
    }

    pub fn server_creds(&self, verify_peer: bool) -> TlsCreds {
        TlsCreds::x509_from_dir(Endpoint::Server, self.server_dir(), verify_peer).unwrap()
    }

    pub fn client_creds(&self) -> TlsCreds {
        let d = self.client_dir("client", &self.ca, true);
        TlsCreds::x509_from_dir(Endpoint::Client, d, true).unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ----- connections -----

pub fn socket_pair() -> (SocketChannel, SocketChannel) {
    let (a, b) = SocketChannel::pair().unwrap();
    a.set_blocking(false).unwrap();
    b.set_blocking(false).unwrap();
    (a, b)
}

/// A TCP connection over loopback: (client end, server end), non-blocking.
pub fn tcp_pair() -> (SocketChannel, SocketChannel) {
    let l = SocketChannel::listen_sync(&SocketAddress::inet("127.0.0.1", 0), 1).unwrap();
    let c = SocketChannel::connect_sync(&l.local_address().unwrap()).unwrap();
    let s = l.accept().unwrap();
    c.set_delay(false).unwrap();
    c.set_blocking(false).unwrap();
    s.set_blocking(false).unwrap();
    (c, s)
}

/// QEMU's authz list with one glob rule, `C=UK,CN=qemu*`.
pub fn qemu_authz() -> Arc<dyn corio::io::tls::Authz> {
    Arc::new(|dn: &str| dn.starts_with("C=UK,CN=qemu"))
}

/// How a handshake task ended: the channel, or the error's message.
pub type Handshaken = Result<Arc<Tls>, String>;

pub type Outcome = Arc<Mutex<Option<(ThreadId, Handshaken)>>>;

/// Starts a handshake task whose completion records where it ran and how
/// it ended.
pub fn start_task(ch: Tls, ctx: &AioContext) -> Outcome {
    let out: Outcome = Arc::new(Mutex::new(None));
    let o = out.clone();
    ch.handshake(
        move |r: std::io::Result<Tls>| {
            let r = r.map(Arc::new).map_err(|e| {
                // The typed error travels inside the io::Error.
                assert!(TlsError::from_io(&e).is_some(), "{e:?}");
                e.to_string()
            });
            *o.locked() = Some((std::thread::current().id(), r));
        },
        Some(ctx),
    );
    out
}

/// Both handshakes as QIOTasks in `ctx` (QEMU's test: one main loop
/// iterated until both completions ran); returns their results after
/// checking that the completions ran on this thread.
pub fn handshake_tasks(ctx: &AioContext, client: Tls, server: Tls) -> (Handshaken, Handshaken) {
    let c = start_task(client, ctx);
    let s = start_task(server, ctx);
    poll_until(ctx, "both handshake completions", || {
        c.locked().is_some() && s.locked().is_some()
    });
    let me = std::thread::current().id();
    let (ct, cr) = c.locked().take().unwrap();
    let (st, sr) = s.locked().take().unwrap();
    assert_eq!(ct, me, "client completion ran off the context's thread");
    assert_eq!(st, me, "server completion ran off the context's thread");
    (cr, sr)
}

/// Handshakes both ends synchronously, each in a thread.
pub fn handshake_threads(
    client: &Arc<Tls>,
    server: &Arc<Tls>,
) -> (Result<(), String>, Result<(), String>) {
    let s = server.clone();
    let st = std::thread::spawn(move || s.handshake_sync().map_err(|e| e.to_string()));
    let cr = client.handshake_sync().map_err(|e| e.to_string());
    (cr, join_within(st, "server handshake"))
}

/// Good certificates, both ends verifying, client authorized by name;
/// returns the pair, not yet handshaken.
pub fn good_pair(pki: &Pki, client_sock: SocketChannel, server_sock: SocketChannel) -> (Tls, Tls) {
    let client = Tls::new_client(client_sock, &pki.client_creds(), Some("localhost")).unwrap();
    let server = Tls::new_server(server_sock, &pki.server_creds(true), Some(qemu_authz())).unwrap();
    (client, server)
}

/// As `good_pair`, shared.
pub fn good_pair_arc(
    pki: &Pki,
    client_sock: SocketChannel,
    server_sock: SocketChannel,
) -> (Arc<Tls>, Arc<Tls>) {
    let (client, server) = good_pair(pki, client_sock, server_sock);
    (Arc::new(client), Arc::new(server))
}

/// Both handshake tasks succeeded: their channels.
pub fn both_ok((cr, sr): (Handshaken, Handshaken)) -> (Arc<Tls>, Arc<Tls>) {
    match (cr, sr) {
        (Ok(c), Ok(s)) => (c, s),
        (cr, sr) => panic!(
            "handshakes failed: client {:?}, server {:?}",
            cr.err(),
            sr.err()
        ),
    }
}

/// Small messages both ways, from this thread (the channels may be in
/// either mode: the `_all` functions poll).
pub fn ping_pong(client: &Tls, server: &Tls) {
    client.write_all_bytes(b"ping from client").unwrap();
    let mut buf = [0u8; 16];
    server.read_all(&mut buf).unwrap();
    assert_eq!(&buf, b"ping from client");
    server.write_all_bytes(b"pong from server").unwrap();
    client.read_all(&mut buf).unwrap();
    assert_eq!(&buf, b"pong from server");
}

/// QEMU's test body after the handshake: 1 MB through iovecs one way,
/// non-blocking then blocking, and (ours) the other way too.
pub fn run_both_ways(client: &Arc<Tls>, server: &Arc<Tls>) {
    for blocking in [false, true] {
        run_threads(blocking, client.clone(), server.clone());
        run_threads(blocking, server.clone(), client.clone());
    }
}

/// A handshaken pair over TCP, blocking, handshakes in threads.
pub fn blocking_pair(pki: &Pki) -> (Arc<Tls>, Arc<Tls>) {
    let (c, s) = tcp_pair();
    c.set_blocking(true).unwrap();
    s.set_blocking(true).unwrap();
    let (client, server) = good_pair_arc(pki, c, s);
    let (cr, sr) = handshake_threads(&client, &server);
    assert_eq!((cr, sr), (Ok(()), Ok(())));
    (client, server)
}
