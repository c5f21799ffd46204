//! The `corio-nbd` binary (and qemu-nbd) run as child processes on a Unix
//! socket in a temporary directory, and external clients run with a
//! deadline. A missing tool fails the test with its name; nothing skips.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::wait_deadline;
#[allow(unused_imports)] // re-exported for the tests of the binary
pub use super::{run, Run, TempDir, DEADLINE};

/// A server process, killed on drop.
pub struct ServerProc {
    child: Child,
    pub socket: PathBuf,
    what: String,
}

impl ServerProc {
    /// Starts `program args...` and waits until `socket` accepts.
    ///
    /// # Panics
    /// If the program is missing, exits, or does not listen in time.
    pub fn start(program: &str, args: &[&str], socket: &Path) -> ServerProc {
        Self::start_with(program, args, socket, true)
    }

    /// As [`start`](Self::start), but waits only for `socket` to exist:
    /// for a socket bound before the server runs (socket activation),
    /// where a probing connection would be the server's first client.
    pub fn start_bound(program: &str, args: &[&str], socket: &Path) -> ServerProc {
        Self::start_with(program, args, socket, false)
    }

    fn start_with(program: &str, args: &[&str], socket: &Path, probe: bool) -> ServerProc {
        let what = format!("{program} {}", args.join(" "));
        if probe {
            // A stale path of a killed server must not pass the probe: with
            // the io_uring fd monitor its listener outlives the process
            // until the kernel tears the ring down, and accepts (then
            // resets) connections meanwhile.
            let _ = std::fs::remove_file(socket);
        }
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `{program}` (is it installed?): {e}"));
        let mut s = ServerProc {
            child,
            socket: socket.to_owned(),
            what,
        };
        let start = Instant::now();
        loop {
            let ready = if probe {
                UnixStream::connect(socket).is_ok()
            } else {
                socket.exists()
            };
            if ready {
                return s;
            }
            if let Some(status) = s.child.try_wait().unwrap() {
                let err = s.stderr();
                panic!("`{}` exited ({status}): {err}", s.what);
            }
            assert!(
                start.elapsed() < DEADLINE,
                "`{}` did not listen on {} within {DEADLINE:?}",
                s.what,
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (with [`DEADLINE`]) for the exit; returns
    /// the status and what the server wrote on stderr.
    ///
    /// # Panics
    /// If the server does not exit in time (it is killed then).
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with a pid we spawned and have not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        match wait_deadline(&mut self.child, DEADLINE) {
            Some(status) => {
                let err = self.stderr();
                (status, err)
            }
            None => {
                let err = self.kill_and_stderr();
                panic!("server did not exit within {DEADLINE:?} of SIGTERM: {err}");
            }
        }
    }

    /// Kills the server and returns what it wrote on stderr.
    pub fn kill_and_stderr(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr()
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The corio-nbd binary under test.
pub fn corio_nbd() -> &'static str {
    env!("CARGO_BIN_EXE_corio-nbd")
}

/// A raw client's handshake with a server started here: fixed newstyle with
/// NO_ZEROES, `NBD_OPT_EXPORT_NAME ""`; returns the export size.
pub fn handshake(s: &mut UnixStream) -> u64 {
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
    s.write_all(&3u32.to_be_bytes()).unwrap(); // FIXED_NEWSTYLE | NO_ZEROES
    let mut opt = b"IHAVEOPT".to_vec();
    opt.extend(1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
    opt.extend(0u32.to_be_bytes());
    s.write_all(&opt).unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).unwrap();
    u64::from_be_bytes(reply[..8].try_into().unwrap())
}
