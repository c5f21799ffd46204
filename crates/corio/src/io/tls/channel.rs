//! The TLS channel as a [`Channel`]: reads and writes through the session,
//! the pending-input probe, shutdown and close, and `std::io::Read` /
//! `Write`.

use super::*;

impl<C: Channel> Channel for TlsChannel<C> {
    fn base(&self) -> &ChannelBase {
        &self.base
    }

    /// Buffered plaintext first; then ciphertext from the master, decrypted;
    /// `WouldBlock` only when nothing is buffered and the master would
    /// block. `Ok(0)` after the peer's `close_notify`.
    fn io_readv(
        &self,
        iov: &mut [IoSliceMut<'_>],
        _fds: Option<&mut Vec<OwnedFd>>,
        _flags: ReadFlags,
    ) -> io::Result<usize> {
        if iov.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        let mut rd = lock(&self.session.rd);
        loop {
            let (result, wants_write) = {
                let mut conn = lock(&self.session.conn);
                Self::check_ready(&conn)?;
                let fed = match &conn.read_error {
                    Some(e) => Err(e.clone()),
                    None => feed(&mut conn.tls, &mut rd),
                };
                let result = match fed {
                    // Plaintext decrypted before the bad record is still
                    // delivered; the error comes once it is gone.
                    Err(e) => match read_plain(&mut conn.tls, iov) {
                        Ok(n) if n > 0 => {
                            conn.read_error = Some(e);
                            Some(Ok(n))
                        }
                        _ => {
                            conn.read_error = Some(e.clone());
                            Some(Err(TlsError::session(e).into()))
                        }
                    },
                    Ok(progress) => match read_plain(&mut conn.tls, iov) {
                        Ok(n) => Some(Ok(n)),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if rd.start < rd.end && !progress {
                                Some(Err(io::Error::other(
                                    "TLS channel: rustls refuses buffered ciphertext",
                                )))
                            } else {
                                None // more to feed, or the master to read
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            Some(if self.session.shutdown.load(Relaxed) & SHUT_READ != 0 {
                                Ok(0) // we shut it down ourselves (QEMU's ECONNABORTED case)
                            } else {
                                Err(truncated())
                            })
                        }
                        Err(e) => Some(Err(e)),
                    },
                };
                (result, conn.tls.wants_write())
            };
            if wants_write {
                self.flush_nowait(); // alerts, key-update replies
            }
            if let Some(r) = result {
                return r;
            }
            if rd.start == rd.end {
                // Nothing staged: read the master (WouldBlock ends here,
                // with nothing buffered anywhere).
                self.fill(&mut rd)?;
            }
        }
    }

    /// Encrypts and sends; see the module documentation for `WouldBlock`
    /// and the retry with the same data.
    fn io_writev(&self, iov: &[IoSlice<'_>], _fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        let len: usize = iov.iter().map(|b| b.len()).sum();
        if len == 0 {
            return Ok(0);
        }
        let mut wr = lock(&self.session.wr);
        if wr.owed.as_ref().is_some_and(|owed| !starts_with(iov, owed)) {
            // The encrypted bytes go out anyway, before the next write's.
            wr.owed = None;
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "TLS write retried with other data than the write that would block \
                 (the retry must pass the same bytes)",
            ));
        }
        self.flush(&mut wr, Flush::Wait)?;
        if let Some(owed) = wr.owed.take() {
            return Ok(owed.len());
        }
        let n = {
            let mut conn = lock(&self.session.conn);
            Self::check_ready(&conn)?;
            if conn.close_sent {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "TLS channel was shut down for writing (close_notify sent)",
                ));
            }
            let n = conn.tls.writer().write_vectored(iov)?;
            while conn.tls.wants_write() {
                conn.tls.write_tls(&mut wr.out)?;
            }
            n
        };
        match self.flush(&mut wr, Flush::Wait) {
            Ok(()) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wr.owed = Some(prefix(iov, n));
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn io_set_blocking(&self, enabled: bool) -> io::Result<()> {
        self.master.set_blocking(enabled)
    }

    /// Sends `close_notify` if that cannot block (QEMU's close does not;
    /// a peer should see a clean end), then closes the master.
    fn io_close(&mut self) -> io::Result<()> {
        if !self.closed {
            self.close_notify_nowait();
        }
        self.closed = true;
        self.base.close_watches();
        self.master.close()
    }

    fn poll_fd(&self) -> io::Result<BorrowedFd<'_>> {
        self.master.poll_fd()
    }

    /// Plaintext rustls decrypted and the last read did not take, a
    /// record error or the peer's close_notify waiting to be reported, or
    /// ciphertext staged here and not yet handed to rustls: a read returns
    /// at once, whatever the master's fd says.
    ///
    /// Also the master's own pending input (TLS over a channel that
    /// buffers); never blocks.
    fn io_has_pending_input(&self) -> bool {
        has_pending_input(&self.session) || self.master.io_has_pending_input()
    }

    fn pending_input_probe(&self) -> Option<PendingProbe> {
        let session = self.session.clone();
        let master = self.master.pending_input_probe();
        Some(Arc::new(move || {
            has_pending_input(&session) || master.as_ref().is_some_and(|m| m())
        }))
    }

    /// Shuts down the master as asked (QEMU's `qio_channel_tls_shutdown`);
    /// first, when the write side goes, sends `close_notify` if that cannot
    /// block. A truncated stream then reads as end of stream if the read
    /// side was shut down here.
    fn io_shutdown(&self, how: Shutdown) -> io::Result<()> {
        let bits = match how {
            Shutdown::Read => SHUT_READ,
            Shutdown::Write => SHUT_WRITE,
            Shutdown::Both => SHUT_READ | SHUT_WRITE,
        };
        self.session.shutdown.fetch_or(bits, Relaxed);
        if bits & SHUT_WRITE != 0 {
            self.close_notify_nowait();
        }
        self.master.shutdown(how)
    }

    fn io_set_delay(&self, enabled: bool) -> io::Result<()> {
        self.master.set_delay(enabled)
    }

    fn io_set_cork(&self, enabled: bool) -> io::Result<()> {
        self.master.set_cork(enabled)
    }
}

impl<C: Channel> Drop for TlsChannel<C> {
    /// Sends `close_notify` if the channel was not closed and that cannot
    /// block; the master is dropped (closed) after.
    fn drop(&mut self) {
        if !self.closed {
            self.close_notify_nowait();
        }
    }
}

impl<C: Channel> io::Read for TlsChannel<C> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        std_read(&*self, buf)
    }
}

impl<C: Channel> io::Read for &TlsChannel<C> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        std_read(*self, buf)
    }
}

impl<C: Channel> io::Write for TlsChannel<C> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        std_write(&*self, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<C: Channel> io::Write for &TlsChannel<C> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        std_write(*self, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
