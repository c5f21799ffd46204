//! The drop-in command line: `--version` / `--help`, bad invocations
//! (non-zero exit, message starting with the program name), `--fork` with
//! `--pid-file`, options after the image, `-e/--shared` limits, exit after
//! the last client without `-t`, and the corio-only options.

mod helpers;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use clients::image::sparse_image;
use clients::raw::{Raw, NBDMAGIC};
use clients::{
    arg, corio_only, is_corio, is_listening, output, run_ok, server_cmd, server_name, signal_pid,
    tempdir, tool, Addr, Listen, Server,
};
use helpers::clients;

const MIB: u64 = 1 << 20;

fn nbdinfo_size(uri: &str) -> u64 {
    let out = run_ok(tool("nbdinfo").arg("--size").arg(uri));
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("nbdinfo --size printed {out:?}: {e}"))
}

#[test]
fn version_and_help_exit_zero() {
    let version = output(server_cmd().arg("--version"));
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(version.status.success(), "--version: {}", version.status);
    assert!(
        text.starts_with(&format!("{} ", server_name())),
        "--version starts with the program name: {text}"
    );
    assert!(
        text.split_whitespace()
            .nth(1)
            .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit())),
        "a version number: {text}"
    );
    let help = output(server_cmd().arg("--help"));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success(), "--help: {}", help.status);
    assert!(
        text.starts_with(&format!("Usage: {} [OPTIONS] FILE", server_name())),
        "{text}"
    );
    for opt in [
        "--socket",
        "--port",
        "--bind",
        "--export-name",
        "--read-only",
        "--shared",
        "--persistent",
        "--fork",
        "--pid-file",
    ] {
        assert!(text.contains(opt), "--help mentions {opt}");
    }
}

/// Each bad invocation exits non-zero, at once, with a message that starts
/// with the program name and names what was wrong.
#[test]
fn bad_invocations_exit_non_zero_naming_the_problem() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, MIB, &[], 1);
    let sock = dir.path().join("s.sock");
    let missing = dir.path().join("no-such.img");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-k", arg(&sock), arg(&missing)], "no-such.img"),
        (vec!["-k", arg(&sock), "-f", "qcow3", arg(&img)], "qcow3"),
        (
            vec!["-b", "999.1.1.1", "-p", "10809", "-f", "raw", arg(&img)],
            "999.1.1.1",
        ),
        (vec!["-k", arg(&sock), "-e", "many", arg(&img)], "many"),
        (
            vec!["-k", arg(&sock), "--no-such-option", arg(&img)],
            "no-such-option",
        ),
        // Two images (qemu-nbd: "Invalid number of arguments"). No image
        // at all is an error for qemu-nbd but corio-nbd's embedded default.
        (vec!["-k", arg(&sock), arg(&img), arg(&img)], "argument"),
    ];
    let prefix = format!("{}: ", server_name());
    for (args, names) in cases {
        let out = output(server_cmd().args(&args));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail; stderr: {err}");
        assert!(
            err.starts_with(&prefix),
            "{args:?}: message starts with {prefix:?}: {err}"
        );
        assert!(
            err.contains(names),
            "{args:?}: message names {names:?}: {err}"
        );
        // qemu-nbd binds its socket before opening the image and leaves
        // it behind when the image fails; corio-nbd must not.
        if is_corio() {
            assert!(!sock.exists(), "{args:?} left a socket behind");
        } else if sock.exists() {
            eprintln!(
                "{args:?}: {} left its socket file behind (not checked against it)",
                server_name()
            );
        }
        let _ = std::fs::remove_file(&sock);
    }
}

/// Kills the daemon a test started with `--fork` if the test fails.
struct PidGuard(Option<u32>);

impl Drop for PidGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// `--fork` returns once the socket accepts; the pid file names the
/// daemon, which serves and goes away on SIGTERM, removing its socket.
#[test]
fn fork_returns_when_listening_with_pid_file() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, 2 * MIB, &[], 1);
    let sock = dir.path().join("nbd.sock");
    let pidfile = dir.path().join("server.pid");
    let mut guard = PidGuard(None);
    let out = output(server_cmd().args([
        "--fork",
        "--pid-file",
        arg(&pidfile),
        "-t",
        "-k",
        arg(&sock),
        "-f",
        "raw",
        arg(&img),
    ]));
    let text = std::fs::read_to_string(&pidfile).unwrap_or_default();
    guard.0 = text.trim().parse().ok();
    assert!(
        out.status.success(),
        "--fork: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Listening already when the command returns: no waiting here.
    assert!(
        is_listening(&Addr::Unix(sock.clone())),
        "socket not listening when --fork returned"
    );
    let pid = guard.0.unwrap_or_else(|| panic!("pid file holds {text:?}"));
    assert!(
        pid_alive(pid),
        "the pid in the pid file ({pid}) is not running"
    );
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    assert_eq!(nbdinfo_size(&uri), 2 * MIB);
    signal_pid(pid, "TERM");
    let end = std::time::Instant::now() + clients::SERVER_DEADLINE;
    while pid_alive(pid) {
        assert!(
            std::time::Instant::now() < end,
            "daemon {pid} still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    guard.0 = None;
    assert!(!sock.exists(), "the daemon left its socket behind");
}

/// getopt order: options may follow the image file.
#[test]
fn options_after_the_image() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, 3 * MIB, &[], 1);
    let srv = Server::start(
        dir.path(),
        Listen::Unix,
        &[arg(&img), "-f", "raw", "-x", "late", "-r", "-t"],
    );
    let v = run_ok(tool("nbdinfo").arg("--json").arg(srv.uri("late")));
    assert!(
        v.contains("\"is_read_only\": true"),
        "-r after the image applies: {v}"
    );
    assert_eq!(
        nbdinfo_size(&srv.uri("late")),
        3 * MIB,
        "-t after the image applies"
    );
}

/// Without `-t` the server exits (status 0) when its last client leaves,
/// and removes its unix socket.
#[test]
fn exits_after_last_client_without_persistent() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, MIB, &[], 1);
    let mut srv = Server::start(dir.path(), Listen::Unix, &["-f", "raw", arg(&img)]);
    assert_eq!(nbdinfo_size(&srv.uri("")), MIB);
    let status = srv.wait_exit();
    assert_eq!(status.code(), Some(0), "stderr: {}", srv.stderr());
    let Addr::Unix(sock) = &srv.addr else {
        unreachable!()
    };
    assert!(
        !sock.exists(),
        "socket file left behind after the last client"
    );
}

/// With `-t` the server stays for the next client, over TCP too.
#[test]
fn persistent_serves_client_after_client() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, MIB, &[], 1);
    let mut srv = Server::start(dir.path(), Listen::Tcp, &["-f", "raw", "-t", arg(&img)]);
    for _ in 0..3 {
        assert_eq!(nbdinfo_size(&srv.uri("")), MIB);
    }
    assert!(
        srv.try_wait().is_none(),
        "a -t server exited: {}",
        srv.stderr()
    );
}

/// `-e 1`: while one client is connected, a second is not served (it waits
/// in the listen backlog without a greeting) until the first leaves.
#[test]
fn shared_one_serves_the_second_client_after_the_first_leaves() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, MIB, &[], 1);
    let srv = Server::start(
        dir.path(),
        Listen::Unix,
        &["-f", "raw", "-t", "-e", "1", arg(&img)],
    );
    let Addr::Unix(sock) = srv.addr.clone() else {
        unreachable!()
    };
    let mut first = Raw::connect(&sock);
    first.greeting();
    let mut second = UnixStream::connect(&sock).expect("connect (the backlog takes it)");
    second
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut buf = [0u8; 8];
    let early = std::io::Read::read(&mut second, &mut buf);
    assert!(
        matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "second client served while the first is connected: {early:?}"
    );
    drop(first);
    second
        .set_read_timeout(Some(clients::raw::READ_TIMEOUT))
        .expect("timeout");
    std::io::Read::read_exact(&mut second, &mut buf).expect("greeting once the first left");
    assert_eq!(u64::from_be_bytes(buf), NBDMAGIC);
}

/// `-e 2`: two clients at once are served, both can work.
#[test]
fn shared_two_serves_two_clients_at_once() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, MIB, &[], 1);
    let srv = Server::start(
        dir.path(),
        Listen::Unix,
        &["-f", "raw", "-t", "-e", "2", arg(&img)],
    );
    let Addr::Unix(sock) = srv.addr.clone() else {
        unreachable!()
    };
    let mut first = Raw::connect(&sock);
    first.greeting();
    // The second gets its greeting while the first is still connected.
    let mut second = Raw::connect(&sock);
    second.greeting();
}

/// corio-only: with no FILE, corio-nbd serves a sparse in-memory disk,
/// 1 GiB by default or `--size`; qemu-nbd requires a FILE.
#[test]
fn corio_in_memory_default_disk() {
    if !corio_only("the in-memory default disk and --size are corio-nbd's") {
        return;
    }
    let dir = tempdir();
    let srv = Server::start(dir.path(), Listen::Unix, &["-t"]);
    assert_eq!(nbdinfo_size(&srv.uri("")), 1 << 30);
    let dir2 = tempdir();
    let small = Server::start(dir2.path(), Listen::Unix, &["-t", "--size", "64M"]);
    assert_eq!(nbdinfo_size(&small.uri("")), 64 * MIB);
    let map = run_ok(tool("nbdinfo").arg("--map").arg(small.uri("")));
    assert!(
        map.contains("hole,zero"),
        "a fresh in-memory disk is sparse: {map}"
    );
    // It prints the URI clients use.
    assert!(
        srv.stderr().contains("nbd+unix://"),
        "start-up output: {}",
        srv.stderr()
    );
}

/// corio-only: `--iothreads 2` serves several clients at once correctly.
#[test]
fn corio_iothreads_serve_clients() {
    if !corio_only("--iothreads is corio-nbd's own option") {
        return;
    }
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    let out = dir.path().join("out.img");
    clients::image::data_image(&img, 16 * MIB, 31);
    let srv = Server::start(
        dir.path(),
        Listen::Unix,
        &["-f", "raw", "-t", "-e", "0", "--iothreads", "2", arg(&img)],
    );
    run_ok(
        tool("nbdcopy")
            .arg("--connections=4")
            .arg(srv.uri(""))
            .arg(&out),
    );
    clients::image::assert_same(&img, &out);
}

/// `--cache`, `--aio`, `--discard`, `--detect-zeroes`, `-n`: each accepted
/// mode serves reads and writes (O_DIRECT modes are left out: a tmpfs
/// temp dir refuses them); bad values and the one forbidden combination
/// exit non-zero naming the value.
#[test]
fn cache_aio_discard_detect_zeroes_options() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, MIB, &[], 1);
    let modes: [&[&str]; 9] = [
        &["--cache=writeback"],
        &["--cache=writethrough"],
        &["--cache=unsafe"],
        &["--aio=threads"],
        &["--aio=io_uring"],
        &[
            "--aio=io_uring",
            "--discard=unmap",
            "--detect-zeroes=unmap",
            "--cache=writethrough",
        ],
        &["--discard=ignore", "--detect-zeroes=on"],
        &["--discard=unmap", "--detect-zeroes=unmap"],
        &["--detect-zeroes=off"],
    ];
    for (i, mode) in modes.iter().enumerate() {
        let mut args = vec!["-f", "raw"];
        args.extend_from_slice(mode);
        args.push(arg(&img));
        let sockdir = tempdir(); // a fresh socket path per server
        let srv = Server::start(sockdir.path(), Listen::Unix, &args);
        let byte = format!("{:#x}", 0x20 + i);
        let out = run_ok(tool("qemu-io").args(["-f", "raw"]).arg(srv.uri("")).args([
            "-c",
            &format!("write -P {byte} 0 64k"),
            "-c",
            &format!("read -P {byte} 0 64k"),
            "-c",
            "write -z 64k 64k",
            "-c",
            "read -P 0 64k 64k",
        ]));
        assert!(!out.contains("failed"), "{mode:?}: {out}");
        clients::image::assert_filled(&img, 0, 65536, 0x20 + i as u8, &format!("{mode:?}"));
    }
    let bad: [(&[&str], &str); 5] = [
        (&["--cache=bogus"], "bogus"),
        (&["--aio=bogus"], "bogus"),
        (&["--aio=native"], "native"),
        (&["--discard=bogus"], "bogus"),
        (&["--detect-zeroes=unmap"], "unmap"),
    ];
    let sock = dir.path().join("bad.sock");
    for (mode, names) in bad {
        let out = output(
            server_cmd()
                .args(["-k", arg(&sock), "-f", "raw"])
                .args(mode)
                .arg(&img),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{mode:?} must fail");
        assert!(
            err.starts_with(&format!("{}: ", server_name())),
            "{mode:?}: {err}"
        );
        assert!(err.contains(names), "{mode:?}: {err}");
    }
}
