//! Trace events: enabling by pattern from the API and from `CORIO_TRACE`, the
//! stderr backend's format, and (with the `tracing` feature) the `tracing`
//! backend.

mod helpers;
use corio::trace;
use helpers::LockExt;

/// Event states are process-wide: tests that switch them take turns.
static STATES: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn patterns_enable_and_disable() {
    let _turn = STATES.locked();
    let names: Vec<&str> = trace::events().iter().map(|e| e.name()).collect();
    for qemu in [
        "qemu_aio_coroutine_enter",
        "qemu_coroutine_yield",
        "qemu_coroutine_terminate",
        "aio_co_schedule",
        "aio_co_schedule_bh_cb",
    ] {
        assert!(names.contains(&qemu), "{qemu} is declared");
    }
    assert_eq!(trace::set_patterns("qemu_coroutine_*"), 2);
    assert!(trace::is_enabled("qemu_coroutine_yield"));
    assert!(!trace::is_enabled("aio_co_schedule"));
    trace::set_patterns("*,-aio_poll_*");
    assert!(trace::is_enabled("aio_co_schedule"));
    assert!(!trace::is_enabled("aio_poll_begin"));
    assert_eq!(trace::disable("*"), names.len());
    assert!(trace::events().iter().all(|e| !e.enabled()));
    assert_eq!(trace::enable("no_such_event*"), 0);
}

/// `CORIO_TRACE` switches events on in a real process; the stderr backend
/// (the default without the `tracing` feature) writes QEMU's log format
/// `pid@secs.usecs:name args`.
#[cfg(not(feature = "tracing"))]
#[test]
fn corio_trace_env_reaches_stderr() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corio-demo"))
        .args([
            "--seconds",
            "1",
            "--threads",
            "2",
            "--coroutines-per-thread",
            "2",
            "--tokens",
            "1",
        ])
        .env("CORIO_TRACE", "aio_co_schedule,qemu_coroutine_terminate")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains(":aio_co_schedule "))
        .expect("an aio_co_schedule event");
    let (pid, rest) = line.split_once('@').unwrap();
    assert!(pid.parse::<u32>().is_ok(), "{line}");
    assert!(
        rest.contains(":aio_co_schedule ctx 0x") && rest.contains(" co 0x"),
        "{line}"
    );
    assert!(err.contains(":qemu_coroutine_terminate self 0x"));
    assert!(!err.contains(":aio_co_schedule_bh_cb"), "not enabled");
    // Unknown patterns are reported, not silently ignored.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corio-demo"))
        .args(["--seconds", "0"])
        .env("CORIO_TRACE", "nothing_matches_this")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("matches no trace event"));
}

#[cfg(feature = "tracing")]
#[test]
fn tracing_backend_sees_events() {
    use std::sync::{Arc, Mutex};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<String>>>);
    struct V<'a>(&'a mut String);
    impl Visit for V<'_> {
        fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
            self.0.push_str(&format!("{}={:?} ", f.name(), v));
        }
        fn record_str(&mut self, f: &Field, v: &str) {
            self.0.push_str(&format!("{}={} ", f.name(), v));
        }
    }
    impl Subscriber for Collect {
        fn enabled(&self, m: &Metadata<'_>) -> bool {
            m.target() == "corio::trace"
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, e: &Event<'_>) {
            let mut s = String::new();
            e.record(&mut V(&mut s));
            self.0.locked().push(s);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    let _turn = STATES.locked();
    let c = Collect::default();
    trace::set_backends(&[trace::Backend::Tracing]);
    trace::enable("qemu_coroutine_yield");
    tracing::subscriber::with_default(c.clone(), || {
        let co = corio::Coroutine::new(corio::yield_now);
        co.enter();
        co.enter();
    });
    trace::disable("*");
    let seen = c.0.locked();
    assert!(
        seen.iter()
            .any(|s| s.contains("event=qemu_coroutine_yield") && s.contains("from 0x")),
        "{seen:?}"
    );
}
