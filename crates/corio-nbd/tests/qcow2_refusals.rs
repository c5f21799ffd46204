//! What the qcow2 backend refuses, and how it says so (each refusal with
//! its message): encrypted images (LUKS, AES), zstd compression, extended
//! L2 entries, the dirty bit (with the `qemu-img check -r all` remedy,
//! which then makes the image servable), an encrypted image in the
//! backing chain; and QEMU's "probed raw" rule: without `-f`, a raw image
//! may not get a format header written into its first sector.

mod helpers;
mod qcow2_helpers;

use std::path::Path;

use helpers::process::{corio_nbd, run, TempDir};
use qcow2_helpers::{create, ok, qemu_io, s, serve, uri};

/// Runs corio-nbd on `image` (it must refuse and exit); returns stderr.
fn refused(dir: &TempDir, args: &[&str], image: &Path) -> String {
    let sock = dir.path("refused.sock");
    let mut a = vec!["-k", s(&sock)];
    a.extend_from_slice(args);
    a.push(s(image));
    let r = run(corio_nbd(), &a);
    assert!(!r.ok, "corio-nbd served {}: {}", image.display(), r.stderr);
    assert!(!sock.exists(), "corio-nbd listened before refusing");
    r.stderr
}

fn assert_has(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "expected {p:?} in: {text}");
    }
}

fn encrypted(dir: &TempDir, name: &str, format: &str) -> std::path::PathBuf {
    let img = dir.path(name);
    // LUKS key derivation takes 2 s by default.
    let fast = if format == "luks" {
        ",encrypt.iter-time=10"
    } else {
        ""
    };
    create(
        "qcow2",
        &img,
        "4M",
        &[
            "--object",
            "secret,id=sec0,data=123456",
            "-o",
            &format!("encrypt.format={format},encrypt.key-secret=sec0{fast}"),
        ],
    );
    img
}

#[test]
fn luks_encrypted_image_is_refused() {
    let dir = TempDir::new("q2-luks");
    let img = encrypted(&dir, "luks.qcow2", "luks");
    let err = refused(&dir, &["-f", "qcow2"], &img);
    assert_has(&err, &["luks.qcow2", "is encrypted (LUKS)", "ciphertext"]);
    // Probed, too.
    let err = refused(&dir, &[], &img);
    assert_has(&err, &["is encrypted (LUKS)"]);
}

#[test]
fn aes_encrypted_image_is_refused() {
    let dir = TempDir::new("q2-aes");
    let img = encrypted(&dir, "aes.qcow2", "aes");
    let err = refused(&dir, &["-f", "qcow2"], &img);
    assert_has(&err, &["aes.qcow2", "is encrypted (AES)"]);
}

#[test]
fn encrypted_backing_file_is_refused() {
    let dir = TempDir::new("q2-enc-backing");
    encrypted(&dir, "base.qcow2", "luks");
    let top = dir.path("top.qcow2");
    create(
        "qcow2",
        &top,
        "4M",
        &["-u", "-b", "base.qcow2", "-F", "qcow2"],
    );
    let err = refused(&dir, &["-f", "qcow2", "-r"], &top);
    assert_has(&err, &["base.qcow2", "is encrypted (LUKS)"]);
}

#[test]
fn zstd_compression_is_refused() {
    let dir = TempDir::new("q2-zstd");
    let img = dir.path("zstd.qcow2");
    create("qcow2", &img, "4M", &["-o", "compression_type=zstd"]);
    let err = refused(&dir, &["-f", "qcow2"], &img);
    assert_has(
        &err,
        &[
            "zstd.qcow2",
            "uses zstd compression",
            "compression_type=zlib",
        ],
    );
}

#[test]
fn extended_l2_is_refused() {
    let dir = TempDir::new("q2-extl2");
    let img = dir.path("extl2.qcow2");
    create("qcow2", &img, "4M", &["-o", "extended_l2=on"]);
    let err = refused(&dir, &["-f", "qcow2"], &img);
    assert_has(
        &err,
        &["extl2.qcow2", "extended L2 entries", "extended_l2=off"],
    );
}

/// Sets the dirty bit (incompatible feature bit 0), as a crash of QEMU
/// with lazy refcounts leaves it.
fn set_dirty(img: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 79).unwrap();
    f.write_all_at(&[b[0] | 1], 79).unwrap();
}

#[test]
fn dirty_image_is_refused_until_repaired() {
    let dir = TempDir::new("q2-dirty");
    let img = dir.path("dirty.qcow2");
    create("qcow2", &img, "4M", &["-o", "lazy_refcounts=on"]);
    qemu_io("qcow2", s(&img), &["write -P 0x77 0 1M"]);
    set_dirty(&img);
    let err = refused(&dir, &["-f", "qcow2"], &img);
    assert_has(
        &err,
        &[
            "dirty.qcow2",
            "dirty bit",
            &format!("qemu-img check -r all {}", s(&img)),
        ],
    );
    // What the message says to do works.
    ok("qemu-img", &["check", "-q", "-r", "all", s(&img)]);
    let srv = serve(&dir, "ok", &["-f", "qcow2", "-r", "-t"], &img);
    let out = ok(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            "read -P 0x77 0 1M",
            &uri(&srv.socket),
        ],
    );
    assert!(!out.contains("failed"), "{out}");
}

#[test]
fn probed_raw_refuses_a_format_header_in_sector_0() {
    let dir = TempDir::new("q2-probed-raw");
    let img = dir.path("disk.raw");
    create("raw", &img, "4M", &[]);
    let srv = serve(&dir, "p", &["-t"], &img);
    let u = uri(&srv.socket);
    // Ordinary data in sector 0 is fine; so is a header elsewhere.
    qemu_io("raw", &u, &["write -P 0x12 0 4k"]);
    let hdr = "h.pwrite(b'QFI\\xfb' + bytes(508), {})";
    ok("nbdsh", &["-u", &u, "-c", &hdr.replace("{}", "65536")]);
    // A qcow2 magic at offset 0 is refused with EPERM.
    let r = run("nbdsh", &["-u", &u, "-c", &hdr.replace("{}", "0")]);
    assert!(!r.ok, "the write of a qcow2 header was accepted");
    assert_has(&r.stderr, &["Operation not permitted"]);
    let (status, err) = srv.terminate();
    assert!(status.success(), "server exit {status}: {err}");
    assert_has(
        &err,
        &[
            "WARNING: Image format was not specified for",
            "probing guessed raw",
            "write operations on block 0 will be restricted",
            "Specify the 'raw' format explicitly to remove the restrictions.",
        ],
    );
    let head = std::fs::read(&img).unwrap();
    assert_eq!(&head[..4], &[0x12; 4], "sector 0 was changed");
    // With -f raw there is no restriction and no warning.
    let srv = serve(&dir, "f", &["-t", "-f", "raw"], &img);
    ok(
        "nbdsh",
        &["-u", &uri(&srv.socket), "-c", &hdr.replace("{}", "0")],
    );
    let (_, err) = srv.terminate();
    assert!(!err.contains("WARNING"), "{err}");
    assert_eq!(&std::fs::read(&img).unwrap()[..4], b"QFI\xfb");
}

#[test]
fn unsupported_formats_are_named() {
    let dir = TempDir::new("q2-formats");
    let img = dir.path("disk.vmdk");
    create("vmdk", &img, "4M", &[]);
    let err = refused(&dir, &[], &img);
    assert_has(&err, &["looks like a vmdk image", "-f raw"]);
    let err = refused(&dir, &["-f", "vmdk"], &img);
    assert_has(&err, &["format 'vmdk' is not supported", "raw and qcow2"]);
}
