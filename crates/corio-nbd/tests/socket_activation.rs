//! systemd socket activation (`LISTEN_PID`, `LISTEN_FDS`, the sockets
//! from fd 3 on), as qemu-nbd takes it: libnbd's own activation
//! (`nbdinfo -- [ CMD ]`, nbdsh's `connect_systemd_socket_activation`)
//! and a listening socket made by hand and passed as fd 3 (a python3
//! wrapper that binds, sets the variables for its own pid and execs the
//! server, so the pid stays the same). A missing tool fails the test.

mod helpers;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use helpers::process::{corio_nbd, run, ServerProc, TempDir, DEADLINE};

const SIZE: u64 = 4 << 20;

/// Binds `argv[1]` (a Unix socket path, or `tcp:PORTFILE`: 127.0.0.1 on
/// a free port, written to PORTFILE), puts it on fd 3 and execs
/// `argv[2:]` with `LISTEN_FDS=1` and `LISTEN_PID` = this pid.
const WRAPPER: &str = r#"
import os, socket, sys
where = sys.argv[1]
if where.startswith("tcp:"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    with open(where[4:] + ".tmp", "w") as f:
        f.write(str(s.getsockname()[1]))
    os.rename(where[4:] + ".tmp", where[4:])
else:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(where)
    s.listen(16)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
env = dict(os.environ, LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execve(sys.argv[2], sys.argv[2:], env)
"#;

fn image(dir: &TempDir) -> String {
    let img = dir.path("disk.img");
    let data: Vec<u8> = (0..SIZE as usize).map(|i| (i % 251) as u8).collect();
    std::fs::write(&img, data).unwrap();
    img.to_str().unwrap().to_owned()
}

fn wrapper_args<'a>(where_: &'a str, server: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["-c", WRAPPER, where_, server];
    v.extend_from_slice(args);
    v
}

#[test]
fn nbdinfo_runs_the_server_with_socket_activation() {
    let dir = TempDir::new("activation");
    let img = image(&dir);
    // --size prints the size and nothing else: the server shares nbdinfo's
    // stdout, so a line of ours there would break scripts (qemu-nbd prints
    // nothing).
    let r = run(
        "nbdinfo",
        &["--size", "--", "[", corio_nbd(), "-f", "raw", &img, "]"],
    );
    assert!(r.ok, "nbdinfo -- [ corio-nbd ]: {}", r.stderr);
    assert_eq!(r.stdout, format!("{SIZE}\n"), "stdout is not just the size");
    let q = run(
        "nbdinfo",
        &["--size", "--", "[", "qemu-nbd", "-f", "raw", &img, "]"],
    );
    assert_eq!(q.stdout, r.stdout, "qemu-nbd prints something else");

    let r = run(
        "nbdinfo",
        &[
            "--json",
            "--",
            "[",
            corio_nbd(),
            "-r",
            "-f",
            "raw",
            &img,
            "]",
        ],
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.starts_with('{'), "{}", r.stdout);
    assert!(r.stdout.contains("\"is_read_only\": true"), "{}", r.stdout);
}

#[test]
fn nbdsh_connect_systemd_socket_activation_writes_and_reads() {
    let dir = TempDir::new("activation");
    let img = image(&dir);
    let script = format!(
        "h.connect_systemd_socket_activation([{server:?}, '-f', 'raw', {img:?}])\n\
         assert h.get_size() == {SIZE}\n\
         buf = b'activated' * 1000\n\
         h.pwrite(buf, 4096)\n\
         assert h.pread(len(buf), 4096) == buf\n\
         h.flush()\n\
         h.shutdown()\n\
         print('ok')\n",
        server = corio_nbd(),
    );
    let r = run("nbdsh", &["-c", &script]);
    assert!(r.ok, "nbdsh: {}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.trim(), "ok");
    let disk = std::fs::read(&img).unwrap();
    assert_eq!(
        &disk[4096..4096 + 9000],
        "activated".repeat(1000).as_bytes()
    );
}

/// A Unix socket bound by someone else and passed as fd 3: served, and
/// left in place when the server exits (systemd keeps listening on it),
/// as qemu-nbd does.
#[test]
fn a_unix_socket_passed_as_fd_3_is_served_and_kept() {
    for server in [corio_nbd(), "/usr/bin/qemu-nbd"] {
        let dir = TempDir::new("activation");
        let img = image(&dir);
        let sock = dir.path("activated.sock");
        let sock_s = sock.to_str().unwrap();
        let args = wrapper_args(sock_s, server, &["-t", "-x", "foo", "-f", "raw", &img]);
        let srv = ServerProc::start_bound("/usr/bin/python3", &args, &sock);
        for _ in 0..2 {
            let r = run(
                "nbdinfo",
                &["--size", &format!("nbd+unix:///foo?socket={sock_s}")],
            );
            assert!(r.ok, "{server}: {}", r.stderr);
            assert_eq!(r.stdout.trim(), SIZE.to_string());
        }
        let (status, err) = srv.terminate();
        assert!(status.success(), "{server} exited {status}: {err}");
        assert!(sock.exists(), "{server} removed the activated socket file");
    }
}

/// Without -t the activated server leaves with its last client, exit 0.
#[test]
fn an_activated_server_exits_after_its_client() {
    let dir = TempDir::new("activation");
    let img = image(&dir);
    let sock = dir.path("a.sock");
    let sock_s = sock.to_str().unwrap();
    let args = wrapper_args(sock_s, corio_nbd(), &["-f", "raw", &img]);
    let mut srv = ServerProc::start_bound("/usr/bin/python3", &args, &sock);
    let r = run(
        "qemu-img",
        &[
            "info",
            "-f",
            "raw",
            &format!("nbd+unix:///?socket={sock_s}"),
        ],
    );
    assert!(r.ok, "{}", r.stderr);
    let start = Instant::now();
    while srv.alive() {
        assert!(start.elapsed() < DEADLINE, "the server did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(sock.exists());
}

/// A TCP socket passed as fd 3.
#[test]
fn a_tcp_socket_passed_as_fd_3_is_served() {
    let dir = TempDir::new("activation");
    let img = image(&dir);
    let portfile = dir.path("port");
    let where_ = format!("tcp:{}", portfile.display());
    let mut child = Command::new("/usr/bin/python3")
        .args(wrapper_args(
            &where_,
            corio_nbd(),
            &["-t", "-f", "raw", &img],
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let start = Instant::now();
    let port = loop {
        if let Ok(p) = std::fs::read_to_string(&portfile) {
            break p;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the wrapper or server exited"
        );
        assert!(start.elapsed() < DEADLINE, "no port file");
        std::thread::sleep(Duration::from_millis(10));
    };
    let r = run("nbdinfo", &["--size", &format!("nbd://127.0.0.1:{port}")]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), SIZE.to_string());
}

/// `-k`, `-b` or `-p` with activated sockets: qemu-nbd's error, non-zero
/// exit.
#[test]
fn addresses_conflict_with_socket_activation() {
    let dir = TempDir::new("activation");
    let img = image(&dir);
    let sock = dir.path("c.sock");
    let sock_s = sock.to_str().unwrap();
    let other = dir.path("other.sock");
    for (flags, want) in [
        (
            vec!["-k", other.to_str().unwrap()],
            "Unix socket can't be set when using socket activation",
        ),
        (
            vec!["-b", "127.0.0.1"],
            "The interface can't be set when using socket activation",
        ),
        (
            vec!["-p", "10999"],
            "TCP port number can't be set when using socket activation",
        ),
    ] {
        for server in [corio_nbd(), "/usr/bin/qemu-nbd"] {
            let _ = std::fs::remove_file(&sock);
            let mut a = flags.clone();
            a.extend(["-f", "raw", &img]);
            let r = run("/usr/bin/python3", &wrapper_args(sock_s, server, &a));
            assert!(!r.ok, "{server} {flags:?} started");
            assert!(r.stderr.contains(want), "{server}: {}", r.stderr);
            if server == corio_nbd() {
                assert!(r.stderr.starts_with("corio-nbd: "), "{}", r.stderr);
            }
        }
    }
    assert!(!Path::new(&other).exists());
}
