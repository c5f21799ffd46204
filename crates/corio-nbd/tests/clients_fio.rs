//! fio's nbd engine (libnbd) against the server: random writes at queue
//! depth 16 with crc32c verification, then a verify-only read pass on a
//! new connection.

mod helpers;

use clients::image::sparse_image;
use clients::{arg, run_ok, tempdir, tool, Listen, Server};
use helpers::clients;
use serde_json::Value;

/// Runs fio with JSON output; its engine prints a line before the JSON.
/// It runs in `dir`, where fio leaves its verify state files.
fn fio_json(dir: &std::path::Path, cmd: &mut std::process::Command) -> Value {
    let out = run_ok(cmd.current_dir(dir).arg("--output-format=json"));
    let start = out
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in fio output: {out}"));
    serde_json::from_str(&out[start..]).unwrap_or_else(|e| panic!("fio JSON ({e}): {out}"))
}

#[test]
fn fio_nbd_engine_verify_crc32c() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, 16 << 20, &[], 0);
    let srv = Server::start(
        dir.path(),
        Listen::Unix,
        &["-f", "raw", "-t", "-e", "0", arg(&img)],
    );
    let uri = srv.uri("");
    let common = [
        "--name=crc",
        "--ioengine=nbd",
        "--size=16m",
        "--bs=4k",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--randseed=7",
    ];
    // fio exits non-zero on a verify failure (verify_fatal); the JSON
    // says how much was written and read back.
    let write = fio_json(
        dir.path(),
        tool("fio").args(common).arg(format!("--uri={uri}")).args([
            "--rw=randwrite",
            "--iodepth=16",
            "--do_verify=1",
        ]),
    );
    assert_eq!(write["jobs"][0]["error"], 0, "{write}");
    assert_eq!(write["jobs"][0]["write"]["io_bytes"], 16 << 20, "{write}");
    assert_eq!(
        write["jobs"][0]["read"]["io_bytes"],
        16 << 20,
        "verify pass: {write}"
    );
    // A second fio, on a new connection, checks what the first wrote.
    let read = fio_json(
        dir.path(),
        tool("fio").args(common).arg(format!("--uri={uri}")).args([
            "--rw=randread",
            "--iodepth=8",
            "--verify_only=1",
        ]),
    );
    assert_eq!(read["jobs"][0]["error"], 0, "{read}");
    // The image is no longer all zeroes.
    let written = std::fs::read(&img).expect("read image");
    assert!(
        written.iter().any(|&b| b != 0),
        "fio wrote nothing to the image"
    );
}
