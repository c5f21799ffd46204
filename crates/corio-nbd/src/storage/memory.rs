//! A sparse disk in memory, like nbdkit's memory plugin: 64 KiB chunks
//! allocated on first write, holes read as zeroes. The default export when
//! no image is named.
//!
//! Chunks live in hash maps sharded by chunk index, each behind a std
//! mutex held only for a copy (never across a yield), so that clients on
//! several IOThreads rarely meet. Nothing here blocks for long, so the
//! work is done in place, without a thread hop.

use std::collections::HashMap;
use std::io;
use std::sync::{Mutex, MutexGuard};

use super::{push_extent, read_only_error, Capabilities, Extent, Storage, ZeroFlags};

/// Bytes per chunk.
pub const CHUNK: u64 = 64 * 1024;
const SHARDS: usize = 64;

type Shard = HashMap<u64, Box<[u8]>>;

/// A sparse in-memory disk.
///
/// # Examples
///
/// ```
/// use corio_nbd::storage::{memory::MemoryStorage, Storage};
///
/// let disk = MemoryStorage::new(1 << 20, false);
/// disk.write_at(4096, b"hello".to_vec(), false).unwrap();
/// let back = disk.read_at(4096, vec![0; 5]).unwrap();
/// assert_eq!(back, b"hello");
/// // The 64 KiB chunk written to is data, the rest a hole.
/// assert_eq!(disk.extents(0, 1 << 20, 16).unwrap().len(), 2);
/// ```
#[derive(Debug)]
pub struct MemoryStorage {
    size: u64,
    read_only: bool,
    /// Chunk index -> its bytes; a chunk absent from its shard is a hole.
    shards: Vec<Mutex<Shard>>,
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryStorage {
    /// A disk of `size` bytes, all holes.
    pub fn new(size: u64, read_only: bool) -> MemoryStorage {
        MemoryStorage {
            size,
            read_only,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, chunk: u64) -> MutexGuard<'_, Shard> {
        lock(&self.shards[(chunk % SHARDS as u64) as usize])
    }

    /// Bytes held in memory (allocated chunks).
    pub fn allocated(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| lock(s).len() as u64)
            .sum::<u64>()
            * CHUNK
    }

    /// Calls `f(chunk, start_in_chunk, len, pos_in_range)` for each chunk
    /// piece of `[offset, offset + len)`.
    fn pieces(offset: u64, len: u64, mut f: impl FnMut(u64, usize, usize, usize)) {
        let mut pos = 0u64;
        while pos < len {
            let abs = offset + pos;
            let chunk = abs / CHUNK;
            let start = abs % CHUNK;
            let n = (CHUNK - start).min(len - pos);
            f(chunk, start as usize, n as usize, pos as usize);
            pos += n;
        }
    }

    fn zero_range(&self, offset: u64, len: u64) {
        Self::pieces(offset, len, |chunk, start, n, _| {
            let mut shard = self.shard(chunk);
            if n as u64 == CHUNK {
                shard.remove(&chunk);
            } else if let Some(c) = shard.get_mut(&chunk) {
                c[start..start + n].fill(0);
                if c.iter().all(|&b| b == 0) {
                    shard.remove(&chunk);
                }
            }
        });
    }
}

impl Storage for MemoryStorage {
    fn size(&self) -> u64 {
        self.size
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            writable: !self.read_only,
            trim: true,
            fast_zero: true,
            rotational: false,
            mapped_reads: false,
        }
    }

    fn read_at(&self, offset: u64, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
        Self::pieces(offset, buf.len() as u64, |chunk, start, n, pos| {
            let out = &mut buf[pos..pos + n];
            match self.shard(chunk).get(&chunk) {
                Some(c) => out.copy_from_slice(&c[start..start + n]),
                None => out.fill(0),
            }
        });
        Ok(buf)
    }

    fn write_at(&self, offset: u64, data: Vec<u8>, _fua: bool) -> io::Result<Vec<u8>> {
        if self.read_only {
            return Err(read_only_error());
        }
        Self::pieces(offset, data.len() as u64, |chunk, start, n, pos| {
            let src = &data[pos..pos + n];
            let mut shard = self.shard(chunk);
            match shard.get_mut(&chunk) {
                Some(c) => c[start..start + n].copy_from_slice(src),
                // Writing zeroes into a hole leaves it a hole.
                None if src.iter().all(|&b| b == 0) => {}
                None => {
                    let mut c = vec![0u8; CHUNK as usize].into_boxed_slice();
                    c[start..start + n].copy_from_slice(src);
                    shard.insert(chunk, c);
                }
            }
        });
        Ok(data)
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        self.zero_range(offset, len);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, _flags: ZeroFlags) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        // A hole and written zeroes read the same; a chunk that ends up
        // all zero is freed either way.
        self.zero_range(offset, len);
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64, max_extents: usize) -> io::Result<Vec<Extent>> {
        let mut out = Vec::new();
        let mut full = false;
        Self::pieces(offset, len, |chunk, _, n, _| {
            if full {
                return;
            }
            let hole = !self.shard(chunk).contains_key(&chunk);
            let e = Extent {
                length: n as u64,
                hole,
                zero: hole,
            };
            full = !push_extent(&mut out, e, max_extents.max(1));
        });
        Ok(out)
    }

    fn cache(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}
