//! Trusting servers as ssh does: `xfer trust` pins a key in known hosts,
//! and a refused key is explained by where its pin came from: a server
//! never met gets the calm first-use advice, a key that no longer matches
//! its known-hosts pin is refused loudly with the line that holds the old
//! pin, and a wrong pin in config.toml is to be fixed there.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use xfer::{server_authority, Fingerprint, KnownHosts, RemoteUrl, TransferError};

use crate::config::Config;
use crate::transfer::{hinted, with_hint};
use crate::{config_dir_or_default, KNOWN_HOSTS};

/// Where the key a command expects of a server came from.
pub(crate) enum PinFrom {
    /// `--server-fingerprint`.
    Flag,
    /// The `fingerprint` of a remote in config.toml.
    Config,
    /// A line of known hosts.
    KnownHosts,
    /// Nowhere: the server was never pinned.
    Nowhere,
}

/// `xfer trust`: pins `authority` (`HOST[:PORT]`, the default port when
/// none is given, or a server URL) to `fingerprint` in known hosts.
pub(crate) fn trust(authority: &str, fingerprint: &str, config_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let fingerprint: Fingerprint = fingerprint.parse()?;
    // A server's URL names it too: its HOST[:PORT] is what gets pinned.
    let authority = authority.strip_prefix("xfer://").map_or(authority, |rest| rest.split('/').next().unwrap_or(rest));
    let authority = server_authority(authority)?;
    let mut hosts = KnownHosts::load(&config_dir_or_default(config_dir)?.join(KNOWN_HOSTS))?;
    let file = hosts.path().display().to_string();
    match hosts.pin(&authority, fingerprint)? {
        Some(old) if old == fingerprint => eprintln!("xfer: {authority} was already pinned to {fingerprint} in {file}"),
        Some(old) => eprintln!("xfer: pinned {authority} to {fingerprint} in {file}, replacing {old}"),
        None => eprintln!("xfer: pinned {authority} to {fingerprint} in {file}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The error of a session, with what to do about a server key that was
/// refused, according to where its pin came from (`hosts`, the known
/// hosts the pin was looked up in; `config_dir`, where config.toml is).
pub(crate) fn explain(
    e: TransferError,
    from: &PinFrom,
    url: &RemoteUrl,
    hosts: &KnownHosts,
    config_dir: &Path,
) -> anyhow::Error {
    let TransferError::UntrustedServer { authority, seen, .. } = &e else { return with_hint(e) };
    let advice = match from {
        PinFrom::Nowhere => format!(
            ". If that is the server's key (`xfer id` on the server prints it; compare it over a channel \
             you trust), pin it with:\n    xfer trust {authority} {seen}\nor pass --accept-new to pin the key \
             it presents on first use"
        ),
        PinFrom::KnownHosts => {
            let line = hosts.line_of(&url.authority).map_or_else(String::new, |n| format!("line {n} of "));
            format!(
                ".\nThe key pinned on {line}{file} no longer matches. If you know the server's key changed \
                 (check with `xfer id` on the server), replace the pin with:\n    xfer trust {authority} {seen}",
                file = hosts.path().display()
            )
        }
        PinFrom::Config => config_advice(url, seen, config_dir),
        PinFrom::Flag => format!(
            ".\nThe expected key came from --server-fingerprint: if the server's key is {seen}, pass that instead"
        ),
    };
    hinted(e, advice)
}

/// What to do about a config.toml pin that does not match the server:
/// fix it there (pinning in known hosts would not help: the config's pin
/// wins).
fn config_advice(url: &RemoteUrl, seen: &Fingerprint, config_dir: &Path) -> String {
    let config = Config::load(config_dir).ok();
    let remote = config.as_ref().and_then(|config| config.remote_of(url));
    match (config.as_ref(), remote) {
        (Some(config), Some(name)) => format!(
            ".\nThe expected key is the `fingerprint` of remote {name:?} in {}: the config's pin does not match \
             the server's key. If the server's key is {seen}, fix config.toml: set `fingerprint = \"{seen}\"` \
             under [remotes.{name}]",
            config.path().display()
        ),
        _ => format!(
            ".\nThe expected key is a remote's `fingerprint` in config.toml: the config's pin does not match the \
             server's key. If the server's key is {seen}, fix that `fingerprint` in config.toml"
        ),
    }
}
