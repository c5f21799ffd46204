//! The NBD server on corio (qemu-nbd's `nbd/server.c` and the serving part
//! of `qemu-nbd.c`).
//!
//! - A [`NetListener`] accepts on every address a host name resolves to,
//!   or on a Unix socket, in the main loop's context.
//! - Each client gets a coroutine (`session`) on the main context or, with
//!   [`ServerConfig::iothreads`], on one of N IOThreads in turn. It
//!   negotiates (`handshake`) and then reads requests; each request runs
//!   in a coroutine of its own (at most 16 in flight per client, as
//!   qemu-nbd); replies are serialised by a `CoMutex` and leave in one
//!   `writev` each. A client that stops reading holds up only itself.
//! - Storage sits behind [`crate::storage::Storage`].
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use corio_nbd::server::{Export, Server, ServerConfig};
//! use corio_nbd::storage::memory::MemoryStorage;
//! use corio::io::address::SocketAddress;
//!
//! let export = Export::new("", Arc::new(MemoryStorage::new(1 << 20, false)));
//! let mut config = ServerConfig::new(export);
//! config.listen = vec![SocketAddress::inet("127.0.0.1", 0)];
//! config.persistent = true;
//! let (handle, thread) = Server::spawn(config).unwrap();
//! assert!(!handle.local_addresses().is_empty());
//! handle.shutdown();
//! thread.join().unwrap().unwrap();
//! ```

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use corio::io::address::SocketAddress;
use corio::io::{Channel, NetListener, SocketChannel};
use corio::{AioContext, Clock, IoThread};

pub mod export;
mod handshake;
mod inbuf;
pub mod psk;
mod reply;
mod request;
pub mod session;
pub mod tls;

pub use export::{DetectZeroes, Discard, Export};
pub use psk::PskCreds;
pub use tls::{ServerCreds, TlsConfig};

use crate::proto::Limits;

/// How a server is set up.
#[derive(Debug)]
pub struct ServerConfig {
    /// The export.
    pub export: Export,
    /// Addresses to listen on (`-b`/`-p` or `-k`); a host name gives a
    /// socket per address it resolves to.
    pub listen: Vec<SocketAddress>,
    /// Sockets already listening (systemd socket activation).
    pub listen_sockets: Vec<SocketChannel>,
    /// Most clients at once (`-e`); beyond it the server stops accepting.
    /// 0: no limit.
    pub shared: usize,
    /// Keep serving after the last client leaves (`-t`).
    pub persistent: bool,
    /// IOThreads that serve clients, in turn; 0: the main loop serves
    /// them, as qemu-nbd.
    pub iothreads: usize,
    /// A client that has not finished the handshake after this is dropped
    /// (`--handshake-limit`; `None`: no limit).
    pub handshake_limit: Option<Duration>,
    /// TLS, required of every client when set.
    pub tls: Option<TlsConfig>,
    /// Log dropped clients and failed requests on stderr (`-v`).
    pub verbose: bool,
    /// At shutdown, how long clients get to take the replies to their
    /// requests in flight; then their connections are hung up, so that a
    /// client that never reads cannot keep the server from exiting
    /// (qemu-nbd waits for ever).
    pub shutdown_grace: Duration,
}

/// [`ServerConfig::shutdown_grace`]'s default.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl ServerConfig {
    /// qemu-nbd's defaults for `export`: one client, not persistent,
    /// 10 s handshake limit, no TLS; no address yet.
    pub fn new(export: Export) -> ServerConfig {
        ServerConfig {
            export,
            listen: Vec::new(),
            listen_sockets: Vec::new(),
            shared: 1,
            persistent: false,
            iothreads: 0,
            handshake_limit: Some(Duration::from_secs(10)),
            tls: None,
            verbose: false,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

/// Counters, readable from any thread.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Bytes returned by reads.
    pub bytes_read: AtomicU64,
    /// Bytes written.
    pub bytes_written: AtomicU64,
    /// Clients connected now.
    pub clients: AtomicUsize,
    /// Clients accepted since start.
    pub accepted: AtomicU64,
}

#[derive(Debug, Default)]
struct Lifecycle {
    clients: usize,
    accepting: bool,
    stopping: bool,
    done: bool,
    ever: bool,
    next_thread: usize,
}

/// What every client's coroutines share.
pub(crate) struct Shared {
    pub(crate) export: Export,
    pub(crate) tls: Option<TlsConfig>,
    pub(crate) limits: Limits,
    pub(crate) handshake_limit: Option<Duration>,
    pub(crate) stats: Stats,
    verbose: bool,
    shutdown_grace: Duration,
    shared_limit: usize,
    persistent: bool,
    main: AioContext,
    targets: Vec<AioContext>,
    listener: NetListener,
    unix_paths: Vec<String>,
    life: Mutex<Lifecycle>,
    /// The open client connections, to hang up on at shutdown.
    socks: Mutex<Vec<(u64, Arc<session::Conn>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn log(&self, args: fmt::Arguments<'_>) {
        if self.verbose {
            eprintln!("corio-nbd: {args}");
        }
    }

    /// Accept callback, in the main context (qemu's `nbd_accept`).
    fn accept(self: &Arc<Self>, sock: SocketChannel) {
        let (target, id) = {
            let mut life = lock(&self.life);
            if life.stopping {
                return;
            }
            life.clients += 1;
            life.ever = true;
            let t = life.next_thread;
            life.next_thread = t.wrapping_add(1);
            let target = if self.targets.is_empty() {
                self.main.clone()
            } else {
                self.targets[t % self.targets.len()].clone()
            };
            (target, self.stats.accepted.fetch_add(1, Relaxed))
        };
        self.stats.clients.fetch_add(1, Relaxed);
        let conn = Arc::new(session::Conn::new(sock));
        lock(&self.socks).push((id, conn.clone()));
        self.update_watch();
        let shared = self.clone();
        // Detached: the client's coroutine reports its own end (closed).
        drop(target.spawn(move || {
            session::run_client(&conn, shared.clone());
            shared.closed(id);
        }));
    }

    /// A client is gone (any thread): account for it in the main context.
    fn closed(self: &Arc<Self>, id: u64) {
        lock(&self.socks).retain(|(i, _)| *i != id);
        self.stats.clients.fetch_sub(1, Relaxed);
        let me = self.clone();
        self.main.bh_schedule_oneshot(move || {
            let mut life = lock(&me.life);
            life.clients -= 1;
            if life.clients == 0 && (life.stopping || (!me.persistent && life.ever)) {
                life.done = true;
            }
            drop(life);
            me.update_watch();
        });
    }

    /// Accept while below the client limit (qemu's
    /// `nbd_update_server_watch`). Main context only.
    fn update_watch(self: &Arc<Self>) {
        let mut life = lock(&self.life);
        let want = !life.stopping
            && !life.done
            && (self.shared_limit == 0 || life.clients < self.shared_limit);
        if want == life.accepting {
            return;
        }
        life.accepting = want;
        drop(life);
        if want {
            let me = Arc::downgrade(self);
            self.listener.set_client_func(
                Some(Box::new(move |_l, sock| {
                    if let Some(me) = me.upgrade() {
                        me.accept(sock);
                    }
                })),
                None,
                Some(&self.main),
            );
        } else {
            self.listener.set_client_func(None, None, Some(&self.main));
        }
    }

    /// Stop accepting, let every client finish what is in flight (their
    /// sockets stop reading), then end. Main context only.
    fn stop(self: &Arc<Self>) {
        let mut life = lock(&self.life);
        if life.stopping {
            return;
        }
        life.stopping = true;
        if life.clients == 0 {
            life.done = true;
        }
        drop(life);
        self.update_watch();
        self.listener.disconnect();
        for (_, c) in lock(&self.socks).iter() {
            let _ = c.sock.shutdown(std::net::Shutdown::Read);
        }
    }

    /// The shutdown grace is over: hang up on every client still there
    /// (their replies cannot be written; their coroutines end).
    fn hang_up(&self) {
        // Not under the lock: a woken writer may run to its end here and
        // report itself closed.
        let socks: Vec<_> = lock(&self.socks).clone();
        if !socks.is_empty() {
            eprintln!(
                "corio-nbd: {} client(s) did not take their replies within {:?} of \
                 shutdown; hanging up",
                socks.len(),
                self.shutdown_grace
            );
        }
        for (_, c) in socks.iter() {
            c.hang_up();
        }
    }
}

/// A running server's handle: any thread.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
    addresses: Vec<SocketAddress>,
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// Stops the server as SIGTERM does: no new clients; each client's
    /// requests in flight are answered, then it is hung up on (at the
    /// latest after [`ServerConfig::shutdown_grace`], if it does not read
    /// its replies); the storage is flushed and [`Server::run`] returns.
    pub fn shutdown(&self) {
        let s = self.shared.clone();
        self.shared.main.bh_schedule_oneshot(move || s.stop());
    }

    /// The addresses the server listens on (a port 0 resolved).
    pub fn local_addresses(&self) -> &[SocketAddress] {
        &self.addresses
    }

    /// The server's counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }
}

/// The server: built with [`Server::new`] (which binds), run with
/// [`Server::run`] on the same thread.
pub struct Server {
    shared: Arc<Shared>,
    iothreads: Vec<IoThread>,
    handle: ServerHandle,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("addresses", &self.handle.addresses)
            .field("iothreads", &self.iothreads.len())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds every address, starts the IOThreads. The calling thread's
    /// context becomes the server's main loop: call [`run`](Self::run) on
    /// this thread.
    ///
    /// # Errors
    /// If an address cannot be bound (naming it), or an IOThread cannot
    /// start.
    pub fn new(config: ServerConfig) -> io::Result<Server> {
        let listener = NetListener::new();
        listener.set_name("corio-nbd-listener");
        let mut unix_paths = Vec::new();
        for a in &config.listen {
            listener
                .open_sync(a, 128)
                .map_err(|e| io::Error::new(e.kind(), format!("failed to listen on {a}: {e}")))?;
            if let SocketAddress::Unix(u) = a {
                if !u.abstract_ {
                    unix_paths.push(u.path.clone());
                }
            }
        }
        for s in config.listen_sockets {
            listener.add(s)?;
        }
        if listener.num_sockets() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no address to listen on",
            ));
        }
        let addresses = listener.local_addresses()?;
        let iothreads = (0..config.iothreads)
            .map(|i| IoThread::with_name(&format!("nbd-iothread{i}")))
            .collect::<io::Result<Vec<_>>>()?;
        let shared = Arc::new(Shared {
            limits: Limits::default(),
            handshake_limit: config.handshake_limit,
            stats: Stats::default(),
            verbose: config.verbose,
            shutdown_grace: config.shutdown_grace,
            shared_limit: config.shared,
            persistent: config.persistent,
            main: AioContext::current(),
            targets: iothreads.iter().map(|t| t.context().clone()).collect(),
            listener,
            unix_paths,
            life: Mutex::new(Lifecycle::default()),
            socks: Mutex::new(Vec::new()),
            export: config.export,
            tls: config.tls,
        });
        let handle = ServerHandle {
            shared: shared.clone(),
            addresses,
        };
        Ok(Server {
            shared,
            iothreads,
            handle,
        })
    }

    /// A handle for other threads (shutdown, statistics).
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Serves until stopped ([`ServerHandle::shutdown`]) or, without
    /// `persistent`, until the last client leaves; then flushes the
    /// storage and removes the Unix socket files.
    ///
    /// # Errors
    /// If the final flush fails.
    ///
    /// # Panics
    /// On another thread than the one that called [`new`](Self::new).
    pub fn run(self) -> io::Result<()> {
        let s = &self.shared;
        assert!(
            s.main.in_home_thread(),
            "Server::run must be called on the thread that created the server"
        );
        s.update_watch();
        let me = s.clone();
        let grace = s.main.timer_new(Clock::Realtime, move || me.hang_up());
        let mut armed = false;
        while !lock(&s.life).done {
            // stop() runs in a bottom half of this loop: arm the grace
            // timer on the next turn.
            if !armed && lock(&s.life).stopping {
                armed = true;
                grace.modify_in(i64::try_from(s.shutdown_grace.as_nanos()).unwrap_or(i64::MAX));
            }
            s.main.poll(true);
        }
        grace.delete();
        s.listener.set_client_func(None, None, Some(&s.main));
        s.listener.disconnect();
        for p in &s.unix_paths {
            let _ = std::fs::remove_file(p);
        }
        for t in self.iothreads {
            t.join();
        }
        s.export.storage.flush()
    }

    /// Builds and runs a server on a thread of its own; returns its handle
    /// once it listens, and the thread (which returns `run`'s result).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn spawn(
        config: ServerConfig,
    ) -> io::Result<(ServerHandle, std::thread::JoinHandle<io::Result<()>>)> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("nbd-server".into())
            .spawn(move || match Server::new(config) {
                Ok(server) => {
                    let _ = tx.send(Ok(server.handle()));
                    server.run()
                }
                Err(e) => {
                    let msg = e.to_string();
                    let _ = tx.send(Err(e));
                    Err(io::Error::other(msg))
                }
            })?;
        let handle = rx
            .recv()
            .map_err(|_| io::Error::other("server thread died during start-up"))??;
        Ok((handle, thread))
    }
}
