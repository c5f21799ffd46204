//! The command line: qemu-nbd's flags (same spelling, meaning and
//! defaults), and ours (`--iothreads`, `--size`, `--stats`).

use std::path::PathBuf;

use clap::Parser;

/// Serve a raw or qcow2 disk image (or, with no image, a sparse in-memory
/// disk) over NBD. A drop-in for qemu-nbd on raw and qcow2 images.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "corio-nbd",
    version,
    about,
    long_about = None,
    override_usage = "corio-nbd [OPTIONS] FILE",
    help_template = "{usage-heading} {usage}\n\n{about}. With no FILE it serves a sparse in-memory disk.\n\n{all-args}"
)]
pub struct Args {
    /// The image (raw file, block device or qcow2 image); none: a sparse
    /// in-memory disk (see --size).
    pub image: Option<PathBuf>,

    /// Path of the Unix socket to listen on (instead of TCP).
    #[arg(short = 'k', long = "socket", value_name = "PATH", conflicts_with_all = ["port", "bind"])]
    pub socket: Option<String>,

    /// Port to listen on [default: 10809].
    #[arg(short = 'p', long = "port", value_name = "PORT")]
    pub port: Option<u16>,

    /// Interface (address or host name) to bind to; every address it
    /// resolves to gets a socket [default: 0.0.0.0].
    #[arg(short = 'b', long = "bind", value_name = "IFACE")]
    pub bind: Option<String>,

    /// Export name.
    #[arg(
        short = 'x',
        long = "export-name",
        value_name = "NAME",
        default_value = ""
    )]
    pub export_name: String,

    /// A human-readable description of the export.
    #[arg(short = 'D', long = "description", value_name = "TEXT")]
    pub description: Option<String>,

    /// Export read-only.
    #[arg(short = 'r', long = "read-only")]
    pub read_only: bool,

    /// Serve up to NUM clients at once (0: unlimited); beyond that, stop
    /// accepting.
    #[arg(short = 'e', long = "shared", value_name = "NUM", default_value_t = 1)]
    pub shared: usize,

    /// Do not exit when the last client leaves.
    #[arg(short = 't', long = "persistent")]
    pub persistent: bool,

    /// Image format: raw or qcow2 [default: probed from the image header;
    /// a probed raw image may not have a format header written into its
    /// first sector].
    #[arg(short = 'f', long = "format", value_name = "FORMAT")]
    pub format: Option<String>,

    /// Disable the host cache (--cache=none).
    #[arg(short = 'n', long = "nocache")]
    pub nocache: bool,

    /// Cache mode: none, writeback (default), writethrough, directsync or
    /// unsafe.
    #[arg(long = "cache", value_name = "MODE")]
    pub cache: Option<String>,

    /// AIO mode for an image file: threads (default) or io_uring (native
    /// is not available).
    #[arg(long = "aio", value_name = "MODE")]
    pub aio: Option<String>,

    /// Discard mode: ignore (default) or unmap.
    #[arg(long = "discard", value_name = "MODE")]
    pub discard: Option<String>,

    /// Detect zero writes: off (default), on or unmap.
    #[arg(long = "detect-zeroes", value_name = "MODE")]
    pub detect_zeroes: Option<String>,

    /// Expose the allocation depth (qemu:allocation-depth).
    #[arg(short = 'A', long = "allocation-depth")]
    pub allocation_depth: bool,

    /// Write the server's process id to this file.
    #[arg(long = "pid-file", value_name = "PATH")]
    pub pid_file: Option<PathBuf>,

    /// Fork off the server and exit once it accepts connections.
    #[arg(long = "fork")]
    pub fork: bool,

    /// Log dropped clients and failed requests on stderr.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,

    /// Enable trace events: [enable=]PATTERN[,events=FILE] (QEMU's form).
    #[arg(short = 'T', long = "trace", value_name = "PATTERN")]
    pub trace: Vec<String>,

    /// Drop a client that has not finished the handshake in N seconds
    /// (0: never).
    #[arg(long = "handshake-limit", value_name = "N", default_value_t = 10)]
    pub handshake_limit: u64,

    /// Define an object: tls-creds-x509,id=ID,dir=DIR,endpoint=server
    /// [,verify-peer=on|off], tls-creds-psk,id=ID,dir=DIR,endpoint=server
    /// (DIR/keys.psk: username:hexkey lines) or authz-simple,id=ID,identity=DN.
    #[arg(long = "object", value_name = "SPEC")]
    pub object: Vec<String>,

    /// Client mode: connect to the server (-k, or -b and -p) and list its
    /// exports, in qemu-nbd's layout.
    #[arg(short = 'L', long = "list")]
    pub list: bool,

    /// With -L: the host name the server's certificate must carry
    /// [default: the -b host, else localhost].
    #[arg(long = "tls-hostname", value_name = "NAME")]
    pub tls_hostname: Option<String>,

    /// Require TLS with the credentials object ID (with -L: use them).
    #[arg(long = "tls-creds", value_name = "ID")]
    pub tls_creds: Option<String>,

    /// Let in only the client the authz object ID names (its certificate's
    /// DN with x509, its user name with PSK).
    #[arg(long = "tls-authz", value_name = "ID", requires = "tls_creds")]
    pub tls_authz: Option<String>,

    /// Serve clients on N IOThreads, in turn (0: in the main loop, as
    /// qemu-nbd).
    #[arg(long = "iothreads", value_name = "N", default_value_t = 0)]
    pub iothreads: usize,

    /// Size of the in-memory disk served when no image is named (bytes,
    /// or with a K, M, G, T suffix).
    #[arg(long = "size", value_name = "SIZE", value_parser = parse_size)]
    pub size: Option<u64>,

    /// Print a line of requests/s, bytes/s and clients on stderr every N
    /// seconds.
    #[arg(long = "stats", value_name = "SECONDS")]
    pub stats: Option<u64>,
}

/// Parses `1G`, `512M`, `64k`, `1048576`, `2GiB` (binary units, as QEMU).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                'p' => 50,
                'e' => 60,
                _ => return Err(format!("invalid size '{s}': unknown suffix '{c}'")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid size '{s}': expected a number with an optional K, M, G or T suffix")
    })?;
    n.checked_shl(shift)
        .filter(|v| v >> shift == n)
        .ok_or_else(|| format!("invalid size '{s}': too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
