//! QEMU's tests/unit/test-io-channel-file.c.

mod helpers;
mod io_channel_helpers;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use corio::io::file::{new_fd, FdChannel, Mode, OFlags};
use corio::io::{Channel, FileChannel};
use io_channel_helpers::{pattern, run_threads, TOTAL};

fn tmp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("corio-test-{}-{name}", std::process::id()))
}

/// The process umask, read without changing it.
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

/// Writes 1 MB through a channel opened with `wflags`, reads it back.
fn file_round_trip(name: &str, wflags: OFlags) {
    let path = tmp_path(name);
    let _ = std::fs::remove_file(&path);
    let data = pattern(TOTAL, 1);
    let w = FileChannel::new_path(&path, wflags, Mode::from_raw_mode(0o600)).unwrap();
    w.write_all_bytes(&data).unwrap();
    drop(w);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600 & !umask());

    let r = FileChannel::new_path(&path, OFlags::RDONLY, Mode::empty()).unwrap();
    let mut got = vec![0u8; TOTAL];
    r.read_all(&mut got).unwrap();
    assert!(got == data);
    // At the end: a clean end of file.
    assert!(!r.read_all_eof(&mut [0u8; 1]).unwrap());
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn io_channel_file() {
    file_round_trip("file.txt", OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC);
}

#[test]
fn io_channel_file_rdwr() {
    file_round_trip(
        "file-rdwr.txt",
        OFlags::RDWR | OFlags::CREATE | OFlags::TRUNC,
    );
}

#[test]
fn io_channel_file_fd() {
    let path = tmp_path("file-fd.txt");
    let f = std::fs::File::create(&path).unwrap();
    match new_fd(f.into()).unwrap() {
        FdChannel::File(_) => {}
        FdChannel::Socket(_) => panic!("a file fd gave a socket channel"),
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn io_channel_file_open_error_names_path() {
    let path = tmp_path("no/such/dir/file");
    let e = FileChannel::new_path(&path, OFlags::RDONLY, Mode::empty()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    assert!(e.to_string().contains("no/such/dir"), "{e}");
}

#[test]
fn io_channel_pipe_sync() {
    let (r, w) = FileChannel::pipe().unwrap();
    run_threads(true, Arc::new(w), Arc::new(r));
}

#[test]
fn io_channel_pipe_async() {
    let (r, w) = FileChannel::pipe().unwrap();
    run_threads(false, Arc::new(w), Arc::new(r));
}

#[test]
fn io_channel_pipe_broken() {
    let (r, w) = FileChannel::pipe().unwrap();
    drop(r);
    let e = w.write_all_bytes(b"nobody reads").unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
}
