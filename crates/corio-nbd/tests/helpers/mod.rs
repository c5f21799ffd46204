//! Helpers shared by corio-nbd's integration tests, each written once:
//!
//! - here: [`TempDir`], the [`DEADLINE`] every wait in a test has, waiting
//!   for a child process ([`wait_deadline`]) and running one to completion
//!   ([`output_within`], [`run`]), and one meaning of `CORIO_TEST_THOROUGH`;
//! - [`inproc`]: a server started in this process, and a client that
//!   speaks through corio-nbd's own codec (the server tests);
//! - [`process`]: the `corio-nbd` binary (or qemu-nbd) as a child process
//!   on a Unix socket (the binary's tests);
//! - [`clients`]: the real-client tests' server (any qemu-nbd-compatible
//!   one), client tools, test images, and a raw client that does not use
//!   corio-nbd's codec (it must also judge other servers).
//!
//! A test crate uses it with `mod helpers;`.

#![allow(dead_code)] // each test crate uses a part of this module

pub mod clients;
pub mod inproc;
pub mod process;

use std::fs::File;
use std::io::{Read, Seek};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to listen or stop, a client to finish, or
/// any single read to wait, before the test fails by name.
pub const DEADLINE: Duration = Duration::from_secs(30);

#[path = "../../../corio/tests/helpers/thorough.rs"]
mod thorough_mode;
#[allow(unused_imports)] // each test crate uses a part
pub use thorough_mode::{quick_or_thorough, thorough};

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "corio-nbd-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits for `child` up to `deadline`; `None` if it is still running.
pub fn wait_deadline(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on a child") {
            return Some(status);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read_back(mut file: File) -> Vec<u8> {
    let mut buf = Vec::new();
    file.rewind().expect("rewind output file");
    file.read_to_end(&mut buf).expect("read output file");
    buf
}

/// Runs `cmd` to completion within `deadline`, capturing its output in
/// files (not pipes: a daemon the command forks may keep them open).
///
/// # Panics
/// When the command cannot start (naming it: is it installed?) or does not
/// finish in time (it is killed).
pub fn output_within(cmd: &mut Command, deadline: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let out = tempfile::tempfile().expect("temp file for stdout");
    let err = tempfile::tempfile().expect("temp file for stderr");
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup stdout file"))
        .stderr(err.try_clone().expect("dup stderr file"));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {desc} (is it installed?): {e}"));
    let Some(status) = wait_deadline(&mut child, deadline) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{desc} did not finish within {deadline:?}; stderr so far:\n{}",
            String::from_utf8_lossy(&read_back(err))
        );
    };
    Output {
        status,
        stdout: read_back(out),
        stderr: read_back(err),
    }
}

/// A client run to completion with a deadline.
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args...` within [`DEADLINE`] with `PATH` starting at
/// /usr/bin (nbdsh needs the system python3 with the `nbd` module, not a
/// pyenv one).
///
/// # Panics
/// If the program is missing or does not finish in time.
pub fn run(program: &str, args: &[&str]) -> Run {
    let path = format!(
        "/usr/bin:/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    let out = output_within(Command::new(program).args(args).env("PATH", path), DEADLINE);
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Whether the server has closed `sock`: a read returns EOF or a reset
/// (not a timeout: the socket's read timeout bounds the wait).
pub fn closed_by_server(sock: &mut impl Read) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}
