//! Socket address parsing (QEMU's util/qemu-sockets.c `socket_parse`,
//! `inet_parse`, `socket_uri`; tests/unit/test-util-sockets.c).

use corio::io::address::{AddressError, InetSocketAddress, SocketAddress, UnixSocketAddress};

fn inet(s: &str) -> InetSocketAddress {
    match SocketAddress::parse(s) {
        Ok(SocketAddress::Inet(a)) => a,
        other => panic!("{s}: expected an inet address, got {other:?}"),
    }
}

fn unix(s: &str) -> UnixSocketAddress {
    match SocketAddress::parse(s) {
        Ok(SocketAddress::Unix(a)) => a,
        other => panic!("{s}: expected a unix address, got {other:?}"),
    }
}

#[test]
fn socket_parse_inet_forms() {
    let a = inet("localhost:10809");
    assert_eq!((a.host.as_str(), a.port), ("localhost", 10809));
    assert_eq!(inet("tcp:localhost:10809"), a);
    let a = inet("127.0.0.1:0");
    assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 0));
    let a = inet(":5900");
    assert_eq!((a.host.as_str(), a.port), ("", 5900));
    let a = inet("[::1]:65535");
    assert_eq!((a.host.as_str(), a.port), ("::1", 65535));
    let a = inet("tcp:[fe80::1%eth0]:22");
    assert_eq!(a.host, "fe80::1%eth0");
}

#[test]
fn socket_parse_inet_options() {
    let a = inet("localhost:5900,to=5910");
    assert_eq!((a.port, a.to), (5900, Some(5910)));
    let a = inet("localhost:5900,ipv4");
    assert_eq!((a.ipv4, a.ipv6), (Some(true), None));
    let a = inet("localhost:5900,ipv4=off,ipv6=on");
    assert_eq!((a.ipv4, a.ipv6), (Some(false), Some(true)));
    let a = inet("host:1,keep-alive=on");
    assert_eq!(a.keep_alive, Some(true));
    let a = inet("host:1,keep-alive");
    assert_eq!(a.keep_alive, Some(true));
    let a = inet("host:1,mptcp=off,to=1");
    assert_eq!((a.mptcp, a.to), (Some(false), Some(1)));
}

#[test]
fn socket_parse_unix_forms() {
    let a = unix("unix:/tmp/qemu.sock");
    assert_eq!(a.path, "/tmp/qemu.sock");
    assert!(!a.abstract_);
    let a = unix("unix:corio,abstract=on");
    assert!(a.abstract_ && a.is_tight());
    let a = unix("unix:corio,abstract=on,tight=off");
    assert!(a.abstract_ && !a.is_tight());
    let a = unix("unix:corio,abstract");
    assert!(a.abstract_);
    let a = unix("unix:/tmp/a,,b");
    assert_eq!(a.path, "/tmp/a,b");
    let a = unix("unix:relative/path");
    assert_eq!(a.path, "relative/path");
}

#[test]
fn socket_parse_fd_forms() {
    assert_eq!(
        SocketAddress::parse("fd:3"),
        Ok(SocketAddress::Fd("3".into()))
    );
    assert_eq!(
        SocketAddress::parse("fd:monitor-fd_1.x"),
        Ok(SocketAddress::Fd("monitor-fd_1.x".into()))
    );
}

#[test]
fn socket_uri_round_trip() {
    for (input, uri) in [
        ("localhost:10809", "tcp:localhost:10809"),
        ("tcp:127.0.0.1:0", "tcp:127.0.0.1:0"),
        (":5900", "tcp::5900"),
        ("[::1]:80", "tcp:[::1]:80"),
        (
            "h:1,ipv6,to=9,keep-alive=off,ipv4=off",
            "tcp:h:1,to=9,ipv4=off,ipv6=on,keep-alive=off",
        ),
        ("unix:/tmp/s", "unix:/tmp/s"),
        ("unix:/tmp/a,,b", "unix:/tmp/a,,b"),
        ("unix:n,abstract,tight=off", "unix:n,abstract=on,tight=off"),
        ("fd:7", "fd:7"),
        ("fd:sock", "fd:sock"),
    ] {
        let a = SocketAddress::parse(input).unwrap();
        assert_eq!(a.to_string(), uri, "display of {input}");
        assert_eq!(SocketAddress::parse(uri).unwrap(), a, "reparse of {uri}");
    }
}

#[test]
fn socket_parse_malformed() {
    let long_host = format!("{}:80", "h".repeat(65));
    let ok_host = format!("{}:80", "h".repeat(64));
    assert!(SocketAddress::parse(&ok_host).is_ok());
    let long_path = format!("unix:/{}", "p".repeat(108));
    let long_abstract = format!("unix:{},abstract=on", "p".repeat(108));

    type Check = fn(&AddressError) -> bool;
    let table: &[(&str, Check, &str)] = &[
        (
            "",
            |e| matches!(e, AddressError::Empty),
            "empty socket address",
        ),
        (
            "unix:",
            |e| matches!(e, AddressError::EmptyUnixPath(_)),
            "empty path",
        ),
        (
            "unix:,abstract=on",
            |e| matches!(e, AddressError::EmptyUnixPath(_)),
            "empty path",
        ),
        (
            "unix:/a,abstract=maybe",
            |e| matches!(e, AddressError::BadFlag { .. }),
            "'abstract' flag",
        ),
        (
            "unix:/a,tight=off",
            |e| matches!(e, AddressError::TightWithoutAbstract(_)),
            "abstract=on",
        ),
        (
            "unix:/a,perm=0600",
            |e| matches!(e, AddressError::UnknownOption { .. }),
            "unknown option 'perm'",
        ),
        (
            &long_path,
            |e| matches!(e, AddressError::UnixPathTooLong { max: 108, .. }),
            "too long",
        ),
        (
            &long_abstract,
            |e| matches!(e, AddressError::UnixPathTooLong { max: 107, .. }),
            "too long",
        ),
        (
            "fd:",
            |e| matches!(e, AddressError::EmptyFd(_)),
            "invalid file descriptor",
        ),
        (
            "fd:3x",
            |e| matches!(e, AddressError::InvalidFd(_)),
            "invalid file descriptor '3x'",
        ),
        ("fd:-1", |e| matches!(e, AddressError::InvalidFd(_)), "'-1'"),
        (
            "fd:a b",
            |e| matches!(e, AddressError::InvalidFd(_)),
            "'a b'",
        ),
        (
            "vsock:3:1234",
            |e| matches!(e, AddressError::UnsupportedFamily(_)),
            "vsock",
        ),
        (
            "localhost",
            |e| matches!(e, AddressError::MissingPort(_)),
            "missing port",
        ),
        (
            "localhost:",
            |e| matches!(e, AddressError::MissingPort(_)),
            "missing port",
        ),
        (
            "tcp:",
            |e| matches!(e, AddressError::MissingPort(_)),
            "missing port",
        ),
        (
            ":",
            |e| matches!(e, AddressError::MissingPort(_)),
            "missing port",
        ),
        (
            "host:,to=5",
            |e| matches!(e, AddressError::MissingPort(_)),
            "missing port",
        ),
        (
            "host:http",
            |e| matches!(e, AddressError::BadPort(_)),
            "invalid port 'http'",
        ),
        (
            "host:65536",
            |e| matches!(e, AddressError::BadPort(_)),
            "invalid port '65536'",
        ),
        (
            "host:-1",
            |e| matches!(e, AddressError::BadPort(_)),
            "invalid port",
        ),
        (
            "host:+80",
            |e| matches!(e, AddressError::BadPort(_)),
            "invalid port",
        ),
        (
            "host:80x",
            |e| matches!(e, AddressError::BadPort(_)),
            "invalid port '80x'",
        ),
        (
            "::1:80",
            |e| matches!(e, AddressError::BadPort(_)),
            "invalid port",
        ),
        (
            "host:80,to=",
            |e| matches!(e, AddressError::BadTo { .. }),
            "to= argument",
        ),
        (
            "host:80,to=abc",
            |e| matches!(e, AddressError::BadTo { .. }),
            "to= argument 'abc'",
        ),
        (
            "host:80,to=79",
            |e| matches!(e, AddressError::BadTo { min: 80, .. }),
            "from 80",
        ),
        (
            "host:80,to=70000",
            |e| matches!(e, AddressError::BadTo { .. }),
            "to= argument",
        ),
        (
            "host:80,to",
            |e| matches!(e, AddressError::BadTo { .. }),
            "to= argument",
        ),
        (
            "host:80,,ipv4",
            |e| matches!(e, AddressError::EmptyOption(_)),
            "empty option",
        ),
        (
            "host:80,",
            |e| matches!(e, AddressError::EmptyOption(_)),
            "empty option",
        ),
        (
            "host:80,ipv6=on,,foo",
            |e| matches!(e, AddressError::EmptyOption(_)),
            "empty option",
        ),
        (
            "host:80,foo",
            |e| matches!(e, AddressError::UnknownOption { .. }),
            "unknown option 'foo'",
        ),
        (
            "host:80,ipv4=yes",
            |e| matches!(e, AddressError::BadFlag { .. }),
            "'ipv4' flag",
        ),
        (
            "host:80,ipv4,ipv4",
            |e| matches!(e, AddressError::DuplicateOption { .. }),
            "given twice",
        ),
        (
            "host:80,ipv4=off,ipv6=off",
            |e| matches!(e, AddressError::NoFamily(_)),
            "both ipv4 and ipv6",
        ),
        (
            "[::1:80",
            |e| matches!(e, AddressError::UnclosedBracket(_)),
            "unclosed '['",
        ),
        (
            "[::1]80",
            |e| matches!(e, AddressError::MissingPort(_)),
            "missing port",
        ),
        (
            "[::1]",
            |e| matches!(e, AddressError::MissingPort(_)),
            "missing port",
        ),
        (
            "[nothost]:80",
            |e| matches!(e, AddressError::InvalidIpv6(_)),
            "invalid IPv6 address",
        ),
        (
            "[]:80",
            |e| matches!(e, AddressError::InvalidIpv6(_)),
            "invalid IPv6",
        ),
        (
            "ho st:80",
            |e| matches!(e, AddressError::InvalidHost(_)),
            "invalid host",
        ),
        (
            &long_host,
            |e| matches!(e, AddressError::HostTooLong { len: 65, .. }),
            "too long",
        ),
    ];
    for (input, check, needle) in table {
        match SocketAddress::parse(input) {
            Ok(a) => panic!("{input:?} parsed as {a:?}"),
            Err(e) => {
                assert!(check(&e), "{input:?}: unexpected error {e:?}");
                let msg = e.to_string();
                assert!(
                    msg.contains(needle),
                    "{input:?}: message {msg:?} lacks {needle:?}"
                );
            }
        }
    }
}
