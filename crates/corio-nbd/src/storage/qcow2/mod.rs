//! A qcow2 image, through the `imago` crate in its `sync` mode.
//!
//! imago's sync mode is plain blocking functions (`pread`/`pwrite` on the
//! image file, parking_lot locks around its metadata caches). Every
//! request is one thread-pool job (`submit_co`): the whole request (the
//! mapping lookups, the data I/O, any cluster allocation and metadata
//! update) runs on a pool worker while the request's coroutine sleeps. One
//! image is shared by every client and every IOThread; imago's own locks
//! serialise what must be.
//!
//! Except small requests on tmpfs: when every file of the image (the
//! chain, data files) is on tmpfs, requests that move at most
//! [`IN_PLACE_MAX`] bytes run in place in the client's coroutine, as the
//! raw file backend does there. The pages are the file: a "blocking" call
//! waits for nothing but memory copies and imago's short-held locks, and
//! the hop to a worker and back costs more than a small request
//! (measured: 4 KiB random reads at QD1 2 to 3 times faster in place).
//! Large reads and writes still go to the pool, where their copies run
//! in parallel with the IOThreads' socket work (measured: sequential
//! 256 KiB writes lose a quarter of their throughput in place on one
//! IOThread).
//!
//! Before imago sees the image, [`header::check_chain`] reads every
//! qcow2 header of the chain and refuses what imago would serve wrong or
//! refuse obscurely (encryption, the dirty bit, zstd, extended L2).
//!
//! # TRIM and exclusive access
//!
//! imago's discard (`discard_to_zero`) needs `&mut` access to the image:
//! it frees clusters that a concurrent read or write may hold a mapping
//! to. The image sits behind a read-write lock: reads, writes, zeroing
//! and block status take it shared (imago serialises their allocations
//! itself), and TRIM, or a zeroing that may deallocate, takes it
//! exclusively for the time of the discard. An advisory TRIM that does
//! nothing would be cheaper but would leave qcow2 images growing for
//! ever under `--discard=unmap`, which is what users ask that flag for;
//! and an uncontended shared lock costs an atomic add per request. TRIM
//! is rare next to reads and writes, and qemu-nbd drains in-flight
//! requests around its own cluster discards too.
//!
//! # Flushing
//!
//! imago keeps L2 and refcount tables in caches: `flush` writes them back,
//! `sync` makes the files durable. NBD_CMD_FLUSH and FUA do both; a client
//! disconnecting and the server's shutdown flush too (and imago's sync
//! mode flushes when the image is dropped).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use imago::file::File;
use imago::format::builder::FormatDriverBuilder;
use imago::format::gate::ImplicitOpenGate;
use imago::qcow2::Qcow2;
use imago::{FormatAccess, StorageOpenOptions};

use super::file::{pool, CacheMode};
use super::{not_supported, read_only_error, Capabilities, Extent, Storage, ZeroFlags};

pub mod header;
mod map;

pub use header::Header;

type Image = FormatAccess<File>;

/// On tmpfs, reads and writes up to this many bytes run in place.
pub const IN_PLACE_MAX: u64 = 64 * 1024;

/// How to open a qcow2 image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Qcow2Options {
    /// Open read-only; writes fail with `EPERM`.
    pub read_only: bool,
    /// Cache mode (of the image file and its data file; backing files are
    /// opened with the same `O_DIRECT` choice, read-only).
    pub cache: CacheMode,
    /// Every request through the thread pool, even on tmpfs (to measure
    /// the one against the other).
    pub always_pool: bool,
}

struct Inner {
    image: RwLock<Image>,
    size: u64,
    cluster_size: u64,
    /// Version 3: zero clusters exist (else zeroing writes zeroes).
    zero_clusters: bool,
    opts: Qcow2Options,
    path: PathBuf,
    /// A raw file at the bottom of the chain: its holes are holes in
    /// `base:allocation` (as QEMU's file driver reports them).
    raw_backing: Option<map::RawBacking>,
    /// Every file is on tmpfs: requests run in place, not in the pool.
    in_place: bool,
}

/// A qcow2 image served through imago.
#[derive(Clone)]
pub struct Qcow2Storage {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Qcow2Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Storage")
            .field("path", &self.inner.path)
            .field("size", &self.inner.size)
            .finish_non_exhaustive()
    }
}

/// Opens what the image header names: backing files (always read-only,
/// as imago asks) and an external data file (read-only with `-r`).
#[derive(Debug, Clone, Copy)]
struct Gate {
    read_only: bool,
}

impl ImplicitOpenGate<File> for Gate {
    fn open_format<F: FormatDriverBuilder<File>>(&mut self, builder: F) -> io::Result<Image> {
        Ok(FormatAccess::new(builder.open(*self)?))
    }

    fn open_storage(&mut self, opts: StorageOpenOptions) -> io::Result<File> {
        let opts = if self.read_only {
            opts.write(false)
        } else {
            opts
        };
        let name = opts.get_filename().map(Path::to_owned);
        <File as imago::Storage>::open(opts).map_err(|e| match name {
            Some(n) => io::Error::new(e.kind(), format!("'{}': {e}", n.display())),
            None => e,
        })
    }
}

impl Qcow2Storage {
    /// Opens the qcow2 image at `path`, its backing chain (relative names
    /// resolve against the directory of the image naming them) and its
    /// external data file, if any.
    ///
    /// # Errors
    /// A refusal from [`header::check_chain`], or what imago says, with
    /// the path.
    pub fn open(path: &Path, opts: Qcow2Options) -> io::Result<Qcow2Storage> {
        let chain = header::check_chain(path)?;
        let top = chain.top.clone();
        let raw_backing = match chain.raw_backing.clone() {
            Some(p) => Some(map::RawBacking::open(p)?),
            None => None,
        };
        let direct = matches!(opts.cache, CacheMode::None | CacheMode::Directsync);
        let sopts = StorageOpenOptions::new().direct(direct);
        let gate = Gate {
            read_only: opts.read_only,
        };
        let qcow2 = Qcow2::<File>::builder_path(path)
            .write(!opts.read_only)
            .storage_open_options(sopts)
            .open(gate)
            .map_err(|e| io::Error::new(e.kind(), format!("'{}': {e}", path.display())))?;
        let image = FormatAccess::new(qcow2);
        let in_place = !direct
            && !opts.always_pool
            && chain
                .files
                .as_ref()
                .is_some_and(|f| f.iter().all(|p| on_tmpfs(p)));
        Ok(Qcow2Storage {
            inner: Arc::new(Inner {
                size: image.size(),
                image: RwLock::new(image),
                cluster_size: top.cluster_size,
                zero_clusters: top.zero_clusters(),
                opts,
                path: path.to_owned(),
                raw_backing,
                in_place,
            }),
        })
    }

    /// The image's cluster size.
    pub fn cluster_size(&self) -> u64 {
        self.inner.cluster_size
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.inner.opts.read_only {
            Err(read_only_error())
        } else {
            Ok(())
        }
    }

    /// Whether requests run in place (every file on tmpfs) rather than
    /// in the thread pool.
    pub fn in_place(&self) -> bool {
        self.inner.in_place
    }

    /// Runs `f` with shared access to the image on a pool worker, or in
    /// place on tmpfs when it moves at most [`IN_PLACE_MAX`] bytes
    /// (`bytes`).
    fn shared<R: Send + 'static>(
        &self,
        bytes: u64,
        f: impl FnOnce(&Inner, &Image) -> io::Result<R> + Send + 'static,
    ) -> io::Result<R> {
        if self.inner.in_place && bytes <= IN_PLACE_MAX {
            let image = self.inner.read();
            return f(&self.inner, &image);
        }
        let inner = self.inner.clone();
        pool(move || {
            let image = inner.read();
            f(&inner, &image)
        })
    }

    /// Runs `f` on a pool worker (on tmpfs too) with exclusive
    /// access to the image.
    fn exclusive<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner, &mut Image) -> io::Result<R> + Send + 'static,
    ) -> io::Result<R> {
        // Always in the pool, even on tmpfs: taking the write lock waits for
        // every request holding the read lock (pool jobs included), and a
        // discard may touch every L2 table; neither may stall the IOThread.
        let inner = self.inner.clone();
        pool(move || {
            let mut image = inner.write();
            f(&inner, &mut image)
        })
    }
}

/// Whether `path` lies on tmpfs.
fn on_tmpfs(path: &Path) -> bool {
    // The field's and the constant's types vary by architecture.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type as i64 == libc::TMPFS_MAGIC as i64)
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, Image> {
        self.image.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Image> {
        self.image.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Metadata caches written back, files durable (unless `--cache
    /// unsafe`, which keeps only the write-back).
    fn flush(&self, image: &Image) -> io::Result<()> {
        image.flush()?;
        if self.opts.cache == CacheMode::Unsafe {
            return Ok(());
        }
        image.sync()
    }

    /// After a write: durable if FUA asked or the cache mode says so.
    fn after_write(&self, image: &Image, fua: bool) -> io::Result<()> {
        let through = matches!(
            self.opts.cache,
            CacheMode::Writethrough | CacheMode::Directsync
        );
        if fua || through {
            self.flush(image)?;
        }
        Ok(())
    }

    /// Writes zeroes as data (version 2 images, which have no zero
    /// clusters).
    fn write_zero_buffers(&self, image: &Image, offset: u64, len: u64) -> io::Result<()> {
        let zeroes = vec![0u8; len.min(1 << 20) as usize];
        let mut pos = 0;
        while pos < len {
            let n = (len - pos).min(zeroes.len() as u64) as usize;
            image.write(&zeroes[..n], offset + pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Whether `[offset, offset + len)` covers whole clusters (the last
    /// one may end at the end of the image).
    fn cluster_aligned(&self, offset: u64, len: u64) -> bool {
        let c = self.cluster_size;
        offset % c == 0 && ((offset + len) % c == 0 || offset + len == self.size)
    }
}

impl Storage for Qcow2Storage {
    fn size(&self) -> u64 {
        self.inner.size
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            writable: !self.inner.opts.read_only,
            trim: true,
            fast_zero: self.inner.zero_clusters,
            rotational: false,
            mapped_reads: true,
        }
    }

    fn read_at(&self, offset: u64, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
        self.shared(buf.len() as u64, move |_, image| {
            image.read(&mut buf, offset)?;
            Ok(buf)
        })
    }

    fn write_at(&self, offset: u64, data: Vec<u8>, fua: bool) -> io::Result<Vec<u8>> {
        self.check_writable()?;
        self.shared(data.len() as u64, move |inner, image| {
            image.write(&data, offset)?;
            inner.after_write(image, fua)?;
            Ok(data)
        })
    }

    fn flush(&self) -> io::Result<()> {
        if self.inner.opts.read_only {
            return Ok(());
        }
        self.shared(0, |inner, image| inner.flush(image))
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.check_writable()?;
        self.exclusive(move |inner, image| {
            if inner.zero_clusters {
                // As QEMU on version 3: the clusters read as zeroes.
                image.discard_to_zero(offset, len)?;
            } else {
                // Version 2 has no zero clusters: as QEMU, the clusters
                // become unallocated (a backing file shows through, which
                // NBD allows: what a trimmed range reads is unspecified).
                image.discard_to_backing(offset, len)?;
            }
            inner.after_write(image, fua)
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        self.check_writable()?;
        if !self.inner.zero_clusters {
            if flags.fast {
                return Err(not_supported());
            }
            return self.shared(len, move |inner, image| {
                inner.write_zero_buffers(image, offset, len)?;
                inner.after_write(image, flags.fua)
            });
        }
        if flags.fast && !self.inner.cluster_aligned(offset, len) {
            // The partial clusters at the ends would be written as data.
            return Err(not_supported());
        }
        if flags.may_trim {
            return self.exclusive(move |inner, image| {
                image.discard_to_zero(offset, len)?;
                inner.after_write(image, flags.fua)
            });
        }
        // Zeroing touches an L2 entry per cluster: a large range is long
        // work, so it goes to the pool like a large write.
        self.shared(len, move |inner, image| {
            image.write_zeroes(offset, len)?;
            inner.after_write(image, flags.fua)
        })
    }

    fn extents(&self, offset: u64, len: u64, max_extents: usize) -> io::Result<Vec<Extent>> {
        // A lookup per cluster of the range: long ranges go to the pool.
        self.shared(len, move |inner, image| {
            map::extents(
                image,
                inner.raw_backing.as_ref(),
                offset,
                len,
                max_extents.max(1),
            )
        })
    }

    fn cache(&self, _offset: u64, _len: u64) -> io::Result<()> {
        // A hint: imago has no read-ahead to prime, and reading the range
        // to warm the host page cache would cost a read for nothing on
        // tmpfs and a copy elsewhere.
        Ok(())
    }

    fn allocation_depth(
        &self,
        offset: u64,
        len: u64,
        max_extents: usize,
    ) -> io::Result<Vec<(u64, u32)>> {
        self.shared(len, move |_, image| {
            map::depths(image, offset, len, max_extents.max(1))
        })
    }

    fn read_mapped(&self, offset: u64, mut buf: Vec<u8>) -> io::Result<(Vec<u8>, Vec<Extent>)> {
        self.shared(buf.len() as u64, move |inner, image| {
            let extents = map::read_mapped(image, inner.raw_backing.as_ref(), offset, &mut buf)?;
            Ok((buf, extents))
        })
    }

    fn disconnected(&self) -> io::Result<()> {
        self.flush()
    }
}
