//! A file export's allocation map stays true while clients write, trim and
//! zero: sparse reads (`OFFSET_HOLE` chunks) and `BLOCK_STATUS` answer
//! from the storage's cache of runs, which these requests must keep right.
//! Each test runs on tmpfs (`/dev/shm`) and on the temp directory's file
//! system, since the two allocate and seek differently.

mod helpers;

use std::path::Path;
use std::sync::Arc;

use corio_nbd::proto::*;
use corio_nbd::storage::file::{FileOptions, FileStorage};
use helpers::inproc::*;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 8 * MIB;

/// The directories to test in: tmpfs and the temp directory.
fn bases() -> Vec<TempDir> {
    let shm = Path::new("/dev/shm");
    assert!(shm.is_dir(), "/dev/shm (tmpfs) is needed for this test");
    let tmp = TempDir::new("extents");
    let on_shm = TempDir(shm.join(tmp.0.file_name().expect("a name")));
    std::fs::create_dir_all(&on_shm.0).expect("create a directory in /dev/shm");
    vec![on_shm, tmp]
}

/// A server exporting a sparse file of [`SIZE`] bytes in `dir`, with
/// discards passed down; the client in structured mode.
fn serve(dir: &Path) -> (TestServer, Client) {
    let path = dir.join("disk.raw");
    let f = std::fs::File::create(&path).expect("create the image");
    f.set_len(SIZE).expect("size the image");
    drop(f);
    let st = Arc::new(FileStorage::open(&path, FileOptions::default()).expect("open"));
    let mut e = export("", st);
    e.discard = corio_nbd::server::Discard::Unmap;
    let srv = start(e, |c| c.iothreads = 1);
    let mut c = srv.connect();
    c.go("", Mode::Structured);
    (srv, c)
}

/// `base:allocation` of `[offset, offset + len)`: (length, flags) pairs.
fn status(c: &mut Client, offset: u64, len: u64) -> Vec<(u64, u64)> {
    let _ = c.request(Command::BlockStatus, CmdFlags::empty(), offset, len, &[]);
    let v = c.chunks();
    let Msg::Chunk {
        kind: Kind::Status { extents, .. },
        ..
    } = &v[0]
    else {
        panic!("block status reply expected: {v:?}")
    };
    assert_eq!(extents.iter().map(|e| e.0).sum::<u64>(), len, "{extents:?}");
    extents.clone()
}

/// The flags of the extent holding `pos`, from a block status of all.
fn flags_at(c: &mut Client, pos: u64) -> u64 {
    let mut at = 0;
    for (len, flags) in status(c, 0, SIZE) {
        if pos < at + len {
            return flags;
        }
        at += len;
    }
    panic!("no extent holds {pos}")
}

/// The chunk kinds of a structured read (data bytes dropped).
fn read_kinds(c: &mut Client, offset: u64, len: u64) -> Vec<&'static str> {
    let _ = c.request(Command::Read, CmdFlags::empty(), offset, len, &[]);
    c.chunks()
        .iter()
        .map(|m| match m {
            Msg::Chunk {
                kind: Kind::Hole { .. },
                ..
            } => "hole",
            Msg::Chunk {
                kind: Kind::Data { .. },
                ..
            } => "data",
            other => panic!("unexpected read chunk {other:?}"),
        })
        .collect()
}

#[test]
fn write_then_read_keeps_extents_right() {
    for dir in bases() {
        let (srv, mut c) = serve(&dir.0);
        let mut model = vec![0u8; SIZE as usize];
        assert_eq!(status(&mut c, 0, SIZE), [(SIZE, 3)], "a new sparse file");
        // The hole is now known; reads of it are OFFSET_HOLE chunks.
        assert_eq!(read_kinds(&mut c, 2 * MIB, 65536), ["hole"]);
        // Writes into known holes: reads and block status see the data.
        for (i, &(off, len)) in [(2 * MIB + 8192, 4096), (6 * MIB + 100, 50)]
            .iter()
            .enumerate()
        {
            let data = pattern(i as u8 + 1, len);
            assert_eq!(c.write(off, &data), 0);
            model[off as usize..off as usize + len].copy_from_slice(&data);
            let at = off & !4095;
            assert_eq!(c.read(at, 65536).unwrap(), model[at as usize..][..65536]);
            assert_eq!(flags_at(&mut c, off) & 1, 0, "data at {off}");
            assert!(read_kinds(&mut c, at, 4096).contains(&"data"));
        }
        assert_eq!(flags_at(&mut c, 0), 3, "the start is still a hole");
        // Random writes interleaved with reads of what they touch and of
        // a range around them: always what was written.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..48u8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = x % (SIZE - 8192);
            let data = pattern(i, 4096 + (x % 4096) as usize);
            assert_eq!(c.write(off, &data), 0);
            model[off as usize..off as usize + data.len()].copy_from_slice(&data);
            let lo = off.saturating_sub(MIB / 2);
            let len = MIB.min(SIZE - lo);
            let got = c.read(lo, len).unwrap();
            assert!(
                got == model[lo as usize..(lo + len) as usize],
                "read of {lo}+{len} after write {i} at {off}"
            );
        }
        assert!(c.read(0, SIZE).unwrap() == model, "the whole disk");
        drop(c);
        srv.stop().unwrap();
    }
}

#[test]
fn trim_and_zeroing_update_cached_runs() {
    for dir in bases() {
        let (srv, mut c) = serve(&dir.0);
        let data = pattern(9, MIB as usize);
        assert_eq!(c.write(MIB, &data), 0);
        // Known as data now (read and block status).
        assert_eq!(c.read(MIB, MIB).unwrap(), data);
        assert_eq!(status(&mut c, MIB, MIB), [(MIB, 0)]);
        let t = c.request(Command::Trim, CmdFlags::empty(), MIB, MIB, &[]);
        assert_eq!(c.status(t), 0);
        assert_eq!(status(&mut c, MIB, MIB), [(MIB, 3)], "trimmed");
        assert_eq!(read_kinds(&mut c, MIB, MIB), ["hole"]);
        assert_eq!(c.read(MIB, MIB).unwrap(), vec![0; MIB as usize]);
        // Data again, then zeroed with holes allowed, then without.
        assert_eq!(c.write(MIB, &data[..65536]), 0);
        assert_eq!(c.read(MIB, 65536).unwrap(), data[..65536]);
        let z = c.request(Command::WriteZeroes, CmdFlags::empty(), MIB, 65536, &[]);
        assert_eq!(c.status(z), 0);
        assert_eq!(c.read(MIB, 65536).unwrap(), vec![0; 65536]);
        assert_eq!(status(&mut c, MIB, 65536)[0].1 & 2, 2, "reads as zero");
        assert_eq!(c.write(3 * MIB, &data[..65536]), 0);
        assert_eq!(c.read(3 * MIB, 65536).unwrap(), data[..65536]);
        let z = c.request(Command::WriteZeroes, CmdFlags::NO_HOLE, 3 * MIB, 4096, &[]);
        assert_eq!(c.status(z), 0);
        let mut want = data[..65536].to_vec();
        want[..4096].fill(0);
        assert_eq!(c.read(3 * MIB, 65536).unwrap(), want);
        drop(c);
        srv.stop().unwrap();
    }
}
