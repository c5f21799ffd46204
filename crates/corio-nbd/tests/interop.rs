//! Byte compatibility with real clients: a server played with the codec
//! alone, over blocking std sockets, serving a canned export from memory,
//! while `nbdinfo --json` and `qemu-img info` connect.
//!
//! Each test skips (with a message) only if its client is not installed;
//! CI installs them (`apt-get install -y libnbd-bin qemu-utils`).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command as Process;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use corio_nbd::proto::*;

const EXPORT_NAME: &str = "corio-canned";
const DESCRIPTION: &str = "a canned export served by the codec test";
const EXPORT_SIZE: u64 = 12 * 1024;
const CONTEXT_ID: u32 = 1;

/// What the server saw, for the test to check.
#[derive(Default)]
struct Log {
    options: Vec<String>,
    requests: Vec<String>,
    errors: Vec<String>,
}

fn export_data() -> Vec<u8> {
    (0..EXPORT_SIZE).map(|i| (i % 251) as u8).collect()
}

/// Read until the decoder has a whole message; `Ok(false)` on a clean EOF
/// between messages.
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> io::Result<bool> {
    let start = buf.len();
    buf.resize(start + n, 0);
    match stream.read_exact(&mut buf[start..]) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

struct Conn {
    stream: TcpStream,
    log: Arc<Mutex<Log>>,
    data: Arc<Vec<u8>>,
    mode: Mode,
    meta: bool,
    out: Vec<u8>,
}

impl Conn {
    fn send(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    fn option_reply(&mut self, option: u32, body: OptionReplyBody<'_>) {
        OptionReply { option, body }.encode(&mut self.out);
    }

    fn tflags(&self) -> TransmissionFlags {
        let mut f = TransmissionFlags::HAS_FLAGS
            | TransmissionFlags::READ_ONLY
            | TransmissionFlags::SEND_FLUSH
            | TransmissionFlags::SEND_CACHE;
        if self.mode >= Mode::Structured {
            f |= TransmissionFlags::SEND_DF;
        }
        f
    }

    /// Answer one option; `Ok(true)` when transmission starts.
    fn handle_option(&mut self, req: &OptionRequest<'_>) -> io::Result<Option<bool>> {
        let code = req.code();
        let err = |error, message| OptionReplyBody::Error { error, message };
        match req {
            OptionRequest::Abort => {
                self.option_reply(code, OptionReplyBody::Ack);
                self.send()?;
                return Ok(None);
            }
            OptionRequest::List => {
                let body = OptionReplyBody::Server {
                    name: EXPORT_NAME,
                    description: DESCRIPTION,
                };
                self.option_reply(code, body);
                self.option_reply(code, OptionReplyBody::Ack);
            }
            OptionRequest::StartTls => {
                self.option_reply(code, err(RepError::POLICY, "TLS not configured"))
            }
            OptionRequest::StructuredReply if self.mode == Mode::Simple => {
                self.mode = Mode::Structured;
                self.option_reply(code, OptionReplyBody::Ack);
            }
            OptionRequest::StructuredReply => {
                self.option_reply(code, err(RepError::INVALID, "already negotiated"))
            }
            OptionRequest::ExtendedHeaders if self.mode < Mode::Extended => {
                self.mode = Mode::Extended;
                self.option_reply(code, OptionReplyBody::Ack);
            }
            OptionRequest::ExtendedHeaders => {
                self.option_reply(code, err(RepError::INVALID, "already negotiated"))
            }
            OptionRequest::ListMetaContext(m) | OptionRequest::SetMetaContext(m) => {
                let set = matches!(req, OptionRequest::SetMetaContext(_));
                if set && self.mode == Mode::Simple {
                    self.option_reply(code, err(RepError::INVALID, "structured replies first"));
                } else if m.export != EXPORT_NAME {
                    self.option_reply(code, err(RepError::UNKNOWN, "no such export"));
                } else {
                    let wanted = (!set && m.queries.is_empty())
                        || m.queries
                            .iter()
                            .any(|q| q == BASE_ALLOCATION || (!set && q == "base:"));
                    if wanted {
                        let id = if set { CONTEXT_ID } else { 0 };
                        self.option_reply(
                            code,
                            OptionReplyBody::MetaContext {
                                id,
                                name: BASE_ALLOCATION,
                            },
                        );
                    }
                    if set {
                        self.meta = wanted;
                    }
                    self.option_reply(code, OptionReplyBody::Ack);
                }
            }
            OptionRequest::Info(q) | OptionRequest::Go(q) => {
                if q.name != EXPORT_NAME {
                    self.option_reply(code, err(RepError::UNKNOWN, "no such export"));
                } else {
                    if q.requests.iter().any(|r| r == info::NAME) {
                        self.option_reply(code, OptionReplyBody::Info(Info::Name(EXPORT_NAME)));
                    }
                    self.option_reply(code, OptionReplyBody::Info(Info::Description(DESCRIPTION)));
                    let bs = Info::BlockSize {
                        min: 1,
                        preferred: 4096,
                        max: Limits::NBD_MAX_BUFFER_SIZE,
                    };
                    self.option_reply(code, OptionReplyBody::Info(bs));
                    let ex = Info::Export {
                        size: EXPORT_SIZE,
                        flags: self.tflags(),
                    };
                    self.option_reply(code, OptionReplyBody::Info(ex));
                    self.option_reply(code, OptionReplyBody::Ack);
                    if matches!(req, OptionRequest::Go(_)) {
                        self.send()?;
                        return Ok(Some(true));
                    }
                }
            }
            OptionRequest::ExportName(name) => {
                if *name != EXPORT_NAME {
                    return Ok(None); // no way to say no but hanging up
                }
                ExportNameReply {
                    size: EXPORT_SIZE,
                    flags: self.tflags(),
                    zeroes: false,
                }
                .encode(&mut self.out);
                self.send()?;
                return Ok(Some(true));
            }
        }
        self.send()?;
        Ok(Some(false))
    }

    fn reply_error(&mut self, cookie: u64, offset: u64, errno: Errno) {
        match self.mode {
            Mode::Simple => SimpleReply {
                cookie,
                error: errno,
            }
            .encode(&mut self.out),
            m => Chunk {
                cookie,
                flags: ReplyFlags::DONE,
                offset,
                body: ChunkBody::Error {
                    error: errno,
                    message: "refused",
                },
            }
            .encode(m, &mut self.out),
        }
    }

    fn reply_ok(&mut self, cookie: u64, offset: u64) {
        match self.mode {
            Mode::Extended => Chunk {
                cookie,
                flags: ReplyFlags::DONE,
                offset,
                body: ChunkBody::None,
            }
            .encode(Mode::Extended, &mut self.out),
            _ => SimpleReply {
                cookie,
                error: Errno::OK,
            }
            .encode(&mut self.out),
        }
    }

    /// Answer one request; `false` on DISC.
    fn handle_request(&mut self, r: &Request) -> bool {
        let in_range = r.offset <= EXPORT_SIZE && r.length <= EXPORT_SIZE - r.offset;
        match r.command {
            Command::Disc => return false,
            Command::Read if !in_range => self.reply_error(r.cookie, r.offset, Errno::EINVAL),
            Command::Read => {
                let data = Arc::clone(&self.data);
                let bytes = &data[r.offset as usize..(r.offset + r.length) as usize];
                match self.mode {
                    Mode::Simple => {
                        SimpleReply {
                            cookie: r.cookie,
                            error: Errno::OK,
                        }
                        .encode(&mut self.out);
                        self.out.extend_from_slice(bytes);
                    }
                    m if bytes.is_empty() => self.reply_ok_chunk(m, r),
                    m => Chunk {
                        cookie: r.cookie,
                        flags: ReplyFlags::DONE,
                        offset: r.offset,
                        body: ChunkBody::OffsetData {
                            offset: r.offset,
                            data: bytes,
                        },
                    }
                    .encode(m, &mut self.out),
                }
            }
            Command::BlockStatus if !self.meta || r.offset >= EXPORT_SIZE || r.length == 0 => {
                self.reply_error(r.cookie, r.offset, Errno::EINVAL)
            }
            Command::BlockStatus => {
                let len = r.length.min(EXPORT_SIZE - r.offset);
                let ext = [ExtentExt {
                    length: len,
                    flags: 0,
                }];
                let cmp = [Extent {
                    length: len as u32,
                    flags: 0,
                }];
                let body_ext = if self.mode == Mode::Extended {
                    ChunkBody::BlockStatusExt {
                        context_id: CONTEXT_ID,
                        extents: WireList::Items(&ext),
                    }
                } else {
                    ChunkBody::BlockStatus {
                        context_id: CONTEXT_ID,
                        extents: WireList::Items(&cmp),
                    }
                };
                Chunk {
                    cookie: r.cookie,
                    flags: ReplyFlags::DONE,
                    offset: r.offset,
                    body: body_ext,
                }
                .encode(self.mode, &mut self.out);
            }
            Command::Flush | Command::Cache => self.reply_ok(r.cookie, r.offset),
            Command::Write | Command::Trim | Command::WriteZeroes => {
                self.reply_error(r.cookie, r.offset, Errno::EPERM)
            }
        }
        true
    }

    fn reply_ok_chunk(&mut self, m: Mode, r: &Request) {
        Chunk {
            cookie: r.cookie,
            flags: ReplyFlags::DONE,
            offset: r.offset,
            body: ChunkBody::None,
        }
        .encode(m, &mut self.out)
    }
}

/// Serve one connection with the codec alone.
fn serve(stream: TcpStream, log: Arc<Mutex<Log>>, data: Arc<Vec<u8>>) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.set_write_timeout(Some(Duration::from_secs(20)))?;
    stream.set_nodelay(true)?;
    let offered = HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES;
    let mut c = Conn {
        stream,
        log,
        data,
        mode: Mode::Simple,
        meta: false,
        out: Vec::new(),
    };
    Greeting { flags: offered }.encode(&mut c.out);
    c.send()?;
    let mut dec = ServerDecoder::new(offered, Limits::default());
    let mut buf = Vec::new();
    loop {
        let (consumed, keep_going) = match dec.decode(&buf) {
            Ok(Decoded::NeedMore(n)) => {
                if !fill(&mut c.stream, &mut buf, n)? {
                    buf.truncate(buf.len() - n);
                    if let Err(e) = dec.end_of_input(&buf) {
                        c.log.lock().unwrap().errors.push(e.to_string());
                    }
                    return Ok(());
                }
                continue;
            }
            Ok(Decoded::Complete { msg, consumed }) => match msg {
                ClientMessage::Flags(f) => {
                    c.log.lock().unwrap().options.push(format!("{f:?}"));
                    (consumed, true)
                }
                ClientMessage::Option(o) => {
                    c.log.lock().unwrap().options.push(format!("{o:?}"));
                    match c.handle_option(&o)? {
                        None => return Ok(()),
                        Some(true) => {
                            dec.start_transmission(c.mode);
                            (consumed, true)
                        }
                        Some(false) => (consumed, true),
                    }
                }
                ClientMessage::Request(r) => {
                    c.log.lock().unwrap().requests.push(format!("{r:?}"));
                    let go_on = c.handle_request(&r);
                    c.send()?;
                    (consumed, go_on)
                }
            },
            Err(e) => {
                c.log.lock().unwrap().errors.push(e.to_string());
                match e.action() {
                    ErrorAction::ReplyOption {
                        option,
                        error,
                        consumed,
                    } => {
                        c.option_reply(
                            option,
                            OptionReplyBody::Error {
                                error,
                                message: "bad option",
                            },
                        );
                        c.send()?;
                        (consumed, true)
                    }
                    ErrorAction::ReplyError {
                        cookie,
                        errno,
                        consumed,
                        discard,
                    } => {
                        let mut sink = vec![0u8; discard as usize];
                        c.stream.read_exact(&mut sink)?;
                        c.reply_error(cookie, 0, errno);
                        c.send()?;
                        (consumed, true)
                    }
                    ErrorAction::ReplyErrorThenDisconnect { cookie, errno } => {
                        c.reply_error(cookie, 0, errno);
                        c.send()?;
                        return Ok(());
                    }
                    _ => return Ok(()),
                }
            }
        };
        buf.drain(..consumed);
        if !keep_going {
            return Ok(());
        }
    }
}

/// Start a server on a loopback port chosen by the OS.
fn start_server() -> (u16, Arc<Mutex<Log>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Log::default()));
    let data = Arc::new(export_data());
    let l2 = Arc::clone(&log);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { break };
            let (log, data) = (Arc::clone(&l2), Arc::clone(&data));
            thread::spawn(move || {
                if let Err(e) = serve(stream, Arc::clone(&log), data) {
                    log.lock().unwrap().errors.push(format!("I/O: {e}"));
                }
            });
        }
    });
    (port, log)
}

/// Whether `tool` runs; a missing client fails the test (CI installs them:
/// a test that skipped would pass without testing anything).
fn installed(tool: &str) -> bool {
    let ok = Process::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "`{tool}` is not installed (apt-get install libnbd-bin qemu-utils)"
    );
    ok
}

/// Run a client with a time bound (coreutils `timeout`).
fn run_client(args: &[&str]) -> (bool, String) {
    let out = Process::new("timeout")
        .arg("30")
        .args(args)
        .output()
        .expect("run timeout(1)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn dump(log: &Log) -> String {
    format!(
        "options:\n  {}\nrequests:\n  {}\nerrors:\n  {}",
        log.options.join("\n  "),
        log.requests.join("\n  "),
        log.errors.join("\n  ")
    )
}

#[test]
fn nbdinfo_json_sees_size_and_name() {
    if !installed("nbdinfo") {
        return;
    }
    let (port, log) = start_server();
    let uri = format!("nbd://127.0.0.1:{port}/{EXPORT_NAME}");
    let (ok, out) = run_client(&["nbdinfo", "--json", &uri]);
    let log = log.lock().unwrap();
    println!("{out}\n{}", dump(&log));
    assert!(ok, "nbdinfo failed:\n{out}");
    assert!(
        out.contains(&format!("\"export-size\": {EXPORT_SIZE}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("\"export-name\": \"{EXPORT_NAME}\"")),
        "{out}"
    );
    assert!(out.contains(DESCRIPTION), "{out}");
    assert!(log.errors.is_empty(), "decode errors: {:?}", log.errors);
    // libnbd sends fixed newstyle + no zeroes, then options ending in GO
    // for our name, asking for block sizes.
    assert_eq!(log.options[0], "ClientFlags(FIXED_NEWSTYLE | NO_ZEROES)");
    let go = log
        .options
        .iter()
        .find(|o| o.starts_with("Go("))
        .expect("a GO option");
    assert!(go.contains(&format!("name: \"{EXPORT_NAME}\"")), "{go}");
    assert!(go.contains(&info::BLOCK_SIZE.to_string()), "{go}");
    // nbdinfo asks for structured replies and lists the contexts.
    assert!(
        log.options.iter().any(|o| o == "StructuredReply"),
        "{:?}",
        log.options
    );
    assert!(
        log.options.iter().any(|o| o.starts_with("ListMetaContext")),
        "{:?}",
        log.options
    );
}

#[test]
fn qemu_img_info_sees_size() {
    if !installed("qemu-img") {
        return;
    }
    let (port, log) = start_server();
    let uri = format!("nbd://127.0.0.1:{port}/{EXPORT_NAME}");
    let (ok, out) = run_client(&["qemu-img", "info", "--output=json", &uri]);
    let log = log.lock().unwrap();
    println!("{out}\n{}", dump(&log));
    assert!(ok, "qemu-img failed:\n{out}");
    assert!(
        out.contains(&format!("\"virtual-size\": {EXPORT_SIZE}")),
        "{out}"
    );
    assert!(out.contains(EXPORT_NAME), "{out}");
    assert!(log.errors.is_empty(), "decode errors: {:?}", log.errors);
    assert_eq!(log.options[0], "ClientFlags(FIXED_NEWSTYLE | NO_ZEROES)");
    let go = log
        .options
        .iter()
        .find(|o| o.starts_with("Go("))
        .expect("a GO option");
    assert!(go.contains(&format!("name: \"{EXPORT_NAME}\"")), "{go}");
    // QEMU 10's client asks for extended headers (or at least structured
    // replies) and then base:allocation for this export.
    assert!(
        log.options
            .iter()
            .any(|o| o == "ExtendedHeaders" || o == "StructuredReply"),
        "{:?}",
        log.options
    );
    assert!(
        log.options
            .iter()
            .any(|o| o.starts_with("SetMetaContext") && o.contains(BASE_ALLOCATION)),
        "{:?}",
        log.options
    );
    // It probed the image format with reads.
    assert!(
        log.requests.iter().any(|r| r.contains("Read")),
        "{:?}",
        log.requests
    );
}
