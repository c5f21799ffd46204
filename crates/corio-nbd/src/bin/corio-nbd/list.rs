//! `-L/--list`: client mode, qemu-nbd's listing of a server's exports.

use std::collections::HashMap;
use std::sync::Arc;

use corio::io::address::SocketAddress;
use corio::io::tls::TlsChannel;
use corio::io::{Channel, SocketChannel};
use corio_nbd::client::{format_list, Negotiation};
use corio_nbd::server::psk::PskChannel;
use corio_nbd::server::tls::SharedSocket;

use crate::args::Args;
use crate::objects::{self, ClientTls};

/// Connects, lists, prints.
///
/// # Errors
/// A message naming what failed: arguments, connection, TLS, protocol.
pub fn run(args: &Args) -> Result<(), String> {
    if args.image.is_some() {
        return Err("List mode is incompatible with a file name".into());
    }
    let mut objs = HashMap::new();
    for spec in &args.object {
        let (id, obj) = objects::parse(spec)?;
        objs.insert(id, obj);
    }
    let tls = match &args.tls_creds {
        Some(id) => Some(objects::client_tls(&objs, id)?),
        None => None,
    };
    let host = args.bind.clone().unwrap_or_else(|| "localhost".into());
    let addr = match &args.socket {
        Some(path) => SocketAddress::unix(path.clone()),
        None => SocketAddress::inet(host.clone(), args.port.unwrap_or(crate::DEFAULT_PORT)),
    };
    let sock = SocketChannel::connect_sync(&addr)
        .map_err(|e| format!("Failed to connect to '{addr}': {e}"))?;
    let sock = Arc::new(sock);
    let mut n =
        Negotiation::start(&*sock).map_err(|e| format!("Unable to read export list: {e}"))?;
    let tls_ch: Option<Box<dyn Channel>> = match tls {
        None => None,
        Some(t) => {
            n.starttls().map_err(|e| e.to_string())?;
            let hostname = args.tls_hostname.clone().unwrap_or(host);
            Some(handshake(&sock, t, &hostname)?)
        }
    };
    if let Some(ch) = &tls_ch {
        n.set_channel(&**ch);
    }
    let exports = n
        .list_exports()
        .map_err(|e| format!("Unable to read export list: {e}"))?;
    print!("{}", format_list(&exports));
    Ok(())
}

fn handshake(
    sock: &Arc<SocketChannel>,
    tls: ClientTls,
    hostname: &str,
) -> Result<Box<dyn Channel>, String> {
    let failed = |e: std::io::Error| format!("TLS handshake failed: {e}");
    match tls {
        ClientTls::X509(creds) => {
            let ch = TlsChannel::new_client(SharedSocket(sock.clone()), &creds, Some(hostname))
                .map_err(|e| format!("TLS setup: {e}"))?;
            ch.handshake_sync().map_err(failed)?;
            Ok(Box::new(ch))
        }
        ClientTls::Psk { user, key } => {
            let ch = PskChannel::new_client(sock.clone(), &user, &key).map_err(failed)?;
            ch.handshake_sync().map_err(failed)?;
            Ok(Box::new(ch))
        }
    }
}
