//! Every write path of the qcow2 backend, checked by QEMU: images made by
//! qemu-img (fresh, an overlay on a backing file, compressed clusters,
//! with an internal snapshot, with an external data file, version 2) get
//! the same writes over NBD and in a raw shadow; then `qemu-img check`
//! must find the image clean and `qemu-img compare` identical to the
//! shadow. Missing qemu-img / qemu-io fail the tests.

mod helpers;
mod qcow2_helpers;

use helpers::process::TempDir;
use qcow2_helpers::{
    check_clean, create, ok, qemu_io, raw_shadow, s, served_in_place, shm_dir, write_and_verify,
    WRITES,
};

/// Fills `image` (any format qemu-io opens) with a pattern in a few
/// places, so that writes land on data, zeroes and unallocated space.
fn seed(fmt: &str, image: &std::path::Path) {
    qemu_io(
        fmt,
        s(image),
        &[
            "write -P 0x11 0 2M",
            "write -P 0x12 3M 1M",
            "write -P 0x13 6M 512k",
        ],
    );
}

#[test]
fn fresh_image() {
    let dir = TempDir::new("q2-fresh");
    let img = dir.path("fresh.qcow2");
    create("qcow2", &img, "8M", &[]);
    assert!(!served_in_place(&img), "{} is not on tmpfs", img.display());
    write_and_verify(&dir, &img, &["-f", "qcow2"], WRITES);
}

/// On tmpfs requests run in place (no thread pool): the same checks.
#[test]
fn fresh_and_overlay_images_on_tmpfs() {
    let dir = shm_dir("q2-shm");
    let base = dir.path("base.qcow2");
    let top = dir.path("top.qcow2");
    create("qcow2", &base, "8M", &[]);
    assert!(served_in_place(&base));
    seed("qcow2", &base);
    create("qcow2", &top, "8M", &["-b", "base.qcow2", "-F", "qcow2"]);
    write_and_verify(&dir, &top, &["-f", "qcow2"], WRITES);
    write_and_verify(&dir, &base, &["-f", "qcow2"], WRITES);
}

#[test]
fn image_with_data_and_probed_format() {
    let dir = TempDir::new("q2-probed");
    let img = dir.path("data.qcow2");
    create("qcow2", &img, "8M", &[]);
    seed("qcow2", &img);
    // No -f: the qcow2 magic is probed, as qemu-nbd does.
    write_and_verify(&dir, &img, &[], WRITES);
}

#[test]
fn overlay_on_a_backing_file() {
    let dir = TempDir::new("q2-overlay");
    let base = dir.path("base.raw");
    let mid = dir.path("mid.qcow2");
    let top = dir.path("top.qcow2");
    create("raw", &base, "8M", &[]);
    seed("raw", &base);
    // A relative backing name: resolved against the image's directory,
    // not the server's working directory.
    create("qcow2", &mid, "8M", &["-b", "base.raw", "-F", "raw"]);
    qemu_io(
        "qcow2",
        s(&mid),
        &["write -P 0x21 1M 1M", "write -z 6M 64k"],
    );
    create("qcow2", &top, "8M", &["-b", "mid.qcow2", "-F", "qcow2"]);
    let base_before = std::fs::read(&base).unwrap();
    write_and_verify(&dir, &top, &["-f", "qcow2"], WRITES);
    // The backing files were opened read-only and are untouched.
    assert_eq!(
        std::fs::read(&base).unwrap(),
        base_before,
        "base.raw changed"
    );
    check_clean(&mid);
}

#[test]
fn compressed_clusters() {
    let dir = TempDir::new("q2-compressed");
    let src = dir.path("src.raw");
    let img = dir.path("comp.qcow2");
    create("raw", &src, "8M", &[]);
    seed("raw", &src);
    ok(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            s(&src),
            s(&img),
        ],
    );
    let map = ok("qemu-img", &["map", "--output=json", s(&img)]);
    assert!(
        map.contains("\"compressed\": true"),
        "not compressed: {map}"
    );
    write_and_verify(&dir, &img, &["-f", "qcow2"], WRITES);
}

#[test]
fn internal_snapshot_left_intact() {
    let dir = TempDir::new("q2-snapshot");
    let img = dir.path("snap.qcow2");
    let before = dir.path("before.raw");
    create("qcow2", &img, "8M", &[]);
    seed("qcow2", &img);
    ok("qemu-img", &["snapshot", "-c", "s1", s(&img)]);
    raw_shadow(&img, &before);
    write_and_verify(&dir, &img, &["-f", "qcow2"], WRITES);
    let list = ok("qemu-img", &["snapshot", "-l", s(&img)]);
    assert!(list.contains("s1"), "snapshot gone: {list}");
    // The snapshot still reads as the image did when it was taken.
    let snap = dir.path("snap.raw");
    ok(
        "qemu-img",
        &[
            "convert",
            "-l",
            "snapshot.name=s1",
            "-f",
            "qcow2",
            "-O",
            "raw",
            s(&img),
            s(&snap),
        ],
    );
    let r = helpers::run("cmp", &[s(&snap), s(&before)]);
    assert!(r.ok, "snapshot s1 changed: {}{}", r.stdout, r.stderr);
}

#[test]
fn external_data_file() {
    let dir = TempDir::new("q2-datafile");
    let img = dir.path("meta.qcow2");
    let data = dir.path("meta.data");
    create(
        "qcow2",
        &img,
        "8M",
        &["-o", &format!("data_file={}", s(&data))],
    );
    seed("qcow2", &img);
    write_and_verify(&dir, &img, &["-f", "qcow2"], WRITES);
}

/// compat=0.10 has no zero clusters: zeroing falls back to writing
/// zeroes, TRIM unallocates whole clusters, and the result still checks
/// clean.
#[test]
fn version_2_image_zeroes_by_writing() {
    let dir = TempDir::new("q2-v2");
    let img = dir.path("v2.qcow2");
    create("qcow2", &img, "8M", &["-o", "compat=0.10"]);
    seed("qcow2", &img);
    // Only cluster-aligned discards: a partial cluster keeps its data
    // (NBD leaves what a trimmed range reads unspecified), which a raw
    // shadow would not.
    let cmds: Vec<&str> = WRITES
        .iter()
        .filter(|c| !c.starts_with("discard"))
        .copied()
        .chain(["discard 3M 192k", "write -z 0 1M", "write -z 3M 64k"])
        .collect();
    write_and_verify(&dir, &img, &["-f", "qcow2"], &cmds);
    let map: serde_json::Value =
        serde_json::from_str(&ok("qemu-img", &["map", "--output=json", s(&img)])).unwrap();
    let first = &map[0];
    assert!(
        first["start"] == 0 && first["data"] == true && first["zero"] == false,
        "write -z on a v2 image should leave written zeroes (data): {first}"
    );
}
