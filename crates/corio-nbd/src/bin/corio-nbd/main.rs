//! corio-nbd: serve a raw or qcow2 disk image over NBD, with qemu-nbd's
//! command line. A thin layer over `corio_nbd::server`.

#![deny(unsafe_code)]

mod args;
mod list;
mod objects;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use corio::io::address::SocketAddress;
use corio::io::SocketChannel;
use corio_nbd::server::{DetectZeroes, Discard, Export, Server, ServerConfig, ServerHandle};
use corio_nbd::storage::file::{AioMode, CacheMode, FileOptions, FileStorage, DIRECT_ALIGN};
use corio_nbd::storage::memory::MemoryStorage;
use corio_nbd::storage::probed::{probe, ProbedRaw, PROBE_BYTES};
use corio_nbd::storage::qcow2::{Qcow2Options, Qcow2Storage};
use corio_nbd::storage::Storage;

use args::Args;

const PROG: &str = "corio-nbd";
/// Names the pipe a `--fork` parent waits on for "listening".
const READY_ENV: &str = "CORIO_NBD_READY_FD";
pub(crate) const DEFAULT_PORT: u16 = 10809;
const DEFAULT_MEMORY_SIZE: u64 = 1 << 30;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            eprint!("{PROG}: {text}");
            return ExitCode::FAILURE;
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("{PROG}: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    if args.list {
        return list::run(&args);
    }
    if args.fork {
        return fork_and_wait();
    }
    for t in &args.trace {
        enable_trace(t)?;
    }
    let config = build_config(&args)?;
    let server = Server::new(config).map_err(|e| e.to_string())?;
    let handle = server.handle();
    if let Some(p) = &args.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| format!("cannot write pid file {}: {e}", p.display()))?;
    }
    announce(&args, &handle);
    signal_ready();
    spawn_signal_thread(handle.clone())?;
    if let Some(secs) = args.stats.filter(|&s| s > 0) {
        spawn_stats_thread(handle.clone(), secs);
    }
    let r = server.run().map_err(|e| format!("flush at exit: {e}"));
    if let Some(p) = &args.pid_file {
        let _ = std::fs::remove_file(p);
    }
    r
}

/// `-T`: QEMU's `[enable=]PATTERN[,events=FILE]`.
fn enable_trace(spec: &str) -> Result<(), String> {
    for part in spec.split(',') {
        if let Some(file) = part.strip_prefix("events=") {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read trace events file {file}: {e}"))?;
            for line in text.lines().map(str::trim) {
                if !line.is_empty() && !line.starts_with('#') {
                    enable_pattern(line);
                }
            }
        } else if part.starts_with("file=") {
            return Err("-T file=: trace output goes to stderr only".into());
        } else {
            let pattern = part.strip_prefix("enable=").unwrap_or(part);
            if !pattern.is_empty() {
                enable_pattern(pattern);
            }
        }
    }
    Ok(())
}

/// Enables the events `pattern` names; a plain name that names no event
/// gets qemu's warning (a glob that matches nothing does not).
fn enable_pattern(pattern: &str) {
    if corio::trace::set_patterns(pattern) == 0
        && !pattern.contains(['*', '?'])
        && !pattern.starts_with('-')
    {
        eprintln!("{PROG}: warning: trace event '{pattern}' does not exist");
    }
}

fn build_config(args: &Args) -> Result<ServerConfig, String> {
    let cache = match (&args.cache, args.nocache) {
        (Some(_), true) => return Err("--nocache and --cache cannot be used together".into()),
        (Some(c), false) => CacheMode::parse(c)?,
        (None, true) => CacheMode::None,
        (None, false) => CacheMode::Writeback,
    };
    let aio = args
        .aio
        .as_deref()
        .map_or(Ok(AioMode::Threads), AioMode::parse)?;
    let discard = match args.discard.as_deref() {
        None | Some("ignore" | "off") => Discard::Ignore,
        Some("unmap" | "on") => Discard::Unmap,
        Some(d) => return Err(format!("Invalid discard option '{d}' (ignore or unmap)")),
    };
    let detect_zeroes = match args.detect_zeroes.as_deref() {
        None | Some("off") => DetectZeroes::Off,
        Some("on") => DetectZeroes::On,
        Some("unmap") if discard == Discard::Unmap => DetectZeroes::Unmap,
        Some("unmap") => {
            return Err(
                "setting detect-zeroes to unmap is not allowed without setting \
                 discard operation to unmap"
                    .into(),
            )
        }
        Some(d) => {
            return Err(format!(
                "invalid detect-zeroes mode '{d}' (off, on or unmap)"
            ))
        }
    };
    let (storage, min_block) = open_storage(args, cache, aio)?;
    let mut export = Export::new(args.export_name.clone(), storage);
    export.description = args.description.clone().unwrap_or_default();
    export.min_block = min_block;
    export.allocation_depth = args.allocation_depth;
    export.discard = discard;
    export.detect_zeroes = detect_zeroes;
    export.multi_conn = args.shared != 1;
    let mut config = ServerConfig::new(export);
    config.shared = args.shared;
    config.persistent = args.persistent;
    config.iothreads = args.iothreads;
    config.verbose = args.verbose;
    config.handshake_limit =
        (args.handshake_limit > 0).then(|| Duration::from_secs(args.handshake_limit));
    let mut objects = HashMap::new();
    for spec in &args.object {
        let (id, obj) = objects::parse(spec)?;
        if objects.insert(id.clone(), obj).is_some() {
            return Err(format!("attempt to add duplicate property '{id}'"));
        }
    }
    if let Some(id) = &args.tls_creds {
        config.tls = Some(objects::tls_config(
            &objects,
            id,
            args.tls_authz.as_deref(),
        )?);
    }
    listen_addresses(args, &mut config)?;
    Ok(config)
}

/// The storage and the minimum block size to advertise.
fn open_storage(
    args: &Args,
    cache: CacheMode,
    aio: AioMode,
) -> Result<(Arc<dyn Storage>, u32), String> {
    let Some(path) = &args.image else {
        if args.format.as_deref().is_some_and(|f| f != "raw") {
            return Err(format!(
                "format '{}' needs an image file",
                args.format.as_deref().unwrap_or_default()
            ));
        }
        let size = args.size.unwrap_or(DEFAULT_MEMORY_SIZE);
        return Ok((Arc::new(MemoryStorage::new(size, args.read_only)), 1));
    };
    if args.size.is_some() {
        return Err(
            "--size sets the size of the in-memory disk; it cannot be used with an image".into(),
        );
    }
    let format = match args.format.as_deref() {
        Some("raw") => Format::Raw,
        Some("qcow2") => Format::Qcow2,
        Some(f) => {
            return Err(format!(
                "format '{f}' is not supported: corio-nbd serves raw and qcow2 images"
            ))
        }
        None => probe_format(path)?,
    };
    if format == Format::Qcow2 {
        let opts = Qcow2Options {
            read_only: args.read_only,
            cache,
            // For benchmarks (scripts/bench-nbd --qcow2-pool): the thread
            // pool even where requests would run in place (tmpfs).
            always_pool: std::env::var_os("CORIO_NBD_QCOW2_POOL").is_some(),
        };
        let image = Qcow2Storage::open(path, opts)
            .map_err(|e| format!("Failed to open '{}': {e}", path.display()))?;
        return Ok((Arc::new(image), 1));
    }
    let opts = FileOptions {
        read_only: args.read_only,
        cache,
        aio,
    };
    let file = FileStorage::open(path, opts).map_err(|e| {
        format!("Failed to blk_new_open '{}': {e}", path.display())
            .replace("blk_new_open ", "open ")
    })?;
    if format == Format::ProbedRaw {
        // As qemu-nbd for a probed raw image (raw_open, raw_refresh_limits):
        // 512-byte requests, and no write may make sector 0 probe as
        // another format.
        if !args.read_only {
            eprintln!(
                "WARNING: Image format was not specified for '{}' and probing guessed raw.\n         \
                 Automatically detecting the format is dangerous for raw images, write \
                 operations on block 0 will be restricted.\n         \
                 Specify the 'raw' format explicitly to remove the restrictions.",
                path.display()
            );
        }
        let min = if file.direct() {
            DIRECT_ALIGN as u32
        } else {
            512
        };
        return Ok((Arc::new(ProbedRaw::new(file)), min));
    }
    let min = if file.direct() {
        DIRECT_ALIGN as u32
    } else {
        1
    };
    Ok((Arc::new(file), min))
}

/// An image's format: named with `-f`, or probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Raw,
    /// Raw, found by probing (QEMU's "probed raw": restricted writes).
    ProbedRaw,
    Qcow2,
}

/// Probes the image's format from its first sector, as qemu-nbd does
/// without `-f`: qcow2 by its magic; other formats QEMU knows are refused
/// by name; anything else is raw.
fn probe_format(path: &Path) -> Result<Format, String> {
    let mut head = [0u8; PROBE_BYTES as usize];
    let mut n = 0;
    let mut f = std::fs::File::open(path)
        .map_err(|e| format!("Could not open '{}': {e}", path.display()))?;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("Could not read '{}': {e}", path.display())),
        }
    }
    match probe(&head[..n]) {
        None => Ok(Format::ProbedRaw),
        Some("qcow2") => Ok(Format::Qcow2),
        Some(name) => Err(format!(
            "'{}' looks like a {name} image; corio-nbd serves raw and qcow2 images only \
             (use -f raw to serve its bytes as they are)",
            path.display()
        )),
    }
}

fn listen_addresses(args: &Args, config: &mut ServerConfig) -> Result<(), String> {
    let activated = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    if activated {
        // qemu-nbd's words (socket_activation_validate_opts).
        if args.socket.is_some() {
            return Err("Unix socket can't be set when using socket activation".into());
        }
        if args.bind.is_some() {
            return Err("The interface can't be set when using socket activation".into());
        }
        if args.port.is_some() {
            return Err("TCP port number can't be set when using socket activation".into());
        }
        let n: i32 = std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .filter(|&n| n > 0)
            .ok_or("socket activation: LISTEN_FDS is not a positive number")?;
        for fd in 3..3 + n {
            let s = SocketChannel::listen_sync(&SocketAddress::Fd(fd.to_string()), 128)
                .map_err(|e| format!("socket activation fd {fd}: {e}"))?;
            config.listen_sockets.push(s);
        }
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
        return Ok(());
    }
    let addr = match &args.socket {
        Some(path) => SocketAddress::unix(path.clone()),
        None => SocketAddress::inet(
            args.bind.clone().unwrap_or_else(|| "0.0.0.0".into()),
            args.port.unwrap_or(DEFAULT_PORT),
        ),
    };
    config.listen = vec![addr];
    Ok(())
}

/// The URI clients use, and with the in-memory disk a command to paste,
/// on stderr: qemu-nbd prints nothing on stdout, and tools that run the
/// server with its stdout shared (`nbdinfo --size -- [ corio-nbd ... ]`)
/// or read it would see our line among theirs.
fn announce(args: &Args, handle: &ServerHandle) {
    let name = &args.export_name;
    let scheme_tls = if args.tls_creds.is_some() { "s" } else { "" };
    let uri = match handle.local_addresses().first() {
        Some(SocketAddress::Unix(u)) => format!("nbd{scheme_tls}+unix:///{name}?socket={}", u.path),
        Some(SocketAddress::Inet(a)) => {
            let host = match a.host.as_str() {
                "0.0.0.0" | "::" | "" => "localhost".to_owned(),
                h if h.contains(':') => format!("[{h}]"),
                h => h.to_owned(),
            };
            format!("nbd{scheme_tls}://{host}:{}/{name}", a.port)
        }
        _ => String::from("(socket activation)"),
    };
    let mut out = std::io::stderr().lock();
    let _ = writeln!(out, "{PROG}: serving {uri}");
    if args.image.is_none() {
        let _ = writeln!(out, "{PROG}: an in-memory disk; try: nbdinfo '{uri}'");
    }
    let _ = out.flush();
}

/// `--fork`: run this program again without it, in the background, and
/// return once it listens (or fail if it exits first).
fn fork_and_wait() -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("pipe: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
    let argv: Vec<_> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--fork")
        .collect();
    // dup(2) clears FD_CLOEXEC: the copy survives exec in the child.
    let inherit = rustix::io::dup(&wr).map_err(|e| format!("dup: {e}"))?;
    let child = std::process::Command::new(exe)
        .args(argv)
        .env(READY_ENV, inherit.as_raw_fd().to_string())
        .spawn()
        .map_err(|e| format!("cannot start the server: {e}"))?;
    // Only the child holds a write end now: end of file means it died.
    drop(inherit);
    drop(wr);
    let mut byte = [0u8; 1];
    match rustix::io::read(&rd, &mut byte) {
        Ok(1) => Ok(()),
        _ => Err(format!("the server (pid {}) failed to start", child.id())),
    }
}

/// Tells a `--fork` parent that the server listens.
fn signal_ready() {
    let Ok(fd) = std::env::var(READY_ENV) else {
        return;
    };
    std::env::remove_var(READY_ENV);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{fd}"))
    {
        let _ = f.write_all(b"1");
    }
}

/// SIGINT / SIGTERM: a clean shutdown (signal-hook's iterator thread).
fn spawn_signal_thread(handle: ServerHandle) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| format!("cannot handle signals: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                handle.shutdown();
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

fn spawn_stats_thread(handle: ServerHandle, secs: u64) {
    let _ = std::thread::Builder::new()
        .name("stats".into())
        .spawn(move || {
            let st = handle.stats();
            let load = || {
                use std::sync::atomic::Ordering::Relaxed;
                (
                    st.requests.load(Relaxed),
                    st.bytes_read.load(Relaxed) + st.bytes_written.load(Relaxed),
                )
            };
            let (mut req, mut bytes) = load();
            loop {
                std::thread::sleep(Duration::from_secs(secs));
                let (r, b) = load();
                let clients = st.clients.load(std::sync::atomic::Ordering::Relaxed);
                eprintln!(
                    "{PROG}: {} requests/s, {:.1} MiB/s, {clients} clients",
                    (r - req) / secs,
                    (b - bytes) as f64 / secs as f64 / 1048576.0
                );
                (req, bytes) = (r, b);
            }
        });
}
