//! Where xfer finds its config and keeps its state when no flag says: a
//! systemd unit has no `$HOME`, so the directories systemd made for the
//! unit come before the XDG base directories and the home directory, and
//! root without a home falls back to the system's (`/etc/xfer`,
//! `/var/lib/xfer`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// One kind of directory and where each source of it is found.
struct Base {
    /// xfer's own variable: the directory itself, as explicit as the flag.
    xfer: &'static str,
    /// systemd's (`ConfigurationDirectory=`, `StateDirectory=`): a
    /// colon-separated list of absolute paths, the first one ours.
    systemd: &'static str,
    /// The XDG base directory; a relative value is ignored, as the XDG
    /// specification says.
    xdg: &'static str,
    /// Below `$HOME` when the XDG variable is unset.
    under_home: &'static str,
    /// For root without a home.
    system: &'static str,
}

const CONFIG: Base = Base {
    xfer: "XFER_CONFIG_DIR",
    systemd: "CONFIGURATION_DIRECTORY",
    xdg: "XDG_CONFIG_HOME",
    under_home: ".config",
    system: "/etc/xfer",
};

const STATE: Base = Base {
    xfer: "XFER_STATE_DIR",
    systemd: "STATE_DIRECTORY",
    xdg: "XDG_STATE_HOME",
    under_home: ".local/state",
    system: "/var/lib/xfer",
};

/// The system-wide config directory: `/etc/xfer`. `XFER_SYSTEM_CONFIG_DIR`
/// (absolute) replaces it, for tests and for packagers with another
/// prefix.
const SYSTEM_CONFIG: &str = "/etc/xfer";

/// The config directory: `$XFER_CONFIG_DIR`, else `$CONFIGURATION_DIRECTORY`
/// (its first entry), else `$XDG_CONFIG_HOME/xfer` (when absolute), else
/// `~/.config/xfer`, else `/etc/xfer` for root.
pub fn config_dir() -> Option<PathBuf> {
    resolve(&CONFIG, &|name| std::env::var_os(name), is_root())
}

/// The state directory: `$XFER_STATE_DIR`, else `$STATE_DIRECTORY` (its
/// first entry), else `$XDG_STATE_HOME/xfer` (when absolute), else
/// `~/.local/state/xfer`, else `/var/lib/xfer` for root.
pub fn state_dir() -> Option<PathBuf> {
    resolve(&STATE, &|name| std::env::var_os(name), is_root())
}

/// The system-wide config directory, read under the user's.
pub fn system_config_dir() -> PathBuf {
    let set = std::env::var_os("XFER_SYSTEM_CONFIG_DIR").map(PathBuf::from);
    set.filter(|dir| dir.is_absolute()).unwrap_or_else(|| PathBuf::from(SYSTEM_CONFIG))
}

fn resolve(base: &Base, env: &dyn Fn(&str) -> Option<OsString>, root: bool) -> Option<PathBuf> {
    let var = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var(base.xfer) {
        return Some(dir);
    }
    let systemd = var(base.systemd).and_then(|list| first_absolute(&list));
    if let Some(dir) = systemd {
        return Some(dir);
    }
    if let Some(dir) = var(base.xdg).filter(|d| d.is_absolute()) {
        return Some(dir.join("xfer"));
    }
    if let Some(home) = var("HOME") {
        return Some(home.join(base.under_home).join("xfer"));
    }
    root.then(|| PathBuf::from(base.system))
}

/// The first entry of a colon-separated list, if absolute.
fn first_absolute(list: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = list.as_os_str().as_bytes();
    let first = bytes.split(|&b| b == b':').next()?;
    let dir = PathBuf::from(std::ffi::OsStr::from_bytes(first));
    dir.is_absolute().then_some(dir)
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(base: &Base, vars: &[(&str, &str)], root: bool) -> Option<PathBuf> {
        let env = |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| OsString::from(v));
        resolve(base, &env, root)
    }

    #[test]
    fn systemd_directories_come_before_xdg_and_home() {
        let vars = [("STATE_DIRECTORY", "/var/lib/xfer:/var/lib/other"), ("HOME", "/home/a")];
        assert_eq!(resolved(&STATE, &vars, false), Some(PathBuf::from("/var/lib/xfer")));
        let vars = [("CONFIGURATION_DIRECTORY", "/etc/xfer"), ("XDG_CONFIG_HOME", "/x")];
        assert_eq!(resolved(&CONFIG, &vars, false), Some(PathBuf::from("/etc/xfer")));
    }

    #[test]
    fn xfers_own_variable_wins() {
        let vars = [("XFER_STATE_DIR", "/s"), ("STATE_DIRECTORY", "/var/lib/xfer")];
        assert_eq!(resolved(&STATE, &vars, true), Some(PathBuf::from("/s")));
    }

    #[test]
    fn relative_xdg_paths_are_ignored() {
        let vars = [("XDG_STATE_HOME", "rel/state"), ("HOME", "/home/a")];
        assert_eq!(resolved(&STATE, &vars, false), Some(PathBuf::from("/home/a/.local/state/xfer")));
        let vars = [("XDG_CONFIG_HOME", "/abs"), ("HOME", "/home/a")];
        assert_eq!(resolved(&CONFIG, &vars, false), Some(PathBuf::from("/abs/xfer")));
    }

    #[test]
    fn root_without_home_gets_the_system_directories() {
        assert_eq!(resolved(&STATE, &[], true), Some(PathBuf::from("/var/lib/xfer")));
        assert_eq!(resolved(&CONFIG, &[("XDG_CONFIG_HOME", "")], true), Some(PathBuf::from("/etc/xfer")));
        assert_eq!(resolved(&CONFIG, &[], false), None);
    }
}
