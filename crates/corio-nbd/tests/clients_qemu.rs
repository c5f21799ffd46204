//! QEMU's own clients against the server: `qemu-img info / compare /
//! convert` both ways, and `qemu-io` read / write / aio / zero / discard
//! with pattern verification.

mod helpers;

use clients::image::{
    assert_bytes, assert_filled, assert_same, data_image, sparse_image, write_at,
};
use clients::{arg, output, run_ok, tempdir, tool, Listen, Server};
use helpers::clients;
use serde_json::Value;

const MIB: u64 = 1 << 20;

#[test]
fn qemu_img_info_over_nbd() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, 6 * MIB, &[(0, 65536)], 2);
    let srv = Server::start(dir.path(), Listen::Unix, &["-f", "raw", "-r", arg(&img)]);
    let out = run_ok(
        tool("qemu-img")
            .args(["info", "--output=json"])
            .arg(srv.uri("")),
    );
    let v: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("qemu-img info JSON ({e}): {out}"));
    assert_eq!(v["virtual-size"], 6 * MIB, "{v}");
    assert_eq!(v["format"], "raw", "{v}");
}

#[test]
fn qemu_img_compare_server_with_file() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    let copy = dir.path().join("copy.img");
    sparse_image(&img, 8 * MIB, &[(MIB, 3 * MIB), (7 * MIB, 4096)], 5);
    std::fs::copy(&img, &copy).expect("copy image");
    let srv = Server::start(
        dir.path(),
        Listen::Unix,
        &["-f", "raw", "-t", "-r", arg(&img)],
    );
    let compare = || {
        output(
            tool("qemu-img")
                .args(["compare", "-f", "raw", "-F", "raw"])
                .arg(&copy)
                .arg(srv.uri("")),
        )
    };
    let same = compare();
    assert_eq!(
        same.status.code(),
        Some(0),
        "identical: {}",
        String::from_utf8_lossy(&same.stdout)
    );
    // Change one byte of the copy inside a hole of the served image.
    write_at(&copy, 5 * MIB + 17, b"x");
    let differ = compare();
    let text = String::from_utf8_lossy(&differ.stdout);
    assert_eq!(differ.status.code(), Some(1), "different: {text}");
    // qemu-img names the 512-byte sector holding the first difference.
    assert!(
        text.contains(&format!("Content mismatch at offset {}!", 5 * MIB)),
        "{text}"
    );
}

#[test]
fn qemu_img_convert_from_nbd_to_file() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    let out = dir.path().join("out.img");
    sparse_image(&img, 16 * MIB, &[(0, 2 * MIB), (9 * MIB, MIB + 4096)], 11);
    let srv = Server::start(dir.path(), Listen::Tcp, &["-f", "raw", "-r", arg(&img)]);
    run_ok(
        tool("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(srv.uri(""))
            .arg(&out),
    );
    assert_same(&img, &out);
}

#[test]
fn qemu_img_convert_from_file_to_nbd() {
    let dir = tempdir();
    let src = dir.path().join("src.img");
    let img = dir.path().join("served.img");
    data_image(&src, 16 * MIB, 12);
    // Zero ranges in the source: convert writes them as zeroes or skips
    // them, and the served image must read back zero there either way.
    write_at(&src, 4 * MIB, &vec![0; MIB as usize]);
    sparse_image(&img, 16 * MIB, &[(4 * MIB, MIB)], 99);
    let srv = Server::start(dir.path(), Listen::Unix, &["-f", "raw", arg(&img)]);
    run_ok(
        tool("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(srv.uri("")),
    );
    assert_same(&src, &img);
}

/// Runs qemu-io commands against `uri`; every command must succeed and no
/// pattern check may fail.
fn qemu_io(opts: &[&str], uri: &str, cmds: &[&str]) -> String {
    let mut cmd = tool("qemu-io");
    cmd.args(["-f", "raw"]).args(opts).arg(uri);
    for c in cmds {
        cmd.arg("-c").arg(c);
    }
    let out = run_ok(&mut cmd);
    for bad in ["failed", "error", "Error"] {
        assert!(!out.contains(bad), "qemu-io reported {bad:?}:\n{out}");
    }
    out
}

#[test]
fn qemu_io_patterns() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, 4 * MIB, &[(0, 4 * MIB)], 3);
    let srv = Server::start(dir.path(), Listen::Unix, &["-f", "raw", "-t", arg(&img)]);
    let out = qemu_io(
        &[],
        &srv.uri(""),
        &[
            "write -P 0xab 0 64k",
            "read -P 0xab 0 64k",
            "write -f -P 0x11 64k 4k", // FUA
            "read -P 0x11 64k 4k",
            "aio_write -P 0xcd 128k 64k",
            "aio_write -P 0xce 192k 64k",
            "aio_flush",
            "read -P 0xcd 128k 64k",
            "read -P 0xce 192k 64k",
            "write -z 1M 128k",   // WRITE_ZEROES
            "write -z -u 2M 64k", // WRITE_ZEROES, may punch
            "read -P 0 1M 128k",
            "read -P 0 2M 64k",
            "discard 3M 64k",
            "flush",
            "readv -P 0xab 0 4k 4k 56k",
        ],
    );
    assert!(out.contains("read 65536/65536 bytes at offset 0"), "{out}");
    // What the clients wrote is in the file, and nothing beyond.
    assert_filled(&img, 0, 65536, 0xab, "written range");
    assert_filled(&img, 65536, 4096, 0x11, "written range");
    assert_filled(&img, 128 << 10, 65536, 0xcd, "written range");
    assert_filled(&img, MIB, 131072, 0, "written range");
    assert_filled(&img, 2 * MIB, 65536, 0, "written range");
    let untouched = clients::image::pattern(3, 2 * MIB + 65536, 4096);
    assert_bytes(&img, 2 * MIB + 65536, &untouched, "beyond the zeroed range");
    // A read-only export: qemu's block driver refuses to open it for
    // writing ("Permission denied"), and reading works.
    let dir2 = tempdir();
    let ro = Server::start(
        dir2.path(),
        Listen::Unix,
        &["-f", "raw", "-r", "-t", arg(&img)],
    );
    let refused = output(
        tool("qemu-io")
            .args(["-f", "raw"])
            .arg(ro.uri(""))
            .args(["-c", "write -P 1 0 4k"]),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        !refused.status.success(),
        "read-write open of a -r export: {text}"
    );
    assert!(text.contains("Permission denied"), "{text}");
    qemu_io(&["-r"], &ro.uri(""), &["read -P 0xab 0 64k"]);
    assert_filled(&img, 0, 4096, 0xab, "written range");
}
