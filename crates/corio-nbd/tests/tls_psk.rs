//! TLS with pre-shared keys (`--object tls-creds-psk`), against libnbd's
//! GnuTLS client (nbdinfo, nbdsh) and qemu-img's: the `corio-nbd` binary on
//! a Unix socket, with qemu's `keys.psk` layout. A missing client fails.

mod helpers;

use helpers::process::{corio_nbd, run, ServerProc, TempDir};

const SIZE: usize = 4 << 20;
const ALICE_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const BOB_KEY: &str = "fedcba9876543210fedcba9876543210";

/// A server directory with `keys.psk` (alice and bob), an image filled
/// with a pattern, and a `corio-nbd` serving it with PSK required.
struct Setup {
    dir: TempDir,
    server: ServerProc,
    image: Vec<u8>,
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

fn write_keys(dir: &std::path::Path, lines: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("keys.psk"), lines).unwrap();
}

fn setup(extra: &[&str]) -> Setup {
    let dir = TempDir::new("psk");
    write_keys(
        &dir.path("server"),
        &format!("alice:{ALICE_KEY}\nbob:{BOB_KEY}\n"),
    );
    let image = pattern(SIZE);
    std::fs::write(dir.path("disk.img"), &image).unwrap();
    let sock = dir.path("nbd.sock");
    let object = format!(
        "tls-creds-psk,id=tls0,dir={},endpoint=server",
        dir.path("server").display()
    );
    let disk = dir.path("disk.img");
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
    let server = ServerProc::start(corio_nbd(), &args, &sock);
    Setup { dir, server, image }
}

impl Setup {
    /// A libnbd URI for `user` with the key file in `keys`.
    fn uri(&self, user: &str, keys: &std::path::Path) -> String {
        format!(
            "nbds+unix://{user}@/?socket={}&tls-psk-file={}",
            self.server.socket.display(),
            keys.join("keys.psk").display()
        )
    }

    /// Writes `data` at `offset` and reads it back through nbdsh as
    /// `user` with the keys in `keys`.
    fn nbdsh_roundtrip(&self, user: &str, keys: &std::path::Path) -> helpers::process::Run {
        let script = format!(
            "h.set_tls(nbd.TLS_REQUIRE)\n\
             h.set_tls_psk_file({keys:?})\n\
             h.set_tls_username({user:?})\n\
             h.connect_unix({sock:?})\n\
             buf = bytes(range(256)) * 4096\n\
             h.pwrite(buf, 65536)\n\
             assert h.pread(len(buf), 65536) == buf\n\
             h.flush()\n\
             h.shutdown()\n\
             print('roundtrip ok')\n",
            keys = keys.join("keys.psk").to_str().unwrap(),
            sock = self.server.socket.to_str().unwrap(),
        );
        run("nbdsh", &["-c", &script])
    }
}

#[test]
fn nbdinfo_with_the_right_key_sees_the_export() {
    let s = setup(&[]);
    let r = run(
        "nbdinfo",
        &["--json", &s.uri("alice", &s.dir.path("server"))],
    );
    assert!(r.ok, "nbdinfo failed: {}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!("\"export-size\": {SIZE}")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("\"protocol\": \"newstyle-fixed\""),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("\"TLS\": true"), "{}", r.stdout);
}

#[test]
fn wrong_key_or_unknown_user_fails_and_the_server_serves_others() {
    let mut s = setup(&[]);
    let wrong = s.dir.path("wrong");
    write_keys(&wrong, &format!("alice:{BOB_KEY}\nmallory:{ALICE_KEY}\n"));
    let r = run("nbdinfo", &[&s.uri("alice", &wrong)]);
    assert!(!r.ok, "alice with bob's key got in: {}", r.stdout);
    assert!(r.stderr.contains("gnutls_handshake"), "{}", r.stderr);
    let r = s.nbdsh_roundtrip("mallory", &wrong);
    assert!(!r.ok, "an unknown user got in: {}", r.stdout);
    assert!(!r.stdout.contains("roundtrip ok"));
    assert!(s.server.alive(), "the server died after refusing a client");

    let r = s.nbdsh_roundtrip("bob", &s.dir.path("server"));
    assert!(r.ok, "bob was refused: {}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("roundtrip ok"), "{}", r.stdout);
    let disk = std::fs::read(s.dir.path("disk.img")).unwrap();
    let written: Vec<u8> = (0..=255u8).cycle().take(256 * 4096).collect();
    assert_eq!(&disk[65536..65536 + written.len()], &written[..]);
    assert_eq!(&disk[..65536], &s.image[..65536]);
}

#[test]
fn a_client_without_tls_is_refused() {
    let s = setup(&[]);
    let plain = format!("nbd+unix:///?socket={}", s.server.socket.display());
    let r = run("nbdinfo", &[&plain]);
    assert!(!r.ok, "a plaintext client got in: {}", r.stdout);
    assert!(r.stdout.contains("without TLS"), "{}", r.stdout);
    let r = run("qemu-img", &["info", "-f", "raw", &plain]);
    assert!(!r.ok, "qemu-img without TLS got in: {}", r.stdout);
    // And a PSK client still gets in afterwards.
    let r = run(
        "nbdinfo",
        &["--size", &s.uri("alice", &s.dir.path("server"))],
    );
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), SIZE.to_string());
}

fn qemu_psk(dir: &std::path::Path, user: &str) -> String {
    format!(
        "tls-creds-psk,id=tls0,dir={},endpoint=client,username={user}",
        dir.display()
    )
}

#[test]
fn qemu_img_psk_client_info_and_convert_both_ways() {
    let s = setup(&[]);
    let object = qemu_psk(&s.dir.path("server"), "alice");
    let opts = format!(
        "driver=nbd,path={},tls-creds=tls0",
        s.server.socket.display()
    );
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

    // Read the whole export out.
    let out = s.dir.path("out.img");
    let out_s = out.to_str().unwrap();
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
            out_s,
        ],
    );
    assert!(r.ok, "qemu-img convert from the server: {}", r.stderr);
    assert!(
        std::fs::read(&out).unwrap() == s.image,
        "the export read back differs"
    );

    // Write a new image into it.
    let new: Vec<u8> = pattern(SIZE).iter().map(|b| b ^ 0x5a).collect();
    let src = s.dir.path("new.img");
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
        std::fs::read(s.dir.path("disk.img")).unwrap() == new,
        "the export does not hold what qemu-img wrote"
    );

    // A wrong key: qemu-img fails.
    let wrong = s.dir.path("wrong");
    write_keys(&wrong, &format!("alice:{BOB_KEY}\n"));
    let object = qemu_psk(&wrong, "alice");
    let r = run(
        "qemu-img",
        &["info", "--object", &object, "--image-opts", &opts],
    );
    assert!(!r.ok, "qemu-img with a wrong key got in: {}", r.stdout);
}

#[test]
fn tls_authz_lets_in_only_the_named_user() {
    let s = setup(&[
        "--object",
        "authz-simple,id=auth0,identity=bob",
        "--tls-authz",
        "auth0",
    ]);
    let keys = s.dir.path("server");
    let r = run("nbdinfo", &["--size", &s.uri("alice", &keys)]);
    assert!(
        !r.ok,
        "alice is not in the authz list but got in: {}",
        r.stdout
    );
    let r = run("nbdinfo", &["--size", &s.uri("bob", &keys)]);
    assert!(r.ok, "bob was refused: {}", r.stderr);
    assert_eq!(r.stdout.trim(), SIZE.to_string());
}

#[test]
fn bad_psk_directory_is_a_clear_error() {
    let dir = TempDir::new("psk-bad");
    let sock = dir.path("nbd.sock");
    let object = format!(
        "tls-creds-psk,id=tls0,dir={},endpoint=server",
        dir.path("missing").display()
    );
    let r = run(
        corio_nbd(),
        &[
            "-k",
            sock.to_str().unwrap(),
            "--object",
            &object,
            "--tls-creds",
            "tls0",
        ],
    );
    assert!(!r.ok);
    assert!(
        r.stderr.starts_with("corio-nbd:") && r.stderr.contains("keys.psk"),
        "{}",
        r.stderr
    );
}
