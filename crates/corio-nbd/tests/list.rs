//! `-L/--list`: `corio-nbd -L` and `qemu-nbd -L`, each against a corio-nbd
//! and a qemu-nbd serving the same image with the same flags, print the
//! same bytes. A missing qemu-nbd fails the test.

mod helpers;

use helpers::process::{corio_nbd, run, ServerProc, TempDir};

/// Starts both servers on `img` with `args` (and `-k`), runs both
/// listers against each with `client_args`, and checks the four listings
/// are one. Returns it.
fn same_listing(dir: &TempDir, args: &[&str], client_args: &[&str]) -> String {
    let img = dir.path("disk.img");
    if !img.exists() {
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(64 << 20).unwrap();
    }
    let mut outputs = Vec::new();
    for server in ["qemu-nbd", corio_nbd()] {
        let sock = dir.path(if server == "qemu-nbd" {
            "q.sock"
        } else {
            "c.sock"
        });
        let _ = std::fs::remove_file(&sock);
        let mut full = vec!["-k", sock.to_str().unwrap(), "-t"];
        full.extend_from_slice(args);
        full.push(img.to_str().unwrap());
        let _srv = ServerProc::start(server, &full, &sock);
        for lister in ["qemu-nbd", corio_nbd()] {
            let mut largs = vec!["-L", "-k", sock.to_str().unwrap()];
            largs.extend_from_slice(client_args);
            let r = run(lister, &largs);
            assert!(r.ok, "{lister} -L against {server} failed: {}", r.stderr);
            outputs.push((format!("{lister} -L against {server}"), r.stdout));
        }
    }
    let (first, want) = &outputs[0];
    for (what, got) in &outputs[1..] {
        assert_eq!(got, want, "{what} differs from {first}");
    }
    want.clone()
}

#[test]
fn named_export_with_description() {
    let dir = TempDir::new("list");
    let out = same_listing(
        &dir,
        &["-x", "foo", "-D", "a description", "-f", "raw"],
        &[],
    );
    assert!(
        out.starts_with("exports available: 1\n export: 'foo'\n"),
        "{out}"
    );
    assert!(out.contains("  description: a description\n"), "{out}");
    assert!(out.contains("  size:  67108864\n"), "{out}");
    assert!(out.contains("  min block: 1\n"), "{out}");
    assert!(out.contains("   base:allocation\n"), "{out}");
}

#[test]
fn probed_read_only_with_allocation_depth() {
    let dir = TempDir::new("list");
    // No -f: a probed raw image (512-byte minimum block); -A adds a context.
    let out = same_listing(&dir, &["-r", "-A"], &[]);
    assert!(out.contains(" export: ''\n"), "{out}");
    assert!(out.contains("( readonly "), "{out}");
    assert!(out.contains("  min block: 512\n"), "{out}");
    assert!(
        out.contains(
            "  available meta contexts: 2\n   base:allocation\n   qemu:allocation-depth\n"
        ),
        "{out}"
    );
}

#[test]
fn over_tls_psk() {
    let dir = TempDir::new("list-psk");
    let keys = dir.path("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(
        keys.join("keys.psk"),
        "alice:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    let server = format!(
        "tls-creds-psk,id=tls0,dir={},endpoint=server",
        keys.display()
    );
    let client = format!(
        "tls-creds-psk,id=tls0,dir={},endpoint=client,username=alice",
        keys.display()
    );
    // corio-nbd's OpenSSL client against qemu-nbd's GnuTLS server too.
    let out = same_listing(
        &dir,
        &[
            "-x",
            "foo",
            "-f",
            "raw",
            "--object",
            &server,
            "--tls-creds",
            "tls0",
        ],
        &["--object", &client, "--tls-creds", "tls0"],
    );
    assert!(out.contains(" export: 'foo'\n"), "{out}");

    // Without credentials the listing fails, and says why.
    let sock = dir.path("c.sock");
    let args = [
        "-k",
        sock.to_str().unwrap(),
        "-t",
        "--object",
        &server,
        "--tls-creds",
        "tls0",
    ];
    let _srv = ServerProc::start(corio_nbd(), &args, &sock);
    let r = run(corio_nbd(), &["-L", "-k", sock.to_str().unwrap()]);
    assert!(!r.ok, "listed without TLS: {}", r.stdout);
    assert!(r.stderr.starts_with("corio-nbd: "), "{}", r.stderr);
    assert!(r.stderr.contains("TLS_REQD"), "{}", r.stderr);
}

#[test]
fn list_mode_refuses_an_image() {
    let r = run(corio_nbd(), &["-L", "-k", "/nonexistent.sock", "disk.img"]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("incompatible with a file name"),
        "{}",
        r.stderr
    );
    let r = run(corio_nbd(), &["-L", "-k", "/nonexistent/nbd.sock"]);
    assert!(!r.ok);
    assert!(
        r.stderr.starts_with("corio-nbd: Failed to connect to"),
        "{}",
        r.stderr
    );
}
