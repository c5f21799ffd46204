//! A raw NBD client over a unix socket, byte by byte from the protocol
//! document (NetworkBlockDevice/nbd `doc/proto.md`), independent of
//! `corio_nbd::proto` so that it checks the server, not our codec. Every read
//! has a timeout: a server that does not answer fails the test.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// "NBDMAGIC", the first word a server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT", fixed newstyle's second word and every option's prefix.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// The magic of an option reply.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Client flags: fixed newstyle, no zeroes.
pub const CLIENT_FLAGS: u32 = 1 | 2;

/// Option codes.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

/// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;

/// Request and reply magics of the transmission phase.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const EXT_REQUEST_MAGIC: u32 = 0x21e4_1c71;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
pub const EXT_REPLY_MAGIC: u32 = 0x6e8a_278c;

/// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;

/// How long any one read from the server may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One option reply.
#[derive(Debug)]
pub struct OptReply {
    /// The option it answers.
    pub option: u32,
    /// `REP_*`.
    pub kind: u32,
    /// The reply's payload.
    pub data: Vec<u8>,
}

/// A raw client connection.
pub struct Raw {
    /// The socket; tests may write garbage to it directly.
    pub sock: UnixStream,
}

impl Raw {
    /// Connects to the unix socket at `path`.
    pub fn connect(path: &Path) -> Raw {
        let sock = UnixStream::connect(path).expect("connect to the server's unix socket");
        sock.set_read_timeout(Some(READ_TIMEOUT))
            .expect("set read timeout");
        Raw { sock }
    }

    /// Reads exactly `n` bytes.
    pub fn read_n(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; n];
        self.sock.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// Reads the 18-byte greeting and checks it is fixed newstyle.
    pub fn greeting(&mut self) {
        let g = self.read_n(18).expect("read the server greeting");
        assert_eq!(be64(&g[0..8]), NBDMAGIC, "greeting starts with NBDMAGIC");
        assert_eq!(be64(&g[8..16]), IHAVEOPT, "server speaks newstyle");
        let flags = u16::from_be_bytes([g[16], g[17]]);
        assert!(flags & 1 != 0, "server sets FIXED_NEWSTYLE");
    }

    /// Greeting plus client flags: ready for options.
    pub fn negotiate(path: &Path) -> Raw {
        let mut raw = Raw::connect(path);
        raw.greeting();
        raw.send(&CLIENT_FLAGS.to_be_bytes());
        raw
    }

    /// Writes `bytes`.
    pub fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("write to the server");
    }

    /// Sends option `code` with payload `data`.
    pub fn option(&mut self, code: u32, data: &[u8]) {
        let mut msg = IHAVEOPT.to_be_bytes().to_vec();
        msg.extend_from_slice(&code.to_be_bytes());
        msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
        msg.extend_from_slice(data);
        self.send(&msg);
    }

    /// Reads one option reply.
    pub fn opt_reply(&mut self) -> OptReply {
        let h = self.read_n(20).expect("read an option reply header");
        assert_eq!(be64(&h[0..8]), REPLY_MAGIC, "option reply magic");
        let len = be32(&h[16..20]) as usize;
        OptReply {
            option: be32(&h[8..12]),
            kind: be32(&h[12..16]),
            data: self.read_n(len).expect("read an option reply payload"),
        }
    }

    /// Reads replies up to and including the final one (ACK or an error).
    pub fn opt_replies(&mut self) -> Vec<OptReply> {
        let mut all = Vec::new();
        loop {
            let r = self.opt_reply();
            let last = r.kind == REP_ACK || r.kind & 0x8000_0000 != 0;
            all.push(r);
            if last {
                return all;
            }
        }
    }

    /// `NBD_OPT_GO` for `name` with no info requests; returns the replies.
    pub fn go(&mut self, name: &str) -> Vec<OptReply> {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        self.option(OPT_GO, &data);
        self.opt_replies()
    }

    /// Whether the server has closed the connection: a read returns EOF
    /// or a reset (not a timeout) within [`READ_TIMEOUT`].
    pub fn closed_by_server(&mut self) -> bool {
        super::super::closed_by_server(&mut self.sock)
    }
}

/// The export size and transmission flags in an `NBD_INFO_EXPORT` reply.
pub fn info_export(replies: &[OptReply]) -> Option<(u64, u16)> {
    replies.iter().find_map(|r| {
        (r.kind == REP_INFO && r.data.len() == 12 && r.data[0..2] == [0, 0]).then(|| {
            (
                be64(&r.data[2..10]),
                u16::from_be_bytes([r.data[10], r.data[11]]),
            )
        })
    })
}

/// A big-endian u64 from 8 bytes.
pub fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().expect("8 bytes"))
}

/// A big-endian u32 from 4 bytes.
pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().expect("4 bytes"))
}
