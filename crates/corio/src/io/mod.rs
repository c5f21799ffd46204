//! QEMU's I/O layer (io/, util/qemu-sockets.c): socket addresses, the
//! channel trait with its socket and file channels, watches, the network
//! listener, and QIOTask.

pub mod address;
