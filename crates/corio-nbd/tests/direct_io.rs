//! `O_DIRECT` modes (`-n`, `--cache=none`, `--cache=directsync`) on a file
//! under /var/tmp (a disk filesystem): the image is really open with
//! `O_DIRECT` (and `O_DSYNC` for directsync; checked in
//! /proc/PID/fdinfo), a 4096-byte minimum block is advertised, and
//! a misaligned request is refused (EINVAL) from a client that asked for
//! the block size, and from one that did not (nbdsh, strict mode off)
//! aligned and misaligned reads and writes land byte for byte (bounce
//! buffers),
//! including many misaligned writes into the same blocks at once and the
//! last, partial block of a file whose size is not a multiple of 4096
//! (whose size must not change). A missing nbdsh fails the test.

mod helpers;

use std::path::{Path, PathBuf};

use helpers::process::{corio_nbd, run, ServerProc};

/// 4 MiB and a partial block.
const SIZE: usize = (4 << 20) + 1000;

/// A directory under /var/tmp (not tmpfs), removed on drop.
struct VarTmp(PathBuf);

impl VarTmp {
    fn new(tag: &str) -> VarTmp {
        let p = Path::new("/var/tmp").join(format!("corio-nbd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        VarTmp(p)
    }
}

impl Drop for VarTmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The open flags (octal, from fdinfo) of `pid`'s descriptor for `file`.
fn open_flags(pid: u32, file: &Path) -> u32 {
    let want = std::fs::canonicalize(file).unwrap();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let e = e.unwrap();
        if std::fs::read_link(e.path()).ok().as_deref() == Some(want.as_path()) {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_str().unwrap()
            ))
            .unwrap();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .unwrap()
                .trim();
            return u32::from_str_radix(flags, 8).unwrap();
        }
    }
    panic!("pid {pid} has no descriptor for {}", want.display());
}

/// Writes through nbdsh: aligned, misaligned, 64 misaligned writes in
/// flight into the same few blocks, the partial last block; reads them
/// back misaligned. Prints `ok`.
fn script(sock: &Path) -> String {
    format!(
        r#"
import errno
h.set_strict_mode(0)
h.connect_unix({sock:?})
size = {SIZE}
assert h.get_size() == size
assert h.get_block_size(nbd.SIZE_MINIMUM) == 4096, h.get_block_size(nbd.SIZE_MINIMUM)
# Having asked for the block size, a misaligned request is refused.
try:
    h.pwrite(b'abc', 4095)
    assert False, 'a misaligned write was served after NBD_INFO_BLOCK_SIZE'
except nbd.Error as e:
    assert e.errnum == errno.EINVAL, e
h.shutdown()
# Without asking, misaligned requests are served (bounce buffers).
h = nbd.NBD()
h.set_strict_mode(0)
h.set_request_block_size(False)
h.connect_unix({sock:?})
mirror = bytearray(h.pread(size, 0))
def put(off, data):
    h.pwrite(data, off)
    mirror[off:off + len(data)] = data
put(8192, bytes(range(256)) * 16)
put(4095, b'abc')
put(12345, b'x' * 70000)
# 64 writes of 100 bytes, 64 bytes apart in 4 blocks, all in flight.
cookies = []
for i in range(64):
    off = 65536 + i * 150
    data = bytes([i + 1]) * 100
    mirror[off:off + 100] = data
    cookies.append(h.aio_pwrite(data, off))
while h.aio_in_flight() > 0:
    h.poll(-1)
for c in cookies:
    assert h.aio_command_completed(c)  # raises if the write failed
put(size - 10, b'0123456789')
put(size - 1500, b'y' * 700)
for off, n in [(4000, 300), (12000, 80000), (65500, 10000), (size - 2000, 2000), (0, size)]:
    got = h.pread(n, off)
    assert got == bytes(mirror[off:off + n]), (off, n)
h.flush()
h.shutdown()
open({out:?}, 'wb').write(mirror)
print('ok')
"#,
        out = sock.with_extension("expected"),
    )
}

fn direct_mode(flags: &[&str], dsync: bool) {
    let dir = VarTmp::new(&format!("direct{}", flags.join("").replace('=', "")));
    let img = dir.0.join("disk.img");
    let data: Vec<u8> = (0..SIZE).map(|i| (i / 512) as u8 ^ (i as u8)).collect();
    std::fs::write(&img, &data).unwrap();
    let sock = dir.0.join("nbd.sock");
    let mut args = vec!["-k", sock.to_str().unwrap(), "-t", "-f", "raw"];
    args.extend_from_slice(flags);
    args.push(img.to_str().unwrap());
    let srv = ServerProc::start(corio_nbd(), &args, &sock);
    let f = open_flags(srv.pid(), &img);
    assert_ne!(
        f & libc::O_DIRECT as u32,
        0,
        "{flags:?}: not O_DIRECT ({f:o})"
    );
    assert_eq!(
        f & libc::O_DSYNC as u32 != 0,
        dsync,
        "{flags:?}: O_DSYNC ({f:o})"
    );
    let r = run("nbdsh", &["-c", &script(&sock)]);
    assert!(r.ok, "{flags:?}: nbdsh: {}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout.trim(), "ok");
    let (status, err) = srv.terminate();
    assert!(status.success(), "{err}");
    let want = std::fs::read(sock.with_extension("expected")).unwrap();
    let got = std::fs::read(&img).unwrap();
    assert_eq!(got.len(), SIZE, "{flags:?}: the image changed size");
    assert!(
        got == want,
        "{flags:?}: the image differs from what was written"
    );
}

#[test]
fn nocache() {
    direct_mode(&["-n"], false);
}

#[test]
fn cache_none() {
    direct_mode(&["--cache=none"], false);
}

#[test]
fn cache_directsync() {
    direct_mode(&["--cache=directsync"], true);
}
