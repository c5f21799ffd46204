//! qcow2 images served to real clients: several clients writing disjoint
//! ranges over two IOThreads, nbdcopy in both directions, and block
//! status (`base:allocation`, `qemu:allocation-depth`) matching
//! `qemu-img map` and qemu-nbd on the same image. Missing tools (qemu-img,
//! qemu-io, qemu-nbd, nbdcopy, nbdinfo) fail the tests.

mod helpers;
mod qcow2_helpers;

use std::path::Path;
use std::thread;

use helpers::process::{run, TempDir};
use qcow2_helpers::{
    check_clean, compare, create, ok, qemu_io, raw_shadow, s, serve, serve_qemu, shm_dir, uri,
};

const MIB: u64 = 1 << 20;

/// Four clients at once over two IOThreads, each writing its own quarter
/// (allocating clusters concurrently), then qemu-img checks the image
/// and reads each quarter's pattern.
fn concurrent_clients(dir: &TempDir) {
    const CLIENTS: u64 = 4;
    const SPAN: u64 = 4 * MIB;
    let img = dir.path("conc.qcow2");
    let size = (CLIENTS * SPAN).to_string();
    create("qcow2", &img, &size, &[]);
    let srv = serve(
        dir,
        "c",
        &["-f", "qcow2", "-t", "-e", "0", "--iothreads", "2"],
        &img,
    );
    let u = uri(&srv.socket);
    thread::scope(|sc| {
        for i in 0..CLIENTS {
            let u = u.clone();
            sc.spawn(move || {
                // 64 KiB writes interleaved with the other clients'.
                let mut cmds = Vec::new();
                for chunk in 0..(SPAN / (64 << 10)) {
                    let off = i * SPAN + chunk * (64 << 10);
                    cmds.push(format!("aio_write -P {} {off} 64k", 0x10 + i));
                }
                cmds.push("aio_flush".into());
                let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
                qemu_io("raw", &u, &refs);
            });
        }
    });
    let (status, err) = srv.terminate();
    assert!(status.success(), "server exit {status}: {err}");
    check_clean(&img);
    for i in 0..CLIENTS {
        let cmd = format!("read -P {} {} {SPAN}", 0x10 + i, i * SPAN);
        qemu_io("qcow2", s(&img), &[&cmd]);
    }
}

#[test]
fn concurrent_clients_on_two_iothreads() {
    let dir = TempDir::new("q2-conc");
    concurrent_clients(&dir);
}

#[test]
fn concurrent_clients_on_two_iothreads_in_place() {
    let dir = shm_dir("q2-conc-shm");
    concurrent_clients(&dir);
}

/// A qcow2 image with data, zero clusters and unallocated space.
fn mixed_image(dir: &TempDir) -> std::path::PathBuf {
    let img = dir.path("mixed.qcow2");
    create("qcow2", &img, "24M", &[]);
    qemu_io(
        "qcow2",
        s(&img),
        &[
            "write -P 0x31 0 5M",
            "write -z 2M 1M",
            "write -P 0x32 11M 3M",
            "write -P 0x33 23M 64k",
        ],
    );
    img
}

#[test]
fn nbdcopy_from_qcow2() {
    let dir = TempDir::new("q2-copy-out");
    let img = mixed_image(&dir);
    let want = dir.path("want.raw");
    raw_shadow(&img, &want);
    let srv = serve(
        &dir,
        "r",
        &["-f", "qcow2", "-r", "-t", "-e", "4", "--iothreads", "2"],
        &img,
    );
    let out = dir.path("out.raw");
    ok("nbdcopy", &["--connections=4", &uri(&srv.socket), s(&out)]);
    let r = run("cmp", &[s(&out), s(&want)]);
    assert!(r.ok, "nbdcopy output differs: {}{}", r.stdout, r.stderr);
}

#[test]
fn nbdcopy_into_qcow2() {
    let dir = TempDir::new("q2-copy-in");
    let src = dir.path("src.raw");
    create("raw", &src, "24M", &[]);
    qemu_io(
        "raw",
        s(&src),
        &["write -P 0x41 1M 7M", "write -P 0x42 20M 4096"],
    );
    // The target starts full of other data: holes in the source must be
    // zeroed through the server.
    let img = dir.path("target.qcow2");
    create("qcow2", &img, "24M", &[]);
    qemu_io("qcow2", s(&img), &["write -P 0x55 0 24M"]);
    let srv = serve(
        &dir,
        "w",
        &["-f", "qcow2", "-t", "-e", "4", "--iothreads", "2"],
        &img,
    );
    ok(
        "nbdcopy",
        &["--flush", "--connections=4", s(&src), &uri(&srv.socket)],
    );
    let (status, err) = srv.terminate();
    assert!(status.success(), "server exit {status}: {err}");
    check_clean(&img);
    compare(&img, &src);
}

/// `nbdinfo --map` of `context` on a server on `socket`.
fn nbd_map(socket: &Path, context: &str) -> String {
    ok("nbdinfo", &[&format!("--map={context}"), &uri(socket)])
}

/// The `base:allocation` map `qemu-img map` gives, in nbdinfo's layout.
fn qemu_img_map(image: &Path) -> String {
    let json = ok("qemu-img", &["map", "--output=json", s(image)]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut runs: Vec<(u64, u64, u64)> = Vec::new();
    for e in v.as_array().unwrap() {
        let data = e["data"].as_bool().unwrap();
        let zero = e["zero"].as_bool().unwrap();
        let flags = u64::from(!data) | (u64::from(zero) << 1);
        let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        match runs.last_mut() {
            Some(last) if last.2 == flags => last.1 += len,
            _ => runs.push((start, len, flags)),
        }
    }
    let name = |f| match f {
        0 => "data",
        2 => "zero",
        3 => "hole,zero",
        _ => "hole",
    };
    runs.iter()
        .map(|&(st, len, f)| format!("{st:>10}  {len:>10}  {f:>3}  {}\n", name(f)))
        .collect()
}

/// Both maps of `image`, from corio-nbd and from qemu-nbd, and the
/// `base:allocation` one from qemu-img map too.
fn compare_maps(dir: &TempDir, image: &Path) {
    let corio = serve(
        dir,
        "m",
        &["-f", "qcow2", "-r", "-t", "-e", "0", "-A"],
        image,
    );
    let qemu = serve_qemu(
        dir,
        "q",
        &["-f", "qcow2", "-r", "-t", "-e", "0", "-A"],
        image,
    );
    for ctx in ["base:allocation", "qemu:allocation-depth"] {
        let ours = nbd_map(&corio.socket, ctx);
        let theirs = nbd_map(&qemu.socket, ctx);
        assert_eq!(
            ours,
            theirs,
            "{ctx} of {}: corio-nbd vs qemu-nbd",
            image.display()
        );
        assert!(!ours.is_empty());
    }
    let ours = nbd_map(&corio.socket, "base:allocation");
    let norm = |m: &str| -> Vec<(u64, u64, u64)> {
        m.lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (
                    f[0].parse().unwrap(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        norm(&ours),
        norm(&qemu_img_map(image)),
        "base:allocation of {} vs qemu-img map",
        image.display()
    );
}

#[test]
fn block_status_of_a_mixed_image() {
    let dir = TempDir::new("q2-map-mixed");
    let img = mixed_image(&dir);
    compare_maps(&dir, &img);
}

#[test]
fn block_status_through_a_backing_chain() {
    let dir = TempDir::new("q2-map-chain");
    let base = dir.path("base.raw");
    let mid = dir.path("mid.qcow2");
    let top = dir.path("top.qcow2");
    create("raw", &base, "16M", &[]);
    qemu_io(
        "raw",
        s(&base),
        &["write -P 0x11 0 2M", "write -P 0x12 9M 1M"],
    );
    create("qcow2", &mid, "16M", &["-b", "base.raw", "-F", "raw"]);
    qemu_io(
        "qcow2",
        s(&mid),
        &[
            "write -P 0x21 1M 2M",
            "write -z 9M 512k",
            "write -P 0x22 14M 1M",
        ],
    );
    create("qcow2", &top, "16M", &["-b", "mid.qcow2", "-F", "qcow2"]);
    qemu_io(
        "qcow2",
        s(&top),
        &["write -P 0x31 4M 1M", "write -z 14M 64k"],
    );
    compare_maps(&dir, &top);
}

#[test]
fn block_status_of_compressed_clusters() {
    let dir = TempDir::new("q2-map-comp");
    let src = mixed_image(&dir);
    let img = dir.path("comp.qcow2");
    ok(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-f",
            "qcow2",
            "-O",
            "qcow2",
            s(&src),
            s(&img),
        ],
    );
    compare_maps(&dir, &img);
}

/// A client leaving has the server write back imago's metadata caches:
/// while the server still runs, the image on disk is already consistent
/// and holds what the client wrote.
#[test]
fn image_is_flushed_when_a_client_leaves() {
    let dir = TempDir::new("q2-disconnect");
    let img = dir.path("live.qcow2");
    create("qcow2", &img, "8M", &[]);
    let mut srv = serve(&dir, "d", &["-f", "qcow2", "-t"], &img);
    // nbdsh sends no flush (qemu-io would, on close): only the
    // disconnect can write back the L2 and refcount tables.
    ok(
        "nbdsh",
        &[
            "-u",
            &uri(&srv.socket),
            "-c",
            "h.pwrite(b'\\x66' * (3 << 20), 0); h.pwrite(b'\\x67' * 65536, 5 << 20)",
        ],
    );
    let deadline = std::time::Instant::now() + helpers::DEADLINE;
    loop {
        let r = run(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-r",
                "-c",
                "read -P 0x66 0 3M",
                "-c",
                "read -P 0x67 5M 64k",
                s(&img),
            ],
        );
        if r.ok && !r.stdout.contains("failed") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the image never showed the client's writes: {}{}",
            r.stdout,
            r.stderr
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    check_clean(&img);
    assert!(srv.alive(), "the server (-t) should still run");
}
