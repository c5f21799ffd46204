//! Coroutine switch benchmarks (DESIGN.md §5), each against raw corosensei in
//! the same run:
//!
//! * `round_trip`: one `enter` + `yield_now` of a coroutine that yields in a
//!   loop, vs a corosensei coroutine resumed around `Yielder::suspend` in a
//!   loop (target: ≤ 1.3x);
//! * `lifecycle`: create + enter + terminate with the coroutine-object pool, vs
//!   corosensei `with_stack` + `into_stack` on one reused stack (target: ≤ 2x);
//! * `nesting`: a chain of 1000 coroutines, each creating and entering the
//!   next; reported per level (throughput: one element per level).
//!
//! `cargo bench -p corio --bench coroutine -- --warm-up-time 1 --measurement-time 3`
//!
//! Instruction counts: with `CORIO_CALLGRIND=<workload>:<n>` the binary runs
//! `n` iterations of one workload (`round_trip`, `round_trip_corosensei`,
//! `lifecycle`, `lifecycle_corosensei`, and `round_trip_corosensei_outlined`:
//! raw corosensei with `suspend` in a function of its own, as corio's
//! `yield_now` is, which shows what the return-address predictor costs)
//! inside `callgrind_region`, without criterion (time it with `time`), so that
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect=*callgrind_region* <bench> `
//! counts only the loop. `benches/trace_overhead.sh` does this.

use std::cell::RefCell;
use std::hint::black_box;

use corio::{coroutine, Coroutine};
use corosensei::stack::DefaultStack;
use criterion::{BenchmarkId, Criterion, Throughput};

type RawCo = corosensei::Coroutine<(), (), (), DefaultStack>;

/// The nesting depth of `nesting`.
const DEPTH: usize = 1000;

/// Same stack size for both sides (corio's default, QEMU's 1 MiB).
fn raw_stack() -> DefaultStack {
    DefaultStack::new(coroutine::stack_size()).expect("map a stack")
}

fn corio_yielder() -> Coroutine {
    Coroutine::new(|| loop {
        coroutine::yield_now();
    })
}

fn raw_yielder() -> RawCo {
    RawCo::with_stack(raw_stack(), |y, ()| loop {
        y.suspend(());
    })
}

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("round_trip");
    {
        let co = corio_yielder();
        g.bench_function("corio", |b| b.iter(|| co.enter()));
    }
    {
        let mut co = raw_yielder();
        g.bench_function("corosensei", |b| {
            b.iter(|| {
                let _ = black_box(co.resume(()));
            })
        });
    }
    g.finish();
}

fn corio_lifecycle() {
    let co = Coroutine::new(|| {
        black_box(());
    });
    co.enter();
    debug_assert!(co.is_terminated());
}

fn raw_lifecycle(stack: &mut Option<DefaultStack>) {
    let mut co = RawCo::with_stack(stack.take().expect("stack"), |_, ()| {
        black_box(());
    });
    let _ = co.resume(());
    *stack = Some(co.into_stack());
}

fn lifecycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("lifecycle");
    corio_lifecycle(); // fills the pool
    g.bench_function("corio", |b| b.iter(corio_lifecycle));
    let mut stack = Some(raw_stack());
    g.bench_function("corosensei", |b| b.iter(|| raw_lifecycle(&mut stack)));
    g.finish();
}

fn corio_nest(depth: usize) {
    if depth == 0 {
        return;
    }
    let co = Coroutine::new(move || corio_nest(depth - 1));
    co.enter();
}

thread_local! {
    static RAW_STACKS: RefCell<Vec<DefaultStack>> = const { RefCell::new(Vec::new()) };
}

fn raw_nest(depth: usize) {
    if depth == 0 {
        return;
    }
    let stack = RAW_STACKS.with(|s| s.borrow_mut().pop()).expect("stack");
    let mut co = RawCo::with_stack(stack, move |_, ()| raw_nest(depth - 1));
    let _ = co.resume(());
    let stack = co.into_stack();
    RAW_STACKS.with(|s| s.borrow_mut().push(stack));
}

fn nesting(c: &mut Criterion) {
    let mut g = c.benchmark_group("nesting");
    g.throughput(Throughput::Elements(DEPTH as u64));
    // Room in the shared pool for the whole chain, as a device with deep
    // nesting would ask with `inc_pool_size` (QEMU's virtio-blk does);
    // without it every level past the pool maps a fresh stack.
    coroutine::inc_pool_size(2 * DEPTH);
    corio_nest(DEPTH); // fills the pool
    g.bench_with_input(BenchmarkId::new("corio", DEPTH), &DEPTH, |b, &d| {
        b.iter(|| corio_nest(d))
    });
    RAW_STACKS.with(|s| s.borrow_mut().extend((0..DEPTH).map(|_| raw_stack())));
    g.bench_with_input(BenchmarkId::new("corosensei", DEPTH), &DEPTH, |b, &d| {
        b.iter(|| raw_nest(d))
    });
    RAW_STACKS.with(|s| s.borrow_mut().clear());
    g.finish();
}

/// The loop callgrind counts (`--toggle-collect=*callgrind_region*`).
#[inline(never)]
fn callgrind_region(n: u64, f: &mut dyn FnMut()) {
    for _ in 0..n {
        f();
    }
}

fn callgrind(spec: &str) {
    let (what, n) = spec
        .split_once(':')
        .expect("CORIO_CALLGRIND=<workload>:<iterations>");
    let n: u64 = n.parse().expect("iteration count");
    match what {
        "round_trip" => {
            let co = corio_yielder();
            co.enter();
            callgrind_region(n, &mut || co.enter());
        }
        "round_trip_corosensei" => {
            let mut co = raw_yielder();
            let _ = co.resume(());
            callgrind_region(n, &mut || {
                let _ = black_box(co.resume(()));
            });
        }
        "round_trip_corosensei_outlined" => {
            #[inline(never)]
            fn suspend(y: &corosensei::Yielder<(), ()>) {
                y.suspend(());
            }
            let mut co = RawCo::with_stack(raw_stack(), |y, ()| loop {
                suspend(y);
            });
            let _ = co.resume(());
            callgrind_region(n, &mut || {
                let _ = black_box(co.resume(()));
            });
        }
        "lifecycle" => {
            corio_lifecycle();
            callgrind_region(n, &mut corio_lifecycle);
        }
        "lifecycle_corosensei" => {
            let mut stack = Some(raw_stack());
            callgrind_region(n, &mut || raw_lifecycle(&mut stack));
        }
        _ => panic!("unknown CORIO_CALLGRIND workload {what:?}"),
    }
}

fn main() {
    // As every AioContext constructor does. It also makes the trace
    // switches reachable: without it, LTO proves that no event is ever
    // switched on and folds the disabled-trace checks out of the switch
    // path, which a program with an event loop does not get.
    corio::trace::init_from_env();
    if let Ok(spec) = std::env::var("CORIO_CALLGRIND") {
        callgrind(&spec);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    round_trip(&mut c);
    lifecycle(&mut c);
    nesting(&mut c);
    c.final_summary();
}
