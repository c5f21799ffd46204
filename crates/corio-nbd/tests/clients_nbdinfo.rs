//! nbdinfo against the server: `--json` export details, `--list` with a
//! description, `--map` of base:allocation and qemu:allocation-depth,
//! export names (`-x`, `-x ''`, a wrong name refused), TCP and unix.

mod helpers;

use clients::image::sparse_image;
use clients::{arg, output, run_ok, tempdir, tool, Listen, Server};
use helpers::clients;
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn nbdinfo_json(args: &[&str], uri: &str) -> Value {
    let out = run_ok(tool("nbdinfo").arg("--json").args(args).arg(uri));
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("nbdinfo --json output is not JSON ({e}):\n{out}"))
}

fn the_export(v: &Value) -> &Value {
    let exports = v["exports"].as_array().expect("\"exports\" array");
    assert_eq!(exports.len(), 1, "one export in {v}");
    &exports[0]
}

#[test]
fn nbdinfo_json_writable_export() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, 4 * MIB, &[(0, 4096)], 1);
    let srv = Server::start(
        dir.path(),
        Listen::Unix,
        &["-f", "raw", "-x", "foo", "-D", "a test disk", arg(&img)],
    );
    let v = nbdinfo_json(&[], &srv.uri("foo"));
    assert_eq!(v["protocol"], "newstyle-fixed", "{v}");
    assert_eq!(v["structured"], true, "{v}");
    let e = the_export(&v);
    assert_eq!(e["export-name"], "foo", "{e}");
    assert_eq!(e["description"], "a test disk", "{e}");
    assert_eq!(e["export-size"], 4 * MIB, "{e}");
    assert_eq!(e["is_read_only"], false, "{e}");
    for flag in [
        "can_cache",
        "can_df",
        "can_fast_zero",
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
    ] {
        assert_eq!(e[flag], true, "{flag} in {e}");
    }
    // qemu-nbd advertises multi-conn only for read-only exports, or with
    // --shared other than 1 and a writeback-safe cache mode; default: off.
    assert_eq!(e["can_multi_conn"], false, "{e}");
    // With -f raw qemu-nbd advertises byte granularity (minimum 1).
    assert_eq!(e["block_size_minimum"], 1, "{e}");
    assert_eq!(e["block_size_preferred"], 4096, "{e}");
    assert_eq!(e["block_size_maximum"], 32 * MIB, "{e}");
    let contexts = e["contexts"].as_array().expect("contexts");
    assert!(contexts.iter().any(|c| c == "base:allocation"), "{e}");
}

#[test]
fn nbdinfo_json_read_only_export() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, 2 * MIB, &[], 1);
    let srv = Server::start(dir.path(), Listen::Unix, &["-f", "raw", "-r", arg(&img)]);
    let e = the_export(&nbdinfo_json(&[], &srv.uri(""))).clone();
    assert_eq!(e["export-name"], "", "{e}");
    assert_eq!(e["is_read_only"], true, "{e}");
    // qemu-nbd ties multi-conn to --shared, not to read-only: with the
    // default -e 1 there is no second connection to be consistent with.
    assert_eq!(e["can_multi_conn"], false, "{e}");
    for flag in ["can_trim", "can_zero", "can_fast_zero"] {
        assert_eq!(e[flag], false, "{flag} on a read-only export: {e}");
    }
    assert_eq!(e["export-size"], 2 * MIB, "{e}");
}

/// qemu-nbd advertises CAN_MULTI_CONN whenever `-e` allows more than one
/// client (0 = unlimited, or N > 1), writable or not.
#[test]
fn nbdinfo_multi_conn_follows_shared() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, MIB, &[], 1);
    let cases: [&[&str]; 3] = [&["-e", "0"], &["-e", "2"], &["-r", "-e", "4"]];
    for shared in cases {
        let mut args = vec!["-f", "raw"];
        args.extend_from_slice(shared);
        args.push(arg(&img));
        let sockdir = tempdir(); // a fresh socket path per server
        let srv = Server::start(sockdir.path(), Listen::Unix, &args);
        let e = the_export(&nbdinfo_json(&[], &srv.uri(""))).clone();
        assert_eq!(e["can_multi_conn"], true, "{args:?}: {e}");
    }
}

/// Without `-f`, qemu-nbd probes, finds raw, and restricts writes to
/// block 0; it then advertises a 512-byte minimum block size.
#[test]
fn nbdinfo_probed_raw_block_sizes() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, MIB, &[], 1);
    let srv = Server::start(dir.path(), Listen::Unix, &[arg(&img)]);
    let e = the_export(&nbdinfo_json(&[], &srv.uri(""))).clone();
    assert_eq!(e["block_size_minimum"], 512, "{e}");
    assert_eq!(e["block_size_preferred"], 4096, "{e}");
    assert_eq!(e["block_size_maximum"], 32 * MIB, "{e}");
}

#[test]
fn nbdinfo_list_shows_name_and_description() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, MIB, &[], 1);
    let srv = Server::start(
        dir.path(),
        Listen::Unix,
        &[
            "-f",
            "raw",
            "-t",
            "-x",
            "disk0",
            "-D",
            "first disk",
            arg(&img),
        ],
    );
    // qemu-nbd serves one export, so the list has one entry.
    let v = nbdinfo_json(&["--list"], &srv.uri(""));
    let e = the_export(&v);
    assert_eq!(e["export-name"], "disk0", "{v}");
    assert_eq!(e["description"], "first disk", "{v}");
    assert_eq!(e["export-size"], MIB, "{v}");
    // The plain-text listing names both as well.
    let text = run_ok(tool("nbdinfo").arg("--list").arg(srv.uri("")));
    assert!(text.contains("export=\"disk0\""), "{text}");
    assert!(text.contains("description: first disk"), "{text}");
}

/// Parses `nbdinfo --map --json` into (offset, length, type) triples.
fn map(args: &[&str], uri: &str) -> Vec<(u64, u64, u64)> {
    let out = run_ok(tool("nbdinfo").args(args).arg("--json").arg(uri));
    let v: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("map is not JSON ({e}): {out}"));
    v.as_array()
        .expect("map is an array")
        .iter()
        .map(|x| {
            let n = |k: &str| x[k].as_u64().unwrap_or_else(|| panic!("{k} in {x}"));
            (n("offset"), n("length"), n("type"))
        })
        .collect()
}

#[test]
fn nbdinfo_map_base_allocation() {
    let dir = tempdir();
    let img = dir.path().join("sparse.img");
    sparse_image(&img, 8 * MIB, &[(MIB, MIB), (4 * MIB, 64 << 10)], 7);
    let srv = Server::start(dir.path(), Listen::Unix, &["-f", "raw", "-r", arg(&img)]);
    // type 3 = hole|zero, 0 = allocated data.
    let want = vec![
        (0, MIB, 3),
        (MIB, MIB, 0),
        (2 * MIB, 2 * MIB, 3),
        (4 * MIB, 64 << 10, 0),
        (4 * MIB + (64 << 10), 4 * MIB - (64 << 10), 3),
    ];
    assert_eq!(map(&["--map"], &srv.uri("")), want);
    // The same map over TCP.
    let dir2 = tempdir();
    let tcp = Server::start(dir2.path(), Listen::Tcp, &["-f", "raw", "-r", arg(&img)]);
    assert_eq!(map(&["--map=base:allocation"], &tcp.uri("")), want);
}

#[test]
fn nbdinfo_map_allocation_depth() {
    let dir = tempdir();
    let img = dir.path().join("sparse.img");
    sparse_image(&img, 4 * MIB, &[(MIB, MIB)], 3);
    // qemu-nbd offers qemu:allocation-depth only with -A
    // (--allocation-depth); a raw file has no backing chain, so the whole
    // image is depth 1 ("local"), holes included.
    let srv = Server::start(
        dir.path(),
        Listen::Unix,
        &["-f", "raw", "-A", "-t", "-r", arg(&img)],
    );
    let v = nbdinfo_json(&[], &srv.uri(""));
    let contexts = the_export(&v)["contexts"]
        .as_array()
        .expect("contexts")
        .clone();
    assert!(contexts.iter().any(|c| c == "qemu:allocation-depth"), "{v}");
    assert_eq!(
        map(&["--map=qemu:allocation-depth"], &srv.uri("")),
        vec![(0, 4 * MIB, 1)]
    );
}

#[test]
fn export_name_wrong_name_refused() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, MIB, &[], 1);
    let srv = Server::start(
        dir.path(),
        Listen::Unix,
        &["-f", "raw", "-t", "-x", "right", arg(&img)],
    );
    let out = output(tool("nbdinfo").arg("--size").arg(srv.uri("wrong")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong export name must be refused");
    assert!(
        err.contains("no export named 'wrong'"),
        "libnbd reports NBD_REP_ERR_UNKNOWN: {err}"
    );
    // The empty name is not a wildcard when -x names the export.
    let out = output(tool("nbdinfo").arg("--size").arg(srv.uri("")));
    assert!(
        !out.status.success(),
        "export \"\" must be refused when -x right"
    );
    assert_eq!(
        run_ok(tool("nbdinfo").arg("--size").arg(srv.uri("right"))).trim(),
        MIB.to_string()
    );
}

#[test]
fn export_name_empty_over_tcp() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, 3 * MIB, &[], 1);
    let srv = Server::start(
        dir.path(),
        Listen::Tcp,
        &["-f", "raw", "-t", "-x", "", arg(&img)],
    );
    assert_eq!(
        run_ok(tool("nbdinfo").arg("--size").arg(srv.uri(""))).trim(),
        (3 * MIB).to_string()
    );
    let out = output(tool("nbdinfo").arg("--size").arg(srv.uri("other")));
    assert!(
        !out.status.success(),
        "export \"other\" must be refused with -x ''"
    );
}
