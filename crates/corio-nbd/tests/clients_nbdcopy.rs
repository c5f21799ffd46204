//! nbdcopy in both directions (single and multi-connection), checksums
//! compared with the source, and concurrent clients writing disjoint
//! ranges of one export.

mod helpers;

use std::thread;

use clients::image::{assert_same, data_image, read_at, sparse_image};
use clients::{arg, run_ok, tempdir, tool, Listen, Server};
use helpers::clients;

const MIB: u64 = 1 << 20;

#[test]
fn nbdcopy_read_to_file() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    let out = dir.path().join("out.img");
    sparse_image(
        &img,
        24 * MIB,
        &[(0, 5 * MIB), (11 * MIB, 3 * MIB + 512), (23 * MIB, MIB)],
        21,
    );
    let srv = Server::start(dir.path(), Listen::Unix, &["-f", "raw", "-r", arg(&img)]);
    run_ok(tool("nbdcopy").arg(srv.uri("")).arg(&out));
    assert_same(&img, &out);
}

/// With `-e 4` the server advertises multi-conn and nbdcopy opens four
/// connections.
#[test]
fn nbdcopy_read_multi_conn() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    let out = dir.path().join("out.img");
    data_image(&img, 32 * MIB, 22);
    let srv = Server::start(
        dir.path(),
        Listen::Tcp,
        &["-f", "raw", "-e", "4", "-r", arg(&img)],
    );
    run_ok(
        tool("nbdcopy")
            .args(["--connections=4"])
            .arg(srv.uri(""))
            .arg(&out),
    );
    assert_same(&img, &out);
}

#[test]
fn nbdcopy_write_from_file() {
    let dir = tempdir();
    let src = dir.path().join("src.img");
    let img = dir.path().join("served.img");
    sparse_image(&src, 24 * MIB, &[(MIB, 7 * MIB), (20 * MIB, 4096)], 23);
    // The target starts full of other data, so holes in the source must be
    // written as zeroes (nbdcopy zeroes them: WRITE_ZEROES or TRIM).
    data_image(&img, 24 * MIB, 24);
    let srv = Server::start(
        dir.path(),
        Listen::Unix,
        &["-f", "raw", "-e", "4", arg(&img)],
    );
    run_ok(tool("nbdcopy").arg("--flush").arg(&src).arg(srv.uri("")));
    assert_same(&src, &img);
}

/// Four clients at once, each writing its own quarter with its own
/// pattern (qemu-io, one process per client), then the file is checked.
#[test]
fn concurrent_clients_disjoint_ranges() {
    const CLIENTS: u64 = 4;
    const SPAN: u64 = 4 * MIB;
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, CLIENTS * SPAN, &[], 0);
    let srv = Server::start(
        dir.path(),
        Listen::Unix,
        &["-f", "raw", "-t", "-e", "0", arg(&img)],
    );
    let uri = srv.uri("");
    thread::scope(|s| {
        for i in 0..CLIENTS {
            let uri = uri.clone();
            s.spawn(move || {
                let mut cmd = tool("qemu-io");
                cmd.args(["-f", "raw"]).arg(&uri);
                // 64 KiB writes interleaved with the other clients'.
                for chunk in 0..(SPAN / (64 << 10)) {
                    let off = i * SPAN + chunk * (64 << 10);
                    cmd.arg("-c")
                        .arg(format!("aio_write -P {} {off} 64k", 0x10 + i));
                }
                cmd.arg("-c").arg("aio_flush");
                let out = run_ok(&mut cmd);
                assert!(!out.contains("failed"), "client {i}: {out}");
            });
        }
    });
    for i in 0..CLIENTS {
        let got = read_at(&img, i * SPAN, SPAN as usize);
        if let Some(bad) = got.iter().position(|&b| b != 0x10 + i as u8) {
            panic!(
                "client {i}'s range holds {:#x} at offset {}",
                got[bad],
                i * SPAN + bad as u64
            );
        }
    }
    // And a client reads back the same through the server.
    let back = dir.path().join("back.img");
    run_ok(tool("nbdcopy").arg(&uri).arg(&back));
    assert_same(&img, &back);
}
