//! `fd:N` addresses (QEMU's `socket_get_fd`): using a socket the process
//! inherited, without taking its descriptor from its owner.

use super::*;

/// QEMU's `socket_get_fd` for an `fd:` address: uses the socket the
/// process was handed across exec (socket activation, a parent's `fd:N`
/// argument). The channel owns a close-on-exec duplicate, never the number
/// itself, which stays open with its owner (for an inherited descriptor,
/// the process); closing a connected channel shuts the socket down, so the
/// peer still sees the end. Names need QEMU's monitor, which corio has not.
///
/// Only an inherited descriptor is used: one without `FD_CLOEXEC`, above
/// the standard streams. Every descriptor Rust's standard library, rustix
/// and corio open has `FD_CLOEXEC`, so a mistyped number cannot reach one
/// of those; the used descriptor gets `FD_CLOEXEC` too, so the same number
/// cannot be taken twice. Descriptors opened in this process go through
/// [`SocketChannel::new_fd`] instead.
pub(super) fn socket_get_fd(name: &str) -> io::Result<(OwnedFd, AddressFamily)> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    if !name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(format!(
            "fd name '{name}' needs QEMU's monitor; give the descriptor's number"
        )));
    }
    let raw: RawFd = name
        .parse()
        .map_err(|_| invalid(format!("Unable to parse FD number {name}")))?;
    if raw <= 2 {
        return Err(invalid(format!(
            "File descriptor '{name}' is a standard stream, not a socket handed over"
        )));
    }
    // SAFETY: the borrow lives for the checks below only, none of which
    // closes or changes the descriptor: if `raw` is not open, fcntl answers
    // EBADF and we stop.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    let flags = rustix::io::fcntl_getfd(borrowed)
        .map_err(|e| with_context(e.into(), format!("File descriptor '{name}'")))?;
    if flags.contains(rustix::io::FdFlags::CLOEXEC) {
        return Err(invalid(format!(
            "File descriptor '{name}' was not inherited (it is close-on-exec): \
             wrap descriptors this process opened with SocketChannel::new_fd"
        )));
    }
    let family = match rnet::getsockname(borrowed) {
        Ok(a) => a.address_family(),
        Err(rustix::io::Errno::NOTSOCK) => {
            return Err(invalid(format!("File descriptor '{name}' is not a socket")))
        }
        Err(e) => return Err(with_context(e.into(), format!("File descriptor '{name}'"))),
    };
    // The descriptor stays with its owner (I/O safety: something in this
    // process may still own it, an `OwnedFd` prepared for a child, say):
    // the channel takes a close-on-exec duplicate, as QEMU's monitor fds
    // are duplicated. Marking the original close-on-exec records that it
    // was taken: a second `fd:N` for the same number is refused above.
    let dup = rustix::io::fcntl_dupfd_cloexec(borrowed, 3)
        .map_err(|e| with_context(e.into(), format!("File descriptor '{name}'")))?;
    rustix::io::fcntl_setfd(borrowed, flags | rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| with_context(e.into(), format!("File descriptor '{name}'")))?;
    Ok((dup, family))
}

/// `connect` on an `fd:` address: the socket is expected to be connected
/// already (QEMU's `socket_connect` takes it as it is).
pub(super) fn fd_connect(name: &str) -> io::Result<SocketChannel> {
    let (fd, family) = socket_get_fd(name)?;
    let mut ch = SocketChannel::from_fd(fd, family);
    ch.hang_up_on_close = true;
    Ok(ch)
}

/// `listen` on an `fd:` address: moves a bound socket to the listening
/// state, or updates the backlog of one already listening (QEMU's
/// `socket_listen`); a connected or unbound socket is refused.
pub(super) fn fd_listen(name: &str, backlog: i32) -> io::Result<SocketChannel> {
    let (fd, family) = socket_get_fd(name)?;
    rnet::listen(&fd, backlog)
        .map_err(|e| with_context(e.into(), "Failed to listen on fd socket"))?;
    Ok(SocketChannel::from_fd(fd, family))
}
