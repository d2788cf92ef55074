//! The config file, `CONFIG_DIR/config.toml`: settings for push and pull,
//! and named remotes, so `xfer push ./site backup` needs no URL.
//!
//! ```toml
//! [defaults]            # safe for both push and pull
//! busy_wait = 300
//! bwlimit = "08:00,1M 19:00,off"
//! window = "22:00-06:00"
//!
//! [push]                # pushes only; these win over [defaults]
//! delete = true
//! exclude = ["*.tmp", "cache/"]
//!
//! [pull]                # pulls (restores) only
//! checksum = true
//!
//! [serve]               # xfer serve
//! congestion = "bbr"
//! metrics = "127.0.0.1:9186"
//!
//! [remotes.backup]
//! url = "xfer://backup.example:7878/site"
//! fingerprint = "xfer:..."
//! ```
//!
//! `delete` and `exclude` are refused under `[defaults]`: a delete meant
//! for the nightly push would make a restore delete unrelated local files,
//! and a pull takes no patterns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use xfer::Congestion;
use xfer::Fingerprint;
use xfer::RemoteUrl;
use xfer::{Timetable, Window};

/// The file's name in the config dir.
pub const CONFIG_FILE: &str = "config.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    defaults: Settings,
    #[serde(default)]
    push: Settings,
    #[serde(default)]
    pull: Settings,
    #[serde(default)]
    pub serve: ServeSettings,
    #[serde(default)]
    pub remotes: BTreeMap<String, Remote>,
    /// Where it was read from, for messages.
    #[serde(skip)]
    path: PathBuf,
}

/// Values used when the command line does not give them: one section for
/// each command, and `[defaults]` under both.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub delete: Option<bool>,
    pub checksum: Option<bool>,
    pub busy_wait: Option<u64>,
    pub state_dir: Option<PathBuf>,
    /// As `--max-delete`.
    pub max_delete: Option<u64>,
    /// Patterns and pattern files, before the command line's (pushes only).
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub exclude_from: Vec<PathBuf>,
    /// A rate or timetable, as `--bwlimit`.
    pub bwlimit: Option<String>,
    /// As `--window`.
    pub window: Option<String>,
    /// As `--congestion`.
    pub congestion: Option<String>,
}

/// `xfer serve`'s settings: the command line's win.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSettings {
    /// As `serve --congestion`.
    pub congestion: Option<String>,
    /// As `serve --metrics`: where to serve Prometheus metrics.
    pub metrics: Option<std::net::SocketAddr>,
}

impl Settings {
    /// `self`, with `under`'s values where `self` has none.
    fn over(&self, under: &Settings) -> Settings {
        let list = |a: &Vec<String>, b: &Vec<String>| if a.is_empty() { b.clone() } else { a.clone() };
        let files = |a: &Vec<PathBuf>, b: &Vec<PathBuf>| if a.is_empty() { b.clone() } else { a.clone() };
        Settings {
            delete: self.delete.or(under.delete),
            checksum: self.checksum.or(under.checksum),
            busy_wait: self.busy_wait.or(under.busy_wait),
            state_dir: self.state_dir.clone().or_else(|| under.state_dir.clone()),
            max_delete: self.max_delete.or(under.max_delete),
            exclude: list(&self.exclude, &under.exclude),
            exclude_from: files(&self.exclude_from, &under.exclude_from),
            bwlimit: self.bwlimit.clone().or_else(|| under.bwlimit.clone()),
            window: self.window.clone().or_else(|| under.window.clone()),
            congestion: self.congestion.clone().or_else(|| under.congestion.clone()),
        }
    }
}

/// A named destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    pub url: String,
    pub fingerprint: Option<String>,
}

/// What a push destination or pull source names.
pub enum Target {
    /// A server, with the fingerprint configured for it.
    Remote(RemoteUrl, Option<Fingerprint>),
    /// A local directory.
    Local,
}

impl Config {
    /// Reads `dir/config.toml`; a missing file is an empty config.
    pub fn load(dir: &Path) -> anyhow::Result<Config> {
        let path = dir.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config { path, ..Config::default() }),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        let mut config: Config = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid xfer config (see `xfer push --help`)", path.display()))?;
        config.path = path;
        config.check().map_err(crate::usage)?;
        Ok(config)
    }

    /// Bad values are reported against the file, before any run.
    fn check(&self) -> anyhow::Result<()> {
        let path = self.path.display();
        if self.defaults.delete.is_some() {
            bail!(
                "{path}: `delete` under [defaults] would apply to pulls (restores) too, deleting local files \
                 the backup lacks; move it under [push] (or [pull], if that is really meant)"
            );
        }
        if !self.defaults.exclude.is_empty() || !self.defaults.exclude_from.is_empty() {
            bail!("{path}: `exclude` and `exclude_from` work on pushes only; move them from [defaults] under [push]");
        }
        if !self.pull.exclude.is_empty() || !self.pull.exclude_from.is_empty() {
            bail!(
                "{path}: [pull] cannot take `exclude` or `exclude_from`: a pull's source is scanned by the server; \
                 move them under [push]"
            );
        }
        for (section, settings) in [("defaults", &self.defaults), ("push", &self.push), ("pull", &self.pull)] {
            if let Some(rate) = &settings.bwlimit {
                rate.parse::<Timetable>().with_context(|| format!("{path}: [{section}] bwlimit"))?;
            }
            if let Some(window) = settings.window.as_deref().filter(|w| *w != "always") {
                window.parse::<Window>().with_context(|| format!("{path}: [{section}] window"))?;
            }
        }
        let congestion = [("defaults", &self.defaults), ("push", &self.push), ("pull", &self.pull)]
            .map(|(section, settings)| (section, &settings.congestion));
        for (section, name) in congestion.into_iter().chain([("serve", &self.serve.congestion)]) {
            if let Some(name) = name {
                name.parse::<Congestion>().with_context(|| format!("{path}: [{section}] congestion"))?;
            }
        }
        for (name, remote) in &self.remotes {
            RemoteUrl::parse_checked(&remote.url).with_context(|| format!("{path}: remote {name:?}"))?;
            if let Some(fp) = &remote.fingerprint {
                fp.parse::<Fingerprint>().with_context(|| format!("{path}: remote {name:?}"))?;
            }
        }
        Ok(())
    }

    /// Where the file is (or would be).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name of a remote whose URL names `url`'s server and tree and
    /// which pins a fingerprint, for messages about that pin.
    pub fn remote_of(&self, url: &RemoteUrl) -> Option<&str> {
        let pins = |remote: &Remote| {
            remote.fingerprint.is_some() && RemoteUrl::parse_checked(&remote.url).is_ok_and(|u| u == *url)
        };
        self.remotes.iter().find(|(_, remote)| pins(remote)).map(|(name, _)| name.as_str())
    }

    /// The settings of a push (`push`) or a pull: its own section over
    /// `[defaults]`.
    pub fn settings(&self, push: bool) -> Settings {
        if push { &self.push } else { &self.pull }.over(&self.defaults)
    }

    /// What `word` names as a push destination or pull source: a server URL
    /// (checked: it must name a path), a remote of this config, or a local
    /// path. A bare word that is none of these, or an scp-style
    /// `host:path`, is refused rather than made into a new local directory
    /// (a mistyped remote would otherwise back up into the working
    /// directory and report success). Write `./name` for a new local
    /// directory of that name.
    pub fn target(&self, word: &Path) -> anyhow::Result<Target> {
        let Some(text) = word.to_str() else { return Ok(Target::Local) };
        if text.starts_with("xfer:") {
            return Ok(Target::Remote(RemoteUrl::parse_checked(text)?, None));
        }
        if let Some(remote) = self.remotes.get(text) {
            let url = RemoteUrl::parse_checked(&remote.url).context("invariant: checked at load")?;
            let pin = remote.fingerprint.as_deref().map(str::parse).transpose()?;
            return Ok(Target::Remote(url, pin));
        }
        if std::fs::symlink_metadata(word).is_ok() {
            return Ok(Target::Local);
        }
        if let Some((host, path)) = text.split_once(':').filter(|(host, _)| !host.is_empty() && !host.contains('/')) {
            let host = host.rsplit_once('@').map_or(host, |(_, host)| host);
            let path = path.trim_start_matches('/');
            bail!(
                "{text:?} looks like an rsync or scp HOST:PATH; xfer names a server as xfer://HOST[:PORT]/PATH, \
                 e.g. xfer://{host}/{path} (the path is under the directory `xfer serve --root` serves). \
                 For a local directory, write ./{text}"
            );
        }
        if text.contains('/') || text.starts_with('.') {
            return Ok(Target::Local);
        }
        let remotes = if self.remotes.is_empty() {
            format!("{} names no remotes", self.path.display())
        } else {
            let names: Vec<&str> = self.remotes.keys().map(String::as_str).collect();
            format!("the remotes in {} are: {}", self.path.display(), names.join(", "))
        };
        bail!(
            "{text:?} is neither a remote nor an existing path; {remotes}. For a new local directory write \
             ./{text}, for a server xfer://HOST[:PORT]/PATH"
        )
    }
}
