//! The reader's input buffer: one `readv` takes as many request headers
//! (and small payloads) as the socket holds, and the reader decodes them
//! all before it reads again.

use std::io::{self, IoSliceMut};

use corio::io::{events, Channel, ReadFlags};

/// Bytes read ahead per client.
pub(crate) const INBUF_SIZE: usize = 64 * 1024;

/// Bytes read from a channel and not yet consumed.
pub(crate) struct InBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl InBuf {
    pub(crate) fn new() -> InBuf {
        InBuf {
            buf: vec![0; INBUF_SIZE],
            start: 0,
            end: 0,
        }
    }

    /// The bytes buffered.
    pub(crate) fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Drops the first `n` buffered bytes.
    pub(crate) fn consume(&mut self, n: usize) {
        assert!(n <= self.end - self.start, "consumed more than buffered");
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more (at least one byte) from `ch`, in a coroutine;
    /// `before_wait` runs before the coroutine waits for input (whatever
    /// the channel's blocking mode: the read is `io_readv`, which never
    /// blocks a coroutine).
    /// Returns `false` at end of stream.
    ///
    /// # Errors
    /// Any I/O error.
    pub(crate) fn fill(
        &mut self,
        ch: &dyn Channel,
        mut before_wait: impl FnMut(),
    ) -> io::Result<bool> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        assert!(self.end < self.buf.len(), "fill of a full buffer");
        loop {
            let mut iov = [IoSliceMut::new(&mut self.buf[self.end..])];
            match ch.io_readv(&mut iov, None, ReadFlags::default()) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    before_wait();
                    ch.yield_for(events::IN)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
