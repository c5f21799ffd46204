//! Building replies: headers encoded into one buffer, data borrowed from
//! the request's buffers, so that a reply leaves in one `writev`.

use std::io::IoSlice;
use std::ops::Range;

use crate::proto::{Chunk, ChunkBody, Errno, Mode, ReplyFlags, SimpleReply};

/// Most iovecs in one `writev` (Linux's `IOV_MAX`).
pub(crate) const IOV_MAX: usize = 1024;

enum Seg<'a> {
    Own(Range<usize>),
    Data(&'a [u8]),
}

/// One reply (a simple reply, or all the chunks of a structured one).
pub(crate) struct ReplyBuf<'a> {
    mode: Mode,
    cookie: u64,
    /// The request's offset, echoed by extended chunk headers.
    offset: u64,
    bytes: Vec<u8>,
    segs: Vec<Seg<'a>>,
}

impl<'a> ReplyBuf<'a> {
    pub(crate) fn new(mode: Mode, cookie: u64, offset: u64) -> ReplyBuf<'a> {
        ReplyBuf {
            mode,
            cookie,
            offset,
            bytes: Vec::with_capacity(64),
            segs: Vec::new(),
        }
    }

    fn own(&mut self, start: usize) {
        let end = self.bytes.len();
        if end == start {
            return;
        }
        if let Some(Seg::Own(r)) = self.segs.last_mut() {
            if r.end == start {
                r.end = end;
                return;
            }
        }
        self.segs.push(Seg::Own(start..end));
    }

    /// A simple reply header, and `data` after it (a READ).
    pub(crate) fn simple(&mut self, error: Errno, data: Option<&'a [u8]>) {
        let start = self.bytes.len();
        SimpleReply {
            cookie: self.cookie,
            error,
        }
        .encode(&mut self.bytes);
        self.own(start);
        if let Some(d) = data.filter(|d| !d.is_empty()) {
            self.segs.push(Seg::Data(d));
        }
    }

    /// A chunk whose payload holds no borrowed data.
    pub(crate) fn chunk(&mut self, body: ChunkBody<'_>, done: bool) {
        let start = self.bytes.len();
        Chunk {
            cookie: self.cookie,
            flags: if done {
                ReplyFlags::DONE
            } else {
                ReplyFlags::empty()
            },
            offset: self.offset,
            body,
        }
        .encode(self.mode, &mut self.bytes);
        self.own(start);
    }

    /// An `OFFSET_DATA` chunk for `data` read at `offset`.
    pub(crate) fn data(&mut self, offset: u64, data: &'a [u8], done: bool) {
        let start = self.bytes.len();
        Chunk {
            cookie: self.cookie,
            flags: if done {
                ReplyFlags::DONE
            } else {
                ReplyFlags::empty()
            },
            offset: self.offset,
            body: ChunkBody::OffsetData { offset, data },
        }
        .encode_header(self.mode, &mut self.bytes);
        self.own(start);
        self.segs.push(Seg::Data(data));
    }

    /// The success reply of a command without data: a simple reply, or a
    /// `NONE` chunk under extended headers (where simple replies do not
    /// exist).
    pub(crate) fn ok(&mut self) {
        if self.mode == Mode::Extended {
            self.chunk(ChunkBody::None, true);
        } else {
            self.simple(Errno::OK, None);
        }
    }

    /// An error: a simple reply, or an `ERROR` chunk with `DONE` once
    /// structured replies are negotiated (as qemu-nbd).
    pub(crate) fn error(&mut self, error: Errno, message: &str) {
        if self.mode == Mode::Simple {
            self.simple(error, None);
        } else {
            let mut end = message.len().min(4096);
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            let message = &message[..end];
            self.chunk(ChunkBody::Error { error, message }, true);
        }
    }

    /// Appends the iovecs, in order, to `v`.
    pub(crate) fn push_iovecs<'s>(&'s self, v: &mut Vec<IoSlice<'s>>) {
        v.extend(self.segs.iter().map(|s| match s {
            Seg::Own(r) => IoSlice::new(&self.bytes[r.clone()]),
            Seg::Data(d) => IoSlice::new(d),
        }));
    }

    /// How many iovecs the reply takes.
    pub(crate) fn segments(&self) -> usize {
        self.segs.len()
    }

    /// The reply's length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.segs
            .iter()
            .map(|s| match s {
                Seg::Own(r) => r.len(),
                Seg::Data(d) => d.len(),
            })
            .sum()
    }

    /// Appends the whole reply's bytes to `out`.
    pub(crate) fn append_to(&self, out: &mut Vec<u8>) {
        for s in &self.segs {
            match s {
                Seg::Own(r) => out.extend_from_slice(&self.bytes[r.clone()]),
                Seg::Data(d) => out.extend_from_slice(d),
            }
        }
    }
}
