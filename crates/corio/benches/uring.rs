//! The io_uring fd monitor and `AioFile` against their alternatives, each
//! figure with its peer in the same run (issue 13):
//!
//! * `pingpong_4k`: one client (a std blocking socket on the bench
//!   thread) writes 4 KiB over TCP on 127.0.0.1 and reads the 4 KiB echo,
//!   one request at a time; microseconds per round trip. Servers: a
//!   blocking std server thread (the floor; ratios are to it), a corio
//!   coroutine on a context thread polling as an IoThread does
//!   (`poll-max-ns` 32768) with the epoll monitor (its socket handler
//!   switches the spin off), with the io_uring monitor and no polling, with
//!   the io_uring monitor and polling (the spin watches the ring's
//!   completion queue), and a tokio current_thread runtime on its own
//!   thread (also compared with each corio variant). `PINGPONG_STATS=1`
//!   prints each corio server's `poll_stats` when it ends;
//!   `PINGPONG_PIN=1` pins the client to CPU 0 and the servers to CPU 1;
//!   `PINGPONG_GAP_US=g` makes the client pause `g` µs between round
//!   trips (see `PingClient::run`).
//! * `randread_4k_qd1`, `randread_4k_qd32`: 4 KiB reads at random aligned
//!   offsets of a 64 MiB file in the page cache, from 1 or 32 coroutines on
//!   one context; reads per second. `AioFile` on the io_uring monitor's
//!   ring, `AioFile` on a ring beside epoll, the thread pool (`submit_co`
//!   of a `pread`, what `--aio threads` does), and `pread` in place (what a
//!   `preadv2(RWF_NOWAIT)` that hits the cache costs; the floor).
//!
//! Every round runs each variant once, in rotating order; figures are
//! medians over rounds, ratios medians of per-round ratios (as
//! benches/io_echo.rs, for the same reason: a shared machine).
//!
//! `cargo bench -p corio --bench uring` (`-- --rounds N`, `-- --quick`,
//! `-- FILTER` for one group; `-- --server 'io_uring polling'` runs one
//! ping-pong server alone, to trace it).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use corio::io::{AioFile, Channel, SocketChannel};
use corio::{AioContext, FdMon, ThreadPool};

const MSG: usize = 4096;
const FILE_SIZE: u64 = 64 << 20;

// --------------------------------------------------------------- ping-pong

/// With `PINGPONG_PIN=1`, pins the calling thread to `cpu`: the client to
/// CPU 0, every server to CPU 1. Unpinned, on a 2-vCPU machine with other
/// load, client and server often share a CPU: the server's `send` then
/// wakes the client onto its own CPU, which preempts it, and the figures
/// measure the scheduler more than the servers.
/// Returns the affinity to restore (threads started later inherit it).
fn pin(cpu: usize) -> Option<rustix::thread::CpuSet> {
    std::env::var_os("PINGPONG_PIN")?;
    let old = rustix::thread::sched_getaffinity(None).expect("sched_getaffinity");
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).expect("PINGPONG_PIN: sched_setaffinity");
    Some(old)
}

fn unpin(old: Option<rustix::thread::CpuSet>) {
    if let Some(old) = old {
        rustix::thread::sched_setaffinity(None, &old).expect("sched_setaffinity");
    }
}

/// A server thread serving one client, until the client hangs up.
struct PingServer {
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl PingServer {
    /// A coroutine server on a context thread with the fd monitor `kind`,
    /// polling as an IoThread does when `poll_max_ns` is
    /// [`corio::iothread::DEFAULT_POLL_MAX_NS`] (0: no adaptive polling).
    fn corio(kind: FdMon, poll_max_ns: i64) -> PingServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let _ = pin(1);
            let ctx = AioContext::with_fd_monitor(kind).unwrap();
            assert_eq!(ctx.fd_monitor(), kind, "monitor not available");
            ctx.set_poll_params(poll_max_ns, 0, 0);
            let (s, _) = l.accept().unwrap();
            s.set_nodelay(true).unwrap();
            let done = Arc::new(AtomicBool::new(false));
            let d2 = done.clone();
            let _h = ctx.spawn(move || {
                let ch = SocketChannel::new_fd(OwnedFd::from(s)).unwrap();
                ch.set_blocking(false).unwrap();
                let mut buf = vec![0u8; MSG];
                while ch.read_all(&mut buf).is_ok() {
                    if ch.write_all_bytes(&buf).is_err() {
                        break;
                    }
                }
                d2.store(true, SeqCst);
            });
            let mut polls = 0u64;
            while !done.load(SeqCst) {
                ctx.poll(true);
                polls += 1;
            }
            let st = ctx.poll_stats();
            if std::env::var_os("PINGPONG_STATS").is_some() {
                eprintln!("{kind:?} poll_max_ns {poll_max_ns}: {polls} polls, {st:?}");
            }
        });
        PingServer {
            addr,
            thread: Some(thread),
        }
    }

    /// A tokio current_thread runtime on its own thread, one task serving
    /// the client with `read_exact` / `write_all`.
    fn tokio() -> PingServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let _ = pin(1);
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (s, _) = l.accept().unwrap();
                s.set_nodelay(true).unwrap();
                s.set_nonblocking(true).unwrap();
                let mut s = tokio::net::TcpStream::from_std(s).unwrap();
                let mut buf = vec![0u8; MSG];
                while s.read_exact(&mut buf).await.is_ok() {
                    if s.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            });
        });
        PingServer {
            addr,
            thread: Some(thread),
        }
    }

    fn std() -> PingServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let thread = std::thread::spawn(move || {
            let _ = pin(1);
            let (mut s, _) = l.accept().unwrap();
            s.set_nodelay(true).unwrap();
            let mut buf = vec![0u8; MSG];
            while s.read_exact(&mut buf).is_ok() {
                if s.write_all(&buf).is_err() {
                    break;
                }
            }
        });
        PingServer {
            addr,
            thread: Some(thread),
        }
    }
}

/// The client side of one ping-pong server.
struct PingClient {
    s: TcpStream,
    server: PingServer,
}

impl PingClient {
    fn new(server: PingServer) -> PingClient {
        let s = TcpStream::connect(server.addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        PingClient { s, server }
    }

    /// `n` round trips; the time each took on average. With
    /// `PINGPONG_GAP_US=g` the client busy-waits `g` µs after each round
    /// trip (not counted), so that the server has always gone back to
    /// waiting when the next request comes: every request then goes
    /// through the fd monitor (or the spin). Without it the server's
    /// `recv` mostly finds the next request already there (the client
    /// answers while the server's `send` is still returning).
    fn run(&mut self, n: usize) -> Duration {
        let gap = std::env::var("PINGPONG_GAP_US")
            .ok()
            .filter(|g| !g.is_empty())
            .map(|g| Duration::from_micros(g.parse().expect("PINGPONG_GAP_US=<µs>")));
        let out = vec![0x5au8; MSG];
        let mut back = vec![0u8; MSG];
        let Some(gap) = gap else {
            let start = Instant::now();
            for _ in 0..n {
                self.s.write_all(&out).unwrap();
                self.s.read_exact(&mut back).unwrap();
            }
            return start.elapsed() / n as u32;
        };
        let mut total = Duration::ZERO;
        for _ in 0..n {
            let start = Instant::now();
            self.s.write_all(&out).unwrap();
            self.s.read_exact(&mut back).unwrap();
            let end = Instant::now();
            total += end - start;
            while end.elapsed() < gap {
                std::hint::spin_loop();
            }
        }
        total / n as u32
    }
}

impl Drop for PingClient {
    fn drop(&mut self) {
        let _ = self.s.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.server.thread.take() {
            t.join().unwrap();
        }
    }
}

// --------------------------------------------------------------- randread

/// How a context reads the file.
#[derive(Clone, Copy, Debug)]
enum Reader {
    /// `AioFile` on a context with this monitor.
    Aio(FdMon),
    /// `submit_co` of a `pread`.
    Pool,
    /// `pread` in the coroutine.
    Inline,
}

fn bench_file() -> std::fs::File {
    let p = std::env::temp_dir().join(format!("corio-bench-uring-{}", std::process::id()));
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    std::fs::remove_file(&p).unwrap();
    let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7) as u8).collect();
    for _ in 0..FILE_SIZE >> 20 {
        f.write_all(&block).unwrap();
    }
    f
}

/// `total` 4 KiB reads by `qd` coroutines on a fresh context; the time.
fn randread(file: &std::fs::File, reader: Reader, qd: usize, total: usize) -> Duration {
    let file = file.try_clone().unwrap();
    std::thread::spawn(move || {
        let kind = match reader {
            Reader::Aio(k) => k,
            _ => FdMon::Epoll,
        };
        let ctx = AioContext::with_fd_monitor(kind).unwrap();
        let aio = AioFile::new(file.try_clone().unwrap());
        let file = Arc::new(file);
        let per = total / qd;
        // Warm the pool's workers or the ring outside the measurement.
        let warm: Vec<_> = (0..qd)
            .map(|i| spawn_reader(&ctx, reader, &aio, &file, i as u64, 4))
            .collect();
        join_all(&ctx, warm);
        let start = Instant::now();
        let hs: Vec<_> = (0..qd)
            .map(|i| spawn_reader(&ctx, reader, &aio, &file, i as u64 + 1000, per))
            .collect();
        join_all(&ctx, hs);
        let took = start.elapsed();
        drop(ThreadPool::for_context(&ctx));
        took
    })
    .join()
    .unwrap()
}

fn spawn_reader(
    ctx: &AioContext,
    reader: Reader,
    aio: &AioFile,
    file: &Arc<std::fs::File>,
    seed: u64,
    n: usize,
) -> corio::JoinHandle<()> {
    let (aio, file) = (aio.clone(), file.clone());
    ctx.spawn(move || {
        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let mut buf = vec![0u8; 4096];
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x % (FILE_SIZE / 4096)) * 4096;
            buf = match reader {
                Reader::Aio(_) => {
                    let (r, b) = aio.read_at(off, buf);
                    assert_eq!(r.unwrap(), 4096);
                    b
                }
                Reader::Pool => {
                    let f = file.clone();
                    corio::thread_pool::submit_co(move || {
                        use std::os::unix::fs::FileExt;
                        f.read_exact_at(&mut buf, off).unwrap();
                        buf
                    })
                    .unwrap()
                }
                Reader::Inline => {
                    use std::os::unix::fs::FileExt;
                    file.read_exact_at(&mut buf, off).unwrap();
                    buf
                }
            };
        }
    })
}

fn join_all(ctx: &AioContext, mut hs: Vec<corio::JoinHandle<()>>) {
    while !hs.is_empty() {
        ctx.poll(true);
        hs.retain_mut(|h| match h.try_join() {
            None => true,
            Some(r) => {
                r.unwrap();
                false
            }
        });
    }
}

// --------------------------------------------------------------- report

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// One group: named variants, a figure per round each; ratios of each
/// variant to the first.
fn report(group: &str, unit: &str, names: &[String], figs: &[Vec<f64>]) {
    for (name, f) in names.iter().zip(figs) {
        let mut v = f.clone();
        println!(
            "{group:<18} {name:<34} {:>10.2} {unit}  (median of {}; min {:.2}, max {:.2})",
            median(&mut v),
            v.len(),
            v[0],
            v[v.len() - 1]
        );
    }
    for (name, f) in names.iter().zip(figs).skip(1) {
        let mut r: Vec<f64> = f.iter().zip(&figs[0]).map(|(x, base)| x / base).collect();
        println!(
            "{group:<18} {:<34} {:>10.3}x (median of per-round ratios; min {:.3}, max {:.3})",
            format!("{name}/{}", names[0]),
            median(&mut r),
            r[0],
            r[r.len() - 1]
        );
    }
}

/// The ping-pong servers, in report order (the first is the base).
const SERVERS: [&str; 5] = [
    "std blocking",
    "epoll",
    "io_uring",
    "io_uring polling",
    "tokio",
];

fn ping_server(name: &str) -> PingServer {
    use corio::iothread::DEFAULT_POLL_MAX_NS;
    match name {
        "std blocking" => PingServer::std(),
        "epoll" => PingServer::corio(FdMon::Epoll, DEFAULT_POLL_MAX_NS),
        "io_uring" => PingServer::corio(FdMon::IoUring, 0),
        "io_uring polling" => PingServer::corio(FdMon::IoUring, DEFAULT_POLL_MAX_NS),
        "tokio" => PingServer::tokio(),
        _ => panic!("--server {name:?}: expected one of {SERVERS:?}"),
    }
}

/// `--server NAME`: that server alone, `n` round trips after a warm-up,
/// for `strace -c -f` or `perf stat` of one variant.
fn pingpong_one(name: &str, n: usize) {
    let pinned = pin(0);
    let mut c = PingClient::new(ping_server(name));
    c.run(n / 4);
    let t = c.run(n);
    drop(c);
    unpin(pinned);
    println!(
        "pingpong_4k        {name:<34} {:>10.2} us/rt  ({n} round trips)",
        t.as_nanos() as f64 / 1000.0
    );
}

fn pingpong(rounds: usize, n: usize) {
    let pinned = pin(0);
    let names = SERVERS.map(String::from);
    let mut clients: Vec<PingClient> = SERVERS
        .iter()
        .map(|s| PingClient::new(ping_server(s)))
        .collect();
    for c in &mut clients {
        c.run(n / 4); // warm-up
    }
    let mut figs = vec![Vec::new(); clients.len()];
    for r in 0..rounds {
        for k in 0..clients.len() {
            let i = (r + k) % clients.len();
            figs[i].push(clients[i].run(n).as_nanos() as f64 / 1000.0);
        }
    }
    drop(clients);
    unpin(pinned);
    report("pingpong_4k", "us/rt", &names, &figs);
    report_vs(
        "pingpong_4k",
        &names[names.len() - 1],
        &names[1..names.len() - 1],
        &figs[figs.len() - 1],
        &figs[1..figs.len() - 1],
    );
}

/// Ratios of each of `names` to the `base` variant (medians of per-round
/// ratios).
fn report_vs(group: &str, base: &str, names: &[String], base_figs: &[f64], figs: &[Vec<f64>]) {
    for (name, f) in names.iter().zip(figs) {
        let mut r: Vec<f64> = f.iter().zip(base_figs).map(|(x, b)| x / b).collect();
        println!(
            "{group:<18} {:<34} {:>10.3}x (median of per-round ratios; min {:.3}, max {:.3})",
            format!("{name}/{base}"),
            median(&mut r),
            r[0],
            r[r.len() - 1]
        );
    }
}

fn randread_group(rounds: usize, qd: usize, total: usize) {
    let file = bench_file();
    let readers = [
        Reader::Aio(FdMon::IoUring),
        Reader::Aio(FdMon::Epoll),
        Reader::Pool,
        Reader::Inline,
    ];
    let names = [
        "uring monitor",
        "ring beside epoll",
        "thread pool",
        "pread inline",
    ]
    .map(String::from);
    let mut figs = vec![Vec::new(); readers.len()];
    for r in 0..rounds {
        for k in 0..readers.len() {
            let i = (r + k) % readers.len();
            let took = randread(&file, readers[i], qd, total);
            figs[i].push(total as f64 / took.as_secs_f64() / 1000.0);
        }
    }
    report(&format!("randread_4k_qd{qd}"), "k reads/s", &names, &figs);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map(|r| r.parse().expect("--rounds N"))
        .unwrap_or(if quick { 2 } else { 11 });
    let filter = args
        .iter()
        .find(|a| !a.starts_with("--") && a.parse::<usize>().is_err());
    let want = |g: &str| filter.is_none_or(|f| g.contains(f.as_str()));
    let scale = if quick { 10 } else { 1 };
    if let Some(i) = args.iter().position(|a| a == "--server") {
        let name = args.get(i + 1).expect("--server NAME");
        pingpong_one(name, 20_000 / scale);
        return;
    }
    if want("pingpong_4k") {
        pingpong(rounds, 20_000 / scale);
    }
    if want("randread_4k_qd1") {
        randread_group(rounds, 1, 20_000 / scale);
    }
    if want("randread_4k_qd32") {
        randread_group(rounds, 32, 64_000 / scale);
    }
}
