//! Shared helpers for the real-client tests (`tests/clients_*.rs`): which
//! server binary to run, starting it on a unix socket or a free TCP port,
//! waiting until it listens, running client tools with a deadline, and
//! making test images.
//!
//! The suite runs against any qemu-nbd-compatible server: the binary named by
//! `CORIO_NBD_SERVER` (`qemu-nbd`, or a path), else this crate's own
//! `corio-nbd`. Tests of corio-only options skip, with a message, when the
//! target is another server (a choice of target). A missing client tool
//! (nbdinfo, nbdsh, nbdcopy, qemu-img, qemu-io, fio) fails the test: CI
//! (`.ci/run`) installs them.

pub mod image;
pub mod raw;

#[allow(unused_imports)] // re-exported for the real-client tests
pub use super::{output_within, wait_deadline};

use std::ffi::OsString;
use std::fs::{self, File};

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long one client command may take before the test fails.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(40);
/// How long a server may take to listen, or to exit when it should.
pub const SERVER_DEADLINE: Duration = Duration::from_secs(15);

/// The server binary under test.
///
/// # Panics
/// When `CORIO_NBD_SERVER` names no executable, or it is unset and the
/// crate has no `corio-nbd` binary target in this build.
pub fn server_bin() -> PathBuf {
    if let Some(name) = std::env::var_os("CORIO_NBD_SERVER") {
        let path = PathBuf::from(&name);
        if path.components().count() > 1 {
            assert!(path.is_file(), "CORIO_NBD_SERVER={path:?} is not a file");
            return path;
        }
        return find_in_path(&name.to_string_lossy())
            .unwrap_or_else(|| panic!("CORIO_NBD_SERVER={name:?} is not found in PATH"));
    }
    match option_env!("CARGO_BIN_EXE_corio-nbd") {
        Some(path) => PathBuf::from(path),
        None => panic!(
            "no NBD server to test: this build has no corio-nbd binary target yet; \
             set CORIO_NBD_SERVER=qemu-nbd (or a path to a qemu-nbd-compatible server)"
        ),
    }
}

/// The server's program name, as its error messages start with it.
pub fn server_name() -> String {
    server_bin()
        .file_name()
        .expect("server path has a file name")
        .to_string_lossy()
        .into_owned()
}

/// A command running the server as a user would type it: argv[0] is the
/// bare program name (getopt and `--help` print argv[0]).
pub fn server_cmd() -> Command {
    let mut cmd = Command::new(server_bin());
    cmd.arg0(server_name());
    cmd
}

/// Whether the target is corio-nbd (rather than qemu-nbd or another peer).
pub fn is_corio() -> bool {
    server_name().starts_with("corio-nbd")
}

/// `true` when the target is corio-nbd; otherwise prints why the calling
/// corio-only test does not apply and returns `false`.
pub fn corio_only(why: &str) -> bool {
    if is_corio() {
        return true;
    }
    eprintln!(
        "SKIPPED: corio-only test, the target is {} ({why})",
        server_name()
    );
    false
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The Debian package that ships each client tool, for the failure message.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "nbdinfo" | "nbdsh" | "nbdcopy" => "libnbd-bin",
        "qemu-img" | "qemu-io" | "qemu-nbd" => "qemu-utils",
        "fio" => "fio",
        "nbdkit" => "nbdkit",
        _ => "?",
    }
}

/// A command for a client tool, failing the test if the tool is missing.
///
/// For `nbdsh` (a shell script running `python3 -mnbd`), PATH is arranged
/// so that `python3` is one that can import libnbd's Python module: a
/// pyenv `python3` earlier in PATH usually cannot.
pub fn tool(name: &str) -> Command {
    let path = find_in_path(name).unwrap_or_else(|| {
        panic!(
            "client tool `{name}` is not installed (Debian package {}); \
             .ci/run installs it. This test fails rather than skips without it.",
            package_of(name)
        )
    });
    let mut cmd = Command::new(path);
    if name == "nbdsh" {
        cmd.env("PATH", python_with_libnbd_path());
    }
    cmd
}

/// PATH with the directory of a `python3` that imports `nbd` first.
fn python_with_libnbd_path() -> OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.push(PathBuf::from("/usr/bin"));
    let good = dirs.iter().find(|dir| {
        let py = dir.join("python3");
        py.is_file()
            && Command::new(&py)
                .args(["-c", "import nbd"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    });
    let good = good.unwrap_or_else(|| {
        panic!("no python3 in PATH or /usr/bin can `import nbd`: install python3-libnbd (nbdsh needs it)")
    });
    let mut ordered = vec![good.clone()];
    ordered.extend(std::env::split_paths(&path));
    std::env::join_paths(ordered).expect("PATH entries join")
}

/// Runs `cmd` within [`CLIENT_DEADLINE`].
pub fn output(cmd: &mut Command) -> Output {
    output_within(cmd, CLIENT_DEADLINE)
}

/// Runs `cmd`, which must succeed; returns its stdout as text.
pub fn run_ok(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{desc} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd`, which must fail; returns its stderr as text.
pub fn run_fails(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let out = output(cmd);
    assert!(
        !out.status.success(),
        "{desc} succeeded but should have failed; stdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a Python script in `nbdsh` (which provides `nbd` and a handle `h`);
/// the script connects itself. `env` entries are visible as `os.environ`.
/// Returns stdout; a failed assertion in the script fails the test.
pub fn nbdsh(script: &str, env: &[(&str, &str)]) -> String {
    let mut cmd = tool("nbdsh");
    cmd.arg("-c").arg(format!("import os, errno\n{script}"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_ok(&mut cmd)
}

/// Where a server listens.
#[derive(Clone, Debug)]
pub enum Listen {
    /// A unix socket `nbd.sock` in the test's directory (`-k`).
    Unix,
    /// A free TCP port on 127.0.0.1 (`-b 127.0.0.1 -p PORT`).
    Tcp,
}

/// The address a started server listens on.
#[derive(Clone, Debug)]
pub enum Addr {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP port on 127.0.0.1.
    Tcp(u16),
}

/// A server process, killed when dropped.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: Addr,
    stderr_path: PathBuf,
    desc: String,
}

/// A port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

impl Server {
    /// Starts the server with `args` (after the listen options) and waits
    /// until it listens. Its stderr goes to a file in `dir`.
    ///
    /// # Panics
    /// When the server exits or does not listen within [`SERVER_DEADLINE`];
    /// the message carries its stderr.
    pub fn start(dir: &Path, listen: Listen, args: &[&str]) -> Server {
        let server = Self::spawn(dir, listen, args);
        server.wait_listening();
        server
    }

    /// Starts the server without waiting for it to listen.
    pub fn spawn(dir: &Path, listen: Listen, args: &[&str]) -> Server {
        let (addr, mut full): (Addr, Vec<String>) = match listen {
            Listen::Unix => {
                let sock = dir.join("nbd.sock");
                let a = vec!["-k".into(), sock.to_str().expect("utf-8 path").into()];
                (Addr::Unix(sock), a)
            }
            Listen::Tcp => {
                let port = free_port();
                let a = vec![
                    "-b".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                ];
                (Addr::Tcp(port), a)
            }
        };
        full.extend(args.iter().map(|s| s.to_string()));
        let stderr_path = dir.join(format!(
            "server-{}.stderr",
            fs::read_dir(dir).unwrap().count()
        ));
        let stderr = File::create(&stderr_path).expect("create server stderr file");
        let mut cmd = server_cmd();
        cmd.args(&full)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("dup stderr file"))
            .stderr(stderr);
        let desc = format!("{cmd:?}");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
        Server {
            child,
            addr,
            stderr_path,
            desc,
        }
    }

    /// Waits until the server's socket is listening (seen in /proc/net,
    /// without connecting: a probe connection would count as a client, and
    /// a server without `-t` exits when its last client leaves).
    pub fn wait_listening(&self) {
        let end = Instant::now() + SERVER_DEADLINE;
        loop {
            if is_listening(&self.addr) {
                return;
            }
            assert!(
                Instant::now() < end,
                "{} did not listen on {:?} within {SERVER_DEADLINE:?}; stderr:\n{}",
                self.desc,
                self.addr,
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The NBD URI of export `name` on this server.
    pub fn uri(&self, name: &str) -> String {
        match &self.addr {
            Addr::Unix(p) => format!("nbd+unix:///{name}?socket={}", p.display()),
            Addr::Tcp(port) => format!("nbd://127.0.0.1:{port}/{name}"),
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server wrote to stdout and stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends a signal (`"TERM"`, `"INT"`, ...) to the server.
    pub fn signal(&self, sig: &str) {
        signal_pid(self.pid(), sig);
    }

    /// `None` while the server runs; its exit status once it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait on the server")
    }

    /// Waits up to [`SERVER_DEADLINE`] for the server to exit.
    ///
    /// # Panics
    /// When it is still running then.
    pub fn wait_exit(&mut self) -> ExitStatus {
        match wait_deadline(&mut self.child, SERVER_DEADLINE) {
            Some(status) => status,
            None => panic!(
                "{} did not exit within {SERVER_DEADLINE:?}; stderr:\n{}",
                self.desc,
                self.stderr()
            ),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends signal `sig` to process `pid` with kill(1).
pub fn signal_pid(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg("-s")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .expect("run kill(1)");
    assert!(status.success(), "kill -s {sig} {pid} failed");
}

/// Whether something listens on `addr`, read from /proc/net.
pub fn is_listening(addr: &Addr) -> bool {
    match addr {
        Addr::Unix(path) => {
            // Columns: Num RefCount Protocol Flags Type St Inode Path;
            // flag 0x10000 (__SO_ACCEPTCON) marks a listening socket.
            let table = fs::read_to_string("/proc/net/unix").unwrap_or_default();
            let want = path.to_string_lossy();
            table.lines().skip(1).any(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                cols.len() >= 8
                    && cols[7] == want
                    && u32::from_str_radix(cols[3], 16).is_ok_and(|f| f & 0x10000 != 0)
            })
        }
        Addr::Tcp(port) => ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
            // Columns: sl local_address rem_address st ...; st 0A = LISTEN.
            let table = fs::read_to_string(f).unwrap_or_default();
            table.lines().skip(1).any(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                cols.len() >= 4
                    && cols[3] == "0A"
                    && cols[1]
                        .rsplit(':')
                        .next()
                        .and_then(|p| u16::from_str_radix(p, 16).ok())
                        == Some(*port)
            })
        }),
    }
}

/// A fresh temporary directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("corio-nbd-clients.")
        .tempdir()
        .expect("create temp dir")
}

/// A path in `dir` as a `&str` argument.
pub fn arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}
