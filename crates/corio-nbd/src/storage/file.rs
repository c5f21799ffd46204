//! A raw image file or block device.
//!
//! Reads, writes, syncs and fallocate calls go to the thread pool of the
//! calling coroutine's context (QEMU's `aio=threads`): the coroutine
//! sleeps in `submit_co` while a worker does the system call. Block
//! status asks the file system with `SEEK_DATA` / `SEEK_HOLE`, in the
//! thread pool too (a scan can take milliseconds), and remembers the runs
//! it found in a `DataMap` that writes, trims and zeroings keep true.
//!
//! Page-cache reads and writes skip the hop when they cannot wait for a
//! device (`InPlace`): on tmpfs the coroutine calls `pread` / `pwrite`
//! itself (the pages are the file: nothing to wait for but memory);
//! elsewhere a read first tries `preadv2(RWF_NOWAIT)`, which fails with
//! `EAGAIN` rather than wait, and only what it could not read goes to the
//! pool. Writes on other file systems always go to the pool: a buffered
//! write may wait for dirty-page throttling or block allocation, and
//! `RWF_NOWAIT` writes are refused by most file systems without
//! `O_DIRECT`. `O_DIRECT` files always use the pool.
//!
//! With [`AioMode::IoUring`] (qemu-nbd's `--aio io_uring`), reads, writes,
//! syncs and fallocate calls go to the io_uring of the coroutine's context
//! instead ([`corio::io::AioFile`]): no thread hop and no in-place
//! heuristics; a context whose kernel refuses io_uring uses its thread
//! pool. `O_DIRECT` files keep the thread pool (their bounce buffers are
//! not `AioFile` buffers), and so do block-status scans (`SEEK_DATA`).

use std::fs::{File, OpenOptions};
use std::io;
use std::io::IoSliceMut;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use corio::io::AioFile;
use rustix::fs::{FallocateFlags, SeekFrom};

use super::datamap::{self, DataMap, Run};
use super::{
    not_supported, push_extent, read_only_error, Capabilities, Extent, Storage, ZeroFlags,
};

/// QEMU's `--cache` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Page cache, flushes honoured (QEMU's default).
    #[default]
    Writeback,
    /// Page cache; every write durable before it completes (`O_DSYNC`).
    Writethrough,
    /// Bypass the page cache (`O_DIRECT`); flushes honoured.
    None,
    /// `O_DIRECT` and `O_DSYNC`.
    Directsync,
    /// Page cache; flushes ignored.
    Unsafe,
}

impl CacheMode {
    /// Parses QEMU's spelling.
    ///
    /// # Errors
    /// A message naming the accepted values.
    pub fn parse(s: &str) -> Result<CacheMode, String> {
        Ok(match s {
            "writeback" => CacheMode::Writeback,
            "writethrough" => CacheMode::Writethrough,
            "none" | "off" => CacheMode::None,
            "directsync" => CacheMode::Directsync,
            "unsafe" => CacheMode::Unsafe,
            _ => {
                return Err(format!(
                "invalid cache mode '{s}' (none, writeback, writethrough, directsync or unsafe)"
            ))
            }
        })
    }

    fn direct(self) -> bool {
        matches!(self, CacheMode::None | CacheMode::Directsync)
    }

    fn dsync(self) -> bool {
        matches!(self, CacheMode::Writethrough | CacheMode::Directsync)
    }
}

/// QEMU's `--aio` modes that corio-nbd has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AioMode {
    /// The thread pool (QEMU's `aio=threads`, the default).
    #[default]
    Threads,
    /// The context's io_uring (QEMU's `aio=io_uring`).
    IoUring,
}

impl AioMode {
    /// Parses QEMU's spelling (`native`, Linux AIO, is not available).
    ///
    /// # Errors
    /// A message naming the accepted values.
    pub fn parse(s: &str) -> Result<AioMode, String> {
        match s {
            "threads" => Ok(AioMode::Threads),
            "io_uring" => Ok(AioMode::IoUring),
            "native" => Err("--aio native is not available: use 'threads' or 'io_uring'".into()),
            _ => Err(format!("invalid aio mode '{s}' (threads or io_uring)")),
        }
    }
}

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileOptions {
    /// Open read-only; writes fail with `EPERM`.
    pub read_only: bool,
    /// Cache mode.
    pub cache: CacheMode,
    /// Where the system calls run.
    pub aio: AioMode,
}

/// Alignment used for `O_DIRECT` buffers and offsets.
pub const DIRECT_ALIGN: u64 = 4096;

#[derive(Debug)]
struct Inner {
    file: File,
    size: u64,
    opts: FileOptions,
    block_device: bool,
    /// The allocation runs known so far.
    map: DataMap,
    /// Which requests may skip the thread pool.
    in_place: InPlace,
    /// With `--aio io_uring` (and no `O_DIRECT`): the file on the ring.
    ring: Option<AioFile>,
    /// `RWF_NOWAIT` reads are still worth a try (cleared on `EOPNOTSUPP`).
    nowait: AtomicBool,
    /// Held by an `O_DIRECT` read-modify-write: two misaligned writes to
    /// different bytes of one block would otherwise each write back the
    /// block as it was before the other.
    rmw: Mutex<()>,
}

/// Which requests skip the thread pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InPlace {
    /// tmpfs: reads and writes in place.
    ReadWrite,
    /// Page cache elsewhere: reads try `RWF_NOWAIT` in place first.
    NoWaitReads,
    /// `O_DIRECT`: everything through the pool.
    Nothing,
}

impl InPlace {
    fn detect(file: &File, direct: bool) -> InPlace {
        // The field's and the constant's types vary by architecture.
        #[allow(clippy::unnecessary_cast)]
        let tmpfs =
            rustix::fs::fstatfs(file).is_ok_and(|s| s.f_type as i64 == libc::TMPFS_MAGIC as i64);
        match (direct, tmpfs) {
            (true, _) => InPlace::Nothing,
            (false, true) => InPlace::ReadWrite,
            (false, false) => InPlace::NoWaitReads,
        }
    }
}

/// A raw image file or block device.
#[derive(Debug, Clone)]
pub struct FileStorage {
    inner: Arc<Inner>,
}

pub(super) fn pool<R: Send + 'static>(
    f: impl FnOnce() -> io::Result<R> + Send + 'static,
) -> io::Result<R> {
    if corio::in_coroutine() {
        corio::thread_pool::submit_co(f)
            .map_err(|e| io::Error::other(format!("thread pool: {e:?}")))?
    } else {
        f()
    }
}

impl FileStorage {
    /// Opens `path` (a regular file or a block device).
    ///
    /// # Errors
    /// If it cannot be opened, is neither a file nor a block device, or
    /// its size cannot be found; the message names the path.
    pub fn open(path: &Path, opts: FileOptions) -> io::Result<FileStorage> {
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let direct_refused = |e: io::Error| {
            if opts.cache.direct() && e.raw_os_error() == Some(libc::EINVAL) {
                io::Error::new(
                    e.kind(),
                    format!(
                        "{}: {e} (its filesystem refuses O_DIRECT, which --nocache and \
                         --cache=none|directsync ask for; use --cache=writeback or \
                         writethrough)",
                        path.display()
                    ),
                )
            } else {
                named(e)
            }
        };
        let mut flags = 0;
        if opts.cache.direct() {
            flags |= libc::O_DIRECT;
        }
        if opts.cache.dsync() {
            flags |= libc::O_DSYNC;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .custom_flags(flags)
            .open(path)
            .map_err(direct_refused)?;
        let meta = file.metadata().map_err(named)?;
        let block_device = meta.file_type().is_block_device();
        if !meta.is_file() && !block_device {
            return Err(named(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            )));
        }
        let size = if block_device {
            rustix::fs::seek(&file, SeekFrom::End(0)).map_err(|e| named(e.into()))?
        } else {
            meta.len()
        };
        let in_place = InPlace::detect(&file, opts.cache.direct());
        let ring = if opts.aio == AioMode::IoUring && !opts.cache.direct() {
            Some(AioFile::new(file.try_clone().map_err(named)?))
        } else {
            None
        };
        Ok(FileStorage {
            inner: Arc::new(Inner {
                size,
                opts,
                block_device,
                map: DataMap::default(),
                file,
                in_place,
                ring,
                nowait: AtomicBool::new(true),
                rmw: Mutex::new(()),
            }),
        })
    }

    /// Whether the file is opened with `O_DIRECT`: requests should then be
    /// aligned to [`DIRECT_ALIGN`] (others are bounced).
    pub fn direct(&self) -> bool {
        self.inner.opts.cache.direct()
    }

    /// `f` in place with the ring (its system calls go to the ring, or
    /// block outside a coroutine), else in the thread pool.
    fn pool_or_ring<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<R> + Send + 'static,
    ) -> io::Result<R> {
        if self.inner.ring.is_some() {
            f()
        } else {
            pool(f)
        }
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.inner.opts.read_only {
            Err(read_only_error())
        } else {
            Ok(())
        }
    }

    /// The allocation run containing `pos` (< size), from the map or a
    /// scan in the thread pool.
    fn run_at(&self, pos: u64) -> io::Result<Run> {
        let map = &self.inner.map;
        if let Some(r) = map.lookup(pos) {
            return Ok(r);
        }
        let (from, g) = map.scan_origin(pos);
        let inner = self.inner.clone();
        let runs = pool(move || Ok(datamap::scan(&inner.file, inner.size, from, pos)))?;
        map.insert(&runs, g);
        Ok(*runs.last().expect("a scan finds the run at pos"))
    }
}

/// A buffer aligned for `O_DIRECT`: `len` bytes at an aligned address
/// inside an over-allocated vector.
struct Aligned {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let v = vec![0u8; len + DIRECT_ALIGN as usize];
        let off = v.as_ptr().align_offset(DIRECT_ALIGN as usize);
        Aligned { v, off, len }
    }
    fn slice(&self) -> &[u8] {
        &self.v[self.off..self.off + self.len]
    }
    fn slice_mut(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + self.len]
    }
}

/// `[start, end)` widened to `DIRECT_ALIGN`.
fn widen(offset: u64, len: usize) -> (u64, usize) {
    let start = offset / DIRECT_ALIGN * DIRECT_ALIGN;
    let end = (offset + len as u64).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    (start, (end - start) as usize)
}

/// Reads `len` bytes at `start` (aligned) into an aligned buffer; the
/// part past the end of the file reads as zeroes.
fn read_direct(file: &File, start: u64, len: usize) -> io::Result<Aligned> {
    let mut a = Aligned::new(len);
    let buf = a.slice_mut();
    let mut done = 0;
    while done < len {
        match file.read_at(&mut buf[done..], start + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(a)
}

impl Inner {
    fn read(&self, offset: u64, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
        if let Some(ring) = &self.ring {
            let len = buf.len();
            let (n, buf) = ring.read_full_at(offset, buf);
            if n? < len {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            return Ok(buf);
        }
        if !self.opts.cache.direct() {
            self.file.read_exact_at(&mut buf, offset)?;
            return Ok(buf);
        }
        let (start, len) = widen(offset, buf.len());
        let a = read_direct(&self.file, start, len)?;
        let skip = (offset - start) as usize;
        let n = buf.len();
        buf.copy_from_slice(&a.slice()[skip..skip + n]);
        Ok(buf)
    }

    /// Reads what the page cache holds of `buf.len()` bytes at `offset`
    /// without waiting (`RWF_NOWAIT`); returns how many bytes it read.
    fn read_nowait(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() && self.nowait.load(Relaxed) {
            let mut iov = [IoSliceMut::new(&mut buf[done..])];
            let flags = rustix::io::ReadWriteFlags::NOWAIT;
            match rustix::io::preadv2(&self.file, &mut iov, offset + done as u64, flags) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::INVAL) => {
                    self.nowait.store(false, Relaxed);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(done)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if let Some(ring) = &self.ring {
            return ring.write_all_at(offset, data.to_vec()).0;
        }
        if !self.opts.cache.direct() {
            return self.file.write_all_at(data, offset);
        }
        let (start, len) = widen(offset, data.len());
        if start == offset && len == data.len() {
            let mut a = Aligned::new(len);
            a.slice_mut().copy_from_slice(data);
            return self.file.write_all_at(a.slice(), start);
        }
        // Misaligned: read-modify-write of the covering blocks, one at a
        // time.
        let _rmw = self.rmw.lock().unwrap_or_else(|e| e.into_inner());
        let mut a = read_direct(&self.file, start, len)?;
        let skip = (offset - start) as usize;
        a.slice_mut()[skip..skip + data.len()].copy_from_slice(data);
        self.file.write_all_at(a.slice(), start)?;
        if start + len as u64 > self.size && !self.block_device {
            // The last block of a file whose size is not a multiple of
            // the alignment: O_DIRECT wrote it whole; keep the size.
            self.file.set_len(self.size)?;
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        if self.opts.cache == CacheMode::Unsafe {
            return Ok(());
        }
        if let Some(ring) = &self.ring {
            return ring.fsync(true);
        }
        rustix::fs::fdatasync(&self.file).map_err(Into::into)
    }

    fn fallocate(&self, flags: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
        if let Some(ring) = &self.ring {
            return ring.fallocate(flags.bits() as i32, offset, len);
        }
        rustix::fs::fallocate(&self.file, flags, offset, len).map_err(Into::into)
    }

    fn zero(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        let keep = if self.block_device {
            FallocateFlags::empty()
        } else {
            FallocateFlags::KEEP_SIZE
        };
        let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        if flags.may_trim && self.fallocate(punch, offset, len).is_ok() {
            return Ok(());
        }
        if self
            .fallocate(FallocateFlags::ZERO_RANGE | keep, offset, len)
            .is_ok()
        {
            return Ok(());
        }
        // No ZERO_RANGE (tmpfs): punch, then allocate again (QEMU's
        // file-posix does the same).
        if !self.block_device && self.fallocate(punch, offset, len).is_ok() {
            return self.fallocate(keep, offset, len);
        }
        if flags.fast {
            return Err(not_supported());
        }
        let zeroes = vec![0u8; (1 << 20).min(len) as usize];
        let mut pos = 0;
        while pos < len {
            let n = (len - pos).min(zeroes.len() as u64) as usize;
            self.write(offset + pos, &zeroes[..n])?;
            pos += n as u64;
        }
        Ok(())
    }
}

impl Storage for FileStorage {
    fn size(&self) -> u64 {
        self.inner.size
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            writable: !self.inner.opts.read_only,
            trim: true,
            fast_zero: true,
            rotational: false,
            mapped_reads: false,
        }
    }

    fn read_at(&self, offset: u64, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
        if self.inner.ring.is_some() {
            return self.inner.read(offset, buf);
        }
        let done = match self.inner.in_place {
            InPlace::ReadWrite => return self.inner.read(offset, buf),
            InPlace::NoWaitReads => self.inner.read_nowait(offset, &mut buf)?,
            InPlace::Nothing => 0,
        };
        if done == buf.len() {
            return Ok(buf);
        }
        let inner = self.inner.clone();
        pool(move || {
            if done == 0 {
                return inner.read(offset, buf);
            }
            inner
                .file
                .read_exact_at(&mut buf[done..], offset + done as u64)?;
            Ok(buf)
        })
    }

    fn write_at(&self, offset: u64, data: Vec<u8>, fua: bool) -> io::Result<Vec<u8>> {
        self.check_writable()?;
        let len = data.len() as u64;
        let inner = self.inner.clone();
        if let Some(ring) = &self.inner.ring {
            let (r, data) = ring.write_all_at(offset, data);
            let r = r.and_then(|()| {
                if fua && !inner.opts.cache.dsync() {
                    inner.sync()?;
                }
                Ok(data)
            });
            self.inner.map.wrote(offset, len);
            return r;
        }
        let work = move || {
            inner.write(offset, &data)?;
            if fua && !inner.opts.cache.dsync() {
                inner.sync()?;
            }
            Ok(data)
        };
        let r = if self.inner.in_place == InPlace::ReadWrite {
            work()
        } else {
            pool(work)
        };
        // Even a failed write may have written some: data either way.
        self.inner.map.wrote(offset, len);
        r
    }

    fn flush(&self) -> io::Result<()> {
        if self.inner.opts.read_only || self.inner.opts.cache == CacheMode::Unsafe {
            return Ok(());
        }
        let inner = self.inner.clone();
        self.pool_or_ring(move || inner.sync())
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.check_writable()?;
        let inner = self.inner.clone();
        let r = self.pool_or_ring(move || {
            let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            match inner.fallocate(punch, offset, len) {
                // Discard is advisory: a file system that cannot punch
                // keeps the data, as QEMU's file-posix does.
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                r => r?,
            }
            if fua {
                inner.sync()?;
            }
            Ok(())
        });
        self.inner.map.discarded(offset, len);
        r
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.check_writable()?;
        let inner = self.inner.clone();
        let r = self.pool_or_ring(move || {
            inner.zero(offset, len, flags)?;
            if flags.fua {
                inner.sync()?;
            }
            Ok(())
        });
        self.inner.map.discarded(offset, len);
        r
    }

    fn extents(&self, offset: u64, len: u64, max_extents: usize) -> io::Result<Vec<Extent>> {
        let end = offset + len;
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let r = self.run_at(pos)?;
            let stop = r.end.min(end).max(pos + 1);
            let e = Extent {
                length: stop - pos,
                hole: !r.data,
                zero: !r.data,
            };
            if !push_extent(&mut out, e, max_extents.max(1)) {
                break;
            }
            pos = stop;
        }
        Ok(out)
    }

    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        let inner = self.inner.clone();
        pool(move || {
            rustix::fs::fadvise(
                &inner.file,
                offset,
                std::num::NonZeroU64::new(len),
                rustix::fs::Advice::WillNeed,
            )
            .map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path, tag: &str) -> std::path::PathBuf {
        let p = dir.join(format!("corio-nbd-file-{tag}-{}", std::process::id()));
        std::fs::write(&p, (0..=255u8).cycle().take(1 << 16).collect::<Vec<_>>()).unwrap();
        p
    }

    #[test]
    fn tmpfs_is_served_in_place_and_direct_never() {
        let p = image(Path::new("/dev/shm"), "shm");
        let st = FileStorage::open(&p, FileOptions::default()).unwrap();
        assert_eq!(st.inner.in_place, InPlace::ReadWrite);
        st.write_at(100, vec![7; 10], false).unwrap();
        let got = st.read_at(95, vec![0; 20]).unwrap();
        assert_eq!(got[..5], [95, 96, 97, 98, 99]);
        assert_eq!(got[5..15], [7; 10]);
        std::fs::remove_file(&p).unwrap();
        let p = image(&std::env::temp_dir(), "direct");
        let opts = FileOptions {
            cache: CacheMode::None,
            ..FileOptions::default()
        };
        // Some file systems refuse O_DIRECT; the mode is what matters.
        if let Ok(st) = FileStorage::open(&p, opts) {
            assert_eq!(st.inner.in_place, InPlace::Nothing);
        }
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn nowait_reads_return_the_file_or_leave_the_rest() {
        let p = image(&std::env::temp_dir(), "nowait");
        let st = FileStorage::open(&p, FileOptions::default()).unwrap();
        let mut buf = vec![0; 300];
        let n = st.inner.read_nowait(1000, &mut buf).unwrap();
        assert!(n <= 300);
        let want: Vec<u8> = (1000..1300u32).map(|i| i as u8).collect();
        assert_eq!(buf[..n], want[..n]);
        assert_eq!(st.read_at(1000, vec![0; 300]).unwrap(), want);
        std::fs::remove_file(&p).unwrap();
    }

    /// `--aio io_uring`: every request kind through the context's ring,
    /// from coroutines, on tmpfs and on the temp dir's file system.
    #[test]
    fn io_uring_mode_serves_every_request() {
        for dir in [Path::new("/dev/shm").to_path_buf(), std::env::temp_dir()] {
            let p = image(&dir, "uring");
            let opts = FileOptions {
                aio: AioMode::IoUring,
                ..FileOptions::default()
            };
            let st = FileStorage::open(&p, opts).unwrap();
            assert!(st.inner.ring.is_some());
            let ctx = corio::AioContext::with_fd_monitor(corio::FdMon::IoUring).unwrap();
            let s2 = st.clone();
            let h = ctx.spawn(move || {
                s2.write_at(100, vec![7; 10], true).unwrap();
                let got = s2.read_at(95, vec![0; 20]).unwrap();
                assert_eq!(got[..5], [95, 96, 97, 98, 99]);
                assert_eq!(got[5..15], [7; 10]);
                s2.write_zeroes(4096, 8192, ZeroFlags::default()).unwrap();
                assert_eq!(s2.read_at(4096, vec![1; 8192]).unwrap(), vec![0; 8192]);
                s2.trim(16384, 4096, false).unwrap();
                s2.flush().unwrap();
                // Past the end: the short read is an error, as pread's.
                let e = s2.read_at((1 << 16) - 4, vec![0; 8]).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
                assert_eq!(ctx_ops(), 0);
            });
            let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !h.is_finished() {
                assert!(std::time::Instant::now() < end, "requests not served");
                ctx.poll(true);
            }
            h.join().unwrap();
            std::fs::remove_file(&p).unwrap();
        }
    }

    fn ctx_ops() -> usize {
        corio::AioContext::current().uring_ops_in_flight()
    }

    #[test]
    fn aio_modes_parse() {
        assert_eq!(AioMode::parse("threads"), Ok(AioMode::Threads));
        assert_eq!(AioMode::parse("io_uring"), Ok(AioMode::IoUring));
        assert!(AioMode::parse("native").unwrap_err().contains("native"));
        assert!(AioMode::parse("x").unwrap_err().contains("'x'"));
    }
}
