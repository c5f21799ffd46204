//! Atomics facade: `std` normally, `loom` under `--cfg loom` (tokio's pattern),
//! so that the lock-free code is model-checked as it ships.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicPtr, AtomicU32, AtomicU8};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicPtr, AtomicU32, AtomicU8};
