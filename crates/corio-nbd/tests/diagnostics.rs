//! What the binary tells on stderr: `--stats SECONDS` (a line of
//! requests/s, MiB/s and clients), `-T PATTERN` / `-T enable=PATTERN`
//! (corio's trace events, QEMU's log format `PID@SECS.USECS:name args`),
//! `-v` (dropped clients and failed requests), and the start-up line (on
//! stderr, never stdout). A missing nbdsh fails the test.

mod helpers;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use helpers::process::{corio_nbd, run, ServerProc, TempDir};

/// Starts `corio-nbd -k SOCK -t --size 16M extra...` in `dir`.
fn start(dir: &TempDir, extra: &[&str]) -> ServerProc {
    let sock = dir.path("nbd.sock");
    let mut args = vec!["-k", sock.to_str().unwrap(), "-t", "--size", "16M"];
    args.extend_from_slice(extra);
    ServerProc::start(corio_nbd(), &args, &sock)
}

/// 32 writes and 32 reads of 64 KiB through nbdsh.
fn some_io(srv: &ServerProc) {
    let script = format!(
        "h.connect_unix({:?})\n\
         for i in range(32):\n    h.pwrite(b'z' * 65536, i * 65536)\n\
         for i in range(32):\n    assert h.pread(65536, i * 65536) == b'z' * 65536\n\
         h.shutdown()\n",
        srv.socket.to_str().unwrap()
    );
    let r = run("nbdsh", &["-c", &script]);
    assert!(r.ok, "nbdsh: {}", r.stderr);
}

#[test]
fn stats_prints_requests_bytes_and_clients() {
    let dir = TempDir::new("stats");
    let srv = start(&dir, &["--stats", "1"]);
    some_io(&srv);
    // At least two periods after the I/O.
    std::thread::sleep(Duration::from_millis(2500));
    let (status, err) = srv.terminate();
    assert!(status.success(), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("requests/s")).collect();
    assert!(lines.len() >= 2, "no periodic stats lines: {err}");
    for l in &lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        // corio-nbd: N requests/s, X MiB/s, C clients
        assert_eq!(f.len(), 7, "{l}");
        assert_eq!(
            (f[0], f[2], f[4], f[6]),
            ("corio-nbd:", "requests/s,", "MiB/s,", "clients"),
            "{l}"
        );
        f[1].parse::<u64>().unwrap();
        f[3].parse::<f64>().unwrap();
        f[5].parse::<usize>().unwrap();
    }
    // The 64 requests (and 4 MiB) fall in the periods printed.
    let total: u64 = lines
        .iter()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(total >= 64, "the stats lines count {total} requests: {err}");
}

#[test]
fn trace_patterns_enable_corio_events() {
    for spec in [
        "qio_channel_socket_accept*",
        "enable=qio_channel_socket_accept*",
    ] {
        let dir = TempDir::new("trace");
        let srv = start(&dir, &["-T", spec]);
        let pid = srv.pid();
        some_io(&srv);
        let (status, err) = srv.terminate();
        assert!(status.success(), "{err}");
        let event = err
            .lines()
            .find(|l| l.contains(":qio_channel_socket_accept_complete "))
            .unwrap_or_else(|| panic!("-T {spec}: no accept event: {err}"));
        assert!(event.starts_with(&format!("{pid}@")), "{event}");
        // Only what the pattern names.
        assert!(
            !err.contains(":qemu_aio_coroutine_enter "),
            "-T {spec} enabled other events"
        );
    }
    let dir = TempDir::new("trace");
    let srv = start(&dir, &[]);
    some_io(&srv);
    let (_, err) = srv.terminate();
    assert!(!err.contains(":qio_channel_socket_accept"), "{err}");
}

#[test]
fn trace_events_file() {
    let dir = TempDir::new("trace");
    let events = dir.path("events");
    std::fs::write(&events, "# a comment\nqemu_aio_coroutine_enter\n").unwrap();
    let spec = format!("events={}", events.display());
    let srv = start(&dir, &["-T", &spec]);
    some_io(&srv);
    let (status, err) = srv.terminate();
    assert!(status.success(), "{err}");
    assert!(err.contains(":qemu_aio_coroutine_enter "), "{err}");
}

#[test]
fn an_unknown_trace_event_is_warned_about_as_qemu_does() {
    let r = run("qemu-nbd", &["-T", "no_such_event", "--version"]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        r.stderr,
        "qemu-nbd: warning: trace event 'no_such_event' does not exist\n"
    );
    // corio-nbd's --version leaves before -T: stop it with an error instead.
    let r = run(corio_nbd(), &["-T", "no_such_event", "--aio", "native"]);
    assert!(!r.ok);
    assert!(
        r.stderr
            .starts_with("corio-nbd: warning: trace event 'no_such_event' does not exist\n"),
        "{}",
        r.stderr
    );
}

/// A client that sends garbage instead of its flags.
fn garbage_client(srv: &ServerProc) {
    let mut c = UnixStream::connect(&srv.socket).unwrap();
    c.set_read_timeout(Some(helpers::process::DEADLINE))
        .unwrap();
    let mut greeting = [0u8; 18];
    c.read_exact(&mut greeting).unwrap();
    c.write_all(b"\xff\xff\xff\xffnonsense").unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
}

#[test]
fn verbose_logs_dropped_clients_and_failed_requests() {
    for verbose in [true, false] {
        let dir = TempDir::new("verbose");
        let srv = start(&dir, if verbose { &["-v"] } else { &[] });
        garbage_client(&srv);
        // A read past the end, sent anyway (strict mode off).
        let script = format!(
            "h.set_strict_mode(0)\n\
             h.connect_unix({:?})\n\
             try:\n    h.pread(512, 16 << 20)\n    assert False\n\
             except nbd.Error:\n    pass\n\
             h.shutdown()\n",
            srv.socket.to_str().unwrap()
        );
        let r = run("nbdsh", &["-c", &script]);
        assert!(r.ok, "nbdsh: {}", r.stderr);
        let (status, err) = srv.terminate();
        assert!(status.success(), "{err}");
        let logged = err
            .lines()
            .filter(|l| {
                l.starts_with("corio-nbd: ")
                    && !l.contains("serving")
                    && !l.contains("try: nbdinfo")
            })
            .count();
        if verbose {
            assert!(err.contains("past the end"), "-v: {err}");
            assert!(logged >= 2, "-v logs the bad client and the request: {err}");
        } else {
            assert_eq!(logged, 0, "without -v: {err}");
        }
    }
}

#[test]
fn the_start_line_is_on_stderr_and_stdout_is_empty() {
    let dir = TempDir::new("start");
    let sock = dir.path("nbd.sock");
    let child = std::process::Command::new(corio_nbd())
        .args(["-k", sock.to_str().unwrap(), "--size", "1M"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Not persistent: one client and it exits.
    let start = std::time::Instant::now();
    let r = loop {
        let r = run(
            "nbdinfo",
            &["--size", &format!("nbd+unix:///?socket={}", sock.display())],
        );
        if r.ok || start.elapsed() > helpers::process::DEADLINE {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(r.ok, "{}", r.stderr);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "stdout not empty");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("serving nbd+unix:///?socket={}", sock.display())),
        "{err}"
    );
    assert!(err.contains("try: nbdinfo"), "{err}");
}
