//! Test images: deterministic data patterns, sparse files with a known
//! data / hole layout, and comparisons that say where two images differ.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

/// `len` bytes of a pattern that differs for every `seed` and offset
/// (xorshift64 words, so no two 8-byte words of an image repeat).
pub fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    assert!(
        offset % 8 == 0 && len % 8 == 0,
        "pattern works in 8-byte words"
    );
    let mut out = Vec::with_capacity(len);
    for word in 0..(len as u64 / 8) {
        let mut x = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)) ^ (offset / 8 + word + 1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Creates `path`: `size` bytes, all pattern `seed`.
pub fn data_image(path: &Path, size: u64, seed: u64) {
    let file = File::create(path).expect("create image");
    let chunk = 1 << 20;
    let mut off = 0;
    while off < size {
        let n = chunk.min(size - off) as usize;
        file.write_all_at(&pattern(seed, off, n), off)
            .expect("write image");
        off += n as u64;
    }
}

/// Creates a sparse `path` of `size` bytes where only `data` ranges
/// (offset, length) hold pattern `seed`; the rest are holes.
pub fn sparse_image(path: &Path, size: u64, data: &[(u64, u64)], seed: u64) {
    let file = File::create(path).expect("create image");
    file.set_len(size).expect("size image");
    for &(off, len) in data {
        file.write_all_at(&pattern(seed, off, len as usize), off)
            .expect("write image data");
    }
}

/// Creates an empty (all-hole) raw image with `qemu-img create -f raw`.
pub fn qemu_img_create(path: &Path, size: &str) {
    super::run_ok(
        super::tool("qemu-img")
            .args(["create", "-q", "-f", "raw"])
            .arg(path)
            .arg(size),
    );
}

/// Reads `len` bytes at `offset` of the file at `path`.
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let file = File::open(path).expect("open image");
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, offset).expect("read image");
    buf
}

/// Writes `data` at `offset` into the file at `path`.
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open image");
    file.write_all_at(data, offset).expect("write image");
}

/// The sha256 of a file, from coreutils' sha256sum.
pub fn sha256(path: &Path) -> String {
    let out = super::run_ok(Command::new("sha256sum").arg(path));
    out.split_whitespace()
        .next()
        .expect("sha256sum prints a digest")
        .to_owned()
}

/// Asserts that two files have the same size and sha256; on a mismatch
/// the message names the first differing offset.
pub fn assert_same(a: &Path, b: &Path) {
    let (sa, sb) = (sha256(a), sha256(b));
    if sa == sb {
        return;
    }
    let (da, db) = (fs::read(a).expect("read a"), fs::read(b).expect("read b"));
    let first = da.iter().zip(&db).position(|(x, y)| x != y);
    panic!(
        "{} ({} bytes, sha256 {sa}) and {} ({} bytes, sha256 {sb}) differ; first differing offset {first:?}",
        a.display(),
        da.len(),
        b.display(),
        db.len()
    );
}

/// Asserts that `len` bytes at `offset` of `path` all equal `byte`; the
/// message names the first byte that does not (never the whole buffer).
pub fn assert_filled(path: &Path, offset: u64, len: usize, byte: u8, what: &str) {
    let got = read_at(path, offset, len);
    if let Some(i) = got.iter().position(|&b| b != byte) {
        panic!(
            "{what}: {} at offset {} holds {:#04x}, expected {byte:#04x} in [{offset}, +{len})",
            path.display(),
            offset + i as u64,
            got[i]
        );
    }
}

/// Asserts that bytes at `offset` of `path` equal `want`, naming the first
/// differing offset.
pub fn assert_bytes(path: &Path, offset: u64, want: &[u8], what: &str) {
    let got = read_at(path, offset, want.len());
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: {} at offset {} holds {:#04x}, expected {:#04x}",
            path.display(),
            offset + i as u64,
            got[i],
            want[i]
        );
    }
}
