//! An echo server: a coroutine per client, clients spread over IoThreads.
//!
//! The listener's accept callback runs in the main thread's context and
//! hands each client to the next IoThread with `IoThread::spawn`. Each
//! client's coroutine reads a line and echoes it back until the client
//! hangs up; the socket stays in blocking mode, in which the coroutine
//! yields whenever it would block, so one IoThread serves many clients.
//! One client sends `panic`: its coroutine panics, the panic is caught
//! into its `JoinHandle`, and the other clients keep being served.
//!
//! Run it: `cargo run -p corio --example echo_server` (it starts its own
//! clients and exits when they are done).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use corio::io::{Channel, NetListener, SocketAddress, SocketChannel};
use corio::{main_loop, IoThread, JoinHandle};

/// Serves one client: echoes each line back, panics on `panic`.
fn serve(client: SocketChannel) -> usize {
    let mut lines = 0;
    let mut reader = BufReader::new(&client); // std::io::Read: yields
    let mut line = String::new();
    while reader.read_line(&mut line).expect("read from client") > 0 {
        if line.trim() == "panic" {
            panic!("client asked for a panic");
        }
        client.write_all_bytes(line.as_bytes()).expect("echo");
        lines += 1;
        line.clear();
    }
    lines
}

fn main() -> std::io::Result<()> {
    let main = main_loop::init();
    let threads: Arc<Vec<IoThread>> =
        Arc::new((0..3).map(|_| IoThread::new()).collect::<Result<_, _>>()?);
    let handles: Arc<Mutex<Vec<JoinHandle<usize>>>> = Arc::default();

    let listener = NetListener::new();
    listener.open_sync(&SocketAddress::inet("127.0.0.1", 0), 16)?;
    let addr = listener.local_addresses()?.remove(0);
    let (t, h) = (threads.clone(), handles.clone());
    let mut next = 0;
    listener.set_client_func(
        Some(Box::new(move |_l, client: SocketChannel| {
            // Never block here: hand the client to an IoThread.
            let handle = t[next % t.len()].spawn(move || serve(client));
            next += 1;
            h.lock().unwrap().push(handle);
        })),
        None,
        Some(&main),
    );

    // The clients: plain threads with std sockets.
    let SocketAddress::Inet(inet) = &addr else {
        unreachable!()
    };
    let target = format!("{}:{}", inet.host, inet.port);
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let (target, main, done) = (target.clone(), main.clone(), done.clone());
            std::thread::spawn(move || -> std::io::Result<bool> {
                let r = client(i, &target);
                done.fetch_add(1, std::sync::atomic::Ordering::Release);
                // Wake the main loop to look again: a bottom half, not a bare
                // notify, which a loop between its check and its poll misses.
                main.bh_schedule_oneshot(|| {});
                r
            })
        })
        .collect();

    // The main loop: accept until every client is done.
    while done.load(std::sync::atomic::Ordering::Acquire) < clients.len() {
        main.poll(true);
    }
    for (i, c) in clients.into_iter().enumerate() {
        let served = c.join().unwrap()?;
        println!("client {i}: {}", if served { "echoed" } else { "dropped" });
        assert_eq!(served, i != 2, "only the panicking client is dropped");
    }
    listener.set_client_func(None, None, None); // drops the callback
    listener.disconnect();
    for (i, h) in std::mem::take(&mut *handles.lock().unwrap())
        .into_iter()
        .enumerate()
    {
        match h.join() {
            Ok(lines) => println!("handler {i}: served {lines} lines"),
            Err(e) => println!("handler {i}: {e}"),
        }
    }
    for t in Arc::try_unwrap(threads).unwrap_or_else(|_| panic!("the listener callback is gone")) {
        t.join();
    }
    Ok(())
}

/// Client `i`: three lines, each echoed back; client 2's second line makes
/// its server coroutine panic. Whether every line came back.
fn client(i: usize, target: &str) -> std::io::Result<bool> {
    let mut s = TcpStream::connect(target)?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut echoed = true;
    for n in 0..3 {
        let msg = if i == 2 && n == 1 {
            "panic\n".to_string()
        } else {
            format!("client {i} line {n}\n")
        };
        s.write_all(msg.as_bytes())?;
        let mut back = String::new();
        r.read_line(&mut back)?;
        echoed &= back == msg;
        if back.is_empty() {
            return Ok(false); // the server dropped us
        }
    }
    Ok(echoed)
}
