//! Socket channels: QEMU's `QIOChannelSocket` (io/channel-socket.c) and the
//! socket helpers of util/qemu-sockets.c it relies on.
//!
//! TCP over IPv4 and IPv6, Unix sockets at a path or in the abstract
//! namespace, or any stream socket given as an fd. Unix sockets pass file
//! descriptors ([`Feature::FdPass`]) with
//! [`writev_full`](Channel::writev_full) / [`readv_full`](Channel::readv_full).
//!
//! # Examples
//!
//! ```
//! use corio::io::{address::SocketAddress, Channel, SocketChannel};
//!
//! let listener = SocketChannel::listen_sync(&SocketAddress::inet("127.0.0.1", 0), 1).unwrap();
//! let addr = listener.local_address().unwrap();
//! let client = SocketChannel::connect_sync(&addr).unwrap();
//! let server = listener.accept().unwrap();
//! client.write_all_bytes(b"ping").unwrap();
//! let mut buf = [0u8; 4];
//! server.read_all(&mut buf).unwrap();
//! assert_eq!(&buf, b"ping");
//! ```

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rustix::net::{
    self as rnet, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrAny, SocketAddrUnix,
    SocketFlags, SocketType,
};

use super::address::{InetSocketAddress, SocketAddress, UnixSocketAddress, UNIX_PATH_MAX};
use super::channel::{impl_std_io, Channel, ChannelBase, Feature, ReadFlags, MAX_FDS};
use super::task::{Task, TaskThread};
use crate::aio::{events, AioContext};
use crate::coroutine;
use crate::trace;

#[allow(unsafe_code)] // borrows the fd named by an `fd:N` address
mod fd;
use self::fd::{fd_connect, fd_listen};

/// A socket channel (QEMU's `QIOChannelSocket`). Closing (or dropping) a
/// listening Unix socket removes its path.
#[derive(Debug)]
pub struct SocketChannel {
    base: ChannelBase,
    /// The socket; `None` once closed.
    fd: Option<OwnedFd>,
    /// The address family, fixed at creation.
    family: AddressFamily,
    /// Shut the socket down before closing: the channel holds a duplicate
    /// of an `fd:N` socket whose original stays open, and closing only the
    /// duplicate would not end the connection.
    hang_up_on_close: bool,
    /// This channel bound its Unix socket path (`listen_sync` on a
    /// `unix:` address), so closing it unlinks the path. A socket handed
    /// over (`fd:N`, systemd socket activation) keeps its path: its
    /// owner, not this process, created it and may hand it on again.
    bound_path: bool,
}

impl_std_io!(SocketChannel);

fn ebadf() -> io::Error {
    io::Error::from_raw_os_error(rustix::io::Errno::BADF.raw_os_error())
}

/// Whether `fd` polls readable (or in error) right now.
fn readable_now(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // An error (EINTR, ENOMEM) counts as ready: accept(2) then reports.
    !matches!(rustix::event::poll(&mut pfd, Some(&zero)), Ok(0))
}

fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(rustix::io::Errno::INTR) => continue,
            r => return r.map_err(Into::into),
        }
    }
}

fn with_context(e: io::Error, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl SocketChannel {
    /// Wraps an open stream socket (QEMU's `qio_channel_socket_new_fd`):
    /// sets [`Feature::FdPass`] for Unix sockets, and [`Feature::Shutdown`]
    /// and [`Feature::ReadMsgPeek`] for all.
    ///
    /// # Errors
    /// If `fd` is not a socket (`ENOTSOCK`).
    ///
    /// ```
    /// use corio::io::{Channel, Feature, SocketChannel};
    /// let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    /// let ch = SocketChannel::new_fd(a.into()).unwrap();
    /// assert!(ch.has_feature(Feature::FdPass));
    /// ```
    pub fn new_fd(fd: OwnedFd) -> io::Result<SocketChannel> {
        let family = rnet::getsockname(&fd)?.address_family();
        let ch = SocketChannel::from_fd(fd, family);
        trace::qio_channel_socket_new_fd(ch.ptr(), ch.raw());
        Ok(ch)
    }

    fn from_fd(fd: OwnedFd, family: AddressFamily) -> SocketChannel {
        let ch = SocketChannel {
            base: ChannelBase::new(),
            fd: Some(fd),
            family,
            hang_up_on_close: false,
            bound_path: false,
        };
        trace::qio_channel_socket_new(ch.ptr());
        ch.set_feature(Feature::Shutdown);
        ch.set_feature(Feature::ReadMsgPeek);
        if family == AddressFamily::UNIX {
            ch.set_feature(Feature::FdPass);
        }
        ch
    }

    /// A connected pair of Unix stream sockets (QEMU's `qemu_socketpair`).
    ///
    /// # Errors
    /// If the sockets cannot be created.
    ///
    /// ```
    /// use corio::io::{Channel, SocketChannel};
    /// let (a, b) = SocketChannel::pair().unwrap();
    /// a.write_all_bytes(b"x").unwrap();
    /// let mut c = [0u8];
    /// b.read_all(&mut c).unwrap();
    /// ```
    pub fn pair() -> io::Result<(SocketChannel, SocketChannel)> {
        let (a, b) = rnet::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        Ok((
            SocketChannel::from_fd(a, AddressFamily::UNIX),
            SocketChannel::from_fd(b, AddressFamily::UNIX),
        ))
    }

    /// Connects to `addr`, trying each address a host name resolves to
    /// (QEMU's `qio_channel_socket_connect_sync`). The channel is in
    /// blocking mode, in which a coroutine yields rather than block its
    /// thread (see [`crate::io::channel`]); the connect itself blocks the
    /// calling thread: from a coroutine, prefer
    /// [`connect_async`](SocketChannel::connect_async).
    ///
    /// # Errors
    /// Resolution or connection failure, naming the address.
    ///
    /// An `fd:N` address uses an already connected socket the process
    /// inherited (QEMU's `socket_get_fd`): the channel owns a duplicate of
    /// descriptor `N` (which stays open with its owner) and shuts the
    /// connection down when it closes. A descriptor that is not open, not a socket, a
    /// standard stream or not inherited (it has `FD_CLOEXEC`, as every
    /// descriptor this process's Rust code opens does) is an error naming
    /// it; fd *names* need QEMU's monitor and are refused.
    pub fn connect_sync(addr: &SocketAddress) -> io::Result<SocketChannel> {
        trace::qio_channel_socket_connect_sync(addr as *const _ as *const (), &addr.to_string());
        let r = match addr {
            SocketAddress::Inet(a) => inet_connect(a),
            SocketAddress::Unix(a) => unix_connect(a),
            SocketAddress::Fd(name) => fd_connect(name),
        };
        match r {
            Ok(ch) => {
                trace::qio_channel_socket_connect_complete(ch.ptr(), ch.raw());
                Ok(ch)
            }
            Err(e) => {
                trace::qio_channel_socket_connect_fail(addr as *const _ as *const ());
                Err(e)
            }
        }
    }

    /// Binds and listens on `addr` with `backlog` (QEMU's
    /// `qio_channel_socket_listen_sync`): SO_REUSEADDR; for TCP the first
    /// resolved address and port (up to `to=`) that binds; for a Unix path,
    /// a stale socket file is removed first; for `fd:N`, the inherited bound
    /// (or listening) socket is put in the listening state and the channel
    /// owns a duplicate of it, as in [`connect_sync`](SocketChannel::connect_sync). Sets
    /// [`Feature::Listen`].
    ///
    /// # Errors
    /// If nothing could be bound, naming the address.
    pub fn listen_sync(addr: &SocketAddress, backlog: i32) -> io::Result<SocketChannel> {
        trace::qio_channel_socket_listen_sync(
            addr as *const _ as *const (),
            &addr.to_string(),
            backlog,
        );
        trace::socket_listen(backlog);
        let r = match addr {
            SocketAddress::Inet(a) => inet_listen(a, backlog),
            SocketAddress::Unix(a) => unix_listen(a, backlog),
            SocketAddress::Fd(name) => fd_listen(name, backlog),
        };
        match r {
            Ok(mut ch) => {
                ch.bound_path = matches!(addr, SocketAddress::Unix(_));
                ch.set_feature(Feature::Listen);
                trace::qio_channel_socket_listen_complete(ch.ptr(), ch.raw());
                Ok(ch)
            }
            Err(e) => {
                trace::qio_channel_socket_listen_fail(addr as *const _ as *const ());
                Err(e)
            }
        }
    }

    /// Connects in a worker thread and hands the result to `callback` on
    /// `ctx`'s thread (the main loop's when `None`): a QIOTask (QEMU's
    /// `qio_channel_socket_connect_async`). The returned handle may be
    /// dropped, or used to wait for the worker synchronously.
    ///
    /// # Thread context
    /// Any thread; `callback` runs on `ctx`'s home thread.
    ///
    /// # Panics
    /// With `ctx` `None`, if no main loop is bound and the caller is not the
    /// process's main thread ([`crate::main_loop::main_context`]).
    ///
    /// ```
    /// use corio::io::{address::SocketAddress, SocketChannel};
    /// use corio::AioContext;
    /// use std::sync::{Arc, Mutex};
    ///
    /// let ctx = AioContext::new().unwrap();
    /// let l = SocketChannel::listen_sync(&SocketAddress::inet("127.0.0.1", 0), 1).unwrap();
    /// let done = Arc::new(Mutex::new(None));
    /// let d = done.clone();
    /// SocketChannel::connect_async(l.local_address().unwrap(), move |r| {
    ///     *d.lock().unwrap() = Some(r.is_ok());
    /// }, Some(&ctx));
    /// while done.lock().unwrap().is_none() {
    ///     ctx.poll(true);
    /// }
    /// assert_eq!(*done.lock().unwrap(), Some(true));
    /// ```
    pub fn connect_async(
        addr: SocketAddress,
        callback: impl FnOnce(io::Result<SocketChannel>) + Send + 'static,
        ctx: Option<&AioContext>,
    ) -> TaskThread<SocketAddress> {
        trace::qio_channel_socket_connect_async(&addr as *const _ as *const (), &addr.to_string());
        let task = Task::new(addr, move |t: &mut Task<SocketAddress>| {
            callback(task_outcome(t))
        });
        task.run_in_thread(
            |t| match SocketChannel::connect_sync(t.source()) {
                Ok(ch) => t.set_result(ch),
                Err(e) => t.set_error(e),
            },
            ctx,
        )
    }

    /// Listens in a worker thread and hands the result to `callback` on
    /// `ctx`'s thread: a QIOTask (QEMU's `qio_channel_socket_listen_async`).
    ///
    /// # Thread context
    /// Any thread; `callback` runs on `ctx`'s home thread.
    ///
    /// # Panics
    /// With `ctx` `None`, if no main loop is bound and the caller is not the
    /// process's main thread ([`crate::main_loop::main_context`]).
    pub fn listen_async(
        addr: SocketAddress,
        backlog: i32,
        callback: impl FnOnce(io::Result<SocketChannel>) + Send + 'static,
        ctx: Option<&AioContext>,
    ) -> TaskThread<SocketAddress> {
        trace::qio_channel_socket_listen_async(
            &addr as *const _ as *const (),
            &addr.to_string(),
            backlog,
        );
        let task = Task::new(addr, move |t: &mut Task<SocketAddress>| {
            callback(task_outcome(t))
        });
        task.run_in_thread(
            move |t| match SocketChannel::listen_sync(t.source(), backlog) {
                Ok(ch) => t.set_result(ch),
                Err(e) => t.set_error(e),
            },
            ctx,
        )
    }

    /// Accepts a connection (QEMU's `qio_channel_socket_accept`): CLOEXEC,
    /// `EINTR` retried. On a non-blocking listener with no pending client,
    /// fails with [`io::ErrorKind::WouldBlock`]; on a blocking one, a thread
    /// waits for a client and a coroutine yields until one comes (see
    /// [`crate::io::channel`]). The new channel is in blocking mode, so a
    /// coroutine that serves it yields when it would block.
    ///
    /// # Errors
    /// As accept(2).
    ///
    /// # Panics
    /// In a coroutine, on a blocking listener, if another coroutine already
    /// waits to accept on it.
    pub fn accept(&self) -> io::Result<SocketChannel> {
        trace::qio_channel_socket_accept(self.ptr());
        let fd = self.fd()?;
        if self.is_blocking() && coroutine::in_coroutine() {
            while !readable_now(fd) {
                self.yield_for(events::IN)?;
            }
        }
        match retry(|| rnet::accept_with(fd, SocketFlags::CLOEXEC)) {
            Ok(cfd) => {
                let ch = SocketChannel::from_fd(cfd, self.family);
                trace::qio_channel_socket_accept_complete(self.ptr(), ch.ptr(), ch.raw());
                Ok(ch)
            }
            Err(e) => {
                trace::qio_channel_socket_accept_fail(self.ptr());
                Err(e)
            }
        }
    }

    /// The local address (QEMU's `qio_channel_socket_get_local_address`).
    ///
    /// # Errors
    /// If getsockname fails or the family is not TCP or Unix.
    pub fn local_address(&self) -> io::Result<SocketAddress> {
        to_address(rnet::getsockname(self.fd()?)?)
    }

    /// The peer's address (QEMU's `qio_channel_socket_get_remote_address`).
    ///
    /// # Errors
    /// `ENOTCONN` if not connected.
    pub fn remote_address(&self) -> io::Result<SocketAddress> {
        match rnet::getpeername(self.fd()?)? {
            Some(a) => to_address(a),
            None => to_address_unnamed(),
        }
    }

    /// Whether this is a Unix-domain socket.
    pub fn is_unix(&self) -> bool {
        self.family == AddressFamily::UNIX
    }

    fn fd(&self) -> io::Result<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd()).ok_or_else(ebadf)
    }

    fn raw(&self) -> i32 {
        self.fd.as_ref().map_or(-1, |f| f.as_raw_fd())
    }

    fn ptr(&self) -> *const () {
        self as *const SocketChannel as *const ()
    }

    /// QEMU's `socket_listen_cleanup`: unlinks the path of a listening Unix
    /// socket, if this channel bound it (QEMU unlinks a handed-over one
    /// too, which breaks systemd's next activation; qemu-nbd never closes
    /// its listener, so it does not show).
    fn listen_cleanup(&self) -> io::Result<()> {
        if !self.is_unix() || !self.has_feature(Feature::Listen) || !self.bound_path {
            return Ok(());
        }
        if let Ok(SocketAddress::Unix(a)) = self.local_address() {
            if !a.abstract_ && !a.path.is_empty() {
                match std::fs::remove_file(&a.path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(with_context(
                            e,
                            format!("Failed to unlink socket {}", a.path),
                        ))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

impl Drop for SocketChannel {
    fn drop(&mut self) {
        if self.fd.is_some() {
            let _ = self.io_close();
        }
    }
}

impl AsFd for SocketChannel {
    /// # Panics
    /// If the channel was closed.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd().expect("SocketChannel::as_fd on a closed channel")
    }
}

impl AsRawFd for SocketChannel {
    fn as_raw_fd(&self) -> RawFd {
        self.raw()
    }
}

impl Channel for SocketChannel {
    fn base(&self) -> &ChannelBase {
        &self.base
    }

    fn io_readv(
        &self,
        iov: &mut [IoSliceMut<'_>],
        fds: Option<&mut Vec<OwnedFd>>,
        flags: ReadFlags,
    ) -> io::Result<usize> {
        let fd = self.fd()?;
        let mut rflags = RecvFlags::CMSG_CLOEXEC;
        if flags.peek {
            rflags |= RecvFlags::PEEK;
        }
        // In a coroutine the thread must not block: the caller yields
        // instead (module documentation of `channel`).
        let dontwait = coroutine::in_coroutine();
        if dontwait {
            rflags |= RecvFlags::DONTWAIT;
        }
        let Some(fds) = fds else {
            if flags.peek || dontwait {
                let mut none = RecvAncillaryBuffer::default();
                return retry(|| rnet::recvmsg(fd, iov, &mut none, rflags)).map(|m| m.bytes);
            }
            return retry(|| rustix::io::readv(fd, iov));
        };
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = retry(|| rnet::recvmsg(fd, iov, &mut control, rflags))?;
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = m {
                fds.extend(rights);
            }
        }
        Ok(msg.bytes)
    }

    fn io_writev(&self, iov: &[IoSlice<'_>], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        let fd = self.fd()?;
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = if fds.is_empty() {
            SendAncillaryBuffer::default()
        } else {
            let mut c = SendAncillaryBuffer::new(&mut space);
            if !c.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many fds"));
            }
            c
        };
        let mut sflags = SendFlags::NOSIGNAL;
        if coroutine::in_coroutine() {
            sflags |= SendFlags::DONTWAIT; // as in `io_readv`
        }
        retry(|| rnet::sendmsg(fd, iov, &mut control, sflags))
    }

    fn io_set_blocking(&self, enabled: bool) -> io::Result<()> {
        Ok(rustix::io::ioctl_fionbio(self.fd()?, !enabled)?)
    }

    fn io_close(&mut self) -> io::Result<()> {
        if self.fd.is_none() {
            return Err(ebadf());
        }
        self.base.close_watches();
        if self.hang_up_on_close {
            if let Some(fd) = &self.fd {
                let _ = rnet::shutdown(fd, rnet::Shutdown::Both);
            }
        }
        let r = self.listen_cleanup();
        self.fd = None;
        r
    }

    fn poll_fd(&self) -> io::Result<BorrowedFd<'_>> {
        self.fd()
    }

    fn io_shutdown(&self, how: Shutdown) -> io::Result<()> {
        let how = match how {
            Shutdown::Read => rnet::Shutdown::Read,
            Shutdown::Write => rnet::Shutdown::Write,
            Shutdown::Both => rnet::Shutdown::Both,
        };
        Ok(rnet::shutdown(self.fd()?, how)?)
    }

    fn io_set_delay(&self, enabled: bool) -> io::Result<()> {
        if self.is_unix() {
            return Ok(());
        }
        Ok(rnet::sockopt::set_tcp_nodelay(self.fd()?, !enabled)?)
    }

    fn io_set_cork(&self, enabled: bool) -> io::Result<()> {
        if self.is_unix() {
            return Ok(());
        }
        Ok(rnet::sockopt::set_tcp_cork(self.fd()?, enabled)?)
    }
}

/// The channel or the error a connect/listen task ended with.
fn task_outcome(t: &mut Task<SocketAddress>) -> io::Result<SocketChannel> {
    if let Err(e) = t.propagate_error() {
        return Err(match e.downcast::<io::Error>() {
            Ok(e) => *e,
            Err(other) => io::Error::other(other),
        });
    }
    t.take_result::<SocketChannel>()
        .map_err(io::Error::other)?
        .ok_or_else(|| io::Error::other("socket task ended without a channel"))
}

// ----- addresses -----

fn to_address(a: SocketAddrAny) -> io::Result<SocketAddress> {
    let family = a.address_family();
    if family == AddressFamily::UNIX {
        let u = SocketAddrUnix::try_from(a)?;
        if let Some(name) = u.abstract_name() {
            // QEMU's socket_sockaddr_to_address_unix: a name that fills
            // sun_path was bound without `tight`.
            let tight = name.len() < UNIX_PATH_MAX - 1;
            let end = name.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            let name = if tight { name } else { &name[..end] };
            return Ok(SocketAddress::Unix(UnixSocketAddress {
                path: String::from_utf8_lossy(name).into_owned(),
                abstract_: true,
                tight: (!tight).then_some(false),
            }));
        }
        let path = u
            .path_bytes()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        return Ok(SocketAddress::unix(path));
    }
    let sa = SocketAddr::try_from(a)?;
    Ok(SocketAddress::Inet(InetSocketAddress {
        host: sa.ip().to_string(),
        port: sa.port(),
        ipv4: sa.is_ipv4().then_some(true),
        ipv6: sa.is_ipv6().then_some(true),
        ..Default::default()
    }))
}

fn to_address_unnamed() -> io::Result<SocketAddress> {
    Ok(SocketAddress::unix(""))
}

/// Resolves a TCP address into the numeric addresses it names, in
/// resolver order, filtered by `ipv4=` / `ipv6=` (QEMU's
/// `qio_dns_resolver_lookup_sync`). An empty host means every local address
/// when `passive` (listening), the loopback addresses otherwise.
///
/// # Errors
/// If resolution fails or leaves nothing.
///
/// ```
/// use corio::io::address::InetSocketAddress;
/// use corio::io::socket::resolve_inet;
/// let a = InetSocketAddress { host: "127.0.0.1".into(), port: 80, ..Default::default() };
/// assert_eq!(resolve_inet(&a, false).unwrap(), ["127.0.0.1:80".parse().unwrap()]);
/// ```
pub fn resolve_inet(a: &InetSocketAddress, passive: bool) -> io::Result<Vec<SocketAddr>> {
    let port = a.port;
    let mut out: Vec<SocketAddr> = if a.host.is_empty() {
        let (v6, v4): (IpAddr, IpAddr) = if passive {
            (Ipv6Addr::UNSPECIFIED.into(), Ipv4Addr::UNSPECIFIED.into())
        } else {
            (Ipv6Addr::LOCALHOST.into(), Ipv4Addr::LOCALHOST.into())
        };
        vec![SocketAddr::new(v6, port), SocketAddr::new(v4, port)]
    } else if let Ok(ip) = a.host.parse::<IpAddr>() {
        vec![SocketAddr::new(ip, port)]
    } else {
        (a.host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| {
                with_context(
                    e,
                    format!("address resolution failed for {}:{}", a.host, port),
                )
            })?
            .collect()
    };
    // ipv4=on alone means IPv4 only, ipv6=on alone IPv6 only (QEMU's
    // inet_ai_family_from_address); an explicit off removes that family.
    let want_v4 = a.ipv4.unwrap_or(a.ipv6 != Some(true));
    let want_v6 = a.ipv6.unwrap_or(a.ipv4 != Some(true));
    out.retain(|s| if s.is_ipv4() { want_v4 } else { want_v6 });
    let mut seen = Vec::new();
    out.retain(|s| {
        let new = !seen.contains(s);
        seen.push(*s);
        new
    });
    if out.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no address of a permitted family for '{}'", a),
        ));
    }
    Ok(out)
}

fn inet_socket(sa: &SocketAddr) -> io::Result<socket2::Socket> {
    let domain = if sa.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    socket2::Socket::new(domain, socket2::Type::STREAM.cloexec(), None)
}

fn inet_connect(a: &InetSocketAddress) -> io::Result<SocketChannel> {
    let mut last = None;
    for sa in resolve_inet(a, false)? {
        let sock = inet_socket(&sa)?;
        match retry_io(|| sock.connect(&sa.into())) {
            Ok(()) => {
                if a.keep_alive == Some(true) {
                    sock.set_keepalive(true)?;
                }
                let family = if sa.is_ipv4() {
                    AddressFamily::INET
                } else {
                    AddressFamily::INET6
                };
                return Ok(SocketChannel::from_fd(sock.into(), family));
            }
            Err(e) => last = Some(with_context(e, format!("Failed to connect to '{sa}'"))),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no address to connect to")))
}

fn retry_io(mut f: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn inet_listen(a: &InetSocketAddress, backlog: i32) -> io::Result<SocketChannel> {
    let last_port = a.to.unwrap_or(a.port).max(a.port);
    let mut last = None;
    for sa in resolve_inet(a, true)? {
        for port in a.port..=last_port {
            let sa = SocketAddr::new(sa.ip(), port);
            let sock = inet_socket(&sa)?;
            sock.set_reuse_address(true)?;
            if sa.is_ipv6() {
                // Dual stack unless IPv4 is explicitly excluded.
                let _ = sock.set_only_v6(a.ipv4 == Some(false));
            }
            match sock.bind(&sa.into()).and_then(|()| sock.listen(backlog)) {
                Ok(()) => {
                    let family = if sa.is_ipv4() {
                        AddressFamily::INET
                    } else {
                        AddressFamily::INET6
                    };
                    return Ok(SocketChannel::from_fd(sock.into(), family));
                }
                Err(e) => last = Some(with_context(e, format!("Failed to bind socket to {sa}"))),
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no address to listen on")))
}

fn unix_sockaddr(a: &UnixSocketAddress) -> io::Result<SocketAddrUnix> {
    let max = if a.abstract_ {
        UNIX_PATH_MAX - 1
    } else {
        UNIX_PATH_MAX
    };
    if a.path.is_empty() || a.path.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "UNIX socket path '{}' is empty or too long (at most {max} bytes)",
                a.path
            ),
        ));
    }
    if a.abstract_ {
        let mut name = a.path.as_bytes().to_vec();
        if !a.is_tight() {
            name.resize(UNIX_PATH_MAX - 1, 0);
        }
        Ok(SocketAddrUnix::new_abstract_name(&name)?)
    } else {
        Ok(SocketAddrUnix::new(a.path.as_str())?)
    }
}

fn unix_socket() -> io::Result<OwnedFd> {
    Ok(rnet::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

fn unix_connect(a: &UnixSocketAddress) -> io::Result<SocketChannel> {
    let sa = unix_sockaddr(a)?;
    let fd = unix_socket()?;
    retry(|| rnet::connect(&fd, &sa))
        .map_err(|e| with_context(e, format!("Failed to connect to '{}'", a.path)))?;
    Ok(SocketChannel::from_fd(fd, AddressFamily::UNIX))
}

fn unix_listen(a: &UnixSocketAddress, backlog: i32) -> io::Result<SocketChannel> {
    let sa = unix_sockaddr(a)?;
    let fd = unix_socket()?;
    if !a.abstract_ {
        match std::fs::remove_file(&a.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(with_context(
                    e,
                    format!("Failed to unlink socket {}", a.path),
                ))
            }
            _ => {}
        }
    }
    rnet::bind(&fd, &sa)
        .map_err(|e| with_context(e.into(), format!("Failed to bind socket to {}", a.path)))?;
    rnet::listen(&fd, backlog).map_err(|e| with_context(e.into(), "Failed to listen on socket"))?;
    Ok(SocketChannel::from_fd(fd, AddressFamily::UNIX))
}
