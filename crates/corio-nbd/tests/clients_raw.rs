//! Bad and unusual input on a raw socket, each followed by a good client
//! (nbdinfo) against the same server process: garbage client flags, a
//! truncated option, an unknown option (NBD_REP_ERR_UNSUP, the session
//! goes on), an unknown export name, the old NBD_OPT_EXPORT_NAME path,
//! extended headers, a bad request magic, a client that hangs up
//! mid-payload, and a client that never reads its replies.

mod helpers;

use std::net::Shutdown;
use std::path::PathBuf;

use clients::image::{assert_bytes, pattern, sparse_image};
use clients::raw::*;
use clients::{arg, run_ok, tempdir, tool, Addr, Listen, Server};
use helpers::clients;

const SIZE: u64 = 1 << 20;
const SEED: u64 = 77;

struct Fixture {
    srv: Server,
    sock: PathBuf,
    img: PathBuf,
    _dir: tempfile::TempDir,
}

/// A persistent server of export "disk": 1 MiB of data in [0, 512k),
/// a hole after.
fn fixture() -> Fixture {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, SIZE, &[(0, SIZE / 2)], SEED);
    let srv = Server::start(
        dir.path(),
        Listen::Unix,
        &["-f", "raw", "-t", "-e", "0", "-x", "disk", arg(&img)],
    );
    let Addr::Unix(sock) = srv.addr.clone() else {
        unreachable!()
    };
    Fixture {
        srv,
        sock,
        img,
        _dir: dir,
    }
}

impl Fixture {
    /// A good client still gets the right answer from the same server.
    fn good_client_works(&mut self) {
        let out = run_ok(tool("nbdinfo").arg("--size").arg(self.srv.uri("disk")));
        assert_eq!(out.trim(), SIZE.to_string());
        assert!(
            self.srv.try_wait().is_none(),
            "server exited: {}",
            self.srv.stderr()
        );
    }
}

fn name_payload(name: &str) -> Vec<u8> {
    let mut data = (name.len() as u32).to_be_bytes().to_vec();
    data.extend_from_slice(name.as_bytes());
    data
}

/// A compact (32-byte header) transmission request.
fn request(flags: u16, kind: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut r = REQUEST_MAGIC.to_be_bytes().to_vec();
    r.extend_from_slice(&flags.to_be_bytes());
    r.extend_from_slice(&kind.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&len.to_be_bytes());
    r
}

/// Reads a simple reply; returns (error, cookie).
fn simple_reply(raw: &mut Raw) -> (u32, u64) {
    let h = raw.read_n(16).expect("read a simple reply");
    assert_eq!(be32(&h[0..4]), SIMPLE_REPLY_MAGIC, "simple reply magic");
    (be32(&h[4..8]), be64(&h[8..16]))
}

#[test]
fn raw_garbage_client_flags() {
    let mut f = fixture();
    let mut raw = Raw::connect(&f.sock);
    raw.greeting();
    raw.send(&[0xff, 0xff, 0xff, 0xff]); // unknown client flags
    assert!(
        raw.closed_by_server(),
        "server must drop a client with unknown flags"
    );
    f.good_client_works();
    // Three bytes of flags, then a hang-up.
    let mut raw = Raw::connect(&f.sock);
    raw.greeting();
    raw.send(&[0, 0, 0]);
    raw.sock.shutdown(Shutdown::Write).expect("shutdown");
    assert!(raw.closed_by_server());
    f.good_client_works();
}

#[test]
fn raw_truncated_option() {
    let mut f = fixture();
    let mut raw = Raw::negotiate(&f.sock);
    let mut msg = IHAVEOPT.to_be_bytes().to_vec();
    msg.extend_from_slice(&OPT_GO.to_be_bytes());
    msg.extend_from_slice(&100u32.to_be_bytes());
    msg.extend_from_slice(&[0; 10]); // 10 of the 100 bytes announced
    raw.send(&msg);
    raw.sock.shutdown(Shutdown::Write).expect("shutdown");
    assert!(
        raw.closed_by_server(),
        "server must close on a truncated option"
    );
    f.good_client_works();
    // A bad option magic.
    let mut raw = Raw::negotiate(&f.sock);
    raw.send(&[0x55; 16]);
    assert!(
        raw.closed_by_server(),
        "server must close on a bad option magic"
    );
    f.good_client_works();
}

#[test]
fn raw_unknown_option_then_session_goes_on() {
    let mut f = fixture();
    let mut raw = Raw::negotiate(&f.sock);
    raw.option(0x7777, b"whatever");
    let r = raw.opt_reply();
    assert_eq!((r.option, r.kind), (0x7777, REP_ERR_UNSUP), "{r:?}");
    // The session goes on: LIST, then GO, then a read.
    raw.option(OPT_LIST, &[]);
    let list = raw.opt_replies();
    let servers: Vec<&OptReply> = list.iter().filter(|r| r.kind == REP_SERVER).collect();
    assert_eq!(servers.len(), 1, "{list:?}");
    assert_eq!(&servers[0].data[..8], &name_payload("disk")[..], "{list:?}");
    assert_eq!(list.last().map(|r| r.kind), Some(REP_ACK));
    let go = raw.go("disk");
    assert_eq!(go.last().map(|r| r.kind), Some(REP_ACK), "{go:?}");
    let (size, _flags) = info_export(&go).expect("NBD_INFO_EXPORT in the GO replies");
    assert_eq!(size, SIZE);
    raw.send(&request(0, CMD_READ, 0x1234, 4096, 4096));
    assert_eq!(simple_reply(&mut raw), (0, 0x1234));
    assert_eq!(
        raw.read_n(4096).expect("read data"),
        pattern(SEED, 4096, 4096)
    );
    raw.send(&request(0, CMD_DISC, 1, 0, 0));
    assert!(raw.closed_by_server(), "NBD_CMD_DISC ends the session");
    f.good_client_works();
}

#[test]
fn raw_unknown_export_name() {
    let mut f = fixture();
    let mut raw = Raw::negotiate(&f.sock);
    let r = raw.go("nosuch");
    assert_eq!(r.last().map(|r| r.kind), Some(REP_ERR_UNKNOWN), "{r:?}");
    let ok = raw.go("disk");
    assert_eq!(
        ok.last().map(|r| r.kind),
        Some(REP_ACK),
        "after an unknown name: {ok:?}"
    );
    drop(raw);
    // The old NBD_OPT_EXPORT_NAME with a wrong name: no reply, the server
    // closes the connection.
    let mut raw = Raw::negotiate(&f.sock);
    raw.option(OPT_EXPORT_NAME, b"nosuch");
    assert!(
        raw.closed_by_server(),
        "NBD_OPT_EXPORT_NAME of an unknown export closes"
    );
    f.good_client_works();
}

/// NBD_OPT_EXPORT_NAME (the pre-GO path): size and flags, no zero padding
/// under NO_ZEROES, then transmission.
#[test]
fn raw_export_name_legacy_path() {
    let mut f = fixture();
    let mut raw = Raw::negotiate(&f.sock);
    raw.option(OPT_EXPORT_NAME, b"disk");
    let reply = raw.read_n(10).expect("size and flags");
    assert_eq!(be64(&reply[..8]), SIZE);
    let flags = u16::from_be_bytes([reply[8], reply[9]]);
    assert!(flags & 1 != 0, "HAS_FLAGS in {flags:#x}");
    raw.send(&request(0, CMD_READ, 9, 0, 512));
    assert_eq!(simple_reply(&mut raw), (0, 9));
    assert_eq!(raw.read_n(512).expect("data"), pattern(SEED, 0, 512));
    f.good_client_works();
}

/// Reads an extended reply chunk: (flags, type, cookie, payload).
fn ext_chunk(raw: &mut Raw) -> (u16, u16, u64, Vec<u8>) {
    let h = raw.read_n(32).expect("read an extended reply header");
    assert_eq!(be32(&h[0..4]), EXT_REPLY_MAGIC, "extended reply magic");
    let len = be64(&h[24..32]) as usize;
    let payload = raw.read_n(len).expect("read the chunk payload");
    (
        u16::from_be_bytes([h[4], h[5]]),
        u16::from_be_bytes([h[6], h[7]]),
        be64(&h[8..16]),
        payload,
    )
}

fn ext_request(kind: u16, cookie: u64, offset: u64, len: u64) -> Vec<u8> {
    let mut r = EXT_REQUEST_MAGIC.to_be_bytes().to_vec();
    r.extend_from_slice(&0u16.to_be_bytes());
    r.extend_from_slice(&kind.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&len.to_be_bytes());
    r
}

/// Extended headers (qemu-nbd 10 has them; this libnbd does not): a read
/// is answered with extended reply chunks; a read past the end gets an
/// EINVAL error chunk and the session goes on.
#[test]
fn raw_extended_headers_read() {
    let mut f = fixture();
    let mut raw = Raw::negotiate(&f.sock);
    raw.option(OPT_EXTENDED_HEADERS, &[]);
    let r = raw.opt_reply();
    assert_eq!((r.option, r.kind), (OPT_EXTENDED_HEADERS, REP_ACK), "{r:?}");
    let go = raw.go("disk");
    assert_eq!(go.last().map(|r| r.kind), Some(REP_ACK), "{go:?}");
    raw.send(&ext_request(CMD_READ, 42, 8192, 8192));
    let mut data = vec![0u8; 8192];
    loop {
        let (flags, kind, cookie, payload) = ext_chunk(&mut raw);
        assert_eq!(cookie, 42);
        if kind == 1 {
            // OFFSET_DATA: offset, then the bytes.
            let off = (be64(&payload[..8]) - 8192) as usize;
            data[off..off + payload.len() - 8].copy_from_slice(&payload[8..]);
        } else {
            assert_eq!(kind, 0, "only data chunks and a final NONE expected");
        }
        if flags & 1 != 0 {
            break;
        }
    }
    assert_eq!(data, pattern(SEED, 8192, 8192));
    raw.send(&ext_request(CMD_READ, 43, SIZE, 4096));
    let (flags, kind, cookie, payload) = ext_chunk(&mut raw);
    assert_eq!(
        (flags & 1, kind, cookie),
        (1, 0x8001, 43),
        "an error chunk, done"
    );
    assert_eq!(be32(&payload[..4]), 22, "EINVAL past the end");
    raw.send(&ext_request(CMD_READ, 44, 0, 512));
    let (_, kind, cookie, payload) = ext_chunk(&mut raw);
    assert_eq!(
        (kind, cookie),
        (1, 44),
        "the session goes on after an error"
    );
    assert_eq!(&payload[8..], &pattern(SEED, 0, 512)[..]);
    f.good_client_works();
}

#[test]
fn raw_bad_request_magic_closes_only_that_client() {
    let mut f = fixture();
    let mut raw = Raw::negotiate(&f.sock);
    assert_eq!(raw.go("disk").last().map(|r| r.kind), Some(REP_ACK));
    raw.send(&[0xaa; 28]);
    assert!(
        raw.closed_by_server(),
        "a bad request magic ends that session"
    );
    f.good_client_works();
}

/// A client that announces a 64 KiB write, sends 1000 bytes and hangs up:
/// nothing of it lands, the server goes on.
#[test]
fn raw_client_hangs_up_mid_payload() {
    let mut f = fixture();
    let mut raw = Raw::negotiate(&f.sock);
    assert_eq!(raw.go("disk").last().map(|r| r.kind), Some(REP_ACK));
    let mut msg = request(0, CMD_WRITE, 5, 0, 65536);
    msg.extend_from_slice(&[0xee; 1000]);
    raw.send(&msg);
    drop(raw);
    f.good_client_works();
    assert_bytes(&f.img, 0, &pattern(SEED, 0, 65536), "a half-sent write");
}

/// A client that sends 1000 reads of 64 KiB and never reads the replies
/// holds up only itself: another client is served meanwhile.
#[test]
fn raw_client_never_reads_replies() {
    let mut f = fixture();
    let mut raw = Raw::negotiate(&f.sock);
    assert_eq!(raw.go("disk").last().map(|r| r.kind), Some(REP_ACK));
    let mut burst = Vec::new();
    for i in 0..1000u64 {
        burst.extend_from_slice(&request(0, CMD_READ, i, (i % 16) * 65536, 65536));
    }
    raw.send(&burst);
    f.good_client_works();
    let out = run_ok(tool("nbdinfo").arg("--map").arg(f.srv.uri("disk")));
    assert!(out.contains("data"), "{out}");
    drop(raw);
    f.good_client_works();
}
