//! Socket addresses in QEMU's textual forms (util/qemu-sockets.c:
//! `socket_parse`, `inet_parse`, `socket_uri`).
//!
//! | form | meaning |
//! | --- | --- |
//! | `host:port`, `tcp:host:port` | TCP, host name or IPv4 address (at most 64 bytes) |
//! | `:port` | TCP, no host (every local address when listening) |
//! | `[v6addr]:port` | TCP, IPv6 address |
//! | `...,to=N` | try ports `port..=N` when listening |
//! | `...,ipv4[=on\|off]`, `...,ipv6[=on\|off]` | restrict the address family |
//! | `...,keep-alive[=on\|off]`, `...,mptcp[=on\|off]` | socket options |
//! | `unix:path` | Unix socket at a path (a comma in the path is written `,,`) |
//! | `unix:name,abstract=on[,tight=off]` | Linux abstract socket |
//! | `fd:N`, `fd:name` | an already-open socket, by number or by name |
//!
//! A flag without a value means `on`. [`SocketAddress`]'s `Display` is the
//! inverse (QEMU's `socket_uri`, which we extend with the options so that
//! `parse(display(a)) == a`; an IPv6 host is bracketed).
//!
//! We are stricter than QEMU, whose parser searches for options with
//! `strstr` and ignores what it does not know: here an unknown, duplicated or
//! empty option, a port that is not a number in `0..=65535` and trailing
//! garbage are errors, each saying what is wrong.
//!
//! # Examples
//!
//! ```
//! use corio::io::address::{SocketAddress, InetSocketAddress};
//!
//! let a: SocketAddress = "[::1]:10809,ipv6".parse().unwrap();
//! let SocketAddress::Inet(inet) = &a else { unreachable!() };
//! assert_eq!((inet.host.as_str(), inet.port, inet.ipv6), ("::1", 10809, Some(true)));
//! assert_eq!(a.to_string(), "tcp:[::1]:10809,ipv6=on");
//!
//! let u: SocketAddress = "unix:/run/qemu.sock".parse().unwrap();
//! assert_eq!(u.to_string(), "unix:/run/qemu.sock");
//!
//! let err = "localhost:".parse::<SocketAddress>().unwrap_err();
//! assert_eq!(err.to_string(), "missing port in address 'localhost:'");
//! ```

use std::fmt;
use std::str::FromStr;

/// The longest host QEMU's `inet_parse` accepts.
pub const MAX_HOST_LEN: usize = 64;
/// The size of `sockaddr_un.sun_path` on Linux.
pub const UNIX_PATH_MAX: usize = 108;

/// Why a socket address did not parse. Each variant names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The whole string is empty.
    #[error("empty socket address")]
    Empty,
    /// `unix:` with nothing after it.
    #[error("invalid Unix socket address: empty path in '{0}'")]
    EmptyUnixPath(String),
    /// A Unix path longer than `sun_path` allows.
    #[error("UNIX socket path '{path}' is too long: at most {max} bytes")]
    UnixPathTooLong {
        /// The path.
        path: String,
        /// The limit for this kind of path.
        max: usize,
    },
    /// `tight=` given without `abstract=on`.
    #[error("'tight' only applies to abstract Unix sockets (add abstract=on) in '{0}'")]
    TightWithoutAbstract(String),
    /// `fd:` with nothing after it.
    #[error("invalid file descriptor address: empty in '{0}'")]
    EmptyFd(String),
    /// `fd:` followed by something that is neither a number nor a name.
    #[error("invalid file descriptor '{0}': expected a number or a name of letters, digits, '-', '_', '.'")]
    InvalidFd(String),
    /// An address family we do not support (`vsock:`).
    #[error("socket family '{0}' unsupported")]
    UnsupportedFamily(String),
    /// No `:port` after the host, or an empty port.
    #[error("missing port in address '{0}'")]
    MissingPort(String),
    /// A host longer than QEMU's 64-byte limit.
    #[error("host name too long ({len} bytes, at most 64) in address '{addr}'")]
    HostTooLong {
        /// The length of the host.
        len: usize,
        /// The address.
        addr: String,
    },
    /// `[` with no matching `]`.
    #[error("unclosed '[' in IPv6 address '{0}'")]
    UnclosedBracket(String),
    /// The text between brackets is not an IPv6 address.
    #[error("invalid IPv6 address '{0}'")]
    InvalidIpv6(String),
    /// `host` contains characters no host name or address has.
    #[error("invalid host '{0}'")]
    InvalidHost(String),
    /// The port is not a number in `0..=65535`.
    #[error("invalid port '{0}': expected a number from 0 to 65535")]
    BadPort(String),
    /// `to=` is not a port number, or below the first port.
    #[error("invalid to= argument '{value}': expected a port from {min} to 65535")]
    BadTo {
        /// The value given.
        value: String,
        /// The first port of the range.
        min: u16,
    },
    /// `,,` or a trailing `,`.
    #[error("empty option in address '{0}'")]
    EmptyOption(String),
    /// An option name we do not know.
    #[error("unknown option '{option}' in address '{addr}'")]
    UnknownOption {
        /// The option name.
        option: String,
        /// The address.
        addr: String,
    },
    /// The same option twice.
    #[error("option '{option}' given twice in address '{addr}'")]
    DuplicateOption {
        /// The option name.
        option: String,
        /// The address.
        addr: String,
    },
    /// A flag whose value is not `on` or `off`.
    #[error("error parsing '{flag}' flag: expected on or off, got '{value}'")]
    BadFlag {
        /// The flag name.
        flag: String,
        /// The value given.
        value: String,
    },
    /// `ipv4=off,ipv6=off`.
    #[error("both ipv4 and ipv6 are off in address '{0}'")]
    NoFamily(String),
}

/// A TCP address (QEMU's `InetSocketAddress`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InetSocketAddress {
    /// Host name or numeric address; empty means any (listen) or local (connect).
    pub host: String,
    /// The port; 0 asks the kernel for one when listening.
    pub port: u16,
    /// Last port of a range to try when listening (`to=`).
    pub to: Option<u16>,
    /// `ipv4=`: restrict to (on) or exclude (off) IPv4.
    pub ipv4: Option<bool>,
    /// `ipv6=`: restrict to (on) or exclude (off) IPv6.
    pub ipv6: Option<bool>,
    /// `keep-alive=`: SO_KEEPALIVE on connected sockets.
    pub keep_alive: Option<bool>,
    /// `mptcp=`: multipath TCP (parsed and printed; sockets ignore it).
    pub mptcp: Option<bool>,
}

/// A Unix-domain address (QEMU's `UnixSocketAddress`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnixSocketAddress {
    /// The path, or the name of an abstract socket (without the leading NUL).
    pub path: String,
    /// Linux abstract namespace (`abstract=on`).
    pub abstract_: bool,
    /// For abstract sockets: whether the address length covers only the name
    /// (`tight`, QEMU's default `on`) or the whole `sun_path`.
    pub tight: Option<bool>,
}

impl UnixSocketAddress {
    /// Whether the abstract address is tight (QEMU's `saddr_is_tight`).
    pub fn is_tight(&self) -> bool {
        self.tight.unwrap_or(true)
    }
}

/// A socket address (QEMU's `SocketAddress`): see the module documentation
/// for the textual forms.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketAddress {
    /// TCP over IPv4 or IPv6.
    Inet(InetSocketAddress),
    /// A Unix-domain stream socket.
    Unix(UnixSocketAddress),
    /// An open socket given by number or by name (`fd:`).
    Fd(String),
}

impl SocketAddress {
    /// A TCP address.
    ///
    /// ```
    /// let a = corio::io::address::SocketAddress::inet("127.0.0.1", 0);
    /// assert_eq!(a.to_string(), "tcp:127.0.0.1:0");
    /// ```
    pub fn inet(host: impl Into<String>, port: u16) -> SocketAddress {
        SocketAddress::Inet(InetSocketAddress {
            host: host.into(),
            port,
            ..Default::default()
        })
    }

    /// A Unix socket at a path.
    ///
    /// ```
    /// let a = corio::io::address::SocketAddress::unix("/tmp/s");
    /// assert_eq!(a.to_string(), "unix:/tmp/s");
    /// ```
    pub fn unix(path: impl Into<String>) -> SocketAddress {
        SocketAddress::Unix(UnixSocketAddress {
            path: path.into(),
            ..Default::default()
        })
    }

    /// An abstract Unix socket (Linux), tight unless `tight` says otherwise.
    ///
    /// ```
    /// let a = corio::io::address::SocketAddress::unix_abstract("corio", None);
    /// assert_eq!(a.to_string(), "unix:corio,abstract=on");
    /// ```
    pub fn unix_abstract(name: impl Into<String>, tight: Option<bool>) -> SocketAddress {
        SocketAddress::Unix(UnixSocketAddress {
            path: name.into(),
            abstract_: true,
            tight,
        })
    }

    /// Parses QEMU's textual forms (QEMU's `socket_parse`); the same as
    /// `str::parse`.
    ///
    /// # Errors
    /// An [`AddressError`] naming what is wrong.
    ///
    /// ```
    /// use corio::io::address::SocketAddress;
    /// assert_eq!(SocketAddress::parse("fd:3").unwrap(), SocketAddress::Fd("3".into()));
    /// assert!(SocketAddress::parse("fd:").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<SocketAddress, AddressError> {
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if let Some(rest) = s.strip_prefix("unix:") {
            parse_unix(s, rest).map(SocketAddress::Unix)
        } else if let Some(rest) = s.strip_prefix("fd:") {
            parse_fd(s, rest)
        } else if s.starts_with("vsock:") {
            Err(AddressError::UnsupportedFamily("vsock".into()))
        } else if let Some(rest) = s.strip_prefix("tcp:") {
            InetSocketAddress::parse(rest).map(SocketAddress::Inet)
        } else {
            InetSocketAddress::parse(s).map(SocketAddress::Inet)
        }
    }
}

impl FromStr for SocketAddress {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SocketAddress::parse(s)
    }
}

fn parse_fd(whole: &str, rest: &str) -> Result<SocketAddress, AddressError> {
    if rest.is_empty() {
        return Err(AddressError::EmptyFd(whole.into()));
    }
    let is_number = rest.bytes().all(|b| b.is_ascii_digit()) && rest.parse::<i32>().is_ok();
    let is_name = rest.as_bytes()[0].is_ascii_alphabetic()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if is_number || is_name {
        Ok(SocketAddress::Fd(rest.into()))
    } else {
        Err(AddressError::InvalidFd(rest.into()))
    }
}

/// Splits the Unix path (with `,,` for a comma) from its options.
fn parse_unix(whole: &str, rest: &str) -> Result<UnixSocketAddress, AddressError> {
    let mut path = String::new();
    let mut chars = rest.char_indices().peekable();
    let mut opts = None;
    while let Some((i, c)) = chars.next() {
        if c == ',' {
            if chars.peek().map(|&(_, c)| c) == Some(',') {
                chars.next();
                path.push(',');
                continue;
            }
            opts = Some(&rest[i + 1..]);
            break;
        }
        path.push(c);
    }
    if path.is_empty() {
        return Err(AddressError::EmptyUnixPath(whole.into()));
    }
    let mut addr = UnixSocketAddress {
        path,
        ..Default::default()
    };
    let mut abstract_ = None;
    if let Some(opts) = opts {
        for_each_option(whole, opts, |name, value| {
            match name {
                "abstract" => set_once(whole, name, &mut abstract_, parse_flag(name, value)?)?,
                "tight" => set_once(whole, name, &mut addr.tight, parse_flag(name, value)?)?,
                _ => return Err(unknown(whole, name)),
            }
            Ok(())
        })?;
    }
    addr.abstract_ = abstract_.unwrap_or(false);
    if addr.tight.is_some() && !addr.abstract_ {
        return Err(AddressError::TightWithoutAbstract(whole.into()));
    }
    let max = if addr.abstract_ {
        UNIX_PATH_MAX - 1
    } else {
        UNIX_PATH_MAX
    };
    if addr.path.len() > max {
        return Err(AddressError::UnixPathTooLong {
            path: addr.path,
            max,
        });
    }
    Ok(addr)
}

fn unknown(whole: &str, name: &str) -> AddressError {
    AddressError::UnknownOption {
        option: name.into(),
        addr: whole.into(),
    }
}

fn set_once<T>(whole: &str, name: &str, slot: &mut Option<T>, v: T) -> Result<(), AddressError> {
    if slot.is_some() {
        return Err(AddressError::DuplicateOption {
            option: name.into(),
            addr: whole.into(),
        });
    }
    *slot = Some(v);
    Ok(())
}

/// QEMU's `inet_parse_flag`: no value or `on` is true, `off` is false.
fn parse_flag(name: &str, value: Option<&str>) -> Result<bool, AddressError> {
    match value {
        None | Some("on") => Ok(true),
        Some("off") => Ok(false),
        Some(v) => Err(AddressError::BadFlag {
            flag: name.into(),
            value: v.into(),
        }),
    }
}

/// Calls `f(name, value)` for each comma-separated option of `opts`.
fn for_each_option(
    whole: &str,
    opts: &str,
    mut f: impl FnMut(&str, Option<&str>) -> Result<(), AddressError>,
) -> Result<(), AddressError> {
    for opt in opts.split(',') {
        if opt.is_empty() {
            return Err(AddressError::EmptyOption(whole.into()));
        }
        match opt.split_once('=') {
            Some((name, value)) => f(name, Some(value))?,
            None => f(opt, None)?,
        }
    }
    Ok(())
}

fn parse_port(s: &str, whole: &str) -> Result<u16, AddressError> {
    if s.is_empty() {
        return Err(AddressError::MissingPort(whole.into()));
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddressError::BadPort(s.into()));
    }
    s.parse().map_err(|_| AddressError::BadPort(s.into()))
}

impl InetSocketAddress {
    /// Parses `host:port[,options]` without the `tcp:` prefix (QEMU's
    /// `inet_parse`).
    ///
    /// # Errors
    /// An [`AddressError`] naming what is wrong.
    ///
    /// ```
    /// use corio::io::address::InetSocketAddress;
    /// let a = InetSocketAddress::parse("localhost:5900,to=5910").unwrap();
    /// assert_eq!((a.port, a.to), (5900, Some(5910)));
    /// ```
    pub fn parse(s: &str) -> Result<InetSocketAddress, AddressError> {
        let (host, rest) = if let Some(after) = s.strip_prefix('[') {
            let Some(end) = after.find(']') else {
                return Err(AddressError::UnclosedBracket(s.into()));
            };
            let host = &after[..end];
            let ip = host.split('%').next().unwrap_or("");
            if ip.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(AddressError::InvalidIpv6(host.into()));
            }
            let Some(rest) = after[end + 1..].strip_prefix(':') else {
                return Err(AddressError::MissingPort(s.into()));
            };
            (host, rest)
        } else {
            let Some((host, rest)) = s.split_once(':') else {
                return Err(AddressError::MissingPort(s.into()));
            };
            if host
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b == b',' || b == b'[' || b == b']')
            {
                return Err(AddressError::InvalidHost(host.into()));
            }
            (host, rest)
        };
        if host.len() > MAX_HOST_LEN {
            return Err(AddressError::HostTooLong {
                len: host.len(),
                addr: s.into(),
            });
        }
        let (port, opts) = match rest.split_once(',') {
            Some((p, o)) => (p, Some(o)),
            None => (rest, None),
        };
        let mut addr = InetSocketAddress {
            host: host.into(),
            port: parse_port(port, s)?,
            ..Default::default()
        };
        if let Some(opts) = opts {
            addr.parse_options(s, opts)?;
        }
        if addr.ipv4 == Some(false) && addr.ipv6 == Some(false) {
            return Err(AddressError::NoFamily(s.into()));
        }
        Ok(addr)
    }

    fn parse_options(&mut self, whole: &str, opts: &str) -> Result<(), AddressError> {
        let first = self.port;
        for_each_option(whole, opts, |name, value| {
            match name {
                "to" => {
                    let v = value.unwrap_or("");
                    let to = match v.parse::<u16>() {
                        Ok(to) if to >= first && v.bytes().all(|b| b.is_ascii_digit()) => to,
                        _ => {
                            return Err(AddressError::BadTo {
                                value: v.into(),
                                min: first,
                            })
                        }
                    };
                    set_once(whole, name, &mut self.to, to)?;
                }
                "ipv4" => set_once(whole, name, &mut self.ipv4, parse_flag(name, value)?)?,
                "ipv6" => set_once(whole, name, &mut self.ipv6, parse_flag(name, value)?)?,
                "keep-alive" => {
                    set_once(whole, name, &mut self.keep_alive, parse_flag(name, value)?)?
                }
                "mptcp" => set_once(whole, name, &mut self.mptcp, parse_flag(name, value)?)?,
                _ => return Err(unknown(whole, name)),
            }
            Ok(())
        })
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

impl fmt::Display for InetSocketAddress {
    /// `host:port[,options]` (no `tcp:` prefix); an IPv6 host is bracketed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)?;
        } else {
            write!(f, "{}:{}", self.host, self.port)?;
        }
        if let Some(to) = self.to {
            write!(f, ",to={to}")?;
        }
        for (name, v) in [
            ("ipv4", self.ipv4),
            ("ipv6", self.ipv6),
            ("keep-alive", self.keep_alive),
            ("mptcp", self.mptcp),
        ] {
            if let Some(v) = v {
                write!(f, ",{name}={}", on_off(v))?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for UnixSocketAddress {
    /// The path with `,` doubled, then `,abstract=on` and `,tight=...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path.replace(',', ",,"))?;
        if self.abstract_ {
            f.write_str(",abstract=on")?;
        }
        if let Some(t) = self.tight {
            write!(f, ",tight={}", on_off(t))?;
        }
        Ok(())
    }
}

impl fmt::Display for SocketAddress {
    /// QEMU's `socket_uri`: `tcp:host:port`, `unix:path`, `fd:name`, plus the
    /// options, so that parsing the result gives the same address back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketAddress::Inet(a) => write!(f, "tcp:{a}"),
            SocketAddress::Unix(a) => write!(f, "unix:{a}"),
            SocketAddress::Fd(s) => write!(f, "fd:{s}"),
        }
    }
}
