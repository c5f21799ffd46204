//! QEMU's I/O layer (io/, util/qemu-sockets.c): socket addresses, the
//! channel trait with its socket and file channels, watches, the network
//! listener, and QIOTask. The TLS channel ([`tls`]) and the WebSocket
//! channel ([`websock`]) are behind the cargo features `tls` and `websocket`
//! (both on by default).

pub mod address;
pub mod channel;
mod channel_base;
pub mod file;
pub mod net_listener;
pub mod socket;
mod std_io;
pub mod task;
#[cfg(feature = "tls")]
pub mod tls;
pub mod uring_file;
pub mod watch;
#[cfg(feature = "websocket")]
pub mod websock;

/// The readiness bits (`IN`, `OUT`, ...) that channels, watches and fd
/// handlers share: the one module is [`crate::aio::events`], re-exported here
/// so that channel code needs one import.
#[doc(no_inline)]
pub use crate::aio::events;
pub use address::{InetSocketAddress, SocketAddress, UnixSocketAddress};
pub use channel::{Channel, ChannelBase, Feature, ReadFlags};
pub use file::FileChannel;
pub use net_listener::NetListener;
pub use socket::SocketChannel;
pub use task::{Task, TaskError, TaskThread, WorkerPanicked, WrongResultType};
#[cfg(feature = "tls")]
pub use tls::TlsChannel;
pub use uring_file::AioFile;
pub use watch::WatchHandle;
#[cfg(feature = "websocket")]
pub use websock::WebsockChannel;
