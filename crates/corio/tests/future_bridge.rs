//! The futures bridge (`corio::future::block_on`) under load, and with
//! tokio: wakers fired from many threads on many coroutines across
//! IoThreads (quick by default; `CORIO_TEST_THOROUGH=1` runs 25 times as
//! many rounds), and the documented tokio patterns, the working ones and
//! the one that does not work.

mod helpers;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use corio::future::block_on;
use corio::{IoThread, JoinError};
use helpers::Rng;

fn thorough() -> bool {
    std::env::var_os("CORIO_TEST_THOROUGH").is_some_and(|v| v != "0")
}

/// Runs `f` on a thread and fails with `what` if it takes longer than
/// `secs` (a lost wakeup fails with a name instead of hanging).
fn deadline<T: Send + 'static>(what: &str, secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => {
            t.join().unwrap();
            v
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no result within {secs} s"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match t.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!(),
        },
    }
}

/// A one-shot event: pending until some thread [`open`](Gate::open)s it.
#[derive(Clone, Default)]
struct Gate(Arc<GateInner>);

#[derive(Default)]
struct GateInner {
    ready: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    /// Makes it ready and wakes its waker `times` times, by value and by
    /// reference, from the calling thread.
    fn open(&self, times: usize) {
        self.0.ready.store(true, SeqCst);
        let w = self.0.waker.lock().unwrap().clone();
        if let Some(w) = w {
            for _ in 0..times {
                w.wake_by_ref();
            }
            w.wake();
        }
    }
}

impl Future for Gate {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // The waker first, then the flag: an `open` in between sees the
        // waker, or this poll sees the flag.
        *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
        if self.0.ready.load(SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Pending for `n` polls, waking itself on each.
struct SelfWake(usize);
impl Future for SelfWake {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 == 0 {
            return Poll::Ready(());
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Four IoThreads, eight coroutines on each, every one waiting in
/// `block_on` round after round: on a gate opened by two of four firer
/// threads at once (each waking it several times, some of the wakes after
/// the coroutine moved on), on a self-waking future, or on another
/// IoThread's coroutine through its `JoinHandle`. Every round must
/// complete: a lost wakeup fails the deadline, a double schedule panics.
#[test]
fn block_on_stress_wakers_from_many_threads() {
    const IOTHREADS: usize = 4;
    const COROUTINES: usize = 8;
    const FIRERS: usize = 4;
    let rounds = if thorough() { 5000 } else { 200 };
    let secs = if thorough() { 600 } else { 120 };
    deadline(
        "block_on_stress_wakers_from_many_threads",
        secs,
        move || {
            let threads: Arc<Vec<IoThread>> = Arc::new(
                (0..IOTHREADS)
                    .map(|i| IoThread::with_name(&format!("iothread{i}")).unwrap())
                    .collect(),
            );
            let mut firer_tx = Vec::new();
            let mut firers = Vec::new();
            for f in 0..FIRERS {
                let (tx, rx) = mpsc::channel::<Gate>();
                firer_tx.push(tx);
                firers.push(std::thread::spawn(move || {
                    let mut rng = Rng::new(f as u64 + 100);
                    while let Ok(gate) = rx.recv() {
                        for _ in 0..rng.below(50) {
                            std::hint::spin_loop();
                        }
                        gate.open(rng.below(4));
                    }
                }));
            }
            let mut handles = Vec::new();
            for (t, io) in threads.iter().enumerate() {
                for c in 0..COROUTINES {
                    let seed = (t * COROUTINES + c) as u64;
                    let tx = firer_tx.clone();
                    let others = threads.clone();
                    handles.push(io.spawn(move || {
                        let mut rng = Rng::new(seed);
                        let mut done = 0;
                        for _ in 0..rounds {
                            match rng.below(8) {
                                0 => block_on(SelfWake(
                                    rng.below(3 * corio::future::POLL_BUDGET as usize),
                                )),
                                1 => {
                                    let other = &others[rng.below(IOTHREADS)];
                                    let v = block_on(other.spawn(move || seed)).unwrap();
                                    assert_eq!(v, seed);
                                }
                                _ => {
                                    let gate = Gate::default();
                                    let a = rng.below(FIRERS);
                                    let b = (a + 1 + rng.below(FIRERS - 1)) % FIRERS;
                                    tx[a].send(gate.clone()).unwrap();
                                    tx[b].send(gate.clone()).unwrap();
                                    block_on(gate);
                                }
                            }
                            done += 1;
                        }
                        done
                    }));
                }
            }
            drop(firer_tx);
            let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
            assert_eq!(total, IOTHREADS * COROUTINES * rounds);
            for f in firers {
                f.join().unwrap();
            }
            for t in Arc::try_unwrap(threads).ok().unwrap() {
                t.join();
            }
        },
    );
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runtime-independent tokio futures work directly: a oneshot and an mpsc
/// channel whose senders are tokio tasks (their wakes come from tokio's
/// worker threads).
#[test]
fn tokio_channels_directly_in_block_on() {
    deadline("tokio_channels_directly_in_block_on", 60, || {
        let rt = tokio_runtime();
        let t = IoThread::new().unwrap();
        let (otx, orx) = tokio::sync::oneshot::channel::<u32>();
        let (mtx, mut mrx) = tokio::sync::mpsc::channel::<u32>(4);
        let h = t.spawn(move || {
            let first = block_on(orx).unwrap();
            let mut sum = 0;
            while let Some(v) = block_on(mrx.recv()) {
                sum += v;
            }
            (first, sum)
        });
        rt.spawn(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            otx.send(7).unwrap();
            for i in 1..=100 {
                mtx.send(i).await.unwrap();
            }
        });
        assert_eq!(h.join().unwrap(), (7, 5050));
        t.join();
    });
}

/// The helper pattern for reactor-bound futures: spawn them on a tokio
/// runtime and `block_on` the tokio JoinHandle in the coroutine. Timers
/// and TCP sockets, from many coroutines on two IoThreads at once.
#[test]
fn tokio_reactor_futures_through_runtime_spawn() {
    deadline("tokio_reactor_futures_through_runtime_spawn", 60, || {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio_runtime();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 8];
                    s.read_exact(&mut buf).await.unwrap();
                    s.write_all(&buf).await.unwrap();
                });
            }
        });
        let threads = [IoThread::new().unwrap(), IoThread::new().unwrap()];
        let mut handles = Vec::new();
        for i in 0..20u64 {
            let rt_handle = rt.handle().clone();
            handles.push(threads[i as usize % 2].spawn(move || {
                let slept = rt_handle.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(i % 3)).await;
                    i
                });
                assert_eq!(block_on(slept).unwrap(), i);
                let echoed = rt_handle.spawn(async move {
                    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                    s.write_all(&i.to_le_bytes()).await.unwrap();
                    let mut buf = [0u8; 8];
                    s.read_exact(&mut buf).await.unwrap();
                    u64::from_le_bytes(buf)
                });
                block_on(echoed).unwrap()
            }));
        }
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), i as u64);
        }
        for t in threads {
            t.join();
        }
    });
}

/// What does not work, and fails loudly rather than hanging: a future
/// that needs tokio's timer, polled directly in a coroutine, panics with
/// tokio's message (corio's loop is not tokio's driver); the panic is
/// caught into the handle and the iothread goes on.
#[test]
fn tokio_reactor_future_directly_panics() {
    deadline("tokio_reactor_future_directly_panics", 60, || {
        let t = IoThread::new().unwrap();
        let h = t.spawn(|| block_on(tokio::time::sleep(Duration::from_millis(1))));
        match h.join() {
            Err(e @ JoinError::Panic(_)) => {
                let msg = e.panic_message().unwrap_or_default().to_owned();
                assert!(msg.contains("no reactor running"), "{msg}");
            }
            r => panic!("expected tokio's panic, got {r:?}"),
        }
        assert_eq!(t.spawn(|| 3).join().unwrap(), 3);
        t.join();
    });
}
