//! File I/O for coroutines on their context's io_uring (QEMU's
//! block/io_uring.c, "luring"), with the thread pool as the fallback.
//!
//! An [`AioFile`] operation called from a coroutine is queued on the ring
//! of the coroutine's home context and goes to the kernel with the loop's
//! next `io_uring_enter`; the coroutine sleeps, and the completion resumes
//! it from that loop: no thread hop on either side. A context whose kernel
//! refuses io_uring runs the system call on its thread pool instead
//! (`submit_co`, QEMU's `aio=threads`); outside a coroutine the call is
//! made in place, blocking.
//!
//! Buffers are `Vec<u8>`s handed over and handed back: the ring owns a
//! buffer from submission until the kernel posts the completion, even if
//! the coroutine is cancelled meanwhile (its operation is then cancelled
//! in the kernel and the buffer freed when the cancellation completes;
//! a context dropped with operations in flight waits for them).
//!
//! # Examples
//!
//! ```
//! use corio::{io::AioFile, AioContext, Coroutine};
//! use std::sync::{Arc, Mutex};
//!
//! let ctx = AioContext::new().unwrap();
//! let file = AioFile::new(tempfile_like());
//! let out = Arc::new(Mutex::new(None));
//! let o = out.clone();
//! let co = Coroutine::new(move || {
//!     let (r, _) = file.write_all_at(4096, b"hello".to_vec());
//!     r.unwrap();
//!     let (n, buf) = file.read_full_at(4096, vec![0; 8]);
//!     *o.lock().unwrap() = Some((n.unwrap(), buf));
//! });
//! co.enter();
//! while !co.is_terminated() {
//!     ctx.poll(true);
//! }
//! let (n, buf) = out.lock().unwrap().take().unwrap();
//! assert_eq!(&buf[..n], b"hello");
//! # fn tempfile_like() -> std::fs::File {
//! #     let p = std::env::temp_dir().join(format!("corio-doc-{}", std::process::id()));
//! #     let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
//! #     std::fs::remove_file(&p).unwrap();
//! #     f
//! # }
//! ```

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use crate::aio::FileOp;
use crate::coroutine::{yield_now, Coroutine};
use crate::thread_pool::ThreadPool;
use crate::AioContext;

/// A file that coroutines read and write at offsets through their
/// context's io_uring. Clones share the fd.
#[derive(Clone, Debug)]
pub struct AioFile {
    fd: Arc<OwnedFd>,
}

/// How a result came back: the system call's return value (negative
/// errno) and the buffer.
type Raw = (i32, Vec<u8>);

impl AioFile {
    /// Wraps an open file (or block device).
    pub fn new(fd: impl Into<OwnedFd>) -> AioFile {
        AioFile {
            fd: Arc::new(fd.into()),
        }
    }

    /// Reads into `buf` (up to its length) at `offset`; returns how many
    /// bytes were read (fewer at end of file, 0 at or past it) and the
    /// buffer (QEMU's `luring_co_submit` with `QEMU_AIO_READ`).
    ///
    /// # Errors
    /// The system call's error (`EBADF` for a file not open for reading).
    ///
    /// # Thread context
    /// A coroutine, on its home thread; elsewhere it blocks.
    pub fn read_at(&self, offset: u64, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.transfer(false, offset, buf, 0)
    }

    /// Writes `buf` (all of its length, or fewer bytes on a short write)
    /// at `offset`; returns how many bytes were written and the buffer.
    ///
    /// # Errors
    /// The system call's error (`ENOSPC`, `EFBIG`, `EBADF`, ...).
    ///
    /// # Thread context
    /// As [`read_at`](Self::read_at).
    pub fn write_at(&self, offset: u64, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.transfer(true, offset, buf, 0)
    }

    /// Reads until `buf` is full or end of file (QEMU's luring resubmits
    /// short reads the same way); returns the bytes read.
    ///
    /// # Errors
    /// As [`read_at`](Self::read_at).
    pub fn read_full_at(&self, offset: u64, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let mut buf = buf;
        let mut done = 0;
        while done < buf.len() {
            let (r, b) = self.transfer(false, offset + done as u64, buf, done);
            buf = b;
            match r {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(done), buf)
    }

    /// Writes all of `buf` at `offset`, continuing after short writes.
    ///
    /// # Errors
    /// As [`write_at`](Self::write_at); `WriteZero` if the file takes no
    /// more bytes without an error.
    pub fn write_all_at(&self, offset: u64, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let mut buf = buf;
        let mut done = 0;
        while done < buf.len() {
            let (r, b) = self.transfer(true, offset + done as u64, buf, done);
            buf = b;
            match r {
                Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (Err(e), buf),
            }
        }
        (Ok(()), buf)
    }

    /// Flushes the file's data, and with `datasync` false its metadata
    /// too, to stable storage (`fdatasync` / `fsync`).
    ///
    /// # Errors
    /// The system call's error.
    pub fn fsync(&self, datasync: bool) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        self.run(FileOp::Fsync { fd, datasync }).map(drop)
    }

    /// `fallocate(2)`: `mode` 0 allocates `len` bytes at `offset`;
    /// `FALLOC_FL_*` bits punch holes or zero ranges.
    ///
    /// # Errors
    /// The system call's error (`ENOSPC`, `EFBIG`, `EOPNOTSUPP`, ...).
    pub fn fallocate(&self, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        self.run(FileOp::Fallocate {
            fd,
            mode,
            offset,
            len,
        })
        .map(drop)
    }

    fn transfer(
        &self,
        write: bool,
        offset: u64,
        buf: Vec<u8>,
        at: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        let fd = self.fd.as_raw_fd();
        let op = if write {
            FileOp::Write {
                fd,
                offset,
                buf,
                at,
            }
        } else {
            FileOp::Read {
                fd,
                offset,
                buf,
                at,
            }
        };
        let (ret, buf) = self.submit(op);
        (result(ret).map(|n| n as usize), buf)
    }

    fn run(&self, op: FileOp) -> io::Result<i32> {
        result(self.submit(op).0)
    }

    /// Runs `op` on the ring, the pool or in place (module documentation).
    fn submit(&self, op: FileOp) -> Raw {
        let Some(me) = Coroutine::current() else {
            return blocking(&self.fd, op);
        };
        let ctx = me.context();
        // The file's identity in the trace event (QEMU's `bs`).
        let bs = Arc::as_ptr(&self.fd).cast();
        match ctx.uring_submit(op, bs, me.handle()) {
            Ok(id) => {
                drop(me);
                wait_op(&ctx, id)
            }
            Err(op) => {
                let fd = self.fd.clone();
                ThreadPool::for_context(&ctx)
                    .submit_co(move || blocking(&fd, op))
                    .unwrap_or_else(|e| panic!("AioFile: a pool worker failed: {e}"))
            }
        }
    }
}

impl From<std::fs::File> for AioFile {
    fn from(f: std::fs::File) -> AioFile {
        AioFile::new(f)
    }
}

impl AsFd for AioFile {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Sleeps until operation `id` completes. If the coroutine unwinds
/// instead (cancelled), the operation is abandoned to the ring, which
/// keeps its buffer until the kernel is done.
fn wait_op(ctx: &AioContext, id: u64) -> Raw {
    struct Pending<'a> {
        ctx: &'a AioContext,
        id: u64,
        done: bool,
    }
    impl Drop for Pending<'_> {
        fn drop(&mut self) {
            if !self.done {
                self.ctx.uring_abandon(self.id);
            }
        }
    }
    let mut pending = Pending {
        ctx,
        id,
        done: false,
    };
    loop {
        // Checked before the first sleep: a broken ring completes an
        // operation at once, with its error.
        if let Some(r) = ctx.uring_take(id) {
            pending.done = true;
            return r;
        }
        yield_now();
    }
}

fn result(ret: i32) -> io::Result<i32> {
    if ret < 0 {
        Err(io::Error::from_raw_os_error(-ret))
    } else {
        Ok(ret)
    }
}

/// The system call itself, on the calling thread.
fn blocking(fd: &OwnedFd, op: FileOp) -> Raw {
    use rustix::fs::{fallocate, fdatasync, fsync, FallocateFlags};
    use rustix::io::{pread, pwrite};
    let errno = |e: rustix::io::Errno| -e.raw_os_error();
    match op {
        FileOp::Read {
            offset,
            mut buf,
            at,
            ..
        } => {
            let r = pread(fd, &mut buf[at..], offset);
            (r.map_or_else(errno, |n| n as i32), buf)
        }
        FileOp::Write {
            offset, buf, at, ..
        } => {
            let r = pwrite(fd, &buf[at..], offset);
            (r.map_or_else(errno, |n| n as i32), buf)
        }
        FileOp::Fsync { datasync, .. } => {
            let r = if datasync { fdatasync(fd) } else { fsync(fd) };
            (r.map_or_else(errno, |()| 0), Vec::new())
        }
        FileOp::Fallocate {
            mode, offset, len, ..
        } => {
            let flags = FallocateFlags::from_bits_retain(mode as u32);
            let r = fallocate(fd, flags, offset, len);
            (r.map_or_else(errno, |()| 0), Vec::new())
        }
    }
}
