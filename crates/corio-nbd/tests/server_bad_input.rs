//! Bad input gets the protocol's answer and loses nothing: after each, a
//! good client is served by the same server process.

mod helpers;

use std::io::Write;
use std::time::Duration;

use corio_nbd::proto::*;
use helpers::inproc::*;

const MIB: u64 = 1 << 20;
const OPTS_MAGIC: u64 = 0x4948_4156_454f_5054;

/// A client that negotiates, writes and reads back.
fn good(srv: &TestServer, seed: u8) {
    let mut c = srv.connect();
    c.go("", Mode::Structured);
    let data = pattern(seed, 8192);
    assert_eq!(c.write(4096 * u64::from(seed), &data), 0);
    assert_eq!(c.read(4096 * u64::from(seed), 8192).unwrap(), data);
}

fn server() -> TestServer {
    start(export("", memory(16 * MIB)), |_| {})
}

fn raw_request(
    mode: Mode,
    cookie: u64,
    command: u16,
    flags: u16,
    offset: u64,
    len: u64,
) -> Vec<u8> {
    let mut v = Vec::new();
    if mode == Mode::Extended {
        v.extend_from_slice(&0x21e4_1c71u32.to_be_bytes());
    } else {
        v.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    }
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&command.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    if mode == Mode::Extended {
        v.extend_from_slice(&len.to_be_bytes());
    } else {
        v.extend_from_slice(&(len as u32).to_be_bytes());
    }
    v
}

#[test]
fn garbage_client_flags_are_dropped() {
    let srv = server();
    let mut c = srv.connect();
    c.greeting();
    c.send(&[0xff, 0xff, 0xff, 0xff]);
    assert!(c.closed_by_server());
    good(&srv, 1);
}

#[test]
fn garbage_instead_of_an_option_is_dropped() {
    let srv = server();
    let mut c = srv.connect();
    c.hello();
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(c.closed_by_server());
    good(&srv, 2);
}

#[test]
fn truncated_handshake_then_hang_up() {
    let srv = server();
    for cut in [0usize, 2, 10, 20] {
        let mut c = srv.connect();
        c.greeting();
        let mut bytes = 3u32.to_be_bytes().to_vec();
        OptionRequest::Go(ExportQuery {
            name: "",
            requests: WireList::Items(&[]),
        })
        .encode(&mut bytes);
        c.send(&bytes[..cut.min(bytes.len())]);
        drop(c);
    }
    good(&srv, 3);
}

#[test]
fn option_longer_than_the_limit_is_dropped() {
    let srv = server();
    let mut c = srv.connect();
    c.hello();
    let mut raw = OPTS_MAGIC.to_be_bytes().to_vec();
    raw.extend_from_slice(&opt::GO.to_be_bytes());
    raw.extend_from_slice(&(64u32 << 20).to_be_bytes());
    c.send(&raw);
    assert!(c.closed_by_server());
    good(&srv, 4);
}

#[test]
fn unknown_export_and_unknown_option_then_go() {
    let srv = server();
    let mut c = srv.connect();
    c.hello();
    c.option(OptionRequest::Go(ExportQuery {
        name: "missing",
        requests: WireList::Items(&[]),
    }));
    assert_eq!(c.opt_reply().unwrap().reply_type, RepError::UNKNOWN.0);
    let mut raw = OPTS_MAGIC.to_be_bytes().to_vec();
    raw.extend_from_slice(&0x1234u32.to_be_bytes());
    raw.extend_from_slice(&0u32.to_be_bytes());
    c.send(&raw);
    assert_eq!(c.opt_reply().unwrap().reply_type, RepError::UNSUP.0);
    good(&srv, 5);
}

#[test]
fn unknown_command_and_bad_flags_get_einval_and_go_on() {
    let srv = server();
    let mut c = srv.connect();
    c.go("", Mode::Simple);
    c.send(&raw_request(Mode::Simple, 77, 42, 0, 0, 512));
    assert_eq!(c.status(77), Errno::EINVAL.0);
    // DF without structured replies.
    c.send(&raw_request(
        Mode::Simple,
        78,
        0,
        CmdFlags::DF.bits(),
        0,
        512,
    ));
    assert_eq!(c.status(78), Errno::EINVAL.0);
    // BLOCK_STATUS without structured replies / contexts.
    let b = c.request(Command::BlockStatus, CmdFlags::empty(), 0, 512, &[]);
    assert_eq!(c.status(b), Errno::EINVAL.0);
    assert_eq!(c.write(0, b"still here"), 0);
    assert_eq!(c.read(0, 10).unwrap(), b"still here");
    good(&srv, 6);
}

#[test]
fn past_the_end_gets_einval_or_enospc() {
    let srv = server();
    let mut c = srv.connect();
    c.go("", Mode::Structured);
    let r = c.request(Command::Read, CmdFlags::empty(), 16 * MIB - 10, 11, &[]);
    assert_eq!(c.status(r), Errno::EINVAL.0);
    // The payload of a refused write is consumed: the stream stays in step.
    assert_eq!(c.write(16 * MIB - 2, b"abc"), Errno::ENOSPC.0);
    let z = c.request(Command::WriteZeroes, CmdFlags::empty(), 16 * MIB, 1, &[]);
    assert_eq!(c.status(z), Errno::ENOSPC.0);
    let t = c.request(Command::Trim, CmdFlags::empty(), u64::MAX - 5, 100, &[]);
    assert_eq!(c.status(t), Errno::EINVAL.0);
    assert_eq!(c.write(16 * MIB - 3, b"abc"), 0);
    good(&srv, 7);
}

#[test]
fn larger_than_the_limit() {
    let srv = server();
    let mut c = srv.connect();
    c.go("", Mode::Simple);
    let r = c.request(Command::Read, CmdFlags::empty(), 0, 33 * MIB, &[]);
    assert_eq!(c.status(r), Errno::EINVAL.0);
    assert_eq!(c.read(0, 4).unwrap(), vec![0; 4]);
    // A write payload too large to skip: EINVAL, then the server hangs up.
    c.send(&raw_request(Mode::Simple, 99, 1, 0, 0, 64 * MIB));
    assert_eq!(c.status(99), Errno::EINVAL.0);
    assert!(c.closed_by_server());
    good(&srv, 8);
}

#[test]
fn misaligned_requests_with_a_minimum_block_size() {
    let mut e = export("", memory(MIB));
    e.min_block = 512;
    let srv = start(e, |_| {});
    // A client that asked for block sizes gets EINVAL for misaligned requests.
    let mut c = srv.connect();
    c.go_with(
        "",
        Mode::Structured,
        &[BASE_ALLOCATION],
        &[info::BLOCK_SIZE],
    );
    assert_eq!(c.write(1, b"x"), Errno::EINVAL.0);
    let r = c.request(Command::Read, CmdFlags::empty(), 512, 100, &[]);
    assert_eq!(c.status(r), Errno::EINVAL.0);
    assert_eq!(c.write(512, &[7; 512]), 0);
    // INFO without asking for block sizes: BLOCK_SIZE_REQD.
    let mut c2 = srv.connect();
    c2.hello();
    c2.option(OptionRequest::Info(ExportQuery {
        name: "",
        requests: WireList::Items(&[]),
    }));
    assert_eq!(
        c2.opt_reply().unwrap().reply_type,
        RepError::BLOCK_SIZE_REQD.0
    );
    // GO without asking: tolerated, as qemu-nbd, and served.
    let mut c3 = srv.connect();
    c3.go("", Mode::Simple);
    assert_eq!(c3.write(3, b"abc"), 0);
    assert_eq!(c3.read(0, 8).unwrap(), b"\0\0\0abc\0\0");
}

#[test]
fn write_to_read_only_export_is_eperm() {
    let mem = std::sync::Arc::new(corio_nbd::storage::memory::MemoryStorage::new(MIB, true));
    let srv = start(export("", mem), |_| {});
    let mut c = srv.connect();
    c.go("", Mode::Extended);
    assert_eq!(c.write(0, b"nope"), Errno::EPERM.0);
    assert_eq!(c.read(0, 4).unwrap(), vec![0; 4]);
}

#[test]
fn hang_up_mid_request_and_mid_payload() {
    let srv = server();
    let mut c = srv.connect();
    c.go("", Mode::Simple);
    let req = raw_request(Mode::Simple, 5, 0, 0, 0, 512);
    c.send(&req[..13]);
    drop(c);
    let mut c = srv.connect();
    c.go("", Mode::Simple);
    let mut req = raw_request(Mode::Simple, 6, 1, 0, 0, 4096);
    req.extend_from_slice(&[9; 1000]);
    c.send(&req);
    drop(c);
    // A bad magic mid-stream: the server hangs up.
    let mut c = srv.connect();
    c.go("", Mode::Simple);
    c.send(&[0xde; 28]);
    assert!(c.closed_by_server());
    good(&srv, 9);
}

#[test]
fn a_client_that_never_reads_holds_up_only_itself() {
    let srv = server();
    let mut hog = srv.connect();
    hog.go("", Mode::Simple);
    hog.s
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // Ask for far more than the socket buffers hold, never read.
    let mut sent = 0;
    for i in 0..400u64 {
        let r = raw_request(Mode::Simple, i, 0, 0, 0, MIB);
        if hog.s.write_all(&r).is_err() {
            break;
        }
        sent += 1;
    }
    assert!(sent >= 16, "the server took at least a window of requests");
    for seed in 10..14 {
        good(&srv, seed);
    }
    drop(hog);
    good(&srv, 14);
}

#[test]
fn handshake_limit_drops_an_idle_client() {
    let srv = start(export("", memory(MIB)), |c| {
        c.handshake_limit = Some(Duration::from_millis(100));
    });
    let mut idle = srv.connect();
    idle.greeting();
    // Sends nothing: dropped within the deadline of the helper's reads.
    assert!(idle.closed_by_server());
    good(&srv, 15);
}
