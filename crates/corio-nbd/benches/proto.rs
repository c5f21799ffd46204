//! The codec's hot path: decode a READ request header and encode its 4 KiB
//! structured reply (chunk header, offset, data copied into the output
//! buffer), per request pair; peer: a plain copy of the same 4 KiB into the
//! same buffer, the floor of any reply path that copies.
//!
//! Allocations are counted with a counting global allocator and printed
//! before the timings (target: none per pair).
//!
//! Run: `cargo bench -p corio-nbd --bench proto`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use corio_nbd::proto::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Counts every allocation, then defers to the system allocator.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees are ours; the counter is a relaxed
// atomic that never touches the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which
        // is `System::alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc`/`realloc` above, that is from
        // `System`, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; `new_size` is checked by the caller.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const LEN: usize = 4096;

/// One request pair: decode the READ header, encode the reply with its data.
fn read_pair(mode: Mode, req: &[u8], data: &[u8], out: &mut Vec<u8>, limits: &Limits) {
    let Ok(Decoded::Complete { msg: r, .. }) = Request::decode(req, mode, limits) else {
        panic!("bad request")
    };
    let start = r.offset as usize;
    let bytes = &data[start..start + r.length as usize];
    out.clear();
    match mode {
        Mode::Simple => {
            SimpleReply {
                cookie: r.cookie,
                error: Errno::OK,
            }
            .encode(out);
            out.extend_from_slice(bytes);
        }
        m => Chunk {
            cookie: r.cookie,
            flags: ReplyFlags::DONE,
            offset: r.offset,
            body: ChunkBody::OffsetData {
                offset: r.offset,
                data: bytes,
            },
        }
        .encode(m, out),
    }
}

fn request_bytes(mode: Mode) -> Vec<u8> {
    let mut v = Vec::new();
    let r = Request {
        cookie: 42,
        command: Command::Read,
        flags: CmdFlags::empty(),
        offset: 0,
        length: LEN as u64,
    };
    r.encode(mode, &mut v);
    v
}

fn count_allocations(mode: Mode) -> f64 {
    let limits = Limits::default();
    let req = request_bytes(mode);
    let data = vec![0x5au8; LEN];
    let mut out = Vec::with_capacity(LEN + 64);
    read_pair(mode, &req, &data, &mut out, &limits);
    const N: u64 = 100_000;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..N {
        read_pair(mode, black_box(&req), black_box(&data), &mut out, &limits);
        black_box(&out);
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / N as f64
}

fn bench(c: &mut Criterion) {
    for mode in [Mode::Simple, Mode::Structured, Mode::Extended] {
        println!(
            "allocations per READ request pair ({mode:?}): {}",
            count_allocations(mode)
        );
    }
    let limits = Limits::default();
    let data = vec![0x5au8; LEN];
    let mut out = Vec::with_capacity(LEN + 64);
    let mut g = c.benchmark_group("read_4k_pair");
    g.throughput(Throughput::Elements(1));
    g.bench_function("memcpy_4k_peer", |b| {
        b.iter(|| {
            out.clear();
            out.extend_from_slice(black_box(&data));
            black_box(&out);
        })
    });
    for (name, mode) in [
        ("structured", Mode::Structured),
        ("extended", Mode::Extended),
        ("simple", Mode::Simple),
    ] {
        let req = request_bytes(mode);
        g.bench_function(name, |b| {
            b.iter(|| {
                read_pair(mode, black_box(&req), black_box(&data), &mut out, &limits);
                black_box(&out);
            })
        });
    }
    g.finish();
    let req = request_bytes(Mode::Structured);
    c.bench_function("request_decode_only", |b| {
        b.iter(|| Request::decode(black_box(&req), Mode::Structured, &limits))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
