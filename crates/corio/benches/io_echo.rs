//! Channel benchmarks against tokio on 127.0.0.1 (DESIGN.md §5):
//!
//! * `accept_echo_close`: connect, write 64 bytes, read the echo, close;
//!   connections per second, with one and with two client threads. corio: a
//!   [`NetListener`] whose client callback starts one coroutine per client on
//!   an [`IoThread`]; the coroutine makes the socket non-blocking, `read_all`s
//!   64 bytes, `write_all`s them back and closes. Peer: a tokio `TcpListener`
//!   accept loop on a current_thread runtime on its own thread, one task per
//!   client doing `read_exact` / `write_all` (equal footing: one event-loop
//!   thread each). With two clients, a tokio multi-thread runtime with two
//!   workers is measured too, as a separate figure.
//! * `echo_1mib`: one connection; the client writes 1 MiB blocks from one
//!   thread and reads the echo back on another (write-then-read on one
//!   thread would deadlock once both socket buffers fill); MB/s (10^6 B/s) of
//!   echoed data. Each server runs one coroutine (task) that reads up to
//!   [`ECHO_BUF`] bytes and writes them back, until end of stream.
//!
//! Both servers are driven by the same client code: std blocking sockets on
//! plain threads. Client sockets set SO_LINGER 0 for the connection
//! workload, so that closing sends a reset and no connection is left in
//! TIME_WAIT (a few hundred thousand connections a run would otherwise
//! exhaust the loopback ephemeral ports), and SO_RCVTIMEO / SO_SNDTIMEO (the
//! latter also bounds `connect` on Linux), so that a dead server fails the
//! bench instead of hanging it.
//!
//! Not criterion: criterion measures one function for seconds before the
//! next, so on a shared machine another engineer's build lands on one peer
//! only. Here every round runs each server once, in rotating order, and the
//! figures are medians over rounds plus the median of the per-round ratios.
//!
//! `cargo bench -p corio --bench io_echo` (about a minute;
//! `-- --rounds N`, `-- --quick` for a smoke run, `-- FILTER` for one group).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Barrier, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use corio::io::address::SocketAddress;
use corio::io::{Channel, NetListener, SocketChannel};
use corio::{Coroutine, IoThread};
use socket2::{Domain, Socket, Type};

/// The echoed message of `accept_echo_close`.
const MSG: [u8; 64] = *b"corio accept+echo+close benchmark: 64 bytes of payload, echoed!!";
/// The block size of `echo_1mib`.
const BLOCK: usize = 1 << 20;
/// How much the `echo_1mib` servers read at most before writing back.
const ECHO_BUF: usize = 128 << 10;
/// Listen backlog of every server (tokio's `TcpListener::bind` uses 1024).
const BACKLOG: i32 = 1024;
/// Any client socket operation that takes longer means the server died.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Rounds by default: many short rounds give a steadier median of paired
/// ratios than few long ones on a machine others use meanwhile.
const ROUNDS: usize = 15;
/// Connections per round and server (about a third of a second at 10 k/s).
const CONNS_PER_ROUND: u64 = 3000;
/// 1 MiB blocks per round and server (about a third of a second at 1.5 GB/s).
const BLOCKS_PER_ROUND: u64 = 512;

// ------------------------------------------------------------------ servers

/// What a server does with each accepted client.
#[derive(Clone, Copy)]
enum Workload {
    /// Read 64 bytes, write them back, close.
    EchoClose,
    /// Echo everything until end of stream, [`ECHO_BUF`] at a time.
    Stream,
}

/// A running echo server of either kind.
trait Server {
    fn addr(&self) -> SocketAddr;
}

/// corio: a `NetListener` watched in an IOThread's context; its client
/// callback starts one coroutine per client there.
struct CorioServer {
    listener: NetListener,
    thread: Option<IoThread>,
    addr: SocketAddr,
}

fn corio_echo_close(client: SocketChannel) -> io::Result<()> {
    client.set_blocking(false)?;
    let mut buf = [0u8; MSG.len()];
    client.read_all(&mut buf)?;
    client.write_all_bytes(&buf)
    // Dropping the channel closes it.
}

fn corio_stream(client: SocketChannel) -> io::Result<()> {
    client.set_blocking(false)?;
    let mut buf = vec![0u8; ECHO_BUF];
    loop {
        // `Read` for `&SocketChannel` yields the coroutine while the socket
        // would block.
        let n = (&client).read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        client.write_all_bytes(&buf[..n])?;
    }
}

impl CorioServer {
    fn start(workload: Workload) -> CorioServer {
        let thread = IoThread::new().expect("iothread");
        let listener = NetListener::new();
        listener
            .open_sync(&SocketAddress::inet("127.0.0.1", 0), BACKLOG)
            .expect("corio listen");
        let addr = match listener.local_addresses().expect("address").remove(0) {
            SocketAddress::Inet(a) => SocketAddr::new(a.host.parse().expect("ip"), a.port),
            other => panic!("unexpected listener address {other}"),
        };
        let serve: fn(SocketChannel) -> io::Result<()> = match workload {
            Workload::EchoClose => corio_echo_close,
            Workload::Stream => corio_stream,
        };
        listener.set_client_func(
            Some(Box::new(move |_, client| {
                // Runs on the IOThread: the coroutine's home is that thread.
                let co = Coroutine::new(move || {
                    if let Err(e) = serve(client) {
                        eprintln!("corio echo server: {e}");
                    }
                });
                co.enter();
            })),
            None,
            Some(thread.context()),
        );
        CorioServer {
            listener,
            thread: Some(thread),
            addr,
        }
    }
}

impl Server for CorioServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for CorioServer {
    fn drop(&mut self) {
        self.listener.disconnect();
        if let Some(t) = self.thread.take() {
            t.join();
        }
    }
}

/// tokio: an accept loop spawning one task per client, on a current_thread
/// runtime on its own thread, or on a multi-thread runtime.
struct TokioServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

async fn tokio_echo_close(mut s: tokio::net::TcpStream) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; MSG.len()];
    s.read_exact(&mut buf).await?;
    s.write_all(&buf).await
}

async fn tokio_stream(mut s: tokio::net::TcpStream) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; ECHO_BUF];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n]).await?;
    }
}

async fn tokio_accept_loop(listener: std::net::TcpListener, workload: Workload) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let r = match workload {
                Workload::EchoClose => tokio_echo_close(s).await,
                Workload::Stream => tokio_stream(s).await,
            };
            if let Err(e) = r {
                eprintln!("tokio echo server: {e}");
            }
        });
    }
}

impl TokioServer {
    /// `workers` 0: current_thread runtime; otherwise multi-thread with that
    /// many workers.
    fn start(workload: Workload, workers: usize) -> TokioServer {
        // Bound like corio's listener: SO_REUSEADDR, the same backlog.
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        sock.set_reuse_address(true).expect("SO_REUSEADDR");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        sock.bind(&any.into()).expect("bind");
        sock.listen(BACKLOG).expect("listen");
        sock.set_nonblocking(true).expect("non-blocking");
        let listener = std::net::TcpListener::from(sock);
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tokio-server".into())
            .spawn(move || {
                let rt = if workers == 0 {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_io()
                        .build()
                } else {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(workers)
                        .enable_io()
                        .build()
                }
                .expect("runtime");
                rt.block_on(async move {
                    if workers == 0 {
                        tokio::select! {
                            _ = tokio_accept_loop(listener, workload) => {}
                            _ = stopped => {}
                        }
                    } else {
                        // The accept loop runs on a worker like the
                        // connection tasks; this thread only waits.
                        let accept = tokio::spawn(tokio_accept_loop(listener, workload));
                        let _ = stopped.await;
                        accept.abort();
                    }
                });
            })
            .expect("tokio server thread");
        TokioServer {
            stop: Some(stop),
            thread: Some(thread),
            addr,
        }
    }
}

impl Server for TokioServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TokioServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ------------------------------------------------------------------ clients

/// A client socket with the options every benchmark connection gets.
fn client_socket(addr: SocketAddr, linger0: bool) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if linger0 {
        sock.set_linger(Some(Duration::ZERO))?;
    }
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    // On Linux SO_SNDTIMEO bounds connect(2) as well.
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    sock.connect(&addr.into())?;
    Ok(sock.into())
}

/// One `accept_echo_close` connection, from the client's side.
fn connect_echo_close(addr: SocketAddr) -> io::Result<()> {
    let mut s = client_socket(addr, true)?;
    s.write_all(&MSG)?;
    let mut buf = [0u8; MSG.len()];
    s.read_exact(&mut buf)?;
    if buf != MSG {
        return Err(io::Error::other("echo differs from what was sent"));
    }
    Ok(())
}

/// Runs `total` connections spread over `clients` threads; the time from
/// when all threads are ready until the last connection is done.
fn run_clients(addr: SocketAddr, clients: u64, total: u64) -> Duration {
    let ready = Arc::new(Barrier::new(clients as usize + 1));
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let count = total / clients + u64::from(i < total % clients);
            let ready = ready.clone();
            std::thread::spawn(move || {
                ready.wait();
                for k in 0..count {
                    if let Err(e) = connect_echo_close(addr) {
                        panic!("client connection {k}: {e}");
                    }
                }
            })
        })
        .collect();
    ready.wait();
    let start = Instant::now();
    for t in threads {
        t.join().expect("client thread");
    }
    start.elapsed()
}

fn block() -> &'static [u8] {
    static BLOCK_DATA: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK_DATA.get_or_init(|| (0..BLOCK).map(|i| (i % 251) as u8).collect())
}

/// Streams `blocks` 1 MiB blocks through one connection: a writer thread
/// sends them while this thread reads the echo back.
fn run_stream(addr: SocketAddr, blocks: u64) -> Duration {
    let s = client_socket(addr, false).expect("connect");
    let mut w = s.try_clone().expect("clone socket");
    let start = Instant::now();
    let writer = std::thread::spawn(move || {
        for _ in 0..blocks {
            w.write_all(block()).expect("write block");
        }
        w.shutdown(Shutdown::Write).expect("shutdown");
    });
    let mut r = &s;
    let mut buf = vec![0u8; BLOCK];
    for _ in 0..blocks {
        r.read_exact(&mut buf).expect("read echo");
    }
    let took = start.elapsed();
    writer.join().expect("writer thread");
    assert!(buf == block(), "echoed block differs from what was sent");
    // The server closes after our shutdown: read its end of stream.
    assert_eq!(r.read(&mut buf).expect("read end of stream"), 0);
    took
}

// ---------------------------------------------------------------- harness

/// One figure: a server measured in interleaved rounds.
struct Entry {
    name: &'static str,
    server: Box<dyn Server>,
    /// Units per second, one per round.
    rates: Vec<f64>,
}

/// A workload with its servers. Every round runs each server once, in an
/// order that rotates from round to round, so that load from elsewhere on a
/// shared machine falls on all of them alike and each round gives a paired
/// ratio.
struct Group {
    name: String,
    /// The unit of the printed figures, and how many per-second units make
    /// one of it.
    unit: &'static str,
    per_unit: f64,
    /// Runs one round against `addr`: units done and the time they took.
    run: Box<dyn Fn(SocketAddr) -> (u64, Duration)>,
    entries: Vec<Entry>,
}

impl Group {
    fn measure(&mut self, rounds: usize) {
        // Warm-up: one unrecorded round each (stack pool, page faults,
        // socket buffer autotuning).
        for e in &self.entries {
            (self.run)(e.server.addr());
        }
        let n = self.entries.len();
        for r in 0..rounds {
            for k in 0..n {
                let e = &mut self.entries[(r + k) % n];
                let (units, took) = (self.run)(e.server.addr());
                e.rates.push(units as f64 / took.as_secs_f64());
            }
        }
    }

    fn report(&self) {
        let (unit, scale) = (self.unit, |v: f64| v / self.per_unit);
        for e in &self.entries {
            let mut v = e.rates.clone();
            println!(
                "{:<28} {:<28} {:>9.2} {unit}  (median of {}; min {:.2}, max {:.2})",
                self.name,
                e.name,
                scale(median(&mut v)),
                v.len(),
                scale(v[0]),
                scale(v[v.len() - 1]),
            );
        }
        let corio = &self.entries[0];
        for peer in &self.entries[1..] {
            let mut ratios: Vec<f64> = corio
                .rates
                .iter()
                .zip(&peer.rates)
                .map(|(c, p)| c / p)
                .collect();
            println!(
                "{:<28} {:<28} {:>9.2}x  (median of per-round ratios; min {:.2}, max {:.2})",
                self.name,
                format!("corio/{}", peer.name),
                median(&mut ratios),
                ratios[0],
                ratios[ratios.len() - 1],
            );
        }
    }
}

/// Sorts `v` and returns its median.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn accept_group(clients: u64, conns: u64) -> Group {
    let mut entries = vec![
        entry("corio", CorioServer::start(Workload::EchoClose)),
        entry(
            "tokio_current_thread",
            TokioServer::start(Workload::EchoClose, 0),
        ),
    ];
    if clients == 2 {
        entries.push(entry(
            "tokio_multi_thread_2",
            TokioServer::start(Workload::EchoClose, 2),
        ));
    }
    Group {
        name: format!(
            "accept_echo_close/{clients}_client{}",
            if clients == 1 { "" } else { "s" }
        ),
        unit: "k conn/s",
        per_unit: 1e3,
        run: Box::new(move |addr| (conns, run_clients(addr, clients, conns))),
        entries,
    }
}

fn echo_group(blocks: u64) -> Group {
    Group {
        name: "echo_1mib".into(),
        unit: "MB/s",
        per_unit: 1e6,
        run: Box::new(move |addr| (blocks * BLOCK as u64, run_stream(addr, blocks))),
        entries: vec![
            entry("corio", CorioServer::start(Workload::Stream)),
            entry(
                "tokio_current_thread",
                TokioServer::start(Workload::Stream, 0),
            ),
        ],
    }
}

fn entry(name: &'static str, server: impl Server + 'static) -> Entry {
    Entry {
        name,
        server: Box::new(server),
        rates: Vec::new(),
    }
}

/// Command line: `[--rounds N] [--quick] [FILTER...]` (cargo's own `--bench`
/// is ignored); a group runs if its name contains any filter. `--quick`: a
/// smoke run (two short rounds).
fn main() {
    let mut rounds = ROUNDS;
    let mut quick = false;
    let mut filters = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {}
            "--quick" => quick = true,
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--rounds N")
            }
            f if f.starts_with('-') => eprintln!("io_echo: ignoring {f}"),
            f => filters.push(f.to_owned()),
        }
    }
    let (conns, blocks) = if quick {
        rounds = 2;
        (200, 16)
    } else {
        (CONNS_PER_ROUND, BLOCKS_PER_ROUND)
    };
    let wanted = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "io_echo: {} CPUs, load average {}; {rounds} rounds of {conns} connections / {blocks} MiB",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    type MakeGroup = Box<dyn Fn() -> Group>;
    let groups: Vec<(&str, MakeGroup)> = vec![
        (
            "accept_echo_close/1_client",
            Box::new(move || accept_group(1, conns)),
        ),
        (
            "accept_echo_close/2_clients",
            Box::new(move || accept_group(2, conns)),
        ),
        ("echo_1mib", Box::new(move || echo_group(blocks))),
    ];
    for (name, make) in groups {
        if !wanted(name) {
            continue;
        }
        let mut g = make();
        g.measure(rounds);
        g.report();
        // Dropping the group stops its servers.
    }
}
