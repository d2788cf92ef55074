//! Server URLs: `xfer://HOST[:PORT]/PATH`.

use super::TransferError;

/// A destination on a server: `xfer://HOST:PORT/PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteUrl {
    /// `HOST:PORT`, as pinned in known hosts.
    pub authority: String,
    /// The path under the server's root (no leading `/`).
    pub path: String,
}

/// Default port of `xfer serve`.
pub const DEFAULT_PORT: u16 = 7878;

impl RemoteUrl {
    /// Parses `xfer://HOST[:PORT]/PATH`; `None` if `text` is not such a
    /// URL ([`RemoteUrl::parse_checked`] says why).
    pub fn parse(text: &str) -> Option<RemoteUrl> {
        RemoteUrl::parse_checked(text).ok()
    }

    /// Parses `xfer://HOST[:PORT]/PATH`, where PATH names a tree under the
    /// server's root and `/.` names the root itself. A URL without a path
    /// is refused: a push with `--delete` to the root replaces every tree
    /// the server holds, so the root must be asked for explicitly.
    ///
    /// # Errors
    /// [`TransferError::BadUrl`], saying what to write instead.
    pub fn parse_checked(text: &str) -> Result<RemoteUrl, TransferError> {
        let bad = |why: String| Err(TransferError::BadUrl(format!("{text:?} {why}")));
        let Some(rest) = text.strip_prefix("xfer://") else {
            return bad("is not a server URL; use xfer://HOST[:PORT]/PATH".into());
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return bad("names no server; use xfer://HOST[:PORT]/PATH".into());
        }
        let path = match path.trim_matches('/') {
            "" => {
                return bad(format!(
                    "names no path on the server; name the tree, as xfer://{authority}/NAME, or the server's \
                     whole root explicitly, as xfer://{authority}/. (with --delete that replaces every tree \
                     the server holds)"
                ))
            }
            ROOT_PATH => "",
            path => path,
        };
        let authority = match authority_of(authority) {
            Ok(authority) => authority,
            Err(why) => return bad(why),
        };
        Ok(RemoteUrl { authority, path: path.to_string() })
    }
}

/// `HOST[:PORT]` as known hosts pin it, with the default port added:
/// HOST is a name, an IPv4 address or an IPv6 address in brackets, PORT
/// a number from 1 to 65535. The error says what is wrong, for "TEXT ...".
fn authority_of(text: &str) -> Result<String, String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((address, after)) = rest.split_once(']') else {
            return Err(format!("has no `]` after the IPv6 address {rest:?}; write xfer://[ADDRESS]:PORT/PATH"));
        };
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("names {address:?} in brackets, which is not an IPv6 address"));
        }
        match after {
            "" => (text.to_string(), None),
            _ => match after.strip_prefix(':') {
                Some(port) => (format!("[{address}]"), Some(port)),
                None => return Err(format!("has {after:?} after the IPv6 address; write xfer://[{address}]:PORT/PATH")),
            },
        }
    } else {
        if let Some((user, host)) = text.split_once('@') {
            return Err(format!(
                "names a user ({user:?}); xfer knows a client by its key (`xfer id`), not by a user name: \
                 write xfer://{host}/PATH"
            ));
        }
        if text.matches(':').count() > 1 {
            return Err(format!("names {text:?}: put an IPv6 address in brackets, as xfer://[{text}]:{DEFAULT_PORT}/PATH"));
        }
        match text.split_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (text.to_string(), None),
        }
    };
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if host.is_empty() || !(host.starts_with('[') || host.chars().all(name_char)) {
        return Err(format!("names the host {host:?}, which is not a host name or an IP address"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port > 0 && text.bytes().all(|b| b.is_ascii_digit()) => port,
            _ => {
                return Err(format!(
                    "names the port {text:?}, which is not a port number (1 to 65535); write \
                     xfer://{host}:PORT/PATH, or leave the port out for {DEFAULT_PORT}"
                ))
            }
        },
    };
    Ok(format!("{host}:{port}"))
}

/// The path of a URL that names the server's root: `xfer://HOST/.`.
pub const ROOT_PATH: &str = ".";
