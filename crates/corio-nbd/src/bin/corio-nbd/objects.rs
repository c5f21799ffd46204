//! `--object` definitions in QEMU's syntax: `type,key=value,...`, where
//! `,,` stands for a comma inside a value (DNs have commas).

use std::collections::HashMap;
use std::sync::Arc;

use corio::io::tls::{Endpoint, TlsCreds};
use corio_nbd::server::TlsConfig;

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
            let endpoint = match take("endpoint").as_deref() {
                None | Some("client") => Endpoint::Client,
                Some("server") => Endpoint::Server,
                Some(e) => return Err(format!("--object {kind}: invalid endpoint '{e}'")),
            };
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
            return Err(
                "--object tls-creds-psk: PSK credentials are not supported by this build \
                 (use tls-creds-x509)"
                    .into(),
            )
        }
        other => return Err(format!("--object: unsupported object type '{other}'")),
    };
    if let Some(k) = props.keys().next() {
        return Err(format!("--object {kind}: unknown parameter '{k}'"));
    }
    Ok((id, obj))
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
    let Object::TlsX509 {
        dir,
        endpoint,
        verify_peer,
    } = obj
    else {
        return Err(format!("Object '{creds}' is not TLS credentials"));
    };
    if *endpoint != Endpoint::Server {
        return Err("Expecting TLS credentials with a server endpoint".into());
    }
    let creds = TlsCreds::x509_from_dir(Endpoint::Server, dir, *verify_peer)
        .map_err(|e| format!("TLS credentials '{creds}': {e}"))?;
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
        assert!(parse("secret,id=s,data=x").unwrap_err().contains("secret"));
        assert!(parse("authz-simple,id=a,identity=x,bogus=1")
            .unwrap_err()
            .contains("bogus"));
    }
}
