//! Lifecycle: shutdown with requests in flight, the `--shared` limit, and
//! the exit after the last client without `--persistent`; the file
//! storage served end to end.

mod helpers;

use std::sync::Arc;
use std::time::Duration;

use corio_nbd::proto::*;
use corio_nbd::storage::file::{FileOptions, FileStorage};
use corio_nbd::storage::Storage;
use helpers::inproc::*;

const MIB: u64 = 1 << 20;

#[test]
fn shutdown_answers_what_is_in_flight() {
    let mem = memory(16 * MIB);
    let srv = start(export("", mem.clone()), |_| {});
    let mut c = srv.connect();
    c.go("", Mode::Structured);
    let mut sent = Vec::new();
    for i in 0..64u64 {
        let d = pattern(i as u8, 65536);
        let Some(cookie) = c.try_request(Command::Write, i * 65536, &d) else {
            break;
        };
        sent.push((cookie, i));
        if i == 40 {
            srv.handle.shutdown();
        }
    }
    // Every reply that arrives is a success, each once; then EOF.
    let mut answered = Vec::new();
    while let Some(m) = c.reply() {
        match m {
            Msg::Simple { cookie, error: 0 } => answered.push(cookie),
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut dedup = answered.clone();
    dedup.sort_unstable();
    dedup.dedup();
    assert_eq!(dedup.len(), answered.len(), "no request answered twice");
    for (cookie, i) in sent {
        if answered.contains(&cookie) {
            let got = mem.read_at(i * 65536, vec![0; 65536]).unwrap();
            assert_eq!(
                got,
                pattern(i as u8, 65536),
                "answered write {i} is in the storage"
            );
        }
    }
    srv.stop().unwrap();
}

#[test]
fn shared_limit_stops_accepting_until_a_client_leaves() {
    let srv = start(export("", memory(MIB)), |c| c.shared = 1);
    let mut first = srv.connect();
    first.go("", Mode::Simple);
    let mut second = srv.connect();
    second
        .s
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    let r = std::io::Read::read(&mut second.s, &mut b);
    assert!(
        r.is_err(),
        "no greeting while the first client is connected: {r:?}"
    );
    second.s.set_read_timeout(Some(DEADLINE)).unwrap();
    drop(first);
    // The greeting's first byte was consumed above only on failure; a
    // fresh decode from the start is what follows.
    second.go("", Mode::Simple);
    assert_eq!(second.write(0, b"ok"), 0);
}

#[test]
fn without_persistent_the_server_exits_after_the_last_client() {
    let mut srv = start(export("", memory(MIB)), |c| {
        c.persistent = false;
        c.shared = 0;
    });
    let mut a = srv.connect();
    a.go("", Mode::Simple);
    let mut b = srv.connect();
    b.go("", Mode::Simple);
    drop(a);
    assert_eq!(b.write(0, b"x"), 0);
    drop(b);
    srv.join().unwrap();
}

#[test]
fn file_storage_sparse_reads_and_block_status() {
    let dir = TempDir::new("file");
    let path = dir.0.join("disk.raw");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(8 * MIB).unwrap();
    drop(f);
    let st = Arc::new(FileStorage::open(&path, FileOptions::default()).unwrap());
    let mut e = export("", st.clone());
    e.discard = corio_nbd::server::Discard::Unmap;
    let srv = start(e, |c| c.iothreads = 1);
    let mut c = srv.connect();
    let (size, _) = c.go("", Mode::Structured);
    assert_eq!(size, 8 * MIB);
    let data = pattern(5, 65536);
    assert_eq!(c.write(MIB, &data), 0);
    let w = c.request(Command::Write, CmdFlags::FUA, 3 * MIB, 3, b"fua");
    assert_eq!(c.status(w), 0);
    assert_eq!(
        c.read(MIB - 4096, 65536 + 8192).unwrap()[4096..4096 + 65536],
        data[..]
    );
    let _ = c.request(Command::BlockStatus, CmdFlags::empty(), 0, 2 * MIB, &[]);
    let v = c.chunks();
    let Msg::Chunk {
        kind: Kind::Status { extents, .. },
        ..
    } = &v[0]
    else {
        panic!("{v:?}")
    };
    // tmpfs and ext4 allocate at least the written pages, maybe more.
    assert_eq!(extents[0].1, 3, "{extents:?}");
    assert!(extents.iter().any(|e| e.1 == 0), "{extents:?}");
    assert_eq!(extents.iter().map(|e| e.0).sum::<u64>(), 2 * MIB);
    // Punch it out again, zero a range, flush.
    let t = c.request(Command::Trim, CmdFlags::empty(), MIB, 65536, &[]);
    assert_eq!(c.status(t), 0);
    let z = c.request(Command::WriteZeroes, CmdFlags::NO_HOLE, 3 * MIB, 4096, &[]);
    assert_eq!(c.status(z), 0);
    let f = c.request(Command::Flush, CmdFlags::empty(), 0, 0, &[]);
    assert_eq!(c.status(f), 0);
    assert_eq!(c.read(MIB, 65536).unwrap(), vec![0; 65536]);
    assert_eq!(c.read(3 * MIB, 4).unwrap(), vec![0; 4]);
    drop(c);
    srv.stop().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        bytes.iter().all(|&b| b == 0),
        "the file holds what the clients left"
    );
}
