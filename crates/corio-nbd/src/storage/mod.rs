//! Storage behind an export: a small trait and its backends.
//!
//! The server calls a [`Storage`] from the coroutine that serves one
//! request. A backend that blocks (a file) hands its system calls to the
//! thread pool of the caller's context (`corio::thread_pool::submit_co`),
//! so the coroutine sleeps and the context serves others meanwhile; a
//! backend that never blocks (memory) does the work in place. An io_uring
//! backend would implement the same trait.
//!
//! - [`memory::MemoryStorage`]: a sparse disk in memory (the default when
//!   no image is named).
//! - [`file::FileStorage`]: a raw image file or block device.
//! - [`probed::ProbedRaw`]: a raw image whose format was probed: writes
//!   that would make its first sector look like another format are
//!   refused, as QEMU does.
//! - [`qcow2::Qcow2Storage`]: a qcow2 image, through the `imago` crate.

use std::io;

mod datamap;
pub mod file;
pub mod memory;
pub mod probed;
pub mod qcow2;

/// What a storage can do; the server derives its transmission flags from
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Writes (WRITE, TRIM, WRITE_ZEROES) are allowed.
    pub writable: bool,
    /// TRIM does something (else it succeeds and changes nothing).
    pub trim: bool,
    /// `write_zeroes` with `fast` can succeed: zeroing is cheaper than
    /// writing zeroes.
    pub fast_zero: bool,
    /// The medium is rotational (`NBD_FLAG_ROTATIONAL`).
    pub rotational: bool,
    /// [`Storage::read_mapped`] reads and maps a range in one go, more
    /// cheaply than [`Storage::extents`] followed by [`Storage::read_at`]:
    /// the server uses it for structured (sparse) reads.
    pub mapped_reads: bool,
}

/// How to write zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZeroFlags {
    /// The range may be deallocated (the client did not set `NO_HOLE`).
    pub may_trim: bool,
    /// Fail with `ENOTSUP` rather than fall back to writing zeroes
    /// (`NBD_CMD_FLAG_FAST_ZERO`).
    pub fast: bool,
    /// Durable before returning (`NBD_CMD_FLAG_FUA`).
    pub fua: bool,
}

/// One run of the storage's allocation map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes (nonzero).
    pub length: u64,
    /// Not allocated (`NBD_STATE_HOLE`).
    pub hole: bool,
    /// Reads as zeroes (`NBD_STATE_ZERO`).
    pub zero: bool,
}

impl Extent {
    /// The `base:allocation` flags of this extent.
    pub fn flags(&self) -> u32 {
        let mut f = 0;
        if self.hole {
            f |= crate::proto::state::HOLE;
        }
        if self.zero {
            f |= crate::proto::state::ZERO;
        }
        f
    }
}

/// The storage of an export.
///
/// Every method may be called concurrently from several threads (clients
/// on different IOThreads). Methods that take time are called from a
/// coroutine, which they may suspend (they may use
/// `corio::thread_pool::submit_co`). The server checks ranges before it
/// calls: `offset + len <= size()`.
pub trait Storage: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;

    /// What the storage can do.
    fn capabilities(&self) -> Capabilities;

    /// Reads `buf.len()` bytes at `offset` into `buf`, which it hands back
    /// (so that a backend can lend it to another thread). Every byte of
    /// `buf` is overwritten: callers reuse buffers without clearing them.
    ///
    /// # Errors
    /// Any I/O error.
    fn read_at(&self, offset: u64, buf: Vec<u8>) -> io::Result<Vec<u8>>;

    /// Writes `data` at `offset`; with `fua`, durably. Hands `data` back,
    /// for reuse.
    ///
    /// # Errors
    /// Any I/O error; `EPERM` if read-only.
    fn write_at(&self, offset: u64, data: Vec<u8>, fua: bool) -> io::Result<Vec<u8>>;

    /// Makes every completed write durable.
    ///
    /// # Errors
    /// Any I/O error.
    fn flush(&self) -> io::Result<()>;

    /// Deallocates `len` bytes at `offset` (what reads return afterwards
    /// is unspecified by NBD; both backends here read zeroes).
    ///
    /// # Errors
    /// Any I/O error.
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()>;

    /// Makes `len` bytes at `offset` read as zeroes.
    ///
    /// # Errors
    /// `ENOTSUP` with [`ZeroFlags::fast`] when that cannot be done cheaply;
    /// any I/O error.
    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()>;

    /// The allocation map of `[offset, offset + len)`: one or more extents
    /// that start at `offset` and cover at least one byte of it, at most
    /// `len` bytes in all, at most `max_extents` of them.
    ///
    /// # Errors
    /// Any I/O error.
    fn extents(&self, offset: u64, len: u64, max_extents: usize) -> io::Result<Vec<Extent>>;

    /// Prefetches a range (`NBD_CMD_CACHE`); a hint.
    ///
    /// # Errors
    /// Any I/O error.
    fn cache(&self, offset: u64, len: u64) -> io::Result<()>;

    /// The `qemu:allocation-depth` map of `[offset, offset + len)`, as
    /// [`extents`](Self::extents) gives the allocation map: `(length,
    /// depth)` runs, depth 0 for unallocated, 1 for this image, 2 and up
    /// for its backing chain. The default: all of it in this image (a
    /// storage without backing).
    ///
    /// # Errors
    /// Any I/O error.
    fn allocation_depth(
        &self,
        offset: u64,
        len: u64,
        max_extents: usize,
    ) -> io::Result<Vec<(u64, u32)>> {
        let _ = (offset, max_extents);
        Ok(vec![(len, 1)])
    }

    /// Reads `buf.len()` bytes at `offset` and maps them: the extents
    /// cover the whole range, and the bytes of the
    /// extents that are not [`Extent::zero`] are read into `buf` (the rest
    /// of `buf` is unspecified). The server calls it only when
    /// [`Capabilities::mapped_reads`] says it is cheaper than what this
    /// default does ([`extents`](Self::extents) then
    /// [`read_at`](Self::read_at)).
    ///
    /// # Errors
    /// Any I/O error.
    fn read_mapped(&self, offset: u64, buf: Vec<u8>) -> io::Result<(Vec<u8>, Vec<Extent>)> {
        let len = buf.len() as u64;
        let mut extents = Vec::new();
        let mut pos = offset;
        while pos < offset + len {
            let got = self.extents(pos, offset + len - pos, 1024)?;
            if got.is_empty() {
                return Err(io::Error::other("storage reported no extent"));
            }
            for e in got {
                pos += e.length;
                extents.push(e);
            }
        }
        Ok((self.read_at(offset, buf)?, extents))
    }

    /// A client disconnected (after its last reply). The default does
    /// nothing; a storage with its own caches (qcow2 metadata) writes
    /// them back, so that an image its last client left is consistent on
    /// disk even if the server is killed later.
    ///
    /// # Errors
    /// Any I/O error (logged by the server).
    fn disconnected(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The error a read-only storage gives to writes.
pub(crate) fn read_only_error() -> io::Error {
    io::Error::from_raw_os_error(libc::EPERM)
}

/// `ENOTSUP`, for a zeroing that cannot be fast.
pub(crate) fn not_supported() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOTSUP)
}

/// Appends an extent to `out`, merging it with the last one when both have
/// the same status; `false` once `out` holds `max` extents and this one
/// would be another.
pub(crate) fn push_extent(out: &mut Vec<Extent>, e: Extent, max: usize) -> bool {
    if let Some(last) = out.last_mut() {
        if last.hole == e.hole && last.zero == e.zero {
            last.length += e.length;
            return true;
        }
    }
    if out.len() >= max {
        return false;
    }
    out.push(e);
    true
}
