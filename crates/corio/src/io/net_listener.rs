//! QEMU's `QIONetListener` (io/net-listener.c): one or more listening
//! sockets for one service address, each watched in a context, with a
//! callback that gets every accepted client.
//!
//! # Examples
//!
//! The callback runs in the listener's context, so it must not block: it
//! starts a coroutine for the client, which yields while it waits for bytes
//! and lets the context serve everyone else (see [`crate::io::channel`]).
//!
//! ```
//! use corio::io::{address::SocketAddress, Channel, NetListener, SocketChannel};
//! use corio::{AioContext, Coroutine};
//! use std::sync::{Arc, Mutex};
//!
//! let ctx = AioContext::new().unwrap();
//! let listener = NetListener::new();
//! listener.set_name("doc-listener");
//! listener.open_sync(&SocketAddress::inet("127.0.0.1", 0), 4).unwrap();
//! let addr = listener.local_addresses().unwrap().remove(0);
//!
//! let got = Arc::new(Mutex::new(Vec::new()));
//! let g = got.clone();
//! listener.set_client_func(
//!     Some(Box::new(move |_l, client: SocketChannel| {
//!         let g = g.clone();
//!         Coroutine::new(move || {
//!             let mut buf = [0u8; 5];
//!             client.read_all(&mut buf).unwrap(); // yields until the bytes come
//!             g.lock().unwrap().extend_from_slice(&buf);
//!         })
//!         .enter();
//!     })),
//!     None,
//!     Some(&ctx),
//! );
//! let c = SocketChannel::connect_sync(&addr).unwrap();
//! ctx.poll(true); // accepts: the client's coroutine now waits for bytes
//! assert!(got.lock().unwrap().is_empty());
//! c.write_all_bytes(b"hello").unwrap();
//! while got.lock().unwrap().is_empty() {
//!     ctx.poll(true);
//! }
//! assert_eq!(&*got.lock().unwrap(), b"hello");
//! listener.disconnect();
//! assert!(!listener.is_connected());
//! ```

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::address::SocketAddress;
use super::channel::Channel;
use super::socket::{resolve_inet, SocketChannel};
use super::watch::{WatchHandle, WatchNotify};
use crate::aio::events;
use crate::aio::AioContext;
use crate::trace;

/// The accept callback: gets the listener and the new client (QEMU's
/// `QIONetListenerClientFunc`). It runs in the listener's context and must
/// not block: start a coroutine (or spawn one on an IoThread) to serve the
/// client. The client is in blocking mode, in which a coroutine yields
/// whenever the socket would block (see [`crate::io::channel`]).
pub type ClientFunc = Box<dyn FnMut(&NetListener, SocketChannel) + Send>;

/// A set of listening sockets with an accept callback. Cloning gives another
/// handle to the same listener.
#[derive(Clone)]
pub struct NetListener {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    name: Mutex<Option<String>>,
    /// The listening sockets (non-blocking, so that a watch callback never
    /// blocks when another waiter took the client first).
    socks: Mutex<Vec<SocketChannel>>,
    /// The callback, its notify and the context its watches run in.
    client: Mutex<ClientState>,
    /// QEMU's `connected`: some socket was added and not disconnected.
    connected: AtomicBool,
}

#[derive(Default)]
struct ClientState {
    /// Taken out while it runs; `generation` tells whether it was replaced
    /// meanwhile.
    func: Option<ClientFunc>,
    notify: Option<WatchNotify>,
    ctx: Option<AioContext>,
    /// Whether a callback is set (it is taken out of `func` while it runs).
    active: bool,
    /// Bumped by every `set_client_func`.
    generation: u64,
    /// One IN watch per socket while a callback is set.
    watches: Vec<WatchHandle>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for NetListener {
    fn default() -> Self {
        NetListener::new()
    }
}

impl NetListener {
    /// An empty listener (QEMU's `qio_net_listener_new`).
    pub fn new() -> NetListener {
        NetListener {
            inner: Arc::new(Inner::default()),
        }
    }

    fn ptr(&self) -> *const () {
        Arc::as_ptr(&self.inner).cast()
    }

    /// Names the listener and its sockets (QEMU's
    /// `qio_net_listener_set_name`); later sockets get the name too.
    pub fn set_name(&self, name: &str) {
        *lock(&self.inner.name) = Some(name.to_owned());
        for s in lock(&self.inner.socks).iter() {
            s.set_name(name);
        }
    }

    /// The listener's name.
    pub fn name(&self) -> Option<String> {
        lock(&self.inner.name).clone()
    }

    /// Listens on every address `addr` resolves to, one socket each
    /// (`localhost` gives `127.0.0.1` and `::1`); succeeds if at least one
    /// binds (QEMU's `qio_net_listener_open_sync`).
    ///
    /// # Errors
    /// Resolution failure, or the last bind error if none bound.
    pub fn open_sync(&self, addr: &SocketAddress, backlog: i32) -> io::Result<()> {
        let addrs = match addr {
            SocketAddress::Inet(a) => resolve_inet(a, true)?
                .into_iter()
                .map(|sa| {
                    let mut r = a.clone();
                    r.host = sa.ip().to_string();
                    if sa.is_ipv6() {
                        r.ipv6 = Some(true);
                    } else {
                        r.ipv4 = Some(true);
                    }
                    SocketAddress::Inet(r)
                })
                .collect(),
            other => vec![other.clone()],
        };
        let mut last = None;
        let mut opened = 0;
        for a in &addrs {
            match SocketChannel::listen_sync(a, backlog) {
                Ok(s) => {
                    self.add(s)?;
                    opened += 1;
                }
                Err(e) => last = Some(e),
            }
        }
        trace::qio_net_listener_open(self.ptr(), &addr.to_string(), opened);
        if opened == 0 {
            return Err(last.unwrap_or_else(|| io::Error::other("no address to listen on")));
        }
        Ok(())
    }

    /// Adds an already-listening socket (QEMU's `qio_net_listener_add`),
    /// watched at once if a callback is set.
    ///
    /// # Errors
    /// If the socket cannot be made non-blocking or watched.
    pub fn add(&self, sock: SocketChannel) -> io::Result<()> {
        if let Some(name) = self.name() {
            sock.set_name(&name);
        }
        sock.set_blocking(false)?;
        let mut client = lock(&self.inner.client);
        if client.active {
            let ctx = client.ctx.clone();
            let w = self.watch_socket(&sock, ctx.as_ref())?;
            client.watches.push(w);
        }
        lock(&self.inner.socks).push(sock);
        self.inner.connected.store(true, Relaxed);
        Ok(())
    }

    /// The local address of each socket, in the order they were added.
    ///
    /// # Errors
    /// If getsockname fails.
    pub fn local_addresses(&self) -> io::Result<Vec<SocketAddress>> {
        lock(&self.inner.socks)
            .iter()
            .map(SocketChannel::local_address)
            .collect()
    }

    /// How many sockets the listener has.
    pub fn num_sockets(&self) -> usize {
        lock(&self.inner.socks).len()
    }

    fn watch_socket(
        &self,
        sock: &SocketChannel,
        ctx: Option<&AioContext>,
    ) -> io::Result<WatchHandle> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let fd = sock.as_raw_fd();
        sock.add_watch(
            events::IN,
            Box::new(move |_| {
                if let Some(inner) = weak.upgrade() {
                    NetListener { inner }.accept_one(fd);
                }
                true
            }),
            None,
            ctx,
        )
    }

    /// A watch fired for the socket whose fd is `fd`: accept and call back
    /// (QEMU's `qio_net_listener_channel_func`).
    fn accept_one(&self, fd: i32) {
        let accepted = {
            let socks = lock(&self.inner.socks);
            let Some(sock) = socks.iter().find(|s| s.as_raw_fd() == fd) else {
                return;
            };
            sock.accept()
        };
        let Ok(client) = accepted else {
            return; // EAGAIN (someone else took it), or a transient error
        };
        trace::qio_net_listener_callback(self.ptr(), client.as_raw_fd());
        let (func, generation) = {
            let mut c = lock(&self.inner.client);
            (c.func.take(), c.generation)
        };
        if let Some(mut f) = func {
            f(self, client);
            let mut c = lock(&self.inner.client);
            if c.generation == generation && c.func.is_none() {
                c.func = Some(f);
            }
        }
    }

    /// Sets, replaces or (with `None`) clears the accept callback, whose
    /// watches run in `ctx` (the caller's current context when `None`)
    /// (QEMU's `qio_net_listener_set_client_func_full`). The previous
    /// callback's notify runs now, once.
    ///
    /// # Panics
    /// If a socket's watch cannot be installed (the listener was
    /// disconnected concurrently).
    pub fn set_client_func(
        &self,
        func: Option<ClientFunc>,
        notify: Option<WatchNotify>,
        ctx: Option<&AioContext>,
    ) {
        let (old_notify, old_watches) = {
            let mut c = lock(&self.inner.client);
            c.generation += 1;
            c.func = None;
            c.active = false;
            (c.notify.take(), std::mem::take(&mut c.watches))
        };
        for w in old_watches {
            w.remove();
        }
        if let Some(n) = old_notify {
            n();
        }
        let has_func = func.is_some();
        let mut c = lock(&self.inner.client);
        c.func = func;
        c.active = has_func;
        c.notify = notify;
        c.ctx = ctx.cloned();
        if has_func {
            let socks = lock(&self.inner.socks);
            for s in socks.iter() {
                let w = self
                    .watch_socket(s, ctx)
                    .unwrap_or_else(|e| panic!("qio_net_listener_set_client_func: {e}"));
                c.watches.push(w);
            }
        }
    }

    /// Blocks until a client connects to any socket and returns it, without
    /// calling the callback (QEMU's `qio_net_listener_wait_client`). Set
    /// watches stay active meanwhile: a client goes to whichever accepts it
    /// first.
    ///
    /// # Errors
    /// If there is no socket, or poll or accept fails.
    pub fn wait_client(&self) -> io::Result<SocketChannel> {
        loop {
            let ready = {
                let socks = lock(&self.inner.socks);
                if socks.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "listener has no socket",
                    ));
                }
                let mut pfds: Vec<_> = socks
                    .iter()
                    .map(|s| rustix::event::PollFd::new(s, rustix::event::PollFlags::IN))
                    .collect();
                // Bounded, so that a disconnect from another thread is seen.
                let ts = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 100_000_000,
                };
                match rustix::event::poll(&mut pfds, Some(&ts)) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
                let ready: Vec<usize> = pfds
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| !p.revents().is_empty())
                    .map(|(i, _)| i)
                    .collect();
                ready.into_iter().find_map(|i| match socks[i].accept() {
                    Ok(c) => Some(Ok(c)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                    Err(e) => Some(Err(e)),
                })
            };
            if let Some(r) = ready {
                return r;
            }
        }
    }

    /// Stops watching and closes every socket (QEMU's
    /// `qio_net_listener_disconnect`). The callback stays set (its notify
    /// runs when it is replaced or the listener goes).
    pub fn disconnect(&self) {
        trace::qio_net_listener_disconnect(self.ptr());
        let watches = std::mem::take(&mut lock(&self.inner.client).watches);
        for w in watches {
            w.remove();
        }
        let socks = std::mem::take(&mut *lock(&self.inner.socks));
        for mut s in socks {
            let _ = s.close();
        }
        self.inner.connected.store(false, Relaxed);
    }

    /// Whether the listener has sockets (QEMU's
    /// `qio_net_listener_is_connected`).
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Relaxed)
    }
}

impl Drop for Inner {
    /// QEMU's finalize: the notify runs, the sockets close.
    fn drop(&mut self) {
        let c = self.client.get_mut().unwrap_or_else(|e| e.into_inner());
        for w in c.watches.drain(..) {
            w.remove();
        }
        c.func = None;
        if let Some(n) = c.notify.take() {
            n();
        }
    }
}

impl std::fmt::Debug for NetListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetListener")
            .field("name", &self.name())
            .field("sockets", &self.num_sockets())
            .field("connected", &self.is_connected())
            .finish()
    }
}
