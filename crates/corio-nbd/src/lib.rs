//! corio-nbd: a qemu-nbd-compatible NBD server built on corio.
//!
//! Today it holds the protocol layer, [`proto`]: encode and decode of every
//! NBD message, with no I/O, so that the server only moves bytes and makes
//! decisions. See the module documentation for an example.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod proto;
