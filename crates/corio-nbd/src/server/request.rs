//! Serving one request: checks, the storage call, the reply (qemu's
//! `nbd_handle_request`).

use std::io;
use std::sync::atomic::Ordering::Relaxed;

use super::export::{DetectZeroes, Discard};
use super::reply::ReplyBuf;
use super::session::Session;
use crate::proto::{
    BlockStatusPayload, ChunkBody, CmdFlags, Command, Errno, Extent, ExtentExt, Mode, Request,
    WireList,
};
use crate::storage::ZeroFlags;

/// Most extents in one block status reply (qemu's
/// `NBD_MAX_BLOCK_STATUS_EXTENTS`).
const MAX_EXTENTS: usize = 1024 * 1024 / 8;

type Failure = (Errno, String);

fn fail(errno: Errno, msg: impl Into<String>) -> Failure {
    (errno, msg.into())
}

fn io_fail(e: io::Error) -> Failure {
    (Errno::from(&e), e.to_string())
}

/// Serves `r` (with its payload, for WRITE and extended BLOCK_STATUS) and
/// sends its reply.
pub(crate) fn handle(s: &Session, r: Request, payload: Vec<u8>) {
    s.shared.stats.requests.fetch_add(1, Relaxed);
    let mut rb = ReplyBuf::new(s.mode, r.cookie, r.offset);
    let outcome = match r.command {
        Command::Read => match check(s, &r, r.length) {
            Ok(()) => return read(s, &r),
            Err(f) => Err(f),
        },
        Command::BlockStatus => match block_status(s, &r, &payload) {
            Ok(()) => return,
            Err(f) => Err(f),
        },
        Command::Write => write(s, &r, payload).map(|buf| s.give_buf(buf)),
        Command::Flush => s.shared.export.storage.flush().map_err(io_fail),
        Command::Trim => trim(s, &r),
        Command::WriteZeroes => write_zeroes(s, &r),
        Command::Cache => check(s, &r, r.length).and_then(|()| {
            let st = &s.shared.export.storage;
            st.cache(r.offset, r.length).map_err(io_fail)
        }),
        Command::Disc => Ok(()),
    };
    match outcome {
        Ok(()) => rb.ok(),
        Err((errno, msg)) => {
            s.shared.log(format_args!("request {r:?}: {errno}: {msg}"));
            rb.error(errno, &msg);
        }
    }
    s.send(&rb);
}

/// The checks every command with a range gets (qemu's
/// `nbd_co_receive_request`): write permission, bounds, alignment.
fn check(s: &Session, r: &Request, len: u64) -> Result<(), Failure> {
    let export = &s.shared.export;
    let writes = matches!(
        r.command,
        Command::Write | Command::Trim | Command::WriteZeroes
    );
    if writes && export.read_only() {
        return Err(fail(Errno::EPERM, "export is read-only"));
    }
    let size = export.storage.size();
    if r.offset > size || len > size - r.offset {
        let errno = if matches!(r.command, Command::Write | Command::WriteZeroes) {
            Errno::ENOSPC
        } else {
            Errno::EINVAL
        };
        return Err(fail(
            errno,
            format!(
                "request past the end: offset {} length {len}, size {size}",
                r.offset
            ),
        ));
    }
    let a = u64::from(s.align);
    if a > 1 && (r.offset % a != 0 || (len % a != 0 && r.offset + len != size)) {
        return Err(fail(
            Errno::EINVAL,
            format!(
                "request not aligned to the minimum block size {a}: offset {} length {len}",
                r.offset
            ),
        ));
    }
    Ok(())
}

fn read(s: &Session, r: &Request) {
    let st = &s.shared.export.storage;
    let sparse = s.mode >= Mode::Structured && !r.flags.contains(CmdFlags::DF);
    if r.length == 0 {
        let mut rb = ReplyBuf::new(s.mode, r.cookie, r.offset);
        rb.ok();
        return s.send(&rb);
    }
    let result = if sparse && st.capabilities().mapped_reads {
        read_mapped(s, r)
    } else if sparse {
        read_sparse(s, r).map(|pieces| (pieces, Vec::new()))
    } else {
        st.read_at(r.offset, s.take_buf(r.length as usize))
            .map(|buf| (vec![Piece::Data(r.offset, buf)], Vec::new()))
            .map_err(io_fail)
    };
    let mut rb = ReplyBuf::new(s.mode, r.cookie, r.offset);
    match &result {
        Ok((pieces, shared)) => {
            let last = pieces.len() - 1;
            for (i, p) in pieces.iter().enumerate() {
                match p {
                    Piece::Data(_, data) if s.mode == Mode::Simple => {
                        rb.simple(Errno::OK, Some(data));
                    }
                    Piece::Data(off, data) => rb.data(*off, data, i == last),
                    Piece::Part(off, range) => rb.data(*off, &shared[range.clone()], i == last),
                    Piece::Hole(offset, length) => {
                        let body = ChunkBody::OffsetHole {
                            offset: *offset,
                            length: *length,
                        };
                        rb.chunk(body, i == last);
                    }
                }
            }
            s.shared.stats.bytes_read.fetch_add(r.length, Relaxed);
        }
        Err((errno, msg)) => rb.error(*errno, msg),
    }
    s.send(&rb);
    drop(rb);
    if let Ok((pieces, shared)) = result {
        for p in pieces {
            if let Piece::Data(_, buf) = p {
                s.give_buf(buf);
            }
        }
        if shared.capacity() > 0 {
            s.give_buf(shared);
        }
    }
}

enum Piece {
    Data(u64, Vec<u8>),
    Hole(u64, u32),
    /// Bytes of the read's shared buffer (a mapped read).
    Part(u64, std::ops::Range<usize>),
}

/// A structured read of a storage that reads and maps in one call
/// ([`storage::Storage::read_mapped`]): one buffer, sent in pieces.
fn read_mapped(s: &Session, r: &Request) -> Result<(Vec<Piece>, Vec<u8>), Failure> {
    let st = &s.shared.export.storage;
    let (buf, extents) = st
        .read_mapped(r.offset, s.take_buf(r.length as usize))
        .map_err(io_fail)?;
    let mut pieces = Vec::with_capacity(extents.len());
    let mut at = 0usize;
    for e in &extents {
        let n = (e.length as usize).min(buf.len() - at);
        let off = r.offset + at as u64;
        if e.zero {
            pieces.push(Piece::Hole(off, n as u32));
        } else {
            pieces.push(Piece::Part(off, at..at + n));
        }
        at += n;
    }
    if at != buf.len() || pieces.is_empty() {
        s.give_buf(buf);
        return Err(fail(Errno::EIO, "storage mapped less than the read"));
    }
    Ok((pieces, buf))
}

/// A structured read answered extent by extent: holes as `OFFSET_HOLE`
/// chunks, data as `OFFSET_DATA` chunks (qemu's `nbd_co_send_sparse_read`).
fn read_sparse(s: &Session, r: &Request) -> Result<Vec<Piece>, Failure> {
    let st = &s.shared.export.storage;
    let end = r.offset + r.length;
    let mut pieces = Vec::new();
    let mut pos = r.offset;
    while pos < end {
        let extents = st.extents(pos, end - pos, 1024).map_err(io_fail)?;
        if extents.is_empty() {
            return Err(fail(Errno::EIO, "storage reported no extent"));
        }
        for e in extents {
            let len = e.length.min(end - pos);
            if e.zero {
                pieces.push(Piece::Hole(pos, len as u32));
            } else {
                let buf = st.read_at(pos, s.take_buf(len as usize)).map_err(io_fail)?;
                pieces.push(Piece::Data(pos, buf));
            }
            pos += len;
        }
    }
    Ok(pieces)
}

/// A WRITE; hands the payload buffer back when the storage does.
fn write(s: &Session, r: &Request, payload: Vec<u8>) -> Result<Vec<u8>, Failure> {
    check(s, r, r.length)?;
    let export = &s.shared.export;
    let fua = r.flags.contains(CmdFlags::FUA);
    let len = payload.len() as u64;
    let result = if export.detect_zeroes != DetectZeroes::Off && payload.iter().all(|&b| b == 0) {
        let may_trim =
            export.detect_zeroes == DetectZeroes::Unmap && export.discard == Discard::Unmap;
        let flags = ZeroFlags {
            may_trim,
            fast: false,
            fua,
        };
        export
            .storage
            .write_zeroes(r.offset, len, flags)
            .map(|()| payload)
    } else {
        export.storage.write_at(r.offset, payload, fua)
    };
    let buf = result.map_err(io_fail)?;
    s.shared.stats.bytes_written.fetch_add(len, Relaxed);
    Ok(buf)
}

fn trim(s: &Session, r: &Request) -> Result<(), Failure> {
    check(s, r, r.length)?;
    let export = &s.shared.export;
    let fua = r.flags.contains(CmdFlags::FUA);
    if export.discard == Discard::Unmap {
        export
            .storage
            .trim(r.offset, r.length, fua)
            .map_err(io_fail)
    } else if fua {
        export.storage.flush().map_err(io_fail)
    } else {
        Ok(())
    }
}

fn write_zeroes(s: &Session, r: &Request) -> Result<(), Failure> {
    check(s, r, r.length)?;
    let export = &s.shared.export;
    let flags = ZeroFlags {
        may_trim: !r.flags.contains(CmdFlags::NO_HOLE) && export.discard == Discard::Unmap,
        fast: r.flags.contains(CmdFlags::FAST_ZERO),
        fua: r.flags.contains(CmdFlags::FUA),
    };
    export
        .storage
        .write_zeroes(r.offset, r.length, flags)
        .map_err(io_fail)
}

/// `NBD_CMD_BLOCK_STATUS`: one chunk per context asked for.
fn block_status(s: &Session, r: &Request, payload: &[u8]) -> Result<(), Failure> {
    if s.mode == Mode::Simple || s.contexts.is_empty() {
        return Err(fail(Errno::EINVAL, "no metadata context negotiated"));
    }
    let mut wanted = s.contexts.clone();
    let mut len = r.length;
    if r.flags.contains(CmdFlags::PAYLOAD_LEN) {
        let p = BlockStatusPayload::decode(payload)
            .ok_or_else(|| fail(Errno::EINVAL, "malformed block status payload"))?;
        len = p.effect_length;
        if !p.ids.is_empty() {
            let ids: Vec<u32> = p.ids.iter().collect();
            if ids.iter().any(|id| !s.contexts.iter().any(|c| c.1 == *id)) {
                return Err(fail(Errno::EINVAL, "context id not negotiated"));
            }
            wanted.retain(|c| ids.contains(&c.1));
        }
    }
    if len == 0 {
        return Err(fail(Errno::EINVAL, "block status of zero length"));
    }
    check(s, r, len)?;
    let max = if r.flags.contains(CmdFlags::REQ_ONE) {
        1
    } else {
        MAX_EXTENTS
    };
    // Compact replies carry 32-bit lengths.
    if s.mode != Mode::Extended {
        len = len.min(u64::from(u32::MAX) / 4096 * 4096);
    }
    let mut rb = ReplyBuf::new(s.mode, r.cookie, r.offset);
    let last = wanted.len() - 1;
    for (i, &(name, id)) in wanted.iter().enumerate() {
        let storage = &s.shared.export.storage;
        let runs: Vec<(u64, u32)> = if name == super::export::context::BASE_ALLOCATION.0 {
            let extents = storage.extents(r.offset, len, max).map_err(io_fail)?;
            extents.iter().map(|e| (e.length, e.flags())).collect()
        } else {
            storage
                .allocation_depth(r.offset, len, max)
                .map_err(io_fail)?
        };
        if s.mode == Mode::Extended {
            let v: Vec<ExtentExt> = runs
                .iter()
                .map(|&(length, flags)| ExtentExt {
                    length,
                    flags: u64::from(flags),
                })
                .collect();
            let body = ChunkBody::BlockStatusExt {
                context_id: id,
                extents: WireList::Items(&v),
            };
            rb.chunk(body, i == last);
        } else {
            let v: Vec<Extent> = runs
                .iter()
                .map(|&(length, flags)| Extent {
                    length: length as u32,
                    flags,
                })
                .collect();
            let body = ChunkBody::BlockStatus {
                context_id: id,
                extents: WireList::Items(&v),
            };
            rb.chunk(body, i == last);
        }
    }
    s.send(&rb);
    Ok(())
}
