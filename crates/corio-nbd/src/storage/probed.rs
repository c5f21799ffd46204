//! A raw image whose format was probed (no `-f`): QEMU's "probed raw"
//! write restriction on the first sector.
//!
//! Had the image started with a qcow2 (or other) header, probing would
//! have opened it as that format; so a client must not be able to write
//! such a header into a probed raw image, or the next probe would open it
//! as qcow2 and follow whatever backing file name the client chose (a way
//! to read any file the server can). QEMU's raw driver refuses, with
//! `EPERM`, a write to the first 512 bytes after which those bytes would
//! probe as another format; this wrapper does the same, for writes, zeroing
//! and TRIM alike (zeroing three bytes of `QEDx` leaves `QED\0`, QED's
//! magic). QEMU sees every such request as a read-modify-write of the whole
//! sector (a probed image has 512-byte alignment); a client that did not
//! ask for block sizes may send a partial one here, so every request that
//! touches the first sector is checked against what the sector will hold,
//! and such requests run one at a time (a `CoMutex`): two partial writes
//! in flight at once must not each pass against the old sector and land
//! together as a header.

use std::io;

use corio::sync::{CoMutex, CoMutexGuard};

use super::{Capabilities, Extent, Storage, ZeroFlags};

/// Bytes the probe looks at (QEMU's `BLOCK_PROBE_BUF_SIZE`).
pub const PROBE_BYTES: u64 = 512;

/// Magic numbers that make a probe pick another format than raw, with
/// the format's name.
pub const FORMAT_MAGICS: &[(&[u8], &str)] = &[
    (b"QFI\xfb\0\0\0\x01", "qcow"),
    (b"QFI\xfb", "qcow2"),
    (b"KDMV", "vmdk"),
    (b"# Disk DescriptorFile", "vmdk"),
    (b"vhdxfile", "vhdx"),
    (b"conectix", "vpc"),
    (b"QED\0", "qed"),
    (b"LUKS\xba\xbe", "luks"),
    (b"WithoutFreeSpace", "parallels"),
    (b"WithouFreSpacExt", "parallels"),
];

/// The format `head` (the first bytes of an image) probes as, other than
/// raw.
pub fn probe(head: &[u8]) -> Option<&'static str> {
    FORMAT_MAGICS
        .iter()
        .find(|(m, _)| head.starts_with(m))
        .map(|&(_, name)| name)
}

/// A storage whose first sector may not be written to look like another
/// format.
#[derive(Debug)]
pub struct ProbedRaw<S> {
    inner: S,
    /// Held from the check to the end of a request that touches the first
    /// sector.
    head: CoMutex<()>,
}

impl<S: Storage> ProbedRaw<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> ProbedRaw<S> {
        ProbedRaw {
            inner,
            head: CoMutex::new(()),
        }
    }

    /// The first-sector lock if `[offset, offset + len)` touches the first
    /// sector. A coroutine waits in the `CoMutex`; a plain thread (tests,
    /// tools) spins on `try_lock`, since its storage calls do not yield.
    fn lock_head(&self, offset: u64, len: u64) -> Option<CoMutexGuard<'_, ()>> {
        if offset >= PROBE_BYTES || len == 0 {
            return None;
        }
        if corio::in_coroutine() {
            return Some(self.head.lock());
        }
        loop {
            if let Some(g) = self.head.try_lock() {
                return Some(g);
            }
            std::thread::yield_now();
        }
    }

    /// `EPERM` if zeroing `[offset, offset + len)` would make the first
    /// sector probe as another format.
    fn check_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let n = PROBE_BYTES.min(self.inner.size());
        let end = offset.saturating_add(len).min(n);
        if offset >= end {
            return Ok(());
        }
        self.check(offset, &vec![0; (end - offset) as usize])
    }

    /// `EPERM` if writing `data` at `offset` would make the first sector
    /// probe as another format.
    fn check(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if offset >= PROBE_BYTES || data.is_empty() {
            return Ok(());
        }
        let n = PROBE_BYTES.min(self.inner.size()) as usize;
        let mut head = if offset == 0 && data.len() >= n {
            data[..n].to_vec()
        } else {
            // A partial write: what the sector would hold after it.
            let mut head = self.inner.read_at(0, vec![0; n])?;
            let at = offset as usize;
            let k = (n - at).min(data.len());
            head[at..at + k].copy_from_slice(&data[..k]);
            head
        };
        head.truncate(n);
        match probe(&head) {
            None => Ok(()),
            Some(_) => Err(io::Error::from_raw_os_error(libc::EPERM)),
        }
    }
}

impl<S: Storage> Storage for ProbedRaw<S> {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn read_at(&self, offset: u64, buf: Vec<u8>) -> io::Result<Vec<u8>> {
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, data: Vec<u8>, fua: bool) -> io::Result<Vec<u8>> {
        let _head = self.lock_head(offset, data.len() as u64);
        self.check(offset, &data)?;
        self.inner.write_at(offset, data, fua)
    }

    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        // A trimmed range may read back as zeroes.
        let _head = self.lock_head(offset, len);
        self.check_zeroes(offset, len)?;
        self.inner.trim(offset, len, fua)
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
        let _head = self.lock_head(offset, len);
        self.check_zeroes(offset, len)?;
        self.inner.write_zeroes(offset, len, flags)
    }

    fn extents(&self, offset: u64, len: u64, max_extents: usize) -> io::Result<Vec<Extent>> {
        self.inner.extents(offset, len, max_extents)
    }

    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.cache(offset, len)
    }

    fn allocation_depth(
        &self,
        offset: u64,
        len: u64,
        max_extents: usize,
    ) -> io::Result<Vec<(u64, u32)>> {
        self.inner.allocation_depth(offset, len, max_extents)
    }

    fn read_mapped(&self, offset: u64, buf: Vec<u8>) -> io::Result<(Vec<u8>, Vec<Extent>)> {
        self.inner.read_mapped(offset, buf)
    }

    fn disconnected(&self) -> io::Result<()> {
        self.inner.disconnected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStorage;

    #[test]
    fn a_header_in_sector_0_is_refused_other_writes_pass() {
        let st = ProbedRaw::new(MemoryStorage::new(1 << 20, false));
        let mut qcow2 = vec![0u8; 512];
        qcow2[..4].copy_from_slice(b"QFI\xfb");
        let e = st.write_at(0, qcow2.clone(), false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        // The same bytes elsewhere are data like any other.
        st.write_at(4096, qcow2, false).unwrap();
        // A partial write that completes a magic already half there.
        st.write_at(0, b"QF".to_vec(), false).unwrap();
        let e = st.write_at(2, b"I\xfb".to_vec(), false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        st.write_at(2, b"xx".to_vec(), false).unwrap();
        assert_eq!(st.read_at(0, vec![0; 4]).unwrap(), b"QFxx");
    }

    /// Zeroing or trimming three bytes of `QEDx` would leave QED's magic.
    #[test]
    fn zeroes_and_trim_that_complete_a_magic_are_refused() {
        let st = ProbedRaw::new(MemoryStorage::new(1 << 20, false));
        st.write_at(0, b"QEDx".to_vec(), false).unwrap();
        let flags = ZeroFlags::default();
        let e = st.write_zeroes(3, 1, flags).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        let e = st.trim(3, 1, false).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        assert_eq!(st.read_at(0, vec![0; 4]).unwrap(), b"QEDx");
        // Zeroing the whole magic, or past the first sector, is fine.
        st.write_zeroes(0, 4, flags).unwrap();
        st.write_at(0, b"QEDx".to_vec(), false).unwrap();
        st.write_zeroes(512, 4096, flags).unwrap();
        st.trim(0, 1 << 20, false).unwrap();
        assert_eq!(st.read_at(0, vec![0; 4]).unwrap(), [0; 4]);
    }

    /// A storage whose reads yield to the loop before they return, as a
    /// file's do when the thread pool's answer comes back.
    #[derive(Debug)]
    struct YieldingReads(MemoryStorage);

    impl Storage for YieldingReads {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn capabilities(&self) -> Capabilities {
            self.0.capabilities()
        }
        fn read_at(&self, offset: u64, buf: Vec<u8>) -> io::Result<Vec<u8>> {
            let data = self.0.read_at(offset, buf);
            if corio::in_coroutine() {
                corio::yield_to_loop();
            }
            data
        }
        fn write_at(&self, offset: u64, data: Vec<u8>, fua: bool) -> io::Result<Vec<u8>> {
            self.0.write_at(offset, data, fua)
        }
        fn flush(&self) -> io::Result<()> {
            self.0.flush()
        }
        fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
            self.0.trim(offset, len, fua)
        }
        fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> io::Result<()> {
            self.0.write_zeroes(offset, len, flags)
        }
        fn extents(&self, offset: u64, len: u64, max: usize) -> io::Result<Vec<Extent>> {
            self.0.extents(offset, len, max)
        }
        fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
            self.0.cache(offset, len)
        }
        fn allocation_depth(&self, o: u64, l: u64, m: usize) -> io::Result<Vec<(u64, u32)>> {
            self.0.allocation_depth(o, l, m)
        }
    }

    /// Two partial writes in flight at once, each harmless against the old
    /// sector, together a qcow2 magic: the second must see the first.
    #[test]
    fn concurrent_partial_writes_are_checked_one_after_the_other() {
        use std::sync::Arc;
        use std::time::{Duration, Instant};

        let ctx = corio::AioContext::new().unwrap();
        let st = Arc::new(ProbedRaw::new(YieldingReads(MemoryStorage::new(
            1 << 20,
            false,
        ))));
        let (a, b) = (st.clone(), st.clone());
        let ha = ctx.spawn(move || a.write_at(0, b"QF".to_vec(), false).map(drop));
        let hb = ctx.spawn(move || b.write_at(2, b"I\xfb".to_vec(), false).map(drop));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(ha.is_finished() && hb.is_finished()) {
            assert!(Instant::now() < deadline, "the two writes never finished");
            ctx.poll(false);
        }
        let (ra, rb) = (ha.join().unwrap(), hb.join().unwrap());
        assert!(ra.is_ok(), "the first write is harmless: {ra:?}");
        assert_eq!(rb.unwrap_err().raw_os_error(), Some(libc::EPERM));
        assert_eq!(st.read_at(0, vec![0; 4]).unwrap(), b"QF\0\0");
    }
}
