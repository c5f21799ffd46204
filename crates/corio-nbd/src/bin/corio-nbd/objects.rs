//! `--object` definitions in QEMU's syntax: `type,key=value,...`, where
//! `,,` stands for a comma inside a value (DNs have commas).

use std::collections::HashMap;
use std::sync::Arc;

use corio::io::tls::{Endpoint, TlsCreds};
use corio_nbd::server::{PskCreds, ServerCreds, TlsConfig};

/// An object the server knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// `tls-creds-x509`.
    TlsX509 {
        /// Directory with `ca-cert.pem`, `server-cert.pem`, ...
        dir: String,
        /// `endpoint=server` or `client`.
        endpoint: Endpoint,
        /// `verify-peer` (QEMU's default: on).
        verify_peer: bool,
    },
    /// `tls-creds-psk`.
    TlsPsk {
        /// Directory with `keys.psk` (`username:hexkey` lines).
        dir: String,
        /// `endpoint=server` or `client`.
        endpoint: Endpoint,
        /// The user a client presents (QEMU's default: `qemu`).
        username: Option<String>,
    },
    /// `authz-simple,identity=DN`.
    AuthzSimple {
        /// The one DN let in.
        identity: String,
    },
}

/// Splits on single commas; `,,` is a literal comma.
fn split(spec: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                parts.last_mut().expect("never empty").push(',');
            } else {
                parts.push(String::new());
            }
        } else {
            parts.last_mut().expect("never empty").push(c);
        }
    }
    parts
}

fn on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(format!("invalid value '{v}' for {key}: expected on or off")),
    }
}

fn endpoint(kind: &str, v: Option<String>) -> Result<Endpoint, String> {
    match v.as_deref() {
        None | Some("client") => Ok(Endpoint::Client),
        Some("server") => Ok(Endpoint::Server),
        Some(e) => Err(format!("--object {kind}: invalid endpoint '{e}'")),
    }
}

/// Parses one `--object` argument into its id and object.
///
/// # Errors
/// A message naming what is wrong or unsupported.
pub fn parse(spec: &str) -> Result<(String, Object), String> {
    let parts = split(spec);
    let kind = parts[0].as_str();
    let mut props = HashMap::new();
    for p in &parts[1..] {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("--object {kind}: expected key=value, got '{p}'"))?;
        props.insert(k.to_owned(), v.to_owned());
    }
    let mut take = |k: &str| props.remove(k);
    let id = take("id").ok_or_else(|| format!("--object {kind}: parameter 'id' is missing"))?;
    let obj = match kind {
        "tls-creds-x509" => {
            let dir = take("dir").ok_or_else(|| format!("--object {kind}: 'dir' is missing"))?;
            let endpoint = endpoint(kind, take("endpoint"))?;
            let verify_peer = match take("verify-peer") {
                Some(v) => on_off("verify-peer", &v)?,
                None => true,
            };
            Object::TlsX509 {
                dir,
                endpoint,
                verify_peer,
            }
        }
        "authz-simple" => Object::AuthzSimple {
            identity: take("identity")
                .ok_or_else(|| format!("--object {kind}: 'identity' is missing"))?,
        },
        "tls-creds-psk" => {
            let dir = take("dir").ok_or_else(|| format!("--object {kind}: 'dir' is missing"))?;
            let endpoint = endpoint(kind, take("endpoint"))?;
            // Accepted as QEMU does; a PSK has no peer certificate to verify.
            if let Some(v) = take("verify-peer") {
                on_off("verify-peer", &v)?;
            }
            Object::TlsPsk {
                dir,
                endpoint,
                username: take("username"),
            }
        }
        other => return Err(format!("--object: unsupported object type '{other}'")),
    };
    if let Some(k) = props.keys().next() {
        return Err(format!("--object {kind}: unknown parameter '{k}'"));
    }
    Ok((id, obj))
}

/// What a client (`-L`) needs for TLS.
pub enum ClientTls {
    /// x509: trust anchors (and maybe a client certificate).
    X509(TlsCreds),
    /// PSK: the user and its key from `DIR/keys.psk`.
    Psk {
        /// The identity sent (`username=`, QEMU's default `qemu`).
        user: String,
        /// Its key.
        key: Vec<u8>,
    },
}

/// The client credentials `--tls-creds ID` names (`-L`).
///
/// # Errors
/// An unknown id, server credentials, or credentials that do not load.
pub fn client_tls(objects: &HashMap<String, Object>, id: &str) -> Result<ClientTls, String> {
    let (endpoint, tls) = match objects.get(id) {
        Some(Object::TlsX509 {
            dir,
            endpoint,
            verify_peer,
        }) => {
            let c = TlsCreds::x509_from_dir(Endpoint::Client, dir, *verify_peer)
                .map_err(|e| format!("TLS credentials '{id}': {e}"));
            (endpoint, c.map(ClientTls::X509))
        }
        Some(Object::TlsPsk {
            dir,
            endpoint,
            username,
        }) => {
            let user = username.clone().unwrap_or_else(|| "qemu".into());
            let path = std::path::Path::new(dir).join(corio_nbd::server::psk::PSK_FILE);
            let keys = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read PSK file {}: {e}", path.display()))
                .and_then(|t| {
                    corio_nbd::server::psk::parse_keys(&t)
                        .map_err(|e| format!("{}: {e}", path.display()))
                });
            let tls = keys.and_then(|mut k| {
                let key = k.remove(&user).ok_or_else(|| {
                    format!("Username '{user}' not found in PSK file {}", path.display())
                })?;
                Ok(ClientTls::Psk { user, key })
            });
            (endpoint, tls)
        }
        Some(_) => return Err(format!("Object '{id}' is not TLS credentials")),
        None => return Err(format!("No TLS credentials with id '{id}'")),
    };
    if *endpoint != Endpoint::Client {
        return Err("Expecting TLS credentials with a client endpoint".into());
    }
    tls
}

fn server_endpoint(e: Endpoint) -> Result<(), String> {
    if e == Endpoint::Server {
        Ok(())
    } else {
        Err("Expecting TLS credentials with a server endpoint".into())
    }
}

/// The TLS configuration `--tls-creds ID` and `--tls-authz ID` name.
///
/// # Errors
/// An unknown id, an object of the wrong type, client credentials, or
/// credentials that do not load.
pub fn tls_config(
    objects: &HashMap<String, Object>,
    creds: &str,
    authz: Option<&str>,
) -> Result<TlsConfig, String> {
    let Some(obj) = objects.get(creds) else {
        return Err(format!("No TLS credentials with id '{creds}'"));
    };
    let id = creds;
    let creds = match obj {
        Object::TlsX509 {
            dir,
            endpoint,
            verify_peer,
        } => {
            server_endpoint(*endpoint)?;
            let c = TlsCreds::x509_from_dir(Endpoint::Server, dir, *verify_peer)
                .map_err(|e| format!("TLS credentials '{id}': {e}"))?;
            ServerCreds::X509(c)
        }
        Object::TlsPsk { dir, endpoint, .. } => {
            server_endpoint(*endpoint)?;
            let c = PskCreds::from_dir(dir).map_err(|e| format!("TLS credentials '{id}': {e}"))?;
            ServerCreds::Psk(c)
        }
        Object::AuthzSimple { .. } => {
            return Err(format!("Object '{id}' is not TLS credentials"));
        }
    };
    let authz = match authz {
        None => None,
        Some(id) => match objects.get(id) {
            Some(Object::AuthzSimple { identity }) => {
                let identity = identity.clone();
                let f = move |who: &str| who == identity;
                Some(Arc::new(f) as Arc<dyn corio::io::tls::Authz>)
            }
            Some(_) => return Err(format!("Object '{id}' is not an authz object")),
            None => return Err(format!("No authz object with id '{id}'")),
        },
    };
    Ok(TlsConfig { creds, authz })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_syntax() {
        let (id, o) = parse("authz-simple,id=a0,identity=CN=x,,O=Example").unwrap();
        assert_eq!(id, "a0");
        assert_eq!(
            o,
            Object::AuthzSimple {
                identity: "CN=x,O=Example".into()
            }
        );
        let (_, o) = parse("tls-creds-x509,id=t,dir=/d,endpoint=server,verify-peer=off").unwrap();
        assert_eq!(
            o,
            Object::TlsX509 {
                dir: "/d".into(),
                endpoint: Endpoint::Server,
                verify_peer: false
            }
        );
        assert!(parse("tls-creds-x509,dir=/d").unwrap_err().contains("'id'"));
        let (_, o) = parse("tls-creds-psk,id=p,dir=/k,endpoint=client,username=alice").unwrap();
        assert_eq!(
            o,
            Object::TlsPsk {
                dir: "/k".into(),
                endpoint: Endpoint::Client,
                username: Some("alice".into())
            }
        );
        assert!(parse("secret,id=s,data=x").unwrap_err().contains("secret"));
        assert!(parse("authz-simple,id=a,identity=x,bogus=1")
            .unwrap_err()
            .contains("bogus"));
    }
}
