//! What the server checks in a qcow2 header (and in its backing chain)
//! before imago opens it.
//!
//! imago serves what it can parse, and some of what it does not refuse
//! would be served wrong: an encrypted image "opens" and reads as
//! ciphertext. What it does refuse (the dirty bit, zstd compression,
//! extended L2 entries) it refuses with a generic "unrecognized
//! incompatible feature", after having cleared the autoclear bits of a
//! writable image. So every layer is read here first, read-only, and
//! refused with a message that says what to do.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The qcow2 magic, `QFI\xfb`.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";

/// Incompatible feature bits (qcow2 spec, "incompatible_features").
mod incompat {
    pub const DIRTY: u64 = 1 << 0;
    pub const CORRUPT: u64 = 1 << 1;
    pub const DATA_FILE: u64 = 1 << 2;
    pub const COMPRESSION: u64 = 1 << 3;
    pub const EXTL2: u64 = 1 << 4;
}

/// Header extension types this module reads.
const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// The header fields the server uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 (compat=0.10) or 3 (compat=1.1).
    pub version: u32,
    /// Bytes per cluster.
    pub cluster_size: u64,
    /// Virtual disk size.
    pub size: u64,
    /// 0 none, 1 AES, 2 LUKS.
    pub crypt_method: u32,
    /// Incompatible feature bits (0 for version 2).
    pub incompatible: u64,
    /// 0 zlib, 1 zstd (version 3 with a long enough header).
    pub compression_type: u8,
    /// The backing file name as written in the header.
    pub backing_file: Option<String>,
    /// The backing format extension ("qcow2", "raw"), if any.
    pub backing_format: Option<String>,
    /// The external data file name extension, if any.
    pub data_file: Option<String>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("'{}': {what}", path.display()),
    )
}

impl Header {
    /// Parses the first cluster of a qcow2 file (`head`, at least the
    /// header; extensions past its end are ignored).
    ///
    /// # Errors
    /// If `head` is not a qcow2 header this module can read.
    pub fn parse(path: &Path, head: &[u8]) -> io::Result<Header> {
        if head.len() < 72 || head[..4] != MAGIC {
            return Err(invalid(path, "not a qcow2 image (no QFI\\xfb magic)"));
        }
        let version = be32(head, 4);
        if version != 2 && version != 3 {
            return Err(invalid(
                path,
                format!("qcow2 version {version} is not supported (only 2 and 3)"),
            ));
        }
        let cluster_bits = be32(head, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(invalid(
                path,
                format!("invalid cluster_bits {cluster_bits}"),
            ));
        }
        let mut h = Header {
            version,
            cluster_size: 1 << cluster_bits,
            size: be64(head, 24),
            crypt_method: be32(head, 32),
            incompatible: 0,
            compression_type: 0,
            backing_file: None,
            backing_format: None,
            data_file: None,
        };
        let mut header_len = 72usize;
        if version == 3 {
            if head.len() < 104 {
                return Err(invalid(path, "qcow2 v3 header is truncated"));
            }
            h.incompatible = be64(head, 72);
            header_len = be32(head, 100) as usize;
            if header_len > 104 && head.len() > 104 {
                h.compression_type = head[104];
            }
        }
        let (boff, blen) = (be64(head, 8) as usize, be32(head, 16) as usize);
        if boff != 0 {
            let name = head
                .get(boff..boff.saturating_add(blen))
                .ok_or_else(|| invalid(path, "backing file name lies outside the header"))?;
            h.backing_file = Some(String::from_utf8_lossy(name).into_owned());
        }
        h.backing_format = extension(head, header_len.max(72), EXT_BACKING_FORMAT);
        h.data_file = extension(head, header_len.max(72), EXT_DATA_FILE);
        Ok(h)
    }

    /// Reads and parses the header of the file at `path`.
    ///
    /// # Errors
    /// If it cannot be read or is no qcow2 header.
    pub fn read(path: &Path) -> io::Result<Header> {
        let mut head = vec![0u8; 64 * 1024];
        let mut f = File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("'{}': {e}", path.display())))?;
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..])? {
                0 => break,
                k => n += k,
            }
        }
        head.truncate(n);
        Header::parse(path, &head)
    }

    /// Refuses what the server cannot serve correctly, with what to do
    /// about it.
    ///
    /// # Errors
    /// A message naming the image and the feature.
    pub fn check_supported(&self, path: &Path) -> io::Result<()> {
        let p = path.display();
        let unsupported = |msg: String| Err(io::Error::new(io::ErrorKind::Unsupported, msg));
        if self.crypt_method != 0 {
            let kind = match self.crypt_method {
                1 => "AES",
                2 => "LUKS",
                _ => "an unknown method",
            };
            return unsupported(format!(
                "'{p}' is encrypted ({kind}): corio-nbd cannot decrypt qcow2 images and \
                 would serve the ciphertext; serve it with qemu-nbd and a secret object, or \
                 decrypt it first (qemu-img convert -O qcow2 with --object secret,...)"
            ));
        }
        let f = self.incompatible;
        if f & incompat::CORRUPT != 0 {
            return unsupported(format!(
                "'{p}' is marked corrupt; repair it with 'qemu-img check -r all {p}'"
            ));
        }
        if f & incompat::DIRTY != 0 {
            return unsupported(format!(
                "'{p}' has the dirty bit set (lazy refcounts; it was not closed cleanly) and \
                 imago cannot repair its refcounts; run 'qemu-img check -r all {p}' first"
            ));
        }
        if f & incompat::COMPRESSION != 0 || self.compression_type != 0 {
            let name = if self.compression_type == 1 {
                "zstd".to_owned()
            } else {
                format!("type {}", self.compression_type)
            };
            return unsupported(format!(
                "'{p}' uses {name} compression, which imago cannot read; convert it with \
                 'qemu-img convert -O qcow2 -o compression_type=zlib'"
            ));
        }
        if f & incompat::EXTL2 != 0 {
            return unsupported(format!(
                "'{p}' uses extended L2 entries (subclusters), which imago does not support; \
                 convert it with 'qemu-img convert -O qcow2 -o extended_l2=off'"
            ));
        }
        let known = incompat::DIRTY
            | incompat::CORRUPT
            | incompat::DATA_FILE
            | incompat::COMPRESSION
            | incompat::EXTL2;
        if f & !known != 0 {
            return unsupported(format!(
                "'{p}' has unknown incompatible qcow2 features {:#x}",
                f & !known
            ));
        }
        Ok(())
    }

    /// Whether the image can record zero clusters (version 3).
    pub fn zero_clusters(&self) -> bool {
        self.version >= 3
    }
}

/// The header extension of type `want`, as text, if present.
fn extension(head: &[u8], mut at: usize, want: u32) -> Option<String> {
    while at + 8 <= head.len() {
        let kind = be32(head, at);
        let len = be32(head, at + 4) as usize;
        let data = head.get(at + 8..at + 8 + len)?;
        match kind {
            EXT_END => return None,
            k if k == want => return Some(String::from_utf8_lossy(data).into_owned()),
            _ => at += 8 + len.next_multiple_of(8),
        }
    }
    None
}

/// Where a backing file name points, relative to the image's directory
/// (as QEMU resolves it).
pub fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.to_owned();
    }
    image.parent().unwrap_or(Path::new(".")).join(p)
}

/// What [`check_chain`] found.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The top image's header.
    pub top: Header,
    /// The raw file at the bottom of the chain, if it ends in one, as
    /// imago names it (relative names joined to the directory of the
    /// image naming them).
    pub raw_backing: Option<PathBuf>,
    /// Every file the image reads or writes: the images of the chain,
    /// external data files, the raw backing file. `None` when an image
    /// needs an external data file whose name its header does not give.
    pub files: Option<Vec<PathBuf>>,
}

/// Checks `path` and every qcow2 image of its backing chain.
///
/// # Errors
/// The first refusal (see [`Header::check_supported`]), a backing file
/// that cannot be read, or a chain longer than 64 (a loop).
pub fn check_chain(path: &Path) -> io::Result<Chain> {
    let top = Header::read(path)?;
    top.check_supported(path)?;
    let mut files = Some(Vec::new());
    let mut cur = top.clone();
    let mut cur_path = path.to_owned();
    for _ in 0..64 {
        note_files(&mut files, &cur, &cur_path);
        let Some(name) = cur.backing_file.clone() else {
            return Ok(Chain {
                top,
                raw_backing: None,
                files,
            });
        };
        let next = resolve_backing(&cur_path, &name);
        let qcow2 = match cur.backing_format.as_deref() {
            Some("qcow2") => true,
            Some(_) => false,
            None => {
                let mut magic = [0u8; 4];
                File::open(&next)
                    .and_then(|mut f| f.read_exact(&mut magic))
                    .map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!(
                                "backing file '{}' of '{}': {e}",
                                next.display(),
                                cur_path.display()
                            ),
                        )
                    })?;
                magic == MAGIC
            }
        };
        if !qcow2 {
            if let Some(f) = files.as_mut() {
                f.push(next.clone());
            }
            return Ok(Chain {
                top,
                raw_backing: Some(next),
                files,
            });
        }
        cur = Header::read(&next)?;
        cur.check_supported(&next)?;
        cur_path = next;
    }
    Err(invalid(
        path,
        "backing chain longer than 64 images (a loop?)",
    ))
}

/// Adds `image` and its external data file to `files`.
fn note_files(files: &mut Option<Vec<PathBuf>>, h: &Header, image: &Path) {
    let Some(f) = files.as_mut() else {
        return;
    };
    f.push(image.to_owned());
    if h.incompatible & incompat::DATA_FILE != 0 {
        match &h.data_file {
            Some(name) => f.push(resolve_backing(image, name)),
            None => *files = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(version: u32, crypt: u32, incompat: u64) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(&MAGIC);
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        h[32..36].copy_from_slice(&crypt.to_be_bytes());
        h[72..80].copy_from_slice(&incompat.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        h
    }

    fn refusal(h: &[u8]) -> String {
        let p = Path::new("x.qcow2");
        Header::parse(p, h)
            .unwrap()
            .check_supported(p)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn each_refusal_names_the_feature_and_the_remedy() {
        assert!(refusal(&header(3, 2, 0)).contains("encrypted (LUKS)"));
        assert!(refusal(&header(2, 1, 0)).contains("encrypted (AES)"));
        assert!(refusal(&header(3, 0, 1)).contains("qemu-img check -r all x.qcow2"));
        assert!(refusal(&header(3, 0, 1 << 4)).contains("extended L2"));
        let mut z = header(3, 0, 1 << 3);
        z[104] = 1;
        assert!(refusal(&z).contains("zstd"));
        assert!(refusal(&header(3, 0, 1 << 9)).contains("0x200"));
    }

    #[test]
    fn plain_images_pass_and_v2_has_no_zero_clusters() {
        let p = Path::new("x.qcow2");
        let h = Header::parse(p, &header(2, 0, 0)).unwrap();
        h.check_supported(p).unwrap();
        assert!(!h.zero_clusters());
        assert_eq!(h.size, 1 << 30);
        assert_eq!(h.cluster_size, 65536);
        let h = Header::parse(p, &header(3, 0, 1 << 2)).unwrap();
        h.check_supported(p).unwrap();
        assert!(h.zero_clusters());
    }

    #[test]
    fn backing_names_resolve_against_the_image_directory() {
        let img = Path::new("/a/b/top.qcow2");
        assert_eq!(resolve_backing(img, "base.raw"), Path::new("/a/b/base.raw"));
        assert_eq!(resolve_backing(img, "/c/base"), Path::new("/c/base"));
    }
}
