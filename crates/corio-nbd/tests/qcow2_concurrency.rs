//! Concurrent clients on one qcow2 overlay over two IOThreads.
//!
//! Four clients interleave cluster by cluster: each owns every fourth
//! cluster, so their allocations share L2 tables and refcount blocks and
//! race inside imago; partial-cluster writes copy the backing file's
//! data underneath (copy-on-write while others allocate); then zeroing,
//! discards (TRIM takes the image exclusively while the others write)
//! and more writes, with many requests in flight per client, then reads
//! that check the patterns. `qemu-img check` must find the image clean
//! and `qemu-img compare` identical to a raw shadow that got the same
//! commands. On ext4 every I/O goes through the thread pool; on tmpfs the
//! small ones run in place. Missing qemu-img / qemu-io fail the tests.

mod helpers;
mod qcow2_helpers;

use std::path::Path;
use std::thread;

use helpers::process::TempDir;
use qcow2_helpers::{check_clean, compare, create, qemu_io, raw_shadow, s, serve, shm_dir, uri};

const CLUSTER: u64 = 64 << 10;
const CLUSTERS: u64 = 256;
const CLIENTS: u64 = 4;

/// Client `i`'s qemu-io commands (writes, then zeroes, discards and
/// rewrites, then pattern checks), every range in the clusters it owns
/// (`c % CLIENTS == i`).
fn commands(i: u64) -> Vec<String> {
    let mine = (0..CLUSTERS).filter(move |c| c % CLIENTS == i);
    let mut cmds = Vec::new();
    // Phase 1: a 4 KiB write inside each owned cluster (allocation plus
    // copy-on-write of the backing data around it).
    for c in mine.clone() {
        let at = c * CLUSTER + (i + 1) * 4096;
        cmds.push(format!("aio_write -P {} {at} 4k", 0x20 + i));
    }
    cmds.push("aio_flush".into());
    // Phase 2: per owned cluster, one of: zero it, discard it (qemu-io
    // has no aio_discard: this client waits, the others do not), rewrite
    // 16 KiB of it, or write its unaligned last 8000 bytes.
    for (k, c) in mine.clone().enumerate() {
        let base = c * CLUSTER;
        cmds.push(match k % 4 {
            0 => format!("aio_write -z {base} 64k"),
            1 => format!("discard {base} 64k"),
            2 => format!("aio_write -P {} {} 16k", 0x30 + i, base + 16384),
            _ => format!("aio_write -P {} {} 8000", 0x40 + i, base + CLUSTER - 8000),
        });
    }
    cmds.push("aio_flush".into());
    // Checks: what phase 2 left, read back concurrently.
    for (k, c) in mine.enumerate() {
        let base = c * CLUSTER;
        match k % 4 {
            0 => cmds.push(format!("aio_read -P 0 {base} 64k")),
            2 => cmds.push(format!("aio_read -P {} {} 16k", 0x30 + i, base + 16384)),
            3 => cmds.push(format!(
                "aio_read -P {} {} 8000",
                0x40 + i,
                base + CLUSTER - 8000
            )),
            _ => {}
        }
    }
    cmds.push("aio_flush".into());
    cmds
}

fn clients_on_an_overlay(dir: &TempDir) {
    let size = (CLUSTERS * CLUSTER).to_string();
    let backing = dir.path("base.raw");
    create("raw", &backing, &size, &[]);
    let fill = format!("write -P 0x55 0 {size}");
    qemu_io("raw", s(&backing), &[&fill]);
    let img = dir.path("top.qcow2");
    create("qcow2", &img, &size, &["-b", "base.raw", "-F", "raw"]);
    let shadow = dir.path("shadow.raw");
    raw_shadow(&img, &shadow);
    let srv = serve(
        dir,
        "cc",
        &[
            "-f",
            "qcow2",
            "-t",
            "-e",
            "0",
            "--iothreads",
            "2",
            "--discard",
            "unmap",
        ],
        &img,
    );
    let u = uri(&srv.socket);
    thread::scope(|sc| {
        for i in 0..CLIENTS {
            let u = u.clone();
            sc.spawn(move || {
                let cmds = commands(i);
                let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
                qemu_io("raw", &u, &refs);
            });
        }
    });
    let (status, err) = srv.terminate();
    assert!(status.success(), "server exit {status}: {err}");
    // The shadow: the same commands, one client after the other (their
    // ranges are disjoint, so the order between clients does not matter).
    for i in 0..CLIENTS {
        let cmds = commands(i);
        let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qemu_io("raw", s(&shadow), &refs);
    }
    check_clean(&img);
    compare(&img, &shadow);
    assert_backing_untouched(&backing);
}

/// The backing file still reads as its fill pattern everywhere.
fn assert_backing_untouched(backing: &Path) {
    let all = format!("read -P 0x55 0 {}", CLUSTERS * CLUSTER);
    qemu_io("raw", s(backing), &[&all]);
}

#[test]
fn interleaved_clients_on_two_iothreads_through_the_pool() {
    let dir = TempDir::new("q2-interleave");
    clients_on_an_overlay(&dir);
}

#[test]
fn interleaved_clients_on_two_iothreads_in_place() {
    let dir = shm_dir("q2-interleave-shm");
    clients_on_an_overlay(&dir);
}
