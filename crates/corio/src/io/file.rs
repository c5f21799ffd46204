//! File channels: QEMU's `QIOChannelFile` (io/channel-file.c), for regular
//! files, pipes and character devices, plus QEMU's `qio_channel_new_fd`
//! (io/channel-util.c), which picks a socket or a file channel by fd type.
//!
//! # Examples
//!
//! ```
//! use corio::io::{Channel, FileChannel};
//!
//! let (r, w) = FileChannel::pipe().unwrap();
//! w.write_all_bytes(b"through a pipe").unwrap();
//! let mut buf = [0u8; 14];
//! r.read_all(&mut buf).unwrap();
//! assert_eq!(&buf, b"through a pipe");
//! ```

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

pub use rustix::fs::{Mode, OFlags};

use super::channel::{impl_std_io, Channel, ChannelBase, Feature, ReadFlags};
use super::socket::SocketChannel;
use crate::trace;

/// A channel on a file, pipe or device fd (QEMU's `QIOChannelFile`).
#[derive(Debug)]
pub struct FileChannel {
    base: ChannelBase,
    /// The fd; `None` once closed.
    fd: Option<OwnedFd>,
}

impl_std_io!(FileChannel);

fn ebadf() -> io::Error {
    io::Error::from_raw_os_error(rustix::io::Errno::BADF.raw_os_error())
}

fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(rustix::io::Errno::INTR) => continue,
            r => return r.map_err(Into::into),
        }
    }
}

impl FileChannel {
    /// Wraps an open fd (QEMU's `qio_channel_file_new_fd`); sets
    /// [`Feature::Seekable`] if the fd can seek.
    ///
    /// ```
    /// use corio::io::{Channel, Feature, FileChannel};
    /// let f = std::fs::File::open("/dev/null").unwrap();
    /// let ch = FileChannel::new_fd(f.into());
    /// assert!(ch.has_feature(Feature::Seekable));
    /// ```
    pub fn new_fd(fd: OwnedFd) -> FileChannel {
        let seekable = rustix::fs::seek(&fd, rustix::fs::SeekFrom::Current(0)).is_ok();
        let ch = FileChannel {
            base: ChannelBase::new(),
            fd: Some(fd),
        };
        if seekable {
            ch.set_feature(Feature::Seekable);
        }
        trace::qio_channel_file_new_fd(ch.ptr(), ch.as_raw_fd());
        ch
    }

    /// Opens `path` with `flags` (CLOEXEC is added) and, when creating,
    /// `mode` (less the umask) (QEMU's `qio_channel_file_new_path`).
    ///
    /// # Errors
    /// As open(2), with the path in the message.
    ///
    /// ```
    /// use corio::io::{Channel, FileChannel};
    /// use corio::io::file::{Mode, OFlags};
    /// let path = std::env::temp_dir().join(format!("corio-doc-{}", std::process::id()));
    /// let ch = FileChannel::new_path(&path, OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
    ///                                Mode::from_raw_mode(0o600)).unwrap();
    /// ch.write_all_bytes(b"data").unwrap();
    /// assert_eq!(std::fs::read(&path).unwrap(), b"data");
    /// std::fs::remove_file(&path).unwrap();
    /// ```
    pub fn new_path(path: impl AsRef<Path>, flags: OFlags, mode: Mode) -> io::Result<FileChannel> {
        let path = path.as_ref();
        let fd = retry(|| rustix::fs::open(path, flags | OFlags::CLOEXEC, mode)).map_err(|e| {
            io::Error::new(e.kind(), format!("Unable to open {}: {e}", path.display()))
        })?;
        let ch = FileChannel::new_fd(fd);
        trace::qio_channel_file_new_path(
            ch.ptr(),
            &path.to_string_lossy(),
            flags.bits(),
            mode.as_raw_mode(),
            ch.as_raw_fd(),
        );
        Ok(ch)
    }

    /// A pipe as a (read end, write end) pair of channels.
    ///
    /// # Errors
    /// If the pipe cannot be created.
    pub fn pipe() -> io::Result<(FileChannel, FileChannel)> {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        Ok((FileChannel::new_fd(r), FileChannel::new_fd(w)))
    }

    fn fd(&self) -> io::Result<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd()).ok_or_else(ebadf)
    }

    fn ptr(&self) -> *const () {
        self as *const FileChannel as *const ()
    }
}

/// POSIX's PIPE_BUF on Linux: a pipe that polls writable takes this much.
const PIPE_BUF: usize = 4096;

/// Whether `fd` polls `flags` (or an error) right now.
fn ready_now(fd: BorrowedFd<'_>, flags: rustix::event::PollFlags) -> bool {
    let mut pfd = [rustix::event::PollFd::new(&fd, flags)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // An error counts as ready: the read or write then reports it.
    !matches!(rustix::event::poll(&mut pfd, Some(&zero)), Ok(0))
}

impl FileChannel {
    /// Whether I/O must not block the thread although the fd may: inside a
    /// coroutine, on a blocking pipe or device (regular files always poll
    /// ready, and a non-blocking fd answers `EAGAIN` itself). See
    /// [`crate::io::channel`].
    fn must_not_block(&self) -> bool {
        self.is_blocking()
            && !self.has_feature(Feature::Seekable)
            && crate::coroutine::in_coroutine()
    }
}

impl AsFd for FileChannel {
    /// # Panics
    /// If the channel was closed.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd().expect("FileChannel::as_fd on a closed channel")
    }
}

impl AsRawFd for FileChannel {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_ref().map_or(-1, |f| f.as_raw_fd())
    }
}

impl Channel for FileChannel {
    fn base(&self) -> &ChannelBase {
        &self.base
    }

    fn io_readv(
        &self,
        iov: &mut [IoSliceMut<'_>],
        _fds: Option<&mut Vec<OwnedFd>>,
        _flags: ReadFlags,
    ) -> io::Result<usize> {
        let fd = self.fd()?;
        if self.must_not_block() && !ready_now(fd, rustix::event::PollFlags::IN) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        retry(|| rustix::io::readv(fd, iov))
    }

    fn io_writev(&self, iov: &[IoSlice<'_>], _fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        let fd = self.fd()?;
        if self.must_not_block() {
            if !ready_now(fd, rustix::event::PollFlags::OUT) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            // A writable pipe has room for PIPE_BUF bytes at least: no more,
            // so that the write cannot block.
            let first = iov
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            let n = first.len().min(PIPE_BUF);
            return retry(|| rustix::io::write(fd, &first[..n]));
        }
        retry(|| rustix::io::writev(fd, iov))
    }

    fn io_set_blocking(&self, enabled: bool) -> io::Result<()> {
        let fd = self.fd()?;
        let flags = rustix::fs::fcntl_getfl(fd)?;
        let flags = if enabled {
            flags - OFlags::NONBLOCK
        } else {
            flags | OFlags::NONBLOCK
        };
        Ok(rustix::fs::fcntl_setfl(fd, flags)?)
    }

    fn io_close(&mut self) -> io::Result<()> {
        self.base.close_watches();
        self.fd.take().map(drop).ok_or_else(ebadf)
    }

    fn poll_fd(&self) -> io::Result<BorrowedFd<'_>> {
        self.fd()
    }
}

/// A channel made from an fd by its type (see [`new_fd`]).
#[derive(Debug)]
pub enum FdChannel {
    /// The fd is a socket.
    Socket(SocketChannel),
    /// Anything else.
    File(FileChannel),
}

/// Wraps `fd` in a [`SocketChannel`] if it is a socket, else in a
/// [`FileChannel`] (QEMU's `qio_channel_new_fd`).
///
/// # Errors
/// If fstat fails.
///
/// ```
/// use corio::io::file::{new_fd, FdChannel};
/// let f = std::fs::File::open("/dev/null").unwrap();
/// assert!(matches!(new_fd(f.into()).unwrap(), FdChannel::File(_)));
/// ```
pub fn new_fd(fd: OwnedFd) -> io::Result<FdChannel> {
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Socket {
        SocketChannel::new_fd(fd).map(FdChannel::Socket)
    } else {
        Ok(FdChannel::File(FileChannel::new_fd(fd)))
    }
}
