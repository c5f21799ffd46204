//! Byte-level helpers: a bounds-checked big-endian reader, string checks,
//! and [`WireList`], a list that is either borrowed from the wire or from
//! the caller's slice (so that decoding never allocates).

use std::fmt;

use super::error::StringError;

/// A big-endian cursor over a byte slice whose reads fail instead of
/// panicking when the slice is too short.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let b = self.bytes(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Some(a)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }
}

/// Read a big-endian u32 at `at` of a slice known to be long enough.
pub(crate) fn be32(buf: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&buf[at..at + 4]);
    u32::from_be_bytes(a)
}

/// Read a big-endian u64 at `at` of a slice known to be long enough.
pub(crate) fn be64(buf: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Read a big-endian u16 at `at` of a slice known to be long enough.
pub(crate) fn be16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

/// Check a protocol string: UTF-8, no NUL, at most `max` bytes.
pub(crate) fn check_str(bytes: &[u8], max: u32) -> Result<&str, StringError> {
    if bytes.len() as u64 > u64::from(max) {
        return Err(StringError::TooLong {
            length: bytes.len() as u64,
            max,
        });
    }
    let s = std::str::from_utf8(bytes).map_err(|_| StringError::NotUtf8)?;
    if bytes.contains(&0) {
        return Err(StringError::ContainsNul);
    }
    Ok(s)
}

/// Append a u32 length followed by the string.
pub(crate) fn put_lstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A fixed-size item of a [`WireList`].
pub trait WireItem: Copy + fmt::Debug + PartialEq {
    /// Encoded size in bytes.
    const SIZE: usize;
    /// Decode from exactly `SIZE` bytes.
    fn decode(bytes: &[u8]) -> Self;
    /// Append the encoding.
    fn encode(&self, out: &mut Vec<u8>);
}

impl WireItem for u16 {
    const SIZE: usize = 2;
    fn decode(bytes: &[u8]) -> Self {
        be16(bytes, 0)
    }
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
}

impl WireItem for u32 {
    const SIZE: usize = 4;
    fn decode(bytes: &[u8]) -> Self {
        be32(bytes, 0)
    }
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
}

/// A list of fixed-size items: either the raw bytes of a decoded message
/// (a multiple of `T::SIZE`, checked by the decoder) or a slice the caller
/// built for encoding. Both compare equal when their items are equal.
#[derive(Clone, Copy)]
pub enum WireList<'a, T: WireItem> {
    /// Items still in wire format, borrowed from the input.
    Wire(&'a [u8]),
    /// Items given by the caller.
    Items(&'a [T]),
}

impl<'a, T: WireItem> WireList<'a, T> {
    /// Wrap raw wire bytes; `None` if their length is not a multiple of
    /// the item size.
    pub fn from_wire(bytes: &'a [u8]) -> Option<Self> {
        (bytes.len() % T::SIZE == 0).then_some(WireList::Wire(bytes))
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        match self {
            WireList::Wire(b) => b.len() / T::SIZE,
            WireList::Items(s) => s.len(),
        }
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The item at `i`, if any.
    pub fn get(&self, i: usize) -> Option<T> {
        match self {
            WireList::Wire(b) => b.chunks_exact(T::SIZE).nth(i).map(T::decode),
            WireList::Items(s) => s.get(i).copied(),
        }
    }

    /// Iterate over the items.
    pub fn iter(&self) -> impl Iterator<Item = T> + 'a {
        let (wire, items): (&'a [u8], &'a [T]) = match *self {
            WireList::Wire(b) => (b, &[]),
            WireList::Items(s) => (&[], s),
        };
        wire.chunks_exact(T::SIZE)
            .map(T::decode)
            .chain(items.iter().copied())
    }

    /// Encoded size in bytes.
    pub fn wire_len(&self) -> usize {
        self.len() * T::SIZE
    }

    /// Append the encoded items.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            WireList::Wire(b) => out.extend_from_slice(b),
            WireList::Items(s) => s.iter().for_each(|i| i.encode(out)),
        }
    }
}

impl<T: WireItem> PartialEq for WireList<'_, T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<T: WireItem + Eq> Eq for WireList<'_, T> {}

impl<T: WireItem> fmt::Debug for WireList<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}
