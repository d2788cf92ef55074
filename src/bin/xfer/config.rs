//! The config file, `CONFIG_DIR/config.toml`: settings for push and pull,
//! and named remotes, so `xfer push ./site backup` needs no URL.
//!
//! ```toml
//! [defaults]            # safe for both push and pull
//! busy_wait = 300
//! bwlimit = "08:00,1M 19:00,off"
//! window = "22:00-06:00"
//! log_json = "/var/log/xfer/runs.jsonl"
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
//!
//! Layers, each over the next: the command line, `XFER_<SECTION>_<KEY>`
//! variables (`XFER_PUSH_MAX_DELETE=5000`, `XFER_DEFAULTS_BWLIMIT=10M`,
//! `XFER_REMOTES_BACKUP_URL=xfer://...`), the user's config file, the
//! system's (`/etc/xfer/config.toml`), the built-in defaults. Each layer is
//! checked alone, so a bad value names its file or its variable.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use xfer::Congestion;
use xfer::Fingerprint;
use xfer::RemoteUrl;
use xfer::{Timetable, Window};

use crate::Usage;

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
    /// The user's config file, for messages.
    #[serde(skip)]
    path: PathBuf,
    /// Whether this layer is the `XFER_*` variables, for messages.
    #[serde(skip)]
    from_env: bool,
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
    /// As `--log-json`.
    pub log_json: Option<PathBuf>,
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
            log_json: self.log_json.clone().or_else(|| under.log_json.clone()),
        }
    }
}

/// A named destination. Its `url` may come from another layer than its
/// `fingerprint`; the merged config must have one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    pub url: Option<String>,
    pub fingerprint: Option<String>,
}

/// What a push destination or pull source names.
pub enum Target {
    /// A server, with the fingerprint configured for it.
    Remote(RemoteUrl, Option<Fingerprint>),
    /// A local directory.
    Local,
}

/// The sections an `XFER_<SECTION>_<KEY>` variable may set.
const ENV_SECTIONS: [&str; 4] = ["defaults", "push", "pull", "serve"];

impl Config {
    /// The settings in force for the user whose config dir is `dir`: the
    /// `XFER_*` variables over `dir/config.toml` over the system's config
    /// file (a missing file is empty). A bad value is a usage error.
    pub fn load(dir: &Path) -> anyhow::Result<Config> {
        let user = dir.join(CONFIG_FILE);
        let system = xfer::system_config_dir().join(CONFIG_FILE);
        let mut layers = Vec::new();
        if !same_file(&system, &user) {
            layers.push((read_table(&system)?, system));
        }
        layers.push((read_table(&user)?, user.clone()));
        let mut merged = toml::Table::new();
        for (table, path) in layers {
            let layer = Config::of_table(table.clone(), &path)?;
            layer.check()?;
            merge(&mut merged, table);
        }
        let mut env = env_table(std::env::vars_os())?;
        name_remotes_as_files_do(&mut env, &merged);
        let layer = Config { from_env: true, ..Config::of_table(env.clone(), &user)? };
        layer.check()?;
        merge(&mut merged, env);
        let config = Config::of_table(merged, &user)?;
        config.check_remotes_complete()?;
        Ok(config)
    }

    /// A layer's table as a config; `path` names it in messages.
    fn of_table(table: toml::Table, path: &Path) -> anyhow::Result<Config> {
        let config: Config = toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| {
            Usage::error(format!("{}: {} (see `xfer push --help`)", path.display(), e.message()))
        })?;
        Ok(Config { path: path.to_path_buf(), ..config })
    }

    /// Where a setting of this layer is given, for messages: the file and
    /// section, or the variable.
    fn at(&self, section: &str, key: &str) -> String {
        if self.from_env {
            format!("XFER_{}_{}", section.to_uppercase(), key.to_uppercase())
        } else {
            format!("{}: [{section}] {key}", self.path.display())
        }
    }

    /// Where a remote of this layer is given, for messages.
    fn remote_at(&self, name: &str) -> String {
        if self.from_env {
            format!("XFER_REMOTES_{}_*", name.to_uppercase())
        } else {
            format!("{}: remote {name:?}", self.path.display())
        }
    }

    /// Bad values are reported against their file or variable, before any
    /// run.
    fn check(&self) -> anyhow::Result<()> {
        self.check_sections().map_err(crate::usage)?;
        self.check_values().map_err(crate::usage)
    }

    fn check_sections(&self) -> anyhow::Result<()> {
        if self.defaults.delete.is_some() {
            bail!(
                "{}: it would apply to pulls (restores) too, deleting local files the backup lacks; set it for \
                 pushes only, under [push] (or [pull], if that is really meant)",
                self.at("defaults", "delete")
            );
        }
        if !self.defaults.exclude.is_empty() || !self.defaults.exclude_from.is_empty() {
            let key = if self.defaults.exclude.is_empty() { "exclude_from" } else { "exclude" };
            bail!("{}: patterns work on pushes only; set them under [push]", self.at("defaults", key));
        }
        if !self.pull.exclude.is_empty() || !self.pull.exclude_from.is_empty() {
            let key = if self.pull.exclude.is_empty() { "exclude_from" } else { "exclude" };
            bail!(
                "{}: a pull takes no patterns (its source is scanned by the server); set them under [push]",
                self.at("pull", key)
            );
        }
        Ok(())
    }

    fn check_values(&self) -> anyhow::Result<()> {
        for (section, settings) in [("defaults", &self.defaults), ("push", &self.push), ("pull", &self.pull)] {
            if let Some(rate) = &settings.bwlimit {
                rate.parse::<Timetable>().with_context(|| self.at(section, "bwlimit"))?;
            }
            if let Some(window) = settings.window.as_deref().filter(|w| *w != "always") {
                window.parse::<Window>().with_context(|| self.at(section, "window"))?;
            }
        }
        let congestion = [("defaults", &self.defaults), ("push", &self.push), ("pull", &self.pull)]
            .map(|(section, settings)| (section, &settings.congestion));
        for (section, name) in congestion.into_iter().chain([("serve", &self.serve.congestion)]) {
            if let Some(name) = name {
                name.parse::<Congestion>().with_context(|| self.at(section, "congestion"))?;
            }
        }
        for (name, remote) in &self.remotes {
            if let Some(url) = &remote.url {
                RemoteUrl::parse_checked(url).with_context(|| self.remote_at(name))?;
            }
            if let Some(fp) = &remote.fingerprint {
                fp.parse::<Fingerprint>().with_context(|| self.remote_at(name))?;
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
            let names = |text: &str| RemoteUrl::parse_checked(text).is_ok_and(|u| u == *url);
            remote.fingerprint.is_some() && remote.url.as_deref().is_some_and(names)
        };
        self.remotes.iter().find(|(_, remote)| pins(remote)).map(|(name, _)| name.as_str())
    }

    /// Every remote of the merged layers has a URL.
    fn check_remotes_complete(&self) -> anyhow::Result<()> {
        match self.remotes.iter().find(|(_, remote)| remote.url.is_none()) {
            Some((name, _)) => Err(Usage::error(format!(
                "remote {name:?} has no url: set url under [remotes.{name}] in {} or XFER_REMOTES_{}_URL",
                self.path.display(),
                name.to_uppercase()
            ))),
            None => Ok(()),
        }
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
            let url = remote.url.as_deref().context("invariant: every remote has a url once loaded")?;
            let url = RemoteUrl::parse_checked(url).context("invariant: checked at load")?;
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

/// A config file's table; a missing file is an empty one.
fn read_table(path: &Path) -> anyhow::Result<toml::Table> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(toml::Table::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    toml::from_str(&text).map_err(|e: toml::de::Error| {
        Usage::error(format!("{} is not a valid xfer config (see `xfer push --help`): {e}", path.display()))
    })
}

/// Whether two config paths name one file (root's config dir is the
/// system's), so it is read once.
fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// `from`'s keys over `into`'s, table by table.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(below)), toml::Value::Table(above)) => merge(below, above),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// A variable can only spell a remote's name in capitals and underscores:
/// it names the files' remote `My-Backup` as `XFER_REMOTES_MY_BACKUP_*`.
fn name_remotes_as_files_do(env: &mut toml::Table, files: &toml::Table) {
    let (Some(toml::Value::Table(set)), Some(toml::Value::Table(known))) =
        (env.get_mut("remotes"), files.get("remotes"))
    else {
        return;
    };
    let spelled = |name: &str| name.replace('-', "_").to_lowercase();
    for name in set.keys().cloned().collect::<Vec<_>>() {
        let file_name = known.keys().find(|k| **k != name && spelled(k) == name);
        if let (Some(file_name), Some(value)) = (file_name, set.remove(&name)) {
            set.insert(file_name.clone(), value);
        }
    }
}

/// The `XFER_<SECTION>_<KEY>` variables as a config table: sections
/// `DEFAULTS`, `PUSH`, `PULL` and `SERVE`, and `REMOTES_<NAME>_URL` or
/// `_FINGERPRINT`. Other `XFER_` variables (`XFER_CONFIG_DIR`...) are not
/// config keys and are left alone.
pub fn env_table(vars: impl Iterator<Item = (OsString, OsString)>) -> anyhow::Result<toml::Table> {
    let mut table = toml::Table::new();
    for (name, value) in vars {
        let Some(place) = name.to_str().and_then(env_place) else { continue };
        let name = name.to_string_lossy();
        let Some(text) = value.to_str() else {
            return Err(Usage::error(format!("{name} is not valid UTF-8")));
        };
        let value = env_value(&place, text).map_err(|why| {
            Usage::error(format!("{name}={text:?}: {why} (it takes what its config key takes: see `xfer push --help`)"))
        })?;
        insert(&mut table, &place, value);
    }
    Ok(table)
}

/// The table path (section, key; or remotes, name, key) a variable sets.
fn env_place(name: &str) -> Option<Vec<String>> {
    let rest = name.strip_prefix("XFER_")?.to_lowercase();
    if let Some(remote) = rest.strip_prefix("remotes_") {
        let (name, key) = remote.rsplit_once('_').filter(|(name, _)| !name.is_empty())?;
        return Some(vec!["remotes".into(), name.into(), key.into()]);
    }
    ENV_SECTIONS.iter().find_map(|section| {
        let key = rest.strip_prefix(section)?.strip_prefix('_').filter(|key| !key.is_empty())?;
        Some(vec![section.to_string(), key.to_string()])
    })
}

/// A variable's text as the value its key takes: the text itself (a
/// string or path), else the text read as TOML (a number, true or false,
/// a list as `["a", "b"]`), else a list of that one string.
fn env_value(place: &[String], text: &str) -> Result<toml::Value, String> {
    let as_toml = toml::from_str::<toml::Table>(&format!("v = {text}")).ok().and_then(|mut t| t.remove("v"));
    let candidates = [Some(toml::Value::String(text.into())), as_toml, Some(toml::Value::Array(vec![text.into()]))];
    let mut first_error = None;
    for value in candidates.into_iter().flatten() {
        let mut probe = toml::Table::new();
        insert(&mut probe, place, value.clone());
        match toml::Value::Table(probe).try_into::<Config>() {
            Ok(_) => return Ok(value),
            Err(e) => {
                first_error.get_or_insert_with(|| e.message().to_string());
            }
        }
    }
    Err(first_error.unwrap_or_default())
}

/// Sets `value` at `place` in `table`, making the tables on the way.
fn insert(table: &mut toml::Table, place: &[String], value: toml::Value) {
    let Some((key, parents)) = place.split_last() else { return };
    let mut at = table;
    for parent in parents {
        let entry = at.entry(parent.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(next) = entry else { return };
        at = next;
    }
    at.insert(key.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> anyhow::Result<toml::Table> {
        env_table(vars.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))))
    }

    #[test]
    fn variables_take_the_type_of_their_key() {
        let table = env(&[
            ("XFER_PUSH_MAX_DELETE", "5000"),
            ("XFER_PUSH_DELETE", "true"),
            ("XFER_DEFAULTS_BWLIMIT", "100"),
            ("XFER_PUSH_EXCLUDE", "*.tmp"),
            ("XFER_PULL_EXCLUDE_FROM", r#"["/a", "/b"]"#),
            ("XFER_REMOTES_MY_BACKUP_URL", "xfer://h/p"),
            ("XFER_CONFIG_DIR", "/not/a/key"),
        ])
        .unwrap();
        let config: Config = toml::Value::Table(table).try_into().unwrap();
        assert_eq!(config.push.max_delete, Some(5000));
        assert_eq!(config.push.delete, Some(true));
        assert_eq!(config.defaults.bwlimit.as_deref(), Some("100"), "a rate stays text");
        assert_eq!(config.push.exclude, ["*.tmp"]);
        assert_eq!(config.pull.exclude_from, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(config.remotes["my_backup"].url.as_deref(), Some("xfer://h/p"));
    }

    #[test]
    fn a_bad_variable_is_named() {
        for (name, value) in [("XFER_PUSH_MAX_DELETE", "lots"), ("XFER_PUSH_COLOUR", "red"), ("XFER_SERVE_X", "1")] {
            let error = env(&[(name, value)]).unwrap_err();
            assert!(error.downcast_ref::<Usage>().is_some());
            assert!(error.to_string().starts_with(name), "{error}");
        }
    }

    #[test]
    fn variables_name_the_files_remotes() {
        let files: toml::Table = toml::from_str("[remotes.My-Backup]\nurl = \"xfer://h/p\"\n").unwrap();
        let mut set = env(&[("XFER_REMOTES_MY_BACKUP_FINGERPRINT", "xfer:x")]).unwrap();
        name_remotes_as_files_do(&mut set, &files);
        assert!(set["remotes"].get("My-Backup").is_some(), "{set:?}");
    }

    #[test]
    fn later_layers_win_key_by_key() {
        let mut merged: toml::Table = toml::from_str("[push]\ndelete = true\nmax_delete = 1\n").unwrap();
        merge(&mut merged, toml::from_str("[push]\nmax_delete = 9\n").unwrap());
        let config: Config = toml::Value::Table(merged).try_into().unwrap();
        assert_eq!((config.push.delete, config.push.max_delete), (Some(true), Some(9)));
    }
}
