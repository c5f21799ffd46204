//! Block status of a qcow2 image from imago's mappings, with the flags
//! qemu-nbd reports for qcow2.
//!
//! `base:allocation` looks through the whole chain (imago's resolved
//! mapping, as QEMU's `bdrv_block_status_above`): data in any layer, and
//! compressed clusters, are data (flags 0); zero clusters and what no
//! layer allocates read as zeroes without data (`HOLE | ZERO`).
//!
//! `qemu:allocation-depth` walks the shallow mappings layer by layer (as
//! QEMU's `bdrv_is_allocated_above`): 1 where this image allocates the
//! range (data, compressed or zero clusters), 2 and up where a backing
//! layer does, 0 where none does (nor past the end of a shorter backing
//! file).
//!
//! A raw file at the bottom of the chain is data to imago; QEMU asks the
//! file system (`SEEK_DATA`/`SEEK_HOLE`) and reports its holes as holes,
//! and so does [`RawBacking`] here.

use std::io;
use std::path::PathBuf;

use imago::file::File;
use imago::{FormatAccess, Mapping, ShallowMapping, Storage as _};
use rustix::fs::SeekFrom;

use crate::storage::{push_extent, Extent};

type Image = FormatAccess<File>;

/// A raw backing file, opened again to ask where its holes are.
#[derive(Debug)]
pub(super) struct RawBacking {
    /// Its name as imago's storage reports it.
    path: PathBuf,
    file: std::fs::File,
}

impl RawBacking {
    /// Opens `path` read-only.
    pub(super) fn open(path: PathBuf) -> io::Result<RawBacking> {
        let file = std::fs::File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("'{}': {e}", path.display())))?;
        Ok(RawBacking { path, file })
    }

    /// Whether `[offset, offset + n)` starts with data, and how long
    /// that run is (at most `n`).
    fn run(&self, offset: u64, n: u64) -> (bool, u64) {
        match rustix::fs::seek(&self.file, SeekFrom::Data(offset)) {
            Ok(d) if d > offset => (false, (d - offset).min(n)),
            Ok(_) => match rustix::fs::seek(&self.file, SeekFrom::Hole(offset)) {
                Ok(h) if h > offset => (true, (h - offset).min(n)),
                _ => (true, n),
            },
            Err(rustix::io::Errno::NXIO) => (false, n),
            Err(_) => (true, n),
        }
    }
}

/// The `base:allocation` extents of `[offset, offset + len)`, at most
/// `max` of them.
pub(super) fn extents(
    image: &Image,
    raw: Option<&RawBacking>,
    offset: u64,
    len: u64,
    max: usize,
) -> io::Result<Vec<Extent>> {
    let end = offset + len;
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end {
        let (mapping, mut n) = image.get_mapping(pos, end - pos)?;
        if n == 0 {
            break;
        }
        let zero = match mapping {
            Mapping::Zero { .. } | Mapping::Eof { .. } => true,
            Mapping::Raw {
                storage, offset, ..
            } => match raw {
                Some(r) if storage.get_filename().as_ref() == Some(&r.path) => {
                    let (data, k) = r.run(offset, n);
                    n = k;
                    !data
                }
                _ => false,
            },
            _ => false,
        };
        let e = Extent {
            length: n,
            hole: zero,
            zero,
        };
        if !push_extent(&mut out, e, max) {
            break;
        }
        pos += n;
    }
    Ok(out)
}

/// The depth of the run at `pos` (at most `max_len` long): `(length,
/// depth)`, length 0 at the end of the image.
fn depth_at(image: &Image, pos: u64, max_len: u64) -> io::Result<(u64, u32)> {
    let mut layer = image;
    let mut off = pos;
    let mut len = max_len;
    let mut depth = 1;
    loop {
        let (mapping, n) = layer.get_shallow_mapping(off, len)?;
        match mapping {
            ShallowMapping::Indirect {
                layer: next,
                offset,
                ..
            } => {
                layer = next;
                off = offset;
                len = n;
                depth += 1;
            }
            ShallowMapping::Zero {
                explicit: false, ..
            } => return Ok((n, 0)),
            // Past the end of a backing file shorter than the image.
            ShallowMapping::Eof { .. } if depth > 1 => return Ok((len, 0)),
            ShallowMapping::Eof { .. } => return Ok((0, 0)),
            // Data, compressed data, zero clusters.
            _ => return Ok((n, depth)),
        }
    }
}

/// The `qemu:allocation-depth` runs of `[offset, offset + len)`, at most
/// `max` of them.
pub(super) fn depths(
    image: &Image,
    offset: u64,
    len: u64,
    max: usize,
) -> io::Result<Vec<(u64, u32)>> {
    let end = offset + len;
    let mut out: Vec<(u64, u32)> = Vec::new();
    let mut pos = offset;
    while pos < end {
        let (n, d) = depth_at(image, pos, end - pos)?;
        if n == 0 {
            break;
        }
        let full = out.len() >= max;
        match out.last_mut() {
            Some(last) if last.1 == d => last.0 += n,
            _ if full => break,
            _ => out.push((n, d)),
        }
        pos += n;
    }
    Ok(out)
}

/// Maps `buf.len()` bytes at `offset` and reads the ones that are data
/// into `buf`.
pub(super) fn read_mapped(
    image: &Image,
    raw: Option<&RawBacking>,
    offset: u64,
    buf: &mut [u8],
) -> io::Result<Vec<Extent>> {
    let map = extents(image, raw, offset, buf.len() as u64, usize::MAX)?;
    let mut at = 0usize;
    for e in &map {
        let n = e.length as usize;
        if !e.zero {
            image.read(&mut buf[at..at + n], offset + at as u64)?;
        }
        at += n;
    }
    if at != buf.len() {
        return Err(io::Error::other(format!(
            "qcow2 mapping of {} bytes at {offset} covers only {at}",
            buf.len()
        )));
    }
    Ok(map)
}
