//! A raw image file or block device.
//!
//! Reads, writes, syncs and fallocate calls go to the thread pool of the
//! calling coroutine's context (QEMU's `aio=threads`): the coroutine
//! sleeps in `submit_co` while a worker does the system call. Block
//! status asks the file system with `SEEK_DATA` / `SEEK_HOLE` in place, as
//! QEMU's file-posix does, and remembers the last run it found, so that a
//! client asking chunk by chunk does not pay a seek pair for each.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use rustix::fs::{FallocateFlags, SeekFrom};

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

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileOptions {
    /// Open read-only; writes fail with `EPERM`.
    pub read_only: bool,
    /// Cache mode.
    pub cache: CacheMode,
}

/// Alignment used for `O_DIRECT` buffers and offsets.
pub const DIRECT_ALIGN: u64 = 4096;

/// A run of the allocation map found by a seek pair.
#[derive(Debug, Clone, Copy)]
struct Run {
    start: u64,
    end: u64,
    data: bool,
    /// The write generation when it was found; stale once writes moved on.
    generation: u64,
}

#[derive(Debug)]
struct Inner {
    file: File,
    size: u64,
    opts: FileOptions,
    block_device: bool,
    /// Bumped after every completed write, trim or zeroing: a cached run
    /// found before is no longer trusted.
    generation: AtomicU64,
    last_run: Mutex<Option<Run>>,
    /// Held by an `O_DIRECT` read-modify-write: two misaligned writes to
    /// different bytes of one block would otherwise each write back the
    /// block as it was before the other.
    rmw: Mutex<()>,
}

/// A raw image file or block device.
#[derive(Debug, Clone)]
pub struct FileStorage {
    inner: Arc<Inner>,
}

fn pool<R: Send + 'static>(f: impl FnOnce() -> io::Result<R> + Send + 'static) -> io::Result<R> {
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
        Ok(FileStorage {
            inner: Arc::new(Inner {
                file,
                size,
                opts,
                block_device,
                generation: AtomicU64::new(0),
                last_run: Mutex::new(None),
                rmw: Mutex::new(()),
            }),
        })
    }

    /// Whether the file is opened with `O_DIRECT`: requests should then be
    /// aligned to [`DIRECT_ALIGN`] (others are bounced).
    pub fn direct(&self) -> bool {
        self.inner.opts.cache.direct()
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.inner.opts.read_only {
            Err(read_only_error())
        } else {
            Ok(())
        }
    }

    fn wrote(&self) {
        self.inner.generation.fetch_add(1, Relaxed);
    }

    /// The allocation run containing `pos`, from the cache or a seek pair.
    fn run_at(&self, pos: u64) -> io::Result<Run> {
        let i = &self.inner;
        let generation = i.generation.load(Relaxed);
        let cached = *i.last_run.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = cached {
            if r.generation == generation && r.start <= pos && pos < r.end {
                return Ok(r);
            }
        }
        let run = |start, end, data| Run {
            start,
            end,
            data,
            generation,
        };
        let r = match rustix::fs::seek(&i.file, SeekFrom::Data(pos)) {
            Ok(d) if d > pos => run(pos, d.min(i.size), false),
            Ok(_) => match rustix::fs::seek(&i.file, SeekFrom::Hole(pos)) {
                Ok(h) if h > pos => run(pos, h.min(i.size), true),
                _ => run(pos, i.size, true),
            },
            // No data after pos: a hole to the end.
            Err(rustix::io::Errno::NXIO) => run(pos, i.size, false),
            // No SEEK_DATA support: everything is data.
            Err(_) => run(pos, i.size, true),
        };
        *i.last_run.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        Ok(r)
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

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
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
        rustix::fs::fdatasync(&self.file).map_err(Into::into)
    }

    fn fallocate(&self, flags: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
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
        }
    }

    fn read_at(&self, offset: u64, buf: Vec<u8>) -> io::Result<Vec<u8>> {
        let inner = self.inner.clone();
        pool(move || inner.read(offset, buf))
    }

    fn write_at(&self, offset: u64, data: Vec<u8>, fua: bool) -> io::Result<()> {
        self.check_writable()?;
        let inner = self.inner.clone();
        let r = pool(move || {
            inner.write(offset, &data)?;
            if fua && !inner.opts.cache.dsync() {
                inner.sync()?;
            }
            Ok(())
        });
        self.wrote();
        r
    }

    fn flush(&self) -> io::Result<()> {
        if self.inner.opts.read_only || self.inner.opts.cache == CacheMode::Unsafe {
            return Ok(());
        }
        let inner = self.inner.clone();
        pool(move || inner.sync())
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.check_writable()?;
        let inner = self.inner.clone();
        let r = pool(move || {
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
        self.wrote();
        r
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.check_writable()?;
        let inner = self.inner.clone();
        let r = pool(move || {
            inner.zero(offset, len, flags)?;
            if flags.fua {
                inner.sync()?;
            }
            Ok(())
        });
        self.wrote();
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
