//! `std::io::Read` and `Write` for channels: one read or write, yielding
//! inside a coroutine while the channel would block.

use std::io::{self, IoSlice, IoSliceMut};

use super::channel::Channel;
use crate::aio::events;
use crate::coroutine;

/// `std::io::Read::read` for channels: one read. Inside a coroutine it
/// yields while the channel would block, whatever the mode; outside, a
/// non-blocking channel returns [`io::ErrorKind::WouldBlock`] and a blocking
/// one waits in the system call.
///
/// # Errors
/// As [`Channel::readv`].
///
/// # Panics
/// Inside a coroutine, if another coroutine already waits to read `ch`.
pub fn std_read<C: Channel + ?Sized>(ch: &C, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match ch.readv(&mut [IoSliceMut::new(buf)]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && coroutine::in_coroutine() => {
                ch.yield_for(events::IN)?
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// `std::io::Write::write` for channels: one write, with the rules of
/// [`std_read`].
///
/// # Errors
/// As [`Channel::writev`].
///
/// # Panics
/// Inside a coroutine, if another coroutine already waits to write `ch`.
pub fn std_write<C: Channel + ?Sized>(ch: &C, buf: &[u8]) -> io::Result<usize> {
    loop {
        match ch.writev(&[IoSlice::new(buf)]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && coroutine::in_coroutine() => {
                ch.yield_for(events::OUT)?
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// Implements `std::io::Read` and `Write` for a channel type and for a
/// shared reference to it.
macro_rules! impl_std_io {
    ($t:ty) => {
        impl std::io::Read for $t {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                $crate::io::channel::std_read(&*self, buf)
            }
        }
        impl std::io::Read for &$t {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                $crate::io::channel::std_read(*self, buf)
            }
        }
        impl std::io::Write for $t {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                $crate::io::channel::std_write(&*self, buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl std::io::Write for &$t {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                $crate::io::channel::std_write(*self, buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
    };
}
pub(crate) use impl_std_io;
