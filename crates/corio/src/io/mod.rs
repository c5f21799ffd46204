//! QEMU's I/O layer (io/, util/qemu-sockets.c): socket addresses, the
//! channel trait with its socket and file channels, watches, the network
//! listener, and QIOTask.

pub mod address;
pub mod channel;
pub mod file;
pub mod socket;
pub mod watch;

pub use channel::{Channel, ChannelBase, Feature, ReadFlags};
pub use file::FileChannel;
pub use socket::SocketChannel;
pub use watch::{events, WatchHandle};
