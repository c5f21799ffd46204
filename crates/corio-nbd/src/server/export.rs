//! What is served: one export, its storage and the policies qemu-nbd's
//! flags set on it.

use std::sync::Arc;

use crate::proto::{Mode, TransmissionFlags};
use crate::storage::Storage;

/// The largest payload and read length (qemu-nbd's `NBD_MAX_BUFFER_SIZE`).
pub const MAX_BLOCK: u32 = 32 * 1024 * 1024;
/// The preferred block size advertised (qemu-nbd's for raw files).
pub const PREFERRED_BLOCK: u32 = 4096;

/// QEMU's `--discard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Discard {
    /// TRIM succeeds and changes nothing; WRITE_ZEROES never deallocates
    /// (QEMU's default).
    #[default]
    Ignore,
    /// TRIM deallocates; WRITE_ZEROES without `NO_HOLE` may.
    Unmap,
}

/// QEMU's `--detect-zeroes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DetectZeroes {
    /// Writes are written (the default).
    #[default]
    Off,
    /// A write of all zeroes becomes a zeroing.
    On,
    /// As `On`, deallocating when `--discard unmap` allows.
    Unmap,
}

/// The metadata contexts the server knows.
pub mod context {
    /// `base:allocation` and its id (QEMU's `NBD_META_ID_BASE_ALLOCATION`).
    pub const BASE_ALLOCATION: (&str, u32) = ("base:allocation", 0);
    /// `qemu:allocation-depth` and its id (QEMU's
    /// `NBD_META_ID_ALLOCATION_DEPTH`).
    pub const ALLOCATION_DEPTH: (&str, u32) = ("qemu:allocation-depth", 1);
}

/// An export.
#[derive(Clone)]
pub struct Export {
    /// The name clients ask for (`-x`, default empty).
    pub name: String,
    /// A description for `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION` (`-D`).
    pub description: String,
    /// The data.
    pub storage: Arc<dyn Storage>,
    /// The minimum block size advertised to clients that ask for block
    /// sizes (1; 512 for a raw image whose format was probed, as qemu-nbd;
    /// 4096 with `O_DIRECT`). Requests not aligned to it get `EINVAL` from
    /// clients that asked for it.
    pub min_block: u32,
    /// Offer `qemu:allocation-depth` (qemu-nbd's `-A`).
    pub allocation_depth: bool,
    /// `--discard`.
    pub discard: Discard,
    /// `--detect-zeroes`.
    pub detect_zeroes: DetectZeroes,
    /// Advertise `NBD_FLAG_CAN_MULTI_CONN` (qemu-nbd does when `--shared`
    /// is not 1: every connection shares one storage, so a flush on one
    /// covers writes completed on all).
    pub multi_conn: bool,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("size", &self.storage.size())
            .field("min_block", &self.min_block)
            .finish_non_exhaustive()
    }
}

impl Export {
    /// An export of `storage` named `name`, with qemu-nbd's defaults.
    pub fn new(name: impl Into<String>, storage: Arc<dyn Storage>) -> Export {
        Export {
            name: name.into(),
            description: String::new(),
            storage,
            min_block: 1,
            allocation_depth: false,
            discard: Discard::Ignore,
            detect_zeroes: DetectZeroes::Off,
            multi_conn: false,
        }
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        !self.storage.capabilities().writable
    }

    /// The transmission flags for a client in `mode`, as qemu-nbd sets
    /// them.
    pub fn transmission_flags(&self, mode: Mode) -> TransmissionFlags {
        use TransmissionFlags as F;
        let caps = self.storage.capabilities();
        let mut f = F::HAS_FLAGS | F::SEND_FLUSH | F::SEND_FUA | F::SEND_CACHE;
        if caps.writable {
            f |= F::SEND_TRIM | F::SEND_WRITE_ZEROES;
            if caps.fast_zero {
                f |= F::SEND_FAST_ZERO;
            }
        } else {
            f |= F::READ_ONLY;
        }
        if caps.rotational {
            f |= F::ROTATIONAL;
        }
        if mode >= Mode::Structured {
            f |= F::SEND_DF;
        }
        if mode == Mode::Extended {
            f |= F::BLOCK_STATUS_PAYLOAD;
        }
        if self.multi_conn {
            f |= F::CAN_MULTI_CONN;
        }
        f
    }

    /// The contexts this export offers, with their ids.
    pub fn contexts(&self) -> Vec<(&'static str, u32)> {
        let mut v = vec![context::BASE_ALLOCATION];
        if self.allocation_depth {
            v.push(context::ALLOCATION_DEPTH);
        }
        v
    }
}
