//! Many clients connected at once to `corio-nbd -e 0 --iothreads 2` over
//! a Unix socket: 100 by default, 1,000 with `CORIO_TEST_THOROUGH=1`.
//! Each raw std `UnixStream` client handshakes (fixed newstyle,
//! `NBD_OPT_EXPORT_NAME`) and stays connected; then each writes its own
//! 4 KiB and reads it back. All must be served. The server's RSS
//! (/proc/PID/status VmRSS) with every client connected is printed, not
//! asserted.

mod helpers;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use helpers::process::{corio_nbd, handshake, ServerProc, TempDir, DEADLINE};

const BLOCK: usize = 4096;
const REPLY_MAGIC: u32 = 0x6744_6698;

fn clients() -> usize {
    if helpers::thorough() {
        1000
    } else {
        100
    }
}

/// Raises the soft descriptor limit to the hard one (the server, a child,
/// inherits it): both ends of every connection are open at once.
fn raise_nofile(need: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass, which lives on our stack.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur < need {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we pass.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }
    assert!(
        lim.rlim_cur >= need,
        "RLIMIT_NOFILE hard limit {} is below the {need} descriptors this test needs",
        lim.rlim_max
    );
}

fn request(cmd: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
    r.extend(0u16.to_be_bytes());
    r.extend(cmd.to_be_bytes());
    r.extend(cookie.to_be_bytes());
    r.extend(offset.to_be_bytes());
    r.extend(len.to_be_bytes());
    r
}

/// Reads a simple reply for `cookie`; asserts no error.
fn simple_reply(s: &mut UnixStream, cookie: u64) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), REPLY_MAGIC);
    assert_eq!(u32::from_be_bytes(h[4..8].try_into().unwrap()), 0, "error");
    assert_eq!(u64::from_be_bytes(h[8..].try_into().unwrap()), cookie);
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn many_clients_at_once_are_all_served() {
    let n = clients();
    raise_nofile(2 * n as u64 + 64);
    let dir = TempDir::new("many");
    let sock = dir.path("nbd.sock");
    let size = format!("{}", n * BLOCK);
    let srv = ServerProc::start(
        corio_nbd(),
        &[
            "-k",
            sock.to_str().unwrap(),
            "-t",
            "-e",
            "0",
            "--iothreads",
            "2",
            "--size",
            &size,
        ],
        &sock,
    );
    let rss_idle = vm_rss_kib(srv.pid());
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut c =
            UnixStream::connect(&sock).unwrap_or_else(|e| panic!("client {i} cannot connect: {e}"));
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        c.set_write_timeout(Some(DEADLINE)).unwrap();
        assert_eq!(handshake(&mut c), (n * BLOCK) as u64, "client {i}");
        conns.push(c);
    }
    let rss = vm_rss_kib(srv.pid());
    println!(
        "corio-nbd -e 0 --iothreads 2: VmRSS {rss_idle} KiB idle, {rss} KiB with {n} clients \
         connected ({:.1} KiB per client)",
        (rss.saturating_sub(rss_idle)) as f64 / n as f64
    );
    // Every client writes its block, then every client reads it back.
    for (i, c) in conns.iter_mut().enumerate() {
        let mut req = request(1, i as u64, (i * BLOCK) as u64, BLOCK as u32);
        req.extend(std::iter::repeat_n(i as u8 ^ 0x5a, BLOCK));
        c.write_all(&req).unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate() {
        simple_reply(c, i as u64);
        c.write_all(&request(0, i as u64 + 1, (i * BLOCK) as u64, BLOCK as u32))
            .unwrap();
    }
    for (i, c) in conns.iter_mut().enumerate() {
        simple_reply(c, i as u64 + 1);
        let mut data = vec![0u8; BLOCK];
        c.read_exact(&mut data).unwrap();
        assert!(
            data.iter().all(|&b| b == i as u8 ^ 0x5a),
            "client {i} read back another block"
        );
        c.write_all(&request(2, 0, 0, 0)).unwrap(); // NBD_CMD_DISC
    }
    drop(conns);
    let (status, err) = srv.terminate();
    assert!(status.success(), "{err}");
}
