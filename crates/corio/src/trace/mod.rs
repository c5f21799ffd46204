//! Trace events, QEMU style.
//!
//! Every event has QEMU's name (`qemu_aio_coroutine_enter`, `aio_co_schedule`,
//! ...) and a static enabled state. A disabled event costs one relaxed atomic
//! load and a not-taken branch; the formatting and the backend call live in a
//! cold function. Events are switched on by glob pattern:
//!
//! * from the API: [`enable`], [`disable`], [`set_patterns`];
//! * from the environment: `CORIO_TRACE=aio_*,qemu_coroutine_*` (read by
//!   [`init_from_env`], which every [`AioContext`](crate::AioContext)
//!   constructor calls once per process);
//! * from a server's `--trace` flag, which passes its text to [`set_patterns`].
//!
//! A pattern list is comma-separated; `*` matches any run of characters, `?`
//! one character, and a leading `-` disables what it matches (QEMU's
//! `-trace enable=` and events-file syntax). Patterns apply left to right.
//!
//! Two backends: the stderr log (the default, QEMU's `log` backend format
//! `pid@seconds.micros:event key value ...`), and, with the `tracing` cargo
//! feature, the [`tracing`](https://docs.rs/tracing) crate, so that a
//! subscriber sees every enabled event at `TRACE` level with target
//! `corio::trace` and field `event` set to the event name.
//!
//! Building with `RUSTFLAGS="--cfg corio_trace_off"` compiles every event out.
//!
//! # Examples
//!
//! ```
//! use corio::trace;
//!
//! let n = trace::set_patterns("aio_co_*,-aio_co_schedule_bh_cb");
//! assert!(n >= 1);
//! assert!(trace::is_enabled("aio_co_schedule"));
//! assert!(!trace::is_enabled("aio_co_schedule_bh_cb"));
//! trace::set_patterns("-*");
//! assert!(!trace::is_enabled("aio_co_schedule"));
//! ```

mod events;

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Once;

pub use events::*;

/// One trace event: a QEMU name and a run-time switch.
#[derive(Debug)]
pub struct TraceEvent {
    name: &'static str,
    // Relaxed everywhere: the state is a hint, not a synchronisation point.
    // A thread may see an enable a little late; nothing depends on it.
    enabled: AtomicBool,
}

impl TraceEvent {
    pub(crate) const fn new(name: &'static str) -> Self {
        TraceEvent {
            name,
            enabled: AtomicBool::new(false),
        }
    }

    /// The event's name, as in QEMU's `trace-events` files.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether the event is switched on. This is the hot check: one load.
    #[inline(always)]
    pub fn enabled(&self) -> bool {
        !cfg!(corio_trace_off) && self.enabled.load(Ordering::Relaxed)
    }

    /// Switches the event on or off.
    pub fn set_enabled(&self, on: bool) {
        // Under the lock, so that two threads switching two of the
        // coroutine-switch events cannot leave `SWITCH_EVENTS` stale.
        let _g = SWITCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        self.enabled.store(on, Ordering::Relaxed);
        let any = [
            &event::qemu_aio_coroutine_enter,
            &event::qemu_coroutine_yield,
            &event::qemu_coroutine_terminate,
        ]
        .iter()
        .any(|e| e.enabled.load(Ordering::Relaxed));
        SWITCH_EVENTS.store(any as usize, Ordering::Relaxed);
    }
}

/// Whether any of the coroutine-switch events (`qemu_aio_coroutine_enter`,
/// `qemu_coroutine_yield`, `qemu_coroutine_terminate`) is on: the switch
/// path checks this one flag, folded into its other checks, when it enters
/// a coroutine, and emits all three from its cold twin. So the yield and
/// terminate events of a coroutine follow the state of this flag when the
/// coroutine was entered: one entered before they were switched on does not
/// emit them for that run. 0 or 1, a word, so that the check ORs it into
/// the others with one instruction.
static SWITCH_EVENTS: AtomicUsize = AtomicUsize::new(0);
static SWITCH_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`SWITCH_EVENTS`] (0 or 1): one load on the switch path.
#[inline(always)]
pub(crate) fn switch_events_enabled() -> usize {
    if cfg!(corio_trace_off) {
        0
    } else {
        SWITCH_EVENTS.load(Ordering::Relaxed)
    }
}

impl TraceEvent {
    /// Writes the event to the backends. Called only when enabled.
    #[cold]
    #[inline(never)]
    pub(crate) fn emit(&self, args: fmt::Arguments<'_>) {
        let backend = BACKEND.load(Ordering::Relaxed);
        if backend & Backend::Stderr as u8 != 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let mut err = std::io::stderr().lock();
            let _ = writeln!(
                err,
                "{}@{}.{:06}:{} {}",
                std::process::id(),
                now.as_secs(),
                now.subsec_micros(),
                self.name,
                args
            );
        }
        #[cfg(feature = "tracing")]
        if backend & Backend::Tracing as u8 != 0 {
            tracing::trace!(target: "corio::trace", event = self.name, "{}", args);
        }
    }
}

/// Where enabled events go. Several may be active at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Backend {
    /// QEMU's `log` backend: one line per event on standard error.
    Stderr = 1,
    /// The `tracing` crate (needs the `tracing` cargo feature).
    Tracing = 2,
}

static BACKEND: AtomicU8 = AtomicU8::new(if cfg!(feature = "tracing") {
    Backend::Tracing as u8
} else {
    Backend::Stderr as u8
});

/// Chooses the backends that enabled events are written to. The default is
/// [`Backend::Tracing`] when the `tracing` feature is on, else
/// [`Backend::Stderr`].
pub fn set_backends(backends: &[Backend]) {
    let bits = backends.iter().fold(0, |acc, b| acc | *b as u8);
    BACKEND.store(bits, Ordering::Relaxed);
}

/// Every event this build knows, in declaration order.
pub fn events() -> &'static [&'static TraceEvent] {
    ALL_EVENTS
}

/// Whether the event called `name` exists and is enabled.
pub fn is_enabled(name: &str) -> bool {
    ALL_EVENTS
        .iter()
        .any(|e| e.name == name && e.enabled.load(Ordering::Relaxed))
}

/// Enables every event whose name matches the glob `pattern`; returns how many matched.
pub fn enable(pattern: &str) -> usize {
    apply(pattern, true)
}

/// Disables every event whose name matches the glob `pattern`; returns how many matched.
pub fn disable(pattern: &str) -> usize {
    apply(pattern, false)
}

/// Applies a comma-separated pattern list (`aio_*,-aio_co_schedule_bh_cb`), left
/// to right; returns how many events the enabling patterns matched.
pub fn set_patterns(list: &str) -> usize {
    let mut matched = 0;
    for pat in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pat.strip_prefix('-') {
            Some(p) => {
                disable(p);
            }
            None => matched += enable(pat),
        }
    }
    matched
}

/// Reads `CORIO_TRACE` once per process and applies it with [`set_patterns`].
/// Later calls do nothing. Called by every AioContext constructor.
pub fn init_from_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Ok(list) = std::env::var("CORIO_TRACE") {
            if set_patterns(&list) == 0 {
                eprintln!("corio: CORIO_TRACE={list:?} matches no trace event");
            }
        }
    });
}

fn apply(pattern: &str, on: bool) -> usize {
    let mut n = 0;
    for e in ALL_EVENTS {
        if glob_match(pattern.as_bytes(), e.name.as_bytes()) {
            e.set_enabled(on);
            n += 1;
        }
    }
    n
}

/// `*` and `?` glob matching, iterative with one backtrack point.
fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// Declares trace events: a static [`TraceEvent`] per event, an inline
/// `trace_NAME(args)` function that checks the state and emits, and the
/// table returned by [`events`].
macro_rules! trace_events {
    ($( $(#[$doc:meta])* $name:ident ( $($arg:ident : $ty:ty),* ) $fmt:literal ;)*) => {
        /// The static state of each event, named as in QEMU.
        #[allow(non_upper_case_globals)]
        pub mod event {
            use super::super::TraceEvent;
            $( $(#[$doc])* pub static $name: TraceEvent = TraceEvent::new(stringify!($name)); )*
        }
        pub(crate) static ALL_EVENTS: &[&super::TraceEvent] = &[$(&event::$name),*];
        $(
            paste_fn! { $name, ($($arg : $ty),*), $fmt }
        )*
    };
}

macro_rules! paste_fn {
    ($name:ident, ($($arg:ident : $ty:ty),*), $fmt:literal) => {
        #[doc = concat!("Emits `", stringify!($name), "` if it is enabled.")]
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        pub fn $name($($arg: $ty),*) {
            if event::$name.enabled() {
                // Out of line and cold, so that a disabled event costs the
                // load and the branch, not the spilling of its arguments.
                #[cold]
                #[inline(never)]
                fn emit($($arg: $ty),*) {
                    event::$name.emit(format_args!($fmt, $($arg = $arg),*));
                }
                emit($($arg),*);
            }
        }
    };
}

pub(crate) use {paste_fn, trace_events};

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn glob() {
        assert!(glob_match(b"aio_*", b"aio_co_schedule"));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(!glob_match(b"a?c", b"ac"));
        assert!(glob_match(b"*co*sched*", b"aio_co_schedule_bh_cb"));
        assert!(!glob_match(b"aio_", b"aio_co_schedule"));
        assert!(glob_match(b"qemu_coroutine_*", b"qemu_coroutine_yield"));
    }
}
