//! Pipelined requests: the server reads many headers (and payloads) per
//! system call and queues the replies of requests that complete at once;
//! every request must still get exactly its own whole reply, whatever the
//! way the bytes arrive (bursts, payloads across the read-ahead buffer,
//! headers split between writes).

mod helpers;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use corio_nbd::proto::*;
use corio_nbd::storage::file::{FileOptions, FileStorage};
use corio_nbd::storage::Storage;
use helpers::inproc::*;

const MIB: u64 = 1 << 20;

/// One encoded request without flags.
fn req(mode: Mode, cookie: u64, command: Command, offset: u64, length: u64) -> Vec<u8> {
    encode_request(mode, cookie, command, CmdFlags::empty(), offset, length)
}

/// Sends `burst` from another thread while the replies are read: the
/// replies of a large burst do not fit the socket buffers.
fn send_burst(c: &Client, burst: Vec<u8>) -> std::thread::JoinHandle<()> {
    let mut s = c.s.try_clone().expect("clone the client socket");
    std::thread::spawn(move || s.write_all(&burst).expect("send the burst"))
}

/// The replies to `n` requests, by cookie: the bytes read (holes filled)
/// or an empty vector for a reply without data; every reply succeeded.
fn replies(c: &mut Client, n: usize) -> HashMap<u64, Vec<u8>> {
    let mut got: HashMap<u64, Vec<u8>> = HashMap::new();
    for _ in 0..n {
        let chunks = c.chunks();
        let mut cookie = None;
        let mut data: Vec<(u64, Vec<u8>)> = Vec::new();
        for m in chunks {
            let (k, kind) = match m {
                Msg::Simple { cookie, error: 0 } => (cookie, Kind::None),
                Msg::Chunk { cookie, kind, .. } => (cookie, kind),
                other => panic!("a failed reply: {other:?}"),
            };
            assert!(cookie.is_none_or(|c| c == k), "chunks of one reply");
            cookie = Some(k);
            match kind {
                Kind::None => {}
                Kind::Data { offset, data: d } => data.push((offset, d)),
                Kind::Hole { offset, length } => data.push((offset, vec![0; length as usize])),
                other => panic!("unexpected chunk {other:?}"),
            }
        }
        data.sort_by_key(|d| d.0);
        let bytes = data.into_iter().flat_map(|d| d.1).collect();
        let k = cookie.expect("a reply has a chunk");
        assert!(got.insert(k, bytes).is_none(), "two replies to {k}");
    }
    got
}

fn pipelined_writes_and_reads(storage: Arc<dyn Storage>) {
    let srv = start(export("", storage), |c| c.iothreads = 1);
    let mut c = srv.connect();
    c.go("", Mode::Structured);
    let mode = c.mode;
    // Writes of many sizes, one of them larger than the read-ahead
    // buffer, sent as one burst.
    let sizes = [4096usize, 100, 3, 100 * 1024, 4096, 65536 - 28, 1, 8192];
    let mut burst = Vec::new();
    let mut writes = Vec::new();
    let mut off = 0u64;
    for i in 0..64usize {
        let len = sizes[i % sizes.len()];
        let data = pattern(i as u8, len);
        let cookie = 1000 + i as u64;
        burst.extend(req(mode, cookie, Command::Write, off, len as u64));
        burst.extend_from_slice(&data);
        writes.push((cookie, off, data));
        off += len as u64 + 512;
    }
    let t = send_burst(&c, burst);
    let got = replies(&mut c, writes.len());
    t.join().unwrap();
    for (cookie, ..) in &writes {
        assert_eq!(got.get(cookie), Some(&Vec::new()), "write {cookie}");
    }
    // Reads of all of it, as one burst, then one more read whose header
    // arrives in two pieces.
    let mut burst = Vec::new();
    for (cookie, off, data) in &writes {
        burst.extend(req(
            mode,
            cookie + 1000,
            Command::Read,
            *off,
            data.len() as u64,
        ));
    }
    let t = send_burst(&c, burst);
    let got = replies(&mut c, writes.len());
    t.join().unwrap();
    for (cookie, _, data) in &writes {
        assert!(got[&(cookie + 1000)] == *data, "read {}", cookie + 1000);
    }
    let split = req(mode, 7, Command::Read, writes[3].1, 4096);
    c.send(&split[..10]);
    std::thread::sleep(Duration::from_millis(50));
    c.send(&split[10..]);
    let got = replies(&mut c, 1);
    assert!(got[&7] == writes[3].2[..4096], "the split request");
    drop(c);
    srv.stop().unwrap();
}

#[test]
fn pipelined_requests_on_memory() {
    pipelined_writes_and_reads(memory(16 * MIB));
}

#[test]
fn pipelined_requests_on_a_tmpfs_file() {
    let shm = Path::new("/dev/shm");
    assert!(shm.is_dir(), "/dev/shm (tmpfs) is needed for this test");
    let dir = TempDir::new("pipelining");
    let dir = TempDir(shm.join(dir.0.file_name().expect("a name")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("disk.raw");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(16 * MIB))
        .expect("create the image");
    let st = FileStorage::open(&path, FileOptions::default()).expect("open the image");
    pipelined_writes_and_reads(Arc::new(st));
}
