//! The config file, `CONFIG_DIR/config.toml`: defaults for push and pull,
//! and named remotes, so `xfer push ./site backup` needs no URL.
//!
//! ```toml
//! [defaults]
//! delete = true
//! busy_wait = 300
//! exclude = ["*.tmp", "cache/"]
//! bwlimit = "08:00,1M 19:00,off"
//! window = "22:00-06:00"
//!
//! [remotes.backup]
//! url = "xfer://backup.example:7878/site"
//! fingerprint = "xfer:..."
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use xfer::identity::Fingerprint;
use xfer::throttle::{Timetable, Window};
use xfer::transport::client::RemoteUrl;

/// The file's name in the config dir.
pub const CONFIG_FILE: &str = "config.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub remotes: BTreeMap<String, Remote>,
}

/// Values used when the command line does not give them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub delete: Option<bool>,
    pub checksum: Option<bool>,
    pub busy_wait: Option<u64>,
    pub state_dir: Option<PathBuf>,
    /// Patterns and pattern files, before the command line's.
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub exclude_from: Vec<PathBuf>,
    /// A rate or timetable, as `--bwlimit`.
    pub bwlimit: Option<String>,
    /// As `--window`.
    pub window: Option<String>,
}

/// A named destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    pub url: String,
    pub fingerprint: Option<String>,
}

impl Config {
    /// Reads `dir/config.toml`; a missing file is an empty config.
    pub fn load(dir: &Path) -> anyhow::Result<Config> {
        let path = dir.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        let config: Config = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid xfer config (see `xfer push --help`)", path.display()))?;
        // Bad values are reported against the file, before any run.
        let defaults = &config.defaults;
        if let Some(rate) = &defaults.bwlimit {
            rate.parse::<Timetable>().with_context(|| format!("{}: [defaults] bwlimit", path.display()))?;
        }
        if let Some(window) = defaults.window.as_deref().filter(|w| *w != "always") {
            window.parse::<Window>().with_context(|| format!("{}: [defaults] window", path.display()))?;
        }
        for (name, remote) in &config.remotes {
            if RemoteUrl::parse(&remote.url).is_none() {
                bail!("{}: remote {name:?} has url {:?}; use xfer://HOST[:PORT]/PATH", path.display(), remote.url);
            }
            if let Some(fp) = &remote.fingerprint {
                fp.parse::<Fingerprint>().with_context(|| format!("{}: remote {name:?}", path.display()))?;
            }
        }
        Ok(config)
    }

    /// What `word` names as a push destination or pull source: a server URL
    /// (with the fingerprint configured for it), or `None` for a local
    /// path. A bare name that a remote of this config carries is that
    /// remote; write `./name` for a local directory of the same name.
    pub fn target(&self, word: &Path) -> anyhow::Result<Option<(RemoteUrl, Option<Fingerprint>)>> {
        let Some(text) = word.to_str() else { return Ok(None) };
        if let Some(url) = RemoteUrl::parse(text) {
            return Ok(Some((url, None)));
        }
        let Some(remote) = self.remotes.get(text) else { return Ok(None) };
        let url = RemoteUrl::parse(&remote.url).context("invariant: checked at load")?;
        let pin = remote.fingerprint.as_deref().map(str::parse).transpose()?;
        Ok(Some((url, pin)))
    }
}
