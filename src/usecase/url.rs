//! Server URLs: `xfer://HOST[:PORT]/PATH`.

use super::TransferError;
use crate::net::identity::server_authority;

/// A destination on a server: `xfer://HOST:PORT/PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteUrl {
    /// `host:PORT`, as pinned in known hosts (see [`server_authority`]).
    pub authority: String,
    /// The path under the server's root (no leading `/`).
    pub path: String,
}

pub use crate::net::identity::DEFAULT_PORT;

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
        let authority = match server_authority(authority) {
            Ok(authority) => authority,
            Err(e) => return bad(format!("has a bad server name: {e}")),
        };
        Ok(RemoteUrl { authority, path: path.to_string() })
    }
}

/// The path of a URL that names the server's root: `xfer://HOST/.`.
pub const ROOT_PATH: &str = ".";
