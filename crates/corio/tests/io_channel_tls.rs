//! QEMU's tests/unit/test-io-channel-tls.c and the handshake outcomes of
//! tests/unit/test-crypto-tlssession.c, plus coroutine-mode cases: TLS
//! channels over socket pairs and TCP loopback, handshakes as QIOTasks and
//! in coroutines, certificate failures, clean and truncated ends.
//!
//! Every test generates its own PKI with rcgen (a CA, a server certificate
//! for `localhost` and `127.0.0.1`, a client certificate, and an unrelated
//! second CA) into a temporary directory in QEMU's layout.

mod io_channel_helpers;

use std::io::{IoSlice, Read};
use std::net::Shutdown;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use corio::io::address::SocketAddress;
use corio::io::tls::{Endpoint, TlsChannel, TlsCreds, TlsError, X509Pem};
use corio::io::{Channel, Feature, SocketChannel, WebsockChannel};
use corio::{AioContext, Coroutine, IoThread};
use io_channel_helpers::{join_bounded, pattern, run_threads};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SerialNumber,
};

type Tls = TlsChannel<SocketChannel>;

const DEADLINE: Duration = Duration::from_secs(60);

/// Bytes moved each way by the coroutine transfers.
fn big() -> usize {
    if std::env::var_os("CORIO_TEST_THOROUGH").is_some() {
        64 << 20
    } else {
        4 << 20
    }
}

// ----- a PKI per test -----

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

struct Leaf {
    cert: String,
    key: String,
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "UK");
    dn.push(DnType::CommonName, cn);
    dn
}

fn make_ca(cn: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = dn(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { params, key, pem }
}

fn make_leaf(ca: &Ca, cn: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
    make_leaf_serial(ca, cn, sans, usage, None)
}

/// As `make_leaf`, with a chosen serial number (for CRLs).
fn make_leaf_serial(
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
struct Pki {
    ca: Ca,
    other_ca: Ca,
    server: Leaf,
    client: Leaf,
    dir: PathBuf,
}

impl Pki {
    fn new(test: &str) -> Pki {
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
    fn server_dir(&self) -> PathBuf {
        let d = self.dir.join("server");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("ca-cert.pem"), &self.ca.pem).unwrap();
        std::fs::write(d.join("server-cert.pem"), &self.server.cert).unwrap();
        std::fs::write(d.join("server-key.pem"), &self.server.key).unwrap();
        d
    }

    /// `dir/<name>/`: ca-cert.pem (of `ca`), and the client certificate
    /// and key if `with_cert`.
    fn client_dir(&self, name: &str, ca: &Ca, with_cert: bool) -> PathBuf {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("ca-cert.pem"), &ca.pem).unwrap();
        if with_cert {
            std::fs::write(d.join("client-cert.pem"), &self.client.cert).unwrap();
            std::fs::write(d.join("client-key.pem"), &self.client.key).unwrap();
        }
        d
    }

    fn server_creds(&self, verify_peer: bool) -> TlsCreds {
        TlsCreds::x509_from_dir(Endpoint::Server, self.server_dir(), verify_peer).unwrap()
    }

    fn client_creds(&self) -> TlsCreds {
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

fn socket_pair() -> (SocketChannel, SocketChannel) {
    let (a, b) = SocketChannel::pair().unwrap();
    a.set_blocking(false).unwrap();
    b.set_blocking(false).unwrap();
    (a, b)
}

/// A TCP connection over loopback: (client end, server end), non-blocking.
fn tcp_pair() -> (SocketChannel, SocketChannel) {
    let l = SocketChannel::listen_sync(&SocketAddress::inet("127.0.0.1", 0), 1).unwrap();
    let c = SocketChannel::connect_sync(&l.local_address().unwrap()).unwrap();
    let s = l.accept().unwrap();
    c.set_delay(false).unwrap();
    c.set_blocking(false).unwrap();
    s.set_blocking(false).unwrap();
    (c, s)
}

/// QEMU's authz list with one glob rule, `C=UK,CN=qemu*`.
fn qemu_authz() -> Arc<dyn corio::io::tls::Authz> {
    Arc::new(|dn: &str| dn.starts_with("C=UK,CN=qemu"))
}

/// Polls `ctx` without blocking until `done`, failing the test at the
/// deadline instead of hanging.
fn poll_until(ctx: &AioContext, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        if !ctx.poll(false) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// How a handshake task ended: the channel, or the error's message.
type Handshaken = Result<Arc<Tls>, String>;

type Outcome = Arc<Mutex<Option<(ThreadId, Handshaken)>>>;

/// Starts a handshake task whose completion records where it ran and how
/// it ended.
fn start_task(ch: Tls, ctx: &AioContext) -> Outcome {
    let out: Outcome = Arc::new(Mutex::new(None));
    let o = out.clone();
    ch.handshake(
        move |r: std::io::Result<Tls>| {
            let r = r.map(Arc::new).map_err(|e| {
                // The typed error travels inside the io::Error.
                assert!(TlsError::from_io(&e).is_some(), "{e:?}");
                e.to_string()
            });
            *o.lock().unwrap() = Some((std::thread::current().id(), r));
        },
        Some(ctx),
    );
    out
}

/// Both handshakes as QIOTasks in `ctx` (QEMU's test: one main loop
/// iterated until both completions ran); returns their results after
/// checking that the completions ran on this thread.
fn handshake_tasks(ctx: &AioContext, client: Tls, server: Tls) -> (Handshaken, Handshaken) {
    let c = start_task(client, ctx);
    let s = start_task(server, ctx);
    poll_until(ctx, "both handshake completions", || {
        c.lock().unwrap().is_some() && s.lock().unwrap().is_some()
    });
    let me = std::thread::current().id();
    let (ct, cr) = c.lock().unwrap().take().unwrap();
    let (st, sr) = s.lock().unwrap().take().unwrap();
    assert_eq!(ct, me, "client completion ran off the context's thread");
    assert_eq!(st, me, "server completion ran off the context's thread");
    (cr, sr)
}

/// Handshakes both ends synchronously, each in a thread.
fn handshake_threads(
    client: &Arc<Tls>,
    server: &Arc<Tls>,
) -> (Result<(), String>, Result<(), String>) {
    let s = server.clone();
    let st = std::thread::spawn(move || s.handshake_sync().map_err(|e| e.to_string()));
    let cr = client.handshake_sync().map_err(|e| e.to_string());
    (cr, join_bounded(st, "server handshake"))
}

/// Good certificates, both ends verifying, client authorized by name;
/// returns the pair, not yet handshaken.
fn good_pair(pki: &Pki, client_sock: SocketChannel, server_sock: SocketChannel) -> (Tls, Tls) {
    let client = Tls::new_client(client_sock, &pki.client_creds(), Some("localhost")).unwrap();
    let server = Tls::new_server(server_sock, &pki.server_creds(true), Some(qemu_authz())).unwrap();
    (client, server)
}

/// As `good_pair`, shared.
fn good_pair_arc(
    pki: &Pki,
    client_sock: SocketChannel,
    server_sock: SocketChannel,
) -> (Arc<Tls>, Arc<Tls>) {
    let (client, server) = good_pair(pki, client_sock, server_sock);
    (Arc::new(client), Arc::new(server))
}

/// Both handshake tasks succeeded: their channels.
fn both_ok((cr, sr): (Handshaken, Handshaken)) -> (Arc<Tls>, Arc<Tls>) {
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
fn ping_pong(client: &Tls, server: &Tls) {
    client.write_all(b"ping from client").unwrap();
    let mut buf = [0u8; 16];
    server.read_all(&mut buf).unwrap();
    assert_eq!(&buf, b"ping from client");
    server.write_all(b"pong from server").unwrap();
    client.read_all(&mut buf).unwrap();
    assert_eq!(&buf, b"pong from server");
}

/// QEMU's test body after the handshake: 1 MB through iovecs one way,
/// non-blocking then blocking, and (ours) the other way too.
fn run_both_ways(client: &Arc<Tls>, server: &Arc<Tls>) {
    for blocking in [false, true] {
        run_threads(blocking, client.clone(), server.clone());
        run_threads(blocking, server.clone(), client.clone());
    }
}

// ----- QEMU's /qio/channel/tls/basic, over a socket pair and over TCP -----

#[test]
fn io_channel_tls_basic_socketpair_task() {
    let pki = Pki::new("basic-pair");
    let (a, b) = socket_pair();
    let (client, server) = good_pair(&pki, a, b);
    assert!(client.has_feature(Feature::Shutdown));
    assert!(!client.has_feature(Feature::FdPass));
    let ctx = AioContext::new().unwrap();
    let (client, server) = both_ok(handshake_tasks(&ctx, client, server));
    assert!(client.is_handshake_complete() && server.is_handshake_complete());
    assert_eq!(server.peer_name().as_deref(), Some("C=UK,CN=qemu"));
    assert_eq!(client.peer_name().as_deref(), Some("C=UK,CN=qemu.org"));
    assert_eq!(server.peer_certificates().map(|c| c.len()), Some(1));
    assert!(client.protocol_version().is_some());
    ping_pong(&client, &server);
    run_both_ways(&client, &server);
}

#[test]
fn io_channel_tls_basic_tcp_task() {
    let pki = Pki::new("basic-tcp");
    for host in ["localhost", "127.0.0.1"] {
        let (c, s) = tcp_pair();
        let client = Tls::new_client(c, &pki.client_creds(), Some(host)).unwrap();
        let server = Tls::new_server(s, &pki.server_creds(true), Some(qemu_authz())).unwrap();
        let ctx = AioContext::new().unwrap();
        // The server's handshake is started from another thread: its steps
        // and completion still run in the context.
        let client_out = start_task(client, &ctx);
        let c2 = ctx.clone();
        let server_out = std::thread::spawn(move || start_task(server, &c2))
            .join()
            .unwrap();
        poll_until(&ctx, "both handshake completions", || {
            client_out.lock().unwrap().is_some() && server_out.lock().unwrap().is_some()
        });
        let me = std::thread::current().id();
        let [client, server] = [client_out, server_out].map(|out| {
            let (t, r) = out.lock().unwrap().take().unwrap();
            assert_eq!(t, me);
            r.unwrap_or_else(|e| panic!("host {host}: {e}"))
        });
        ping_pong(&client, &server);
        run_both_ways(&client, &server);
    }
}

#[test]
fn io_channel_tls_basic_pem_in_memory() {
    let pki = Pki::new("pem");
    let server_creds = TlsCreds::x509_from_pem(
        Endpoint::Server,
        &X509Pem {
            ca_cert: Some(pki.ca.pem.as_bytes()),
            cert: Some(pki.server.cert.as_bytes()),
            key: Some(pki.server.key.as_bytes()),
            ..Default::default()
        },
        true,
    )
    .unwrap();
    let client_creds = TlsCreds::x509_from_pem(
        Endpoint::Client,
        &X509Pem {
            ca_cert: Some(pki.ca.pem.as_bytes()),
            cert: Some(pki.client.cert.as_bytes()),
            key: Some(pki.client.key.as_bytes()),
            ..Default::default()
        },
        true,
    )
    .unwrap();
    assert_eq!(server_creds.endpoint(), Endpoint::Server);
    assert!(server_creds.dir().is_none());
    let (a, b) = SocketChannel::pair().unwrap();
    let client = Arc::new(Tls::new_client(a, &client_creds, Some("localhost")).unwrap());
    let server = Arc::new(Tls::new_server(b, &server_creds, None).unwrap());
    let (cr, sr) = handshake_threads(&client, &server);
    assert_eq!((cr, sr), (Ok(()), Ok(())));
    ping_pong(&client, &server);
}

// ----- coroutines -----

/// Runs `f` in a new coroutine on `t`'s thread.
fn spawn_co(t: &IoThread, f: impl FnOnce() + Send + 'static) {
    t.context().run_in(move || Coroutine::new(f).enter());
}

/// One side of the coroutine test: handshake, a small exchange, then a
/// writer coroutine sends `len` bytes while this one reads `len` bytes and
/// compares. Reports each part on `tx`.
fn co_side(ch: Arc<Tls>, client: bool, len: usize, tx: mpsc::Sender<(String, Result<(), String>)>) {
    let side = if client { "client" } else { "server" };
    let report = |what: &str, r: Result<(), String>| {
        let _ = tx.send((format!("{side} {what}"), r));
    };
    if let Err(e) = ch.handshake_sync() {
        return report("handshake", Err(e.to_string()));
    }
    report("handshake", Ok(()));
    // Small messages: client speaks first.
    let mut buf = [0u8; 4];
    let small = if client {
        ch.write_all(b"ping")
            .and_then(|()| ch.read_all(&mut buf))
            .map(|()| assert_eq!(&buf, b"pong"))
    } else {
        ch.read_all(&mut buf)
            .map(|()| assert_eq!(&buf, b"ping"))
            .and_then(|()| ch.write_all(b"pong"))
    };
    report("small", small.map_err(|e| e.to_string()));
    // Both directions at once, each end reading and writing in two
    // coroutines on the same channel.
    let seed = if client { 1 } else { 2 };
    let (w, wtx) = (ch.clone(), tx.clone());
    let writer = Coroutine::new(move || {
        let r = w.write_all(&pattern(len, seed)).map_err(|e| e.to_string());
        let _ = wtx.send((format!("{side} write"), r));
    });
    writer.enter();
    let mut got = vec![0u8; len];
    let r = ch
        .read_all(&mut got)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            if got == pattern(len, 3 - seed) {
                Ok(())
            } else {
                Err("data read differs from data written".to_string())
            }
        });
    report("read", r);
}

fn expect_reports(rx: &mpsc::Receiver<(String, Result<(), String>)>, n: usize) {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = Vec::new();
    while seen.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((what, r)) => {
                assert_eq!(r, Ok(()), "{what}");
                seen.push(what);
            }
            Err(_) => panic!("timed out; finished so far: {seen:?}"),
        }
    }
}

#[test]
fn io_channel_tls_coroutines_two_iothreads() {
    let pki = Pki::new("co-iothreads");
    let (c, s) = tcp_pair();
    let (client, server) = good_pair_arc(&pki, c, s);
    let (t1, t2) = (IoThread::new().unwrap(), IoThread::new().unwrap());
    let (tx, rx) = mpsc::channel();
    let len = big();
    let tx2 = tx.clone();
    spawn_co(&t1, move || co_side(server, false, len, tx2));
    spawn_co(&t2, move || co_side(client, true, len, tx));
    expect_reports(&rx, 8);
    t1.join();
    t2.join();
}

#[test]
fn io_channel_tls_coroutines_one_context() {
    let pki = Pki::new("co-one");
    let (a, b) = socket_pair();
    let (client, server) = good_pair_arc(&pki, a, b);
    let ctx = AioContext::new().unwrap();
    let (tx, rx) = mpsc::channel();
    let len = big();
    let tx2 = tx.clone();
    let cos = [
        Coroutine::new(move || co_side(server, false, len, tx2)),
        Coroutine::new(move || co_side(client, true, len, tx)),
    ];
    for co in &cos {
        co.enter();
    }
    poll_until(&ctx, "the coroutines", || {
        cos.iter().all(|c| c.is_terminated())
    });
    expect_reports(&rx, 8);
}

// ----- failures (test-crypto-tlssession's expectServerFail / expectClientFail) -----

#[test]
fn io_channel_tls_bad_ca() {
    let pki = Pki::new("bad-ca");
    let (a, b) = socket_pair();
    // The client trusts a CA that did not sign the server's certificate.
    let cdir = pki.client_dir("client-other-ca", &pki.other_ca, true);
    let ccreds = TlsCreds::x509_from_dir(Endpoint::Client, cdir, true).unwrap();
    let client = Tls::new_client(a, &ccreds, Some("localhost")).unwrap();
    let server = Tls::new_server(b, &pki.server_creds(true), None).unwrap();
    let ctx = AioContext::new().unwrap();
    let (cr, sr) = handshake_tasks(&ctx, client, server);
    let ce = cr.unwrap_err();
    assert!(ce.contains("certificate verify failed"), "{ce}");
    assert!(ce.contains("hasn't got a known issuer"), "{ce}");
    // The client's alert tells the server why.
    let se = sr.unwrap_err();
    assert!(se.contains("does not accept our certificate"), "{se}");
    // The same in line, which keeps the channels: the error is typed, and
    // neither end is usable afterwards.
    let (a, b) = socket_pair();
    let client = Arc::new(Tls::new_client(a, &ccreds, Some("localhost")).unwrap());
    let server = Arc::new(Tls::new_server(b, &pki.server_creds(true), None).unwrap());
    let s = server.clone();
    let st = std::thread::spawn(move || s.handshake_sync());
    let e = client.handshake_sync().unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    assert!(
        matches!(TlsError::from_io(&e), Some(TlsError::Handshake { .. })),
        "{e:?}"
    );
    assert!(join_bounded(st, "server handshake").is_err());
    let e = client.write_all(b"x").unwrap_err();
    assert!(e.to_string().contains("unusable"), "{e}");
    assert!(!server.is_handshake_complete());
}

#[test]
fn io_channel_tls_wrong_hostname() {
    let pki = Pki::new("hostname");
    let (a, b) = socket_pair();
    let client = Tls::new_client(a, &pki.client_creds(), Some("wrong.example")).unwrap();
    let server = Tls::new_server(b, &pki.server_creds(true), None).unwrap();
    let ctx = AioContext::new().unwrap();
    let (cr, sr) = handshake_tasks(&ctx, client, server);
    let ce = cr.unwrap_err();
    assert!(
        ce.contains("Certificate does not match the hostname wrong.example"),
        "{ce}"
    );
    assert!(sr.is_err());
}

#[test]
fn io_channel_tls_client_cert_required() {
    let pki = Pki::new("cert-required");
    let (a, b) = socket_pair();
    let cdir = pki.client_dir("client-nocert", &pki.ca, false);
    let ccreds = TlsCreds::x509_from_dir(Endpoint::Client, cdir, true).unwrap();
    let client = Tls::new_client(a, &ccreds, Some("localhost")).unwrap();
    let server = Tls::new_server(b, &pki.server_creds(true), None).unwrap();
    let ctx = AioContext::new().unwrap();
    let (cr, sr) = handshake_tasks(&ctx, client, server);
    let se = sr.unwrap_err();
    assert!(se.contains("No certificate peers"), "{se}");
    // In TLS 1.3 the client has finished its part before the server judges
    // its (empty) certificate: it learns of the refusal on its first read.
    let client = cr.unwrap();
    assert_eq!(
        client.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let mut buf = [0u8; 1];
    let e = client.read_all(&mut buf).unwrap_err();
    assert!(
        e.to_string().contains("requires a client certificate"),
        "{e}"
    );
}

#[test]
fn io_channel_tls_verify_peer_off_accepts_certless_client() {
    let pki = Pki::new("no-verify");
    let (a, b) = socket_pair();
    let cdir = pki.client_dir("client-nocert", &pki.ca, false);
    let ccreds = TlsCreds::x509_from_dir(Endpoint::Client, cdir, true).unwrap();
    let screds = pki.server_creds(false);
    assert!(!screds.verify_peer());
    let client = Tls::new_client(a, &ccreds, Some("localhost")).unwrap();
    let server = Tls::new_server(b, &screds, None).unwrap();
    let ctx = AioContext::new().unwrap();
    let (client, server) = both_ok(handshake_tasks(&ctx, client, server));
    assert_eq!(server.peer_name(), None);
    ping_pong(&client, &server);
}

#[test]
fn io_channel_tls_verify_peer_off_client_accepts_any_server() {
    let pki = Pki::new("client-no-verify");
    let (a, b) = socket_pair();
    // Trusts the wrong CA and names the wrong host, but does not verify.
    let cdir = pki.client_dir("client-other-ca", &pki.other_ca, false);
    let ccreds = TlsCreds::x509_from_dir(Endpoint::Client, cdir, false).unwrap();
    let client = Arc::new(Tls::new_client(a, &ccreds, None).unwrap());
    let server = Arc::new(Tls::new_server(b, &pki.server_creds(false), None).unwrap());
    let (cr, sr) = handshake_threads(&client, &server);
    assert_eq!((cr, sr), (Ok(()), Ok(())));
    ping_pong(&client, &server);
}

#[test]
fn io_channel_tls_authz_denied() {
    let pki = Pki::new("authz");
    let (a, b) = socket_pair();
    let client = Tls::new_client(a, &pki.client_creds(), Some("localhost")).unwrap();
    let deny: Arc<dyn corio::io::tls::Authz> = Arc::new(|dn: &str| dn.contains("CN=admin"));
    let server = Tls::new_server(b, &pki.server_creds(true), Some(deny)).unwrap();
    let ctx = AioContext::new().unwrap();
    let (cr, sr) = handshake_tasks(&ctx, client, server);
    assert_eq!(
        sr.unwrap_err(),
        "TLS x509 authz check for C=UK,CN=qemu is denied"
    );
    // The refused server went away (with its task) without close_notify.
    let client = cr.unwrap();
    let mut buf = [0u8; 1];
    let e = client.read_all(&mut buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
}

#[test]
fn io_channel_tls_handshake_peer_hangs_up() {
    let pki = Pki::new("hangup");
    let (a, b) = socket_pair();
    let client = Tls::new_client(a, &pki.client_creds(), Some("localhost")).unwrap();
    drop(b);
    let ctx = AioContext::new().unwrap();
    let out = start_task(client, &ctx);
    poll_until(&ctx, "the handshake completion", || {
        out.lock().unwrap().is_some()
    });
    let e = out.lock().unwrap().take().unwrap().1.unwrap_err();
    assert!(e.starts_with("TLS handshake failed"), "{e}");
}

// ----- credentials -----

#[test]
fn io_channel_tls_creds_missing_file() {
    let pki = Pki::new("missing");
    let sdir = pki.server_dir();
    std::fs::remove_file(sdir.join("server-key.pem")).unwrap();
    let e = TlsCreds::x509_from_dir(Endpoint::Server, &sdir, true).unwrap_err();
    let want = sdir.join("server-key.pem");
    match &e {
        TlsError::Access { path, source } => {
            assert_eq!(path, &want);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected an access error, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.starts_with("Unable to access credentials"), "{msg}");
    assert!(msg.contains(&want.display().to_string()), "{msg}");

    let cdir = pki.client_dir("client-noca", &pki.ca, true);
    std::fs::remove_file(cdir.join("ca-cert.pem")).unwrap();
    let e = TlsCreds::x509_from_dir(Endpoint::Client, &cdir, true).unwrap_err();
    assert!(e.to_string().contains("ca-cert.pem"), "{e}");
}

#[test]
fn io_channel_tls_creds_unparsable_file() {
    let pki = Pki::new("garbage");
    let sdir = pki.server_dir();
    std::fs::write(sdir.join("server-cert.pem"), "not a certificate\n").unwrap();
    let e = TlsCreds::x509_from_dir(Endpoint::Server, &sdir, true).unwrap_err();
    assert!(matches!(e, TlsError::Parse { .. }), "{e:?}");
    assert!(e.to_string().contains("server-cert.pem"), "{e}");

    let sdir = pki.server_dir();
    std::fs::write(sdir.join("server-key.pem"), &pki.server.cert).unwrap();
    let e = TlsCreds::x509_from_dir(Endpoint::Server, &sdir, true).unwrap_err();
    assert!(e.to_string().contains("server-key.pem"), "{e}");
    assert!(e.to_string().contains("private key"), "{e}");

    // A client certificate without its key.
    let cdir = pki.client_dir("client-halfcert", &pki.ca, true);
    std::fs::remove_file(cdir.join("client-key.pem")).unwrap();
    let e = TlsCreds::x509_from_dir(Endpoint::Client, &cdir, true).unwrap_err();
    assert!(matches!(e, TlsError::Config(_)), "{e:?}");
    assert!(e.to_string().contains("client-cert.pem"), "{e}");
}

#[test]
fn io_channel_tls_creds_endpoint_mismatch() {
    let pki = Pki::new("mismatch");
    let (a, b) = SocketChannel::pair().unwrap();
    let e = Tls::new_server(a, &pki.client_creds(), None).unwrap_err();
    assert_eq!(e.to_string(), "Credentials endpoint doesn't match session");
    let e = Tls::new_client(b, &pki.server_creds(true), Some("localhost")).unwrap_err();
    assert_eq!(e.to_string(), "Credentials endpoint doesn't match session");
    let (a, b) = SocketChannel::pair().unwrap();
    let e = Tls::new_client(a, &pki.client_creds(), None).unwrap_err();
    assert_eq!(e.to_string(), "No hostname for certificate validation");
    let e = Tls::new_server(b, &pki.server_creds(false), Some(qemu_authz())).unwrap_err();
    assert!(e.to_string().contains("verify-peer"), "{e}");
}

// ----- ends of stream -----

/// A handshaken pair over TCP, blocking, handshakes in threads.
fn blocking_pair(pki: &Pki) -> (Arc<Tls>, Arc<Tls>) {
    let (c, s) = tcp_pair();
    c.set_blocking(true).unwrap();
    s.set_blocking(true).unwrap();
    let (client, server) = good_pair_arc(pki, c, s);
    let (cr, sr) = handshake_threads(&client, &server);
    assert_eq!((cr, sr), (Ok(()), Ok(())));
    (client, server)
}

#[test]
fn io_channel_tls_close_notify_is_eof() {
    let pki = Pki::new("close-notify");
    let (client, server) = blocking_pair(&pki);
    server.write_all(b"last words").unwrap();
    server.bye().unwrap();
    let e = server.write_all(b"more").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    let mut buf = [0u8; 10];
    assert!(client.read_all_eof(&mut buf).unwrap());
    assert_eq!(&buf, b"last words");
    assert!(!client.read_all_eof(&mut buf).unwrap(), "clean EOF");
    assert!(!client.read_all_eof(&mut buf).unwrap(), "EOF stays EOF");
    // The other direction still works until the client says bye too.
    client.write_all(b"ack").unwrap();
    let mut ack = [0u8; 3];
    server.read_all(&mut ack).unwrap();
    assert_eq!(&ack, b"ack");
    client.shutdown(Shutdown::Write).unwrap();
    assert!(!server.read_all_eof(&mut ack).unwrap());
}

#[test]
fn io_channel_tls_close_sends_close_notify() {
    let pki = Pki::new("close");
    let (client, server) = blocking_pair(&pki);
    let mut server = Arc::try_unwrap(server).unwrap();
    server.write_all(b"bye").unwrap();
    server.close().unwrap();
    let mut buf = [0u8; 3];
    assert!(client.read_all_eof(&mut buf).unwrap());
    assert!(!client.read_all_eof(&mut buf).unwrap());
}

#[test]
fn io_channel_tls_truncated_stream() {
    let pki = Pki::new("truncated");
    let (client, server) = blocking_pair(&pki);
    let sent = pattern(300_000, 7);
    let (srv, data) = (server.clone(), sent.clone());
    let writer = std::thread::spawn(move || {
        srv.write_all(&data).unwrap();
        // Hang up under TLS: no close_notify.
        srv.master().shutdown(Shutdown::Both).unwrap();
    });
    // The reader asks for more than will come, in one read after another.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 50_000];
    let err = loop {
        match (&*client).read(&mut buf) {
            Ok(0) => panic!("a truncated stream read as a clean EOF"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    join_bounded(writer, "writer");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(got == sent, "data before the hang-up was lost or changed");
    // read_all_eof reports it as an error too, not as EOF.
    assert!(client.read_all_eof(&mut buf).is_err());
}

#[test]
fn io_channel_tls_local_shutdown_read_is_eof() {
    let pki = Pki::new("shutdown-read");
    let (client, _server) = blocking_pair(&pki);
    client.shutdown(Shutdown::Read).unwrap();
    let mut buf = [0u8; 1];
    assert!(!client.read_all_eof(&mut buf).unwrap());
}

// ----- writes that would block -----

#[test]
fn io_channel_tls_write_would_block_retry() {
    let pki = Pki::new("would-block");
    let (a, b) = socket_pair();
    let (client, server) = good_pair(&pki, a, b);
    let ctx = AioContext::new().unwrap();
    let (client, server) = both_ok(handshake_tasks(&ctx, client, server));
    let chunk = pattern(48 * 1024, 9);
    // Write until the socket is full; the last write accepted and
    // encrypted data, but reports WouldBlock.
    let mut accepted = 0usize;
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "the socket never filled");
        match client.writev(&[IoSlice::new(&chunk)]) {
            Ok(n) => {
                assert_eq!(n, chunk.len(), "a short write");
                accepted += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    // Retrying with other data is refused.
    let other = pattern(48 * 1024, 10);
    let e = client.writev(&[IoSlice::new(&other)]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
    // Nothing was lost or doubled: the refused retry's chunk still goes
    // out (it was encrypted), with the next write, before that write's
    // bytes; a reader sees whole chunks, then the next write.
    let expect_len = accepted + chunk.len() + 3;
    let srv = server.clone();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; expect_len];
        srv.read_all(&mut got).unwrap();
        got
    });
    client.write_all(b"end").unwrap();
    let got = join_bounded(reader, "reader");
    let (chunks, end) = got.split_at(expect_len - 3);
    assert_eq!(end, b"end");
    for (i, c) in chunks.chunks(chunk.len()).enumerate() {
        assert!(c == &chunk[..], "chunk {i} differs");
    }

    // The retry with the same data is told it was written, once.
    let mut accepted = 0usize;
    loop {
        match client.writev(&[IoSlice::new(&chunk)]) {
            Ok(n) => accepted += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    let srv = server.clone();
    let total = accepted + chunk.len();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; total];
        srv.read_all(&mut got).unwrap();
        got
    });
    client.write_all(&chunk).unwrap(); // the retry: flushes, reports it
    let got = join_bounded(reader, "reader");
    assert_eq!(got.len() % chunk.len(), 0);
    for (i, c) in got.chunks(chunk.len()).enumerate() {
        assert!(c == &chunk[..], "chunk {i} differs");
    }
    // And nothing more follows: the next bytes are new ones.
    client.write_all(b"end").unwrap();
    let mut end = [0u8; 3];
    server.read_all(&mut end).unwrap();
    assert_eq!(&end, b"end");
}

#[test]
fn io_channel_tls_io_before_handshake() {
    let pki = Pki::new("before");
    let (a, _b) = socket_pair();
    let client = Tls::new_client(a, &pki.client_creds(), Some("localhost")).unwrap();
    let e = client.writev(&[IoSlice::new(b"x")]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotConnected);
    assert!(!client.is_handshake_complete());
    let mut buf = [0u8; 1];
    let e = client.read_all(&mut buf).unwrap_err();
    assert!(e.to_string().contains("handshake not complete"), "{e}");
}

/// Plaintext decrypted but not yet read is input the fd cannot announce:
/// `wait(IN)` outside a coroutine and `yield_for(IN)` inside one return at
/// once instead of sleeping on a master that will never become readable
/// (QEMU's TLS GSource checks gnutls' pending bytes the same way).
#[test]
fn io_channel_tls_pending_plaintext_wakes_waiters() {
    let pki = Pki::new("pending");
    let (client, server) = blocking_pair(&pki);
    client.write_all(&[7u8; 100]).unwrap();
    let mut one = [0u8; 1];
    assert_eq!(
        server
            .readv(&mut [std::io::IoSliceMut::new(&mut one)])
            .unwrap(),
        1
    );
    assert!(server.io_has_pending_input());
    // Outside a coroutine: the client sends nothing more, so only the
    // pending plaintext can end this wait.
    let s = server.clone();
    let waiter = std::thread::spawn(move || s.wait(corio::io::events::IN));
    join_bounded(waiter, "wait(IN) with plaintext pending").unwrap();
    // Inside a coroutine, on a context nobody else feeds.
    let ctx = AioContext::new().unwrap();
    let s = server.clone();
    let got = Arc::new(Mutex::new(None));
    let g = got.clone();
    let co = Coroutine::new(move || {
        s.yield_for(corio::io::events::IN).unwrap();
        let mut rest = [0u8; 99];
        let n = s.readv(&mut [std::io::IoSliceMut::new(&mut rest)]).unwrap();
        *g.lock().unwrap() = Some(n);
    });
    co.enter();
    poll_until(&ctx, "coroutine with pending plaintext", || {
        co.is_terminated()
    });
    assert_eq!(*got.lock().unwrap(), Some(99));
    assert!(!server.io_has_pending_input());
    // The peer's close_notify is input too: the read returns EOF at once.
    client.bye().unwrap();
    let mut buf = [0u8; 1];
    assert!(!server.read_all_eof(&mut buf).unwrap());
    assert!(server.io_has_pending_input());
}

/// An `IN` watch keeps firing while plaintext is buffered, though the
/// master's fd has gone quiet: a callback that reads 10 bytes at a time
/// gets all of a 100-byte message that arrived as one record.
#[test]
fn io_channel_tls_watch_fires_on_pending_plaintext() {
    let pki = Pki::new("watch-pending");
    let (client, server) = blocking_pair(&pki);
    server.set_blocking(false).unwrap();
    let msg = pattern(100, 3);
    client.write_all(&msg).unwrap();
    let ctx = AioContext::new().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(Mutex::new(false));
    let (s, g, d) = (server.clone(), got.clone(), done.clone());
    server
        .add_watch(
            corio::io::events::IN,
            Box::new(move |_| {
                let mut ten = [0u8; 10];
                match s.readv(&mut [std::io::IoSliceMut::new(&mut ten)]) {
                    Ok(n) => g.lock().unwrap().extend_from_slice(&ten[..n]),
                    Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}"),
                }
                g.lock().unwrap().len() < 100
            }),
            Some(Box::new(move || *d.lock().unwrap() = true)),
            Some(&ctx),
        )
        .unwrap();
    poll_until(&ctx, "watch reading buffered plaintext", || {
        *done.lock().unwrap()
    });
    assert_eq!(*got.lock().unwrap(), msg);
}

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

// ----- a WebSocket over TLS (QEMU's VNC wss path) -----

/// `tests/io_channel_websock.rs`'s upgrade request.
const GOOD_REQUEST: &str = "GET / HTTP/1.1\r\n\
    Host: localhost\r\n\
    Upgrade: websocket\r\n\
    Connection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// A masked client frame (payloads under 126 bytes).
fn frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![b0, 0x80 | payload.len() as u8];
    f.extend(mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// The TLS handshake as a task whose completion owns the channel and
/// wraps it in a WebSocket channel, whose own handshake task then answers
/// a client speaking TLS: a frame's payload comes back through both
/// layers.
#[test]
fn io_channel_tls_websock_over_tls_task() {
    let pki = Pki::new("wss");
    let (a, b) = tcp_pair();
    let server = Tls::new_server(b, &pki.server_creds(true), Some(qemu_authz())).unwrap();
    let client = Tls::new_client(a, &pki.client_creds(), Some("localhost")).unwrap();
    let payload = b"hello through wss";

    let client = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        client.handshake_sync()?;
        client.write_all(GOOD_REQUEST.as_bytes())?;
        let mut reply = Vec::new();
        while !reply.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            client.read_all(&mut byte)?;
            reply.push(byte[0]);
        }
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 101 "), "{reply}");
        client.write_all(&frame(0x82, payload, [7, 1, 9, 3]))?;
        let mut head = [0u8; 2];
        client.read_all(&mut head)?;
        assert_eq!(head[0], 0x82, "a final binary frame");
        let mut echo = vec![0u8; usize::from(head[1])];
        client.read_all(&mut echo)?;
        client.bye()?;
        Ok(echo)
    });

    let ctx = AioContext::new().unwrap();
    let ws_out = Arc::new(Mutex::new(None));
    let (o, c2) = (ws_out.clone(), ctx.clone());
    server.handshake(
        move |r| {
            let tls = r.expect("the TLS handshake");
            assert!(tls.is_handshake_complete());
            WebsockChannel::new_server(tls).handshake(
                move |r| *o.lock().unwrap() = Some(r.map_err(|e| e.to_string())),
                Some(&c2),
            );
        },
        Some(&ctx),
    );
    poll_until(&ctx, "the TLS and then the WebSocket handshake", || {
        ws_out.lock().unwrap().is_some()
    });
    let ws = ws_out.lock().unwrap().take().unwrap().unwrap();
    let mut got = vec![0u8; payload.len()];
    ws.read_all(&mut got).unwrap();
    assert_eq!(got, payload);
    ws.write_all(&got).unwrap();
    ws.flush().unwrap();
    let echo = join_bounded(client, "TLS WebSocket client").unwrap();
    assert_eq!(echo, payload);
}

/// The pending-input probe never blocks: while a reader thread sits in a
/// blocking read of the master (holding the read side), another thread's
/// `io_has_pending_input` and an `IN` watch added in its context (whose
/// registration probes at once) return, reporting nothing pending; the
/// reader then gets the data that comes.
#[test]
fn io_channel_tls_pending_probe_does_not_block() {
    let pki = Pki::new("probe-nonblocking");
    let (client, server) = blocking_pair(&pki);
    let s = server.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 5];
        s.read_all(&mut buf).map(|()| buf)
    });
    // Give the reader time to enter the master's read (the test passes
    // either way once fixed; this makes it catch a blocking probe).
    std::thread::sleep(Duration::from_millis(100));
    let (tx, rx) = mpsc::channel();
    let s = server.clone();
    let prober = std::thread::spawn(move || {
        let pending = s.io_has_pending_input();
        let ctx = AioContext::new().unwrap();
        let watch = s.add_watch(corio::io::events::IN, Box::new(|_| false), None, Some(&ctx));
        let _ = tx.send((pending, watch.is_ok()));
    });
    let probed = rx.recv_timeout(DEADLINE / 4);
    // Unblock the reader whatever happened, so that no thread is left.
    client.write_all(b"hello").unwrap();
    let (pending, watched) = probed.expect("the probe blocked behind the reader");
    assert!(!pending, "nothing was pending");
    assert!(watched);
    join_bounded(prober, "prober");
    assert_eq!(&join_bounded(reader, "reader").unwrap(), b"hello");
}

/// An `IN` watch on a WebSocket over TLS hears input the TLS layer holds:
/// 60 frames of 1000 bytes sent in one burst arrive as several TLS records;
/// a WebSocket read takes one record's plaintext from the TLS channel, so
/// the socket goes quiet while the TLS layer still holds the rest, long
/// before the watch, reading 700 bytes per call, has taken everything.
#[test]
fn io_channel_tls_websock_over_tls_watch_hears_tls_input() {
    let pki = Pki::new("wss-watch");
    let (a, b) = tcp_pair();
    let server = Tls::new_server(b, &pki.server_creds(true), Some(qemu_authz())).unwrap();
    let client = Tls::new_client(a, &pki.client_creds(), Some("localhost")).unwrap();
    let frames: Vec<Vec<u8>> = (0..60u8).map(|i| pattern(1000, i)).collect();
    let expect: Vec<u8> = frames.concat();
    let client = std::thread::spawn(move || -> std::io::Result<Tls> {
        client.handshake_sync()?;
        let mut burst = GOOD_REQUEST.as_bytes().to_vec();
        let mask = [4u8, 3, 2, 1];
        for f in &frames {
            // A masked binary frame with a 16-bit length.
            burst.extend([0x82, 0x80 | 126]);
            burst.extend((f.len() as u16).to_be_bytes());
            burst.extend(mask);
            burst.extend(f.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        client.write_all(&burst)?;
        Ok(client) // kept open: no EOF to wake anyone
    });
    server.handshake_sync().unwrap();
    let ws = Arc::new(WebsockChannel::new_server(server));
    ws.handshake_sync().unwrap();
    ws.set_blocking(false).unwrap();
    let ctx = AioContext::new().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(Mutex::new(false));
    let (w, g, d, total) = (ws.clone(), got.clone(), done.clone(), expect.len());
    ws.add_watch(
        corio::io::events::IN,
        Box::new(move |_| {
            let mut buf = [0u8; 700];
            match w.readv(&mut [std::io::IoSliceMut::new(&mut buf)]) {
                Ok(k) => g.lock().unwrap().extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("websock read: {e}"),
            }
            g.lock().unwrap().len() < total
        }),
        Some(Box::new(move || *d.lock().unwrap() = true)),
        Some(&ctx),
    )
    .unwrap();
    poll_until(&ctx, "the watch reading every frame", || {
        *done.lock().unwrap()
    });
    assert!(
        *got.lock().unwrap() == expect,
        "frames read through the watch differ"
    );
    drop(join_bounded(client, "TLS WebSocket client").unwrap());
}
