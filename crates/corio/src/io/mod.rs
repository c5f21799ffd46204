//! QEMU's I/O layer (io/, util/qemu-sockets.c): socket addresses, the
//! channel trait with its socket and file channels, watches, the network
//! listener, and QIOTask.

pub mod address;
pub mod channel;
pub mod file;
pub mod net_listener;
pub mod socket;
pub mod task;
pub mod tls;
pub mod watch;
pub mod websock;

pub use address::{InetSocketAddress, SocketAddress, UnixSocketAddress};
pub use channel::{Channel, ChannelBase, Feature, ReadFlags};
pub use file::FileChannel;
pub use net_listener::NetListener;
pub use socket::SocketChannel;
pub use task::{Task, TaskError, TaskThread, WorkerPanicked, WrongResultType};
pub use tls::TlsChannel;
pub use watch::{events, WatchHandle};
pub use websock::WebsockChannel;
