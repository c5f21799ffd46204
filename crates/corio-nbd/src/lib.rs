//! corio-nbd: a qemu-nbd-compatible NBD server built on corio.
//!
//! - [`proto`]: encode and decode of every NBD message, with no I/O.
//! - [`storage`]: what an export serves (a sparse in-memory disk, a raw
//!   file or block device), behind a small trait.
//! - [`server`]: the server, on corio's coroutines, contexts, IOThreads,
//!   `CoMutex`, thread pool and network listener.
//!
//! The `corio-nbd` binary is a thin command line over [`server`], with
//! qemu-nbd's flags.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod proto;
pub mod server;
pub mod storage;
