//! qcow2 test helpers: qemu-img and qemu-io runs that must succeed, a
//! corio-nbd serving an image until its client leaves, and the checks
//! every write test ends with (`qemu-img check`, `qemu-img compare`
//! against a raw shadow that got the same writes).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use crate::helpers::process::{corio_nbd, run, Run, ServerProc, TempDir};

/// A temporary directory on tmpfs (/dev/shm), where the qcow2 backend
/// serves requests in place rather than in the thread pool.
pub fn shm_dir(tag: &str) -> TempDir {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let p = PathBuf::from("/dev/shm").join(format!(
        "corio-nbd-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&p).unwrap();
    TempDir(p)
}

/// Whether corio-nbd's qcow2 backend serves `image` in place (tmpfs) or
/// through the thread pool.
pub fn served_in_place(image: &Path) -> bool {
    use corio_nbd::storage::qcow2::{Qcow2Options, Qcow2Storage};
    let opts = Qcow2Options {
        read_only: true,
        ..Qcow2Options::default()
    };
    Qcow2Storage::open(image, opts).unwrap().in_place()
}

/// Runs a tool that must succeed; returns its stdout.
pub fn ok(program: &str, args: &[&str]) -> String {
    let r = run(program, args);
    assert!(
        r.ok,
        "`{program} {}` failed:\n{}\n{}",
        args.join(" "),
        r.stdout,
        r.stderr
    );
    r.stdout
}

/// A path as a `&str` (test paths are UTF-8).
/// `qemu-img create -q -f FMT [OPTS...] IMAGE SIZE`, failing the test if it
/// fails.
pub fn create(fmt: &str, image: &Path, size: &str, opts: &[&str]) {
    let mut args = vec!["create", "-q", "-f", fmt];
    args.extend_from_slice(opts);
    args.extend_from_slice(&[s(image), size]);
    ok("qemu-img", &args);
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 test path")
}

/// The NBD URI of a server on `socket`.
pub fn uri(socket: &Path) -> String {
    format!("nbd+unix:///?socket={}", socket.display())
}

/// Starts corio-nbd on `dir/name.sock` with `args` then the image.
pub fn serve(dir: &TempDir, name: &str, args: &[&str], image: &Path) -> ServerProc {
    let sock = dir.path(&format!("{name}.sock"));
    let mut a: Vec<&str> = vec!["-k", s(&sock)];
    a.extend_from_slice(args);
    a.push(s(image));
    ServerProc::start(corio_nbd(), &a, &sock)
}

/// Starts qemu-nbd on `dir/name.sock` with `args` then the image.
pub fn serve_qemu(dir: &TempDir, name: &str, args: &[&str], image: &Path) -> ServerProc {
    let sock = dir.path(&format!("{name}.sock"));
    let mut a: Vec<&str> = vec!["-k", s(&sock)];
    a.extend_from_slice(args);
    a.push(s(image));
    ServerProc::start("qemu-nbd", &a, &sock)
}

/// qemu-io commands that exercise every write path: whole and partial
/// clusters, unaligned bytes, zero clusters (with and without unmap),
/// discards, a large write, flushes.
pub const WRITES: &[&str] = &[
    "write -P 0xa1 0 64k",
    "write -P 0xa2 100000 3000",
    "write -P 0xa3 196608 1",
    "write -z 1M 256k",
    "write -z -u 2M 128k",
    "write -z 2200000 5000",
    "discard 3M 192k",
    "discard 3300000 70000",
    "write -P 0xa4 5M 1M",
    "write -P 0xa5 7340000 100000",
    "flush",
];

/// Applies `cmds` with qemu-io to `target` (`-f fmt`), one process.
pub fn qemu_io(fmt: &str, target: &str, cmds: &[&str]) -> Run {
    let mut a = vec!["-f", fmt];
    for c in cmds {
        a.push("-c");
        a.push(c);
    }
    a.push(target);
    let r = run("qemu-io", &a);
    assert!(
        r.ok && !r.stdout.contains("failed") && !r.stderr.contains("failed"),
        "qemu-io {target}: {}\n{}",
        r.stdout,
        r.stderr
    );
    r
}

/// Copies what `image` (qcow2) reads as into a raw file.
pub fn raw_shadow(image: &Path, shadow: &Path) {
    ok(
        "qemu-img",
        &["convert", "-f", "qcow2", "-O", "raw", s(image), s(shadow)],
    );
}

/// `qemu-img check` finds nothing wrong (no leaks, no corruption).
pub fn check_clean(image: &Path) {
    let r = run("qemu-img", &["check", "-f", "qcow2", s(image)]);
    assert!(
        r.ok && r.stdout.contains("No errors were found"),
        "qemu-img check {}:\n{}\n{}",
        image.display(),
        r.stdout,
        r.stderr
    );
    assert!(!r.stdout.contains("leaked"), "leaks: {}", r.stdout);
}

/// `qemu-img compare` says `image` (qcow2) and `shadow` (raw) hold the
/// same bytes.
pub fn compare(image: &Path, shadow: &Path) {
    let r = run(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", s(image), s(shadow)],
    );
    assert!(
        r.ok && r.stdout.contains("Images are identical"),
        "qemu-img compare {} {}:\n{}\n{}",
        image.display(),
        shadow.display(),
        r.stdout,
        r.stderr
    );
}

/// Serves `image` with corio-nbd, applies `cmds` (say [`WRITES`]) over
/// NBD and to a raw shadow of it, stops the server, then checks the image
/// and compares it with the shadow.
pub fn write_and_verify(dir: &TempDir, image: &Path, server_args: &[&str], cmds: &[&str]) {
    let shadow: PathBuf = dir.path("shadow.raw");
    raw_shadow(image, &shadow);
    // Persistent: the readiness probe is a client too. SIGTERM then
    // stops it, and the image must be flushed by the shutdown.
    let mut args = vec!["-t", "--discard", "unmap"];
    args.extend_from_slice(server_args);
    let srv = serve(dir, "w", &args, image);
    qemu_io("raw", &uri(&srv.socket), cmds);
    let (status, err) = srv.terminate();
    assert!(status.success(), "server exit {status}: {err}");
    qemu_io("raw", s(&shadow), cmds);
    check_clean(image);
    compare(image, &shadow);
}
