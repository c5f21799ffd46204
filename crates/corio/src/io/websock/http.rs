//! The client's upgrade request and our replies.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use super::{trace, Ptr};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_HEADERS: usize = 32;
const SERVER: &str = "corio";

/// A request we refuse, and with which HTTP status.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) status: u16,
    pub(super) message: String,
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal {
        status: 400,
        message: message.into(),
    }
}

/// An acceptable request.
#[derive(Debug)]
pub(super) struct Upgrade {
    key: String,
    /// The client offered protocols (`binary` among them).
    protocol: bool,
}

/// QEMU's `qio_channel_websock_extract_headers` and
/// `handshake_process`, on the request up to its blank line.
pub(super) fn parse_request(head: &[u8], ioc: Ptr) -> Result<Upgrade, Refusal> {
    let head = String::from_utf8_lossy(head);
    let Some((greeting, fields)) = head.split_once("\r\n") else {
        return Err(bad("Missing HTTP header delimiter"));
    };
    trace::qio_channel_websock_http_greeting(ioc, greeting);
    let Some((method, rest)) = greeting.split_once(' ') else {
        return Err(bad("Missing HTTP path delimiter"));
    };
    if method != "GET" {
        return Err(bad(format!("Unsupported HTTP method {method}")));
    }
    let Some((path, version)) = rest.split_once(' ') else {
        return Err(bad("Missing HTTP version delimiter"));
    };
    if path != "/" {
        return Err(Refusal {
            status: 404,
            message: format!("Unexpected HTTP path {path}"),
        });
    }
    if version != "HTTP/1.1" {
        return Err(bad(format!("Unsupported HTTP version {version}")));
    }
    let mut headers = Vec::new();
    for line in fields.split("\r\n") {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad("Malformed HTTP header"));
        };
        if headers.len() >= MAX_HEADERS {
            return Err(bad("Too many HTTP headers"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim_matches([' ', '\t'])));
    }
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    // QEMU's messages name the header without its prefix.
    let need = |name: &str, what: &str| {
        find(name).ok_or_else(|| bad(format!("Missing websocket {what} header data")))
    };
    let protocols = find("sec-websocket-protocol");
    let version = need("sec-websocket-version", "version")?;
    let key = need("sec-websocket-key", "key")?;
    let host = need("host", "host")?;
    let connection = need("connection", "connection")?;
    let upgrade = need("upgrade", "upgrade")?;
    trace::qio_channel_websock_http_request(
        ioc,
        protocols.unwrap_or(""),
        version,
        host,
        connection,
        upgrade,
        key,
    );
    if let Some(p) = protocols {
        if !p.split(',').any(|t| t.trim() == "binary") {
            return Err(bad(format!(
                "No 'binary' protocol is supported by client '{p}'"
            )));
        }
    }
    if version != "13" {
        return Err(bad(format!(
            "Unsupported websocket version '{version}': only '13' is supported"
        )));
    }
    if key.len() != 24 {
        return Err(bad(format!(
            "Key length '{}' was not as expected '24'",
            key.len()
        )));
    }
    if !matches!(STANDARD.decode(key), Ok(k) if k.len() == 16) {
        return Err(bad(format!(
            "Key '{key}' is not the base64 encoding of 16 bytes"
        )));
    }
    if !connection
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    {
        return Err(bad(format!(
            "No connection upgrade requested '{connection}'"
        )));
    }
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return Err(bad(format!("Incorrect upgrade method '{upgrade}'")));
    }
    Ok(Upgrade {
        key: key.to_owned(),
        protocol: protocols.is_some(),
    })
}

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key + GUID)).
pub(super) fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    STANDARD.encode(h.finalize().as_slice())
}

/// The 101 reply (QEMU's `QIO_CHANNEL_WEBSOCK_HANDSHAKE_RES_OK`, with
/// the protocol line when the client offered protocols).
pub(super) fn reply_ok(up: &Upgrade, date: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Server: {SERVER}\r\n\
         Date: {date}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\
         {}\r\n",
        accept_key(&up.key),
        if up.protocol {
            "Sec-WebSocket-Protocol: binary\r\n"
        } else {
            ""
        },
    )
}

/// QEMU's error replies, with their status texts.
pub(super) fn reply_error(status: u16, date: &str) -> String {
    let (text, extra) = match status {
        404 => ("Not Found", ""),
        403 => ("Request Entity Too Large", ""),
        500 => ("Internal Server Error", ""),
        _ => ("Bad Request", "Sec-WebSocket-Version: 13\r\n"),
    };
    format!(
        "HTTP/1.1 {status} {text}\r\n\
         Server: {SERVER}\r\n\
         Date: {date}\r\n\
         Connection: close\r\n\
         {extra}\r\n"
    )
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub(super) fn date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (hh, mm, ss) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 >= 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {hh:02}:{mm:02}:{ss:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize]
    )
}

#[cfg(test)]
mod tests {
    use super::{accept_key, date, parse_request, reply_error, reply_ok};
    use std::time::{Duration, UNIX_EPOCH};

    const NIL: super::Ptr = std::ptr::null();

    fn request(lines: &[&str]) -> Vec<u8> {
        let mut r = lines.join("\r\n");
        r.insert_str(0, "GET / HTTP/1.1\r\n");
        r.into_bytes()
    }

    const GOOD: [&str; 5] = [
        "Host: example.com",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];

    #[test]
    fn accept_key_rfc6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn http_date() {
        assert_eq!(date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // leap day
        assert_eq!(date(t), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn parse_good_requests() {
        assert!(parse_request(&request(&GOOD), NIL).is_ok());
        let mut loose = GOOD.to_vec();
        loose[1] = "upgrade:WebSocket ";
        loose[2] = "CONNECTION:  keep-alive, upgrade";
        loose.push("Sec-WebSocket-Protocol: chat, binary");
        let up = parse_request(&request(&loose), NIL).unwrap();
        let reply = reply_ok(&up, "D");
        assert!(reply.contains("Sec-WebSocket-Protocol: binary\r\n"));
        assert!(reply.ends_with("\r\n\r\n"));
    }

    #[test]
    fn parse_refusals() {
        let cases: &[(&[u8], u16, &str)] = &[
            (b"GET / HTTP/1.1", 400, "Missing HTTP header delimiter"),
            (b"garbage\r\nHost: x", 400, "Missing HTTP path delimiter"),
            (
                b"GET /x HTTP/1.1\r\nHost: x",
                404,
                "Unexpected HTTP path /x",
            ),
            (
                b"GET / HTTP/1.0\r\nHost: x",
                400,
                "Unsupported HTTP version",
            ),
            (b"GET / HTTP/1.1\r\nno colon", 400, "Malformed HTTP header"),
        ];
        for (req, status, msg) in cases {
            let r = parse_request(req, NIL).unwrap_err();
            assert_eq!(
                (r.status, r.message.contains(msg)),
                (*status, true),
                "{r:?}"
            );
        }
        let edits: &[(usize, &str, &str)] = &[
            (0, "X-Host: y", "Missing websocket host"),
            (1, "Upgrade: h2c", "Incorrect upgrade method 'h2c'"),
            (2, "Connection: keep-alive", "No connection upgrade"),
            (3, "Sec-WebSocket-Key: short", "Key length '5'"),
            (
                3,
                "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!!!",
                "not the base64",
            ),
            (4, "Sec-WebSocket-Version: 8", "version '8'"),
        ];
        for (i, line, msg) in edits {
            let mut lines = GOOD.to_vec();
            lines[*i] = line;
            let r = parse_request(&request(&lines), NIL).unwrap_err();
            assert!(r.status == 400 && r.message.contains(msg), "{line}: {r:?}");
        }
        let mut lines = GOOD.to_vec();
        lines.push("Sec-WebSocket-Protocol: chat, binaryish");
        let r = parse_request(&request(&lines), NIL).unwrap_err();
        assert!(r.message.contains("No 'binary' protocol"), "{r:?}");
        let many: Vec<String> = (0..40).map(|i| format!("X-{i}: y")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let r = parse_request(&request(&many), NIL).unwrap_err();
        assert!(r.message.contains("Too many HTTP headers"), "{r:?}");
    }

    #[test]
    fn error_replies_are_complete_http() {
        for status in [400, 403, 404] {
            let r = reply_error(status, "D");
            assert!(r.starts_with(&format!("HTTP/1.1 {status} ")));
            assert!(r.ends_with("\r\n\r\n") && r.contains("Connection: close\r\n"));
        }
        assert!(reply_error(400, "D").contains("Sec-WebSocket-Version: 13\r\n"));
    }
}
