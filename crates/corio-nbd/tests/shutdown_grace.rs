//! SIGTERM while a client never reads its replies: the replies in flight
//! cannot leave, so after the shutdown grace (5 s) the server hangs up on
//! that client and exits 0, its socket file removed. (qemu-nbd waits for
//! ever in the same case.) A raw std `UnixStream` client pipelines 64
//! READs of 1 MiB and never reads.

mod helpers;

use std::io::Write;
use std::os::unix::net::UnixStream;

use helpers::process::{corio_nbd, handshake, ServerProc, TempDir};

const MIB: u32 = 1 << 20;

fn read_request(cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
    r.extend(0u16.to_be_bytes()); // flags
    r.extend(0u16.to_be_bytes()); // NBD_CMD_READ
    r.extend(cookie.to_be_bytes());
    r.extend(offset.to_be_bytes());
    r.extend(len.to_be_bytes());
    r
}

fn never_reading_client_does_not_block_shutdown(iothreads: &str) {
    let dir = TempDir::new("grace");
    let img = dir.path("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let sock = dir.path("nbd.sock");
    let srv = ServerProc::start(
        corio_nbd(),
        &[
            "-k",
            sock.to_str().unwrap(),
            "-t",
            "-f",
            "raw",
            "--iothreads",
            iothreads,
            img.to_str().unwrap(),
        ],
        &sock,
    );
    let mut c = UnixStream::connect(&sock).unwrap();
    assert_eq!(handshake(&mut c), 64 << 20);
    let mut reqs = Vec::new();
    for i in 0..64u64 {
        reqs.extend(read_request(i, (i % 64) * u64::from(MIB), MIB));
    }
    c.write_all(&reqs).unwrap();
    // Let the server take in the first 16 and block on their replies.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (status, err) = srv.terminate();
    assert!(status.success(), "exit status {status}: {err}");
    assert!(err.contains("hanging up"), "{err}");
    assert!(!sock.exists(), "the socket file was left behind");
    drop(c);
}

#[test]
fn sigterm_with_a_client_that_never_reads_main_loop() {
    never_reading_client_does_not_block_shutdown("0");
}

#[test]
fn sigterm_with_a_client_that_never_reads_iothreads() {
    never_reading_client_does_not_block_shutdown("2");
}
