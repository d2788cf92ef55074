//! Which client may do what on `xfer serve`: grants from `--allow` and the
//! authorized-clients file, checked per request. Pure apart from
//! [`Access::load`] and [`Access::reload`], which only read the file.
//!
//! The file is re-read when it changes ([`Access::reload`], called for each
//! new connection), so a client removed from it is refused on its next
//! connection without restarting the server.
//!
//! The file holds one grant per line, `FINGERPRINT PERMISSION [PREFIX]`:
//!
//! ```text
//! # laptop backs up into /laptop, the monitor may only read
//! xfer:aaaa...  rw      /laptop
//! xfer:cccc...  append  /phone  # may add, never erase history
//! xfer:bbbb...  ro              # whole root
//! ```
//!
//! `ro` reads (pull, list snapshots, restore); `append` also pushes, and a
//! push that overwrites or deletes moves the old data to the history, so
//! a stolen `append` key cannot destroy what was backed up; `rw` may also
//! manage the history (forget snapshots, prune).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use thiserror::Error;
use xfer_protocol::CloseCode;

use crate::net::identity::Fingerprint;

/// What a grant lets a client do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Pull, list snapshots and restore only.
    ReadOnly,
    /// Read and push, never forget snapshots or prune: what a push
    /// overwrites or deletes stays in the history.
    Append,
    /// Read, push and manage the history (forget, prune).
    ReadWrite,
}

impl Permission {
    /// Whether this permission covers `want`.
    pub fn covers(self, want: Want) -> bool {
        match self {
            Permission::ReadWrite => true,
            Permission::Append => want != Want::Manage,
            Permission::ReadOnly => want == Want::Read,
        }
    }
}

impl fmt::Display for Permission {
    /// The file's spelling, `rw` or `ro`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Permission::ReadOnly => "ro",
            Permission::Append => "append",
            Permission::ReadWrite => "rw",
        })
    }
}

/// What a request needs: a pull reads, a push writes, forgetting
/// snapshots and pruning manage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Want {
    /// Pull from the server, list its snapshots, restore one.
    Read,
    /// Push to the server.
    Write,
    /// Forget snapshots or prune the history: the only requests that can
    /// lose backed-up data.
    Manage,
}


/// One client's permission on one subtree of the served root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The client's fingerprint.
    pub client: Fingerprint,
    /// What it may do there.
    pub permission: Permission,
    /// The subtree, relative to the root, without leading or trailing slash;
    /// empty for the whole root. Its components are never empty, `.` or `..`.
    pub prefix: Vec<u8>,
}

impl Grant {
    /// Whether `path` (relative, no leading slash) lies inside the prefix,
    /// comparing whole components: `site` holds `site/x` but not `site2`.
    fn contains(&self, path: &[u8]) -> bool {
        if self.prefix.is_empty() {
            return true;
        }
        // Requests arrive as validated relative paths, but a `..` must never
        // climb out of a prefix even if one slips through.
        if path.split(|&b| b == b'/').any(|c| c == b"..") {
            return false;
        }
        match path.strip_prefix(self.prefix.as_slice()) {
            Some(rest) => rest.is_empty() || rest[0] == b'/',
            None => false,
        }
    }

    fn admits(&self, client: &Fingerprint, want: Want, path: &[u8]) -> bool {
        self.client == *client && self.permission.covers(want) && self.contains(path)
    }
}

/// The server's grants: which clients may read or write which subtrees.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Grants given once (`--allow`, [`Access::parse`]).
    grants: Vec<Grant>,
    /// Authorized-clients files, re-read when they change.
    files: Vec<Arc<GrantsFile>>,
}

/// An authorized-clients file and the grants last read from it.
#[derive(Debug)]
struct GrantsFile {
    path: PathBuf,
    read: Mutex<FileGrants>,
}

#[derive(Debug)]
struct FileGrants {
    /// The file as it was when `grants` were read; `None` when it could
    /// not be read, so any file that appears differs.
    stamp: Option<Stamp>,
    grants: Vec<Grant>,
}

/// What tells that a file changed without reading it: an editor's rename
/// changes the inode, an in-place write the size or the times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
    changed: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok(Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
            changed: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

impl GrantsFile {
    /// Re-reads the file if it changed since the last read. A file that
    /// can no longer be read or parsed grants nothing until it is fixed: a
    /// half-finished edit must not keep a revoked client in.
    fn reload(&self) -> Result<(), AccessError> {
        let stamp = Stamp::of(&self.path).ok();
        let Ok(mut read) = self.read.lock() else { return Ok(()) };
        if stamp.is_some() && stamp == read.stamp {
            return Ok(());
        }
        read.stamp = stamp;
        match Access::read_file(&self.path) {
            Ok(grants) => {
                read.grants = grants;
                Ok(())
            }
            Err(e) => {
                read.grants.clear();
                Err(e)
            }
        }
    }

    fn grants(&self) -> Vec<Grant> {
        self.read.lock().map(|read| read.grants.clone()).unwrap_or_default()
    }
}

impl PartialEq for Access {
    /// Equal when they grant the same now (files as last read).
    fn eq(&self, other: &Access) -> bool {
        self.grants() == other.grants()
    }
}

impl Eq for Access {}

/// Why a request was refused; the message tells the operator what to change.
#[derive(Clone, Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum Refusal {
    /// No grant names the client.
    #[error(
        "client {client} is not allowed; on the server add it with --allow {client} \
         or a line in the authorized-clients file"
    )]
    UnknownClient {
        /// The client's fingerprint.
        client: Fingerprint,
    },
    /// The client may read the path (or nothing it could write) but asked to write.
    #[error("client {client} may only read; {path} needs read-write")]
    ReadOnly {
        /// The client's fingerprint.
        client: Fingerprint,
        /// The requested path, with a leading `/`.
        path: String,
    },
    /// The client may push (or only read) but asked to forget snapshots or
    /// prune.
    #[error(
        "client {client} may not forget snapshots or prune under {path}: its grant is {permission}; \
         only an rw grant may manage the history"
    )]
    CannotManage {
        /// The client's fingerprint.
        client: Fingerprint,
        /// The requested path, with a leading `/`.
        path: String,
        /// The best grant it holds there (`append` or `ro`).
        permission: Permission,
    },
    /// The path is outside every prefix granted to the client.
    #[error("client {client} may not use {path}; it may use: {}", allowed.join(", "))]
    OutsidePrefix {
        /// The client's fingerprint.
        client: Fingerprint,
        /// The requested path, with a leading `/`.
        path: String,
        /// The prefixes it may use for this request, each with a leading `/`.
        allowed: Vec<String>,
    },
}

impl Refusal {
    /// The close code to send the client.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Refusal::UnknownClient { .. } => CloseCode::Unauthorized,
            Refusal::ReadOnly { .. } => CloseCode::ReadOnly,
            Refusal::CannotManage { .. } => CloseCode::Unauthorized,
            Refusal::OutsidePrefix { .. } => CloseCode::OutsideAllowedPath,
        }
    }
}

/// Why the authorized-clients file cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The file could not be read (or is not UTF-8).
    #[error("authorized clients {path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// A line does not parse.
    #[error("authorized clients {origin} line {line}: {problem}")]
    Line {
        /// Where the text came from (usually the file's path).
        origin: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: LineError,
    },
}

/// What is wrong with one line of the authorized-clients file.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum LineError {
    /// Only a fingerprint.
    #[error("missing permission: expected FINGERPRINT rw|append|ro [PREFIX]")]
    MissingPermission,
    /// A word after the prefix.
    #[error("unexpected {word:?} after the prefix: expected FINGERPRINT rw|append|ro [PREFIX] (prefixes cannot hold spaces)")]
    Extra {
        /// The first extra word.
        word: String,
    },
    /// The first word is not a fingerprint.
    #[error("{text:?} is not a fingerprint: expected xfer: and 52 base32 characters, as `xfer id` prints")]
    Fingerprint {
        /// The word.
        text: String,
    },
    /// The second word is not a permission.
    #[error("unknown permission {word:?}: use rw, append or ro")]
    Permission {
        /// The word.
        word: String,
    },
    /// The prefix has a `..` component.
    #[error("prefix {prefix:?} has a \"..\" component: use a path inside the served root")]
    ParentComponent {
        /// The prefix as written.
        prefix: String,
    },
    /// The prefix has a `.` component.
    #[error("prefix {prefix:?} has a \".\" component: write the path without it")]
    DotComponent {
        /// The prefix as written.
        prefix: String,
    },
    /// The prefix has an empty component (`a//b`).
    #[error("prefix {prefix:?} has an empty component: separate names with a single /")]
    EmptyComponent {
        /// The prefix as written.
        prefix: String,
    },
    /// The prefix holds a NUL byte.
    #[error("prefix {prefix:?} contains a NUL byte")]
    Nul {
        /// The prefix as written.
        prefix: String,
    },
}

impl Access {
    /// Read-write on the whole root for each of `fingerprints`: what
    /// `--allow FINGERPRINT` means.
    pub fn allow(fingerprints: &[Fingerprint]) -> Access {
        let grant = |client: &Fingerprint| Grant { client: *client, permission: Permission::ReadWrite, prefix: vec![] };
        Access { grants: fingerprints.iter().map(grant).collect(), files: Vec::new() }
    }

    /// Parses an authorized-clients file; `origin` names it in errors.
    ///
    /// # Errors
    /// [`AccessError::Line`] for the first line that does not parse.
    pub fn parse(text: &str, origin: &str) -> Result<Access, AccessError> {
        let mut grants = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let fail = |problem| AccessError::Line { origin: origin.to_string(), line: n + 1, problem };
            if let Some(grant) = parse_line(line).map_err(fail)? {
                grants.push(grant);
            }
        }
        Ok(Access { grants, files: Vec::new() })
    }

    /// Reads and parses the authorized-clients file at `path`, and keeps
    /// its path so that [`Access::reload`] picks up later edits.
    ///
    /// # Errors
    /// [`AccessError::Io`] if it cannot be read, [`AccessError::Line`] if a
    /// line does not parse.
    pub fn load(path: &Path) -> Result<Access, AccessError> {
        let stamp = Stamp::of(path).ok();
        let grants = Access::read_file(path)?;
        let file = GrantsFile { path: path.to_path_buf(), read: Mutex::new(FileGrants { stamp, grants }) };
        Ok(Access { grants: Vec::new(), files: vec![Arc::new(file)] })
    }

    fn read_file(path: &Path) -> Result<Vec<Grant>, AccessError> {
        let text =
            std::fs::read_to_string(path).map_err(|cause| AccessError::Io { path: path.to_path_buf(), cause })?;
        Ok(Access::parse(&text, &path.display().to_string())?.grants)
    }

    /// Re-reads each authorized-clients file that changed since it was last
    /// read (its size, times or inode differ). A file that cannot be read
    /// or parsed then grants nothing until it is fixed, so an edit that
    /// removes a client never leaves it admitted.
    ///
    /// # Errors
    /// The first file that could not be read or parsed.
    pub fn reload(&self) -> Result<(), AccessError> {
        let mut first_error = None;
        for file in &self.files {
            if let Err(e) = file.reload() {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The grants in force now, files as last read: what to check one
    /// request against.
    pub fn current(&self) -> Access {
        Access { grants: self.grants(), files: Vec::new() }
    }

    /// Adds `other`'s grants (for `--allow` together with a file).
    pub fn extend(&mut self, other: Access) {
        self.grants.extend(other.grants);
        self.files.extend(other.files);
    }

    /// Whether there is no grant at all, so every client would be refused.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty() && self.files.iter().all(|f| f.grants().is_empty())
    }

    /// The grants, in the order given (files as last read, after the others).
    pub fn grants(&self) -> Vec<Grant> {
        let mut grants = self.grants.clone();
        for file in &self.files {
            grants.extend(file.grants());
        }
        grants
    }

    /// Whether any grant names `client`.
    pub fn knows(&self, client: &Fingerprint) -> bool {
        self.grants().iter().any(|g| g.client == *client)
    }

    /// Whether `client` may `want` at `path` (relative to the root, no
    /// leading slash, empty for the root). Any one admitting grant suffices.
    ///
    /// # Errors
    /// A [`Refusal`] saying what the client lacks.
    pub fn check(&self, client: &Fingerprint, want: Want, path: &[u8]) -> Result<(), Refusal> {
        let grants = self.grants();
        if grants.iter().any(|g| g.admits(client, want, path)) {
            return Ok(());
        }
        let mine: Vec<&Grant> = grants.iter().filter(|g| g.client == *client).collect();
        if mine.is_empty() {
            return Err(Refusal::UnknownClient { client: *client });
        }
        let shown = slashed(path);
        // Inside a prefix yet refused: only the permission can be short.
        let best = mine.iter().filter(|g| g.contains(path)).map(|g| g.permission).max_by_key(|p| rank(*p));
        let short = |best: Option<Permission>| match (want, best) {
            (Want::Manage, Some(permission)) => {
                Refusal::CannotManage { client: *client, path: shown.clone(), permission }
            }
            _ => Refusal::ReadOnly { client: *client, path: shown.clone() },
        };
        if best.is_some() {
            return Err(short(best));
        }
        let mut allowed: Vec<String> = Vec::new();
        for grant in mine.iter().filter(|g| g.permission.covers(want)) {
            let prefix = slashed(&grant.prefix);
            if !allowed.contains(&prefix) {
                allowed.push(prefix);
            }
        }
        // No grant would allow a write anywhere: pointing at prefixes that
        // are read-only as well would only mislead.
        if allowed.is_empty() {
            let anywhere = mine.iter().map(|g| g.permission).max_by_key(|p| rank(*p));
            return Err(short(anywhere));
        }
        Err(Refusal::OutsidePrefix { client: *client, path: shown, allowed })
    }
}

/// How much a permission allows, for naming the best one a client holds.
fn rank(permission: Permission) -> u8 {
    match permission {
        Permission::ReadOnly => 0,
        Permission::Append => 1,
        Permission::ReadWrite => 2,
    }
}

/// `path` for messages: with a leading `/`, so the root shows as `/`.
fn slashed(path: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(path))
}

/// One line: `None` for a blank or comment line.
fn parse_line(line: &str) -> Result<Option<Grant>, LineError> {
    // A `#` starting a word opens a comment, whole-line or trailing; inside
    // a word it is part of a name (`site#2`).
    let mut words = line.split_whitespace().take_while(|w| !w.starts_with('#'));
    let Some(first) = words.next() else {
        return Ok(None);
    };
    let client = first.parse::<Fingerprint>().map_err(|_| LineError::Fingerprint { text: first.to_string() })?;
    let permission = match words.next() {
        None => return Err(LineError::MissingPermission),
        Some("rw" | "read-write") => Permission::ReadWrite,
        Some("ro" | "read-only") => Permission::ReadOnly,
        Some("append" | "append-only") => Permission::Append,
        Some(word) => return Err(LineError::Permission { word: word.to_string() }),
    };
    let prefix = match words.next() {
        None => Vec::new(),
        Some(word) => parse_prefix(word)?,
    };
    if let Some(word) = words.next() {
        return Err(LineError::Extra { word: word.to_string() });
    }
    Ok(Some(Grant { client, permission, prefix }))
}

/// A prefix as written to its stored form (no leading or trailing slash).
fn parse_prefix(word: &str) -> Result<Vec<u8>, LineError> {
    let prefix = || word.to_string();
    if word.contains('\0') {
        return Err(LineError::Nul { prefix: prefix() });
    }
    let inner = word.strip_prefix('/').unwrap_or(word);
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    if inner.is_empty() {
        return Ok(Vec::new());
    }
    for component in inner.split('/') {
        match component {
            "" => return Err(LineError::EmptyComponent { prefix: prefix() }),
            "." => return Err(LineError::DotComponent { prefix: prefix() }),
            ".." => return Err(LineError::ParentComponent { prefix: prefix() }),
            _ => {}
        }
    }
    Ok(inner.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(n: u8) -> Fingerprint {
        Fingerprint([n; 32])
    }

    fn line_error(text: &str) -> (usize, LineError) {
        match Access::parse(text, "clients").unwrap_err() {
            AccessError::Line { origin, line, problem } => {
                assert_eq!(origin, "clients");
                (line, problem)
            }
            other => panic!("not a line error: {other}"),
        }
    }

    #[test]
    fn parse_reads_grants_comments_and_both_spellings() {
        let text = format!(
            "# authorized clients\n\
             \n\
             {a} rw\n   \t\n\
             {b} ro /site/   # the monitor\n\
             {a} read-only site/logs\n\
             {b} read-write / \n\
             {c} rw site#2\n\
             {c} ro #no prefix\n",
            a = fp(1),
            b = fp(2),
            c = fp(3)
        );
        let access = Access::parse(&text, "clients").unwrap();
        let grant = |client, permission, prefix: &str| Grant { client, permission, prefix: prefix.as_bytes().to_vec() };
        assert_eq!(
            access.grants(),
            [
                grant(fp(1), Permission::ReadWrite, ""),
                grant(fp(2), Permission::ReadOnly, "site"),
                grant(fp(1), Permission::ReadOnly, "site/logs"),
                grant(fp(2), Permission::ReadWrite, ""),
                grant(fp(3), Permission::ReadWrite, "site#2"),
                grant(fp(3), Permission::ReadOnly, ""),
            ]
        );
    }

    #[test]
    fn parse_accepts_fingerprint_without_scheme_and_empty_text() {
        let bare = fp(7).to_string().trim_start_matches("xfer:").to_uppercase();
        let access = Access::parse(&format!("{bare} rw\n"), "x").unwrap();
        assert!(access.knows(&fp(7)));
        let empty = Access::parse("# nothing\n\n", "x").unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn parse_errors_name_origin_line_and_problem() {
        let good = format!("{} rw\n", fp(1));
        let cases: Vec<(String, LineError)> = vec![
            (format!("{}\n", fp(2)), LineError::MissingPermission),
            (format!("{} # rw\n", fp(2)), LineError::MissingPermission),
            (format!("{} rx\n", fp(2)), LineError::Permission { word: "rx".into() }),
            ("xfer:abc rw\n".to_string(), LineError::Fingerprint { text: "xfer:abc".into() }),
            (format!("{} rw a b\n", fp(2)), LineError::Extra { word: "b".into() }),
            (format!("{} rw a/../b\n", fp(2)), LineError::ParentComponent { prefix: "a/../b".into() }),
            (format!("{} rw ..\n", fp(2)), LineError::ParentComponent { prefix: "..".into() }),
            (format!("{} rw ./a\n", fp(2)), LineError::DotComponent { prefix: "./a".into() }),
            (format!("{} rw a//b\n", fp(2)), LineError::EmptyComponent { prefix: "a//b".into() }),
            (format!("{} rw //a\n", fp(2)), LineError::EmptyComponent { prefix: "//a".into() }),
            (format!("{} rw a\0b\n", fp(2)), LineError::Nul { prefix: "a\0b".into() }),
        ];
        for (bad, want) in cases {
            // Two good lines and a comment first, so the error is on line 4.
            let text = format!("{good}# comment\n{good}{bad}{good}");
            assert_eq!(line_error(&text), (4, want), "{bad:?}");
        }
    }

    #[test]
    fn parse_error_message_says_what_is_expected() {
        let text = format!("# clients\n\n{} rx\n", fp(1));
        let err = Access::parse(&text, "/etc/xfer/clients").unwrap_err().to_string();
        assert_eq!(err, "authorized clients /etc/xfer/clients line 3: unknown permission \"rx\": use rw, append or ro");
    }

    #[test]
    fn load_names_the_path_and_parses_the_file() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("clients");
        let err = Access::load(&path).unwrap_err();
        assert!(matches!(err, AccessError::Io { .. }));
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        std::fs::write(&path, format!("{} ro\nnonsense rw\n", fp(1))).unwrap();
        let err = Access::load(&path).unwrap_err().to_string();
        assert!(err.contains(&format!("{} line 2:", path.display())), "{err}");
        std::fs::write(&path, format!("{} ro\n", fp(1))).unwrap();
        assert!(Access::load(&path).unwrap().knows(&fp(1)));
    }

    #[test]
    fn reload_follows_edits_and_fails_closed() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("clients");
        std::fs::write(&path, format!("{} rw\n{} ro /docs\n", fp(1), fp(2))).unwrap();
        let mut access = Access::allow(&[fp(3)]);
        access.extend(Access::load(&path).unwrap());
        access.reload().unwrap();
        assert!(access.knows(&fp(1)) && access.knows(&fp(2)) && access.knows(&fp(3)));

        // Revoked: the next check refuses it, the others stay.
        std::fs::write(&path, format!("{} ro /docs\n", fp(2))).unwrap();
        access.reload().unwrap();
        assert_eq!(access.check(&fp(1), Want::Read, b""), Err(Refusal::UnknownClient { client: fp(1) }));
        assert_eq!(access.current().check(&fp(2), Want::Read, b"docs/a"), Ok(()));
        assert!(access.knows(&fp(3)), "--allow grants do not come from the file");

        // A broken or missing file grants nothing, and says where it is.
        std::fs::write(&path, format!("{} rw\n{} bogus\n", fp(1), fp(2))).unwrap();
        let err = access.reload().unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(!access.knows(&fp(1)) && !access.knows(&fp(2)) && access.knows(&fp(3)));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(access.reload(), Err(AccessError::Io { .. })));
        std::fs::write(&path, format!("{} rw\n", fp(1))).unwrap();
        access.reload().unwrap();
        assert!(access.knows(&fp(1)) && !access.knows(&fp(2)));
    }

    #[test]
    fn check_matches_prefixes_by_component() {
        let access = Access::parse(&format!("{} rw /site\n", fp(1)), "x").unwrap();
        let check = |path: &str| access.check(&fp(1), Want::Write, path.as_bytes());
        assert_eq!(check("site"), Ok(()));
        assert_eq!(check("site/x"), Ok(()));
        assert_eq!(check("site/x/y"), Ok(()));
        let outside =
            |path: &str| Refusal::OutsidePrefix { client: fp(1), path: path.into(), allowed: vec!["/site".into()] };
        assert_eq!(check("site2"), Err(outside("/site2")));
        assert_eq!(check("sit"), Err(outside("/sit")));
        assert_eq!(check(""), Err(outside("/")));
        assert_eq!(check("other/site"), Err(outside("/other/site")));
        assert_eq!(check("site/../etc"), Err(outside("/site/../etc")));
        assert_eq!(check("site2").unwrap_err().close_code(), CloseCode::OutsideAllowedPath);
    }

    #[test]
    fn check_read_only_refuses_write_but_allows_read() {
        let access = Access::parse(&format!("{} ro site\n", fp(1)), "x").unwrap();
        assert_eq!(access.check(&fp(1), Want::Read, b"site/a"), Ok(()));
        let refusal = access.check(&fp(1), Want::Write, b"site/a").unwrap_err();
        assert_eq!(refusal, Refusal::ReadOnly { client: fp(1), path: "/site/a".into() });
        assert_eq!(refusal.close_code(), CloseCode::ReadOnly);
        assert_eq!(refusal.to_string(), format!("client {} may only read; /site/a needs read-write", fp(1)));
        // Writing outside too: with no writable prefix at all, the lack of
        // write permission is the thing to report.
        let refusal = access.check(&fp(1), Want::Write, b"elsewhere").unwrap_err();
        assert_eq!(refusal, Refusal::ReadOnly { client: fp(1), path: "/elsewhere".into() });
    }

    #[test]
    fn check_refuses_unknown_client_with_the_command() {
        let access = Access::allow(&[fp(1)]);
        let refusal = access.check(&fp(9), Want::Read, b"").unwrap_err();
        assert_eq!(refusal, Refusal::UnknownClient { client: fp(9) });
        assert_eq!(refusal.close_code(), CloseCode::Unauthorized);
        let message = refusal.to_string();
        assert!(message.contains(&format!("--allow {}", fp(9))), "{message}");
        assert!(message.contains("authorized-clients file"), "{message}");
        assert!(!access.knows(&fp(9)));
        assert!(Access::default().check(&fp(1), Want::Read, b"").is_err());
    }

    #[test]
    fn check_any_admitting_grant_wins() {
        let text = format!("{c} ro /\n{c} rw /inbox\n{c} rw logs/\n{c} rw /inbox\n", c = fp(1));
        let access = Access::parse(&text, "x").unwrap();
        assert_eq!(access.check(&fp(1), Want::Read, b"anything/at/all"), Ok(()));
        assert_eq!(access.check(&fp(1), Want::Write, b"inbox/new"), Ok(()));
        assert_eq!(access.check(&fp(1), Want::Write, b"logs"), Ok(()));
        // The whole root is readable, so a write elsewhere lacks permission.
        assert!(matches!(access.check(&fp(1), Want::Write, b"etc"), Err(Refusal::ReadOnly { .. })));

        let text = format!("{c} ro docs\n{c} rw inbox\n{c} rw logs\n{c} rw inbox\n", c = fp(1));
        let access = Access::parse(&text, "x").unwrap();
        let refusal = access.check(&fp(1), Want::Write, b"etc").unwrap_err();
        let allowed = vec!["/inbox".to_string(), "/logs".to_string()];
        assert_eq!(refusal, Refusal::OutsidePrefix { client: fp(1), path: "/etc".into(), allowed });
        assert_eq!(refusal.to_string(), format!("client {} may not use /etc; it may use: /inbox, /logs", fp(1)));
        // Reads list every prefix, read-only ones included.
        let refusal = access.check(&fp(1), Want::Read, b"etc").unwrap_err();
        let allowed = vec!["/docs".to_string(), "/inbox".to_string(), "/logs".to_string()];
        assert_eq!(refusal, Refusal::OutsidePrefix { client: fp(1), path: "/etc".into(), allowed });
        // Another client's grants do not help.
        let mut access = access;
        access.extend(Access::allow(&[fp(2)]));
        assert!(access.check(&fp(1), Want::Write, b"etc").is_err());
        assert_eq!(access.check(&fp(2), Want::Write, b"etc"), Ok(()));
    }

    #[test]
    fn append_may_read_and_push_but_never_manage() {
        let text = format!("{a} append /phone\n{b} rw /site\n{c} ro\n", a = fp(1), b = fp(2), c = fp(3));
        let access = Access::parse(&text, "x").unwrap();
        assert_eq!(access.grants()[0].permission, Permission::Append);
        assert_eq!(access.grants()[0].permission.to_string(), "append");
        for want in [Want::Read, Want::Write] {
            assert_eq!(access.check(&fp(1), want, b"phone/dcim"), Ok(()), "{want:?}");
        }
        let refusal = access.check(&fp(1), Want::Manage, b"phone").unwrap_err();
        let expected = Refusal::CannotManage { client: fp(1), path: "/phone".into(), permission: Permission::Append };
        assert_eq!(refusal, expected);
        assert_eq!(refusal.close_code(), CloseCode::Unauthorized);
        let message = refusal.to_string();
        assert!(message.contains("may not forget snapshots or prune under /phone"), "{message}");
        assert!(message.contains("its grant is append") && message.contains("only an rw grant"), "{message}");
        // Outside its prefix, an append client is still told what it lacks.
        let refusal = access.check(&fp(1), Want::Manage, b"etc").unwrap_err();
        assert!(matches!(refusal, Refusal::CannotManage { permission: Permission::Append, .. }), "{refusal:?}");
        // rw manages its own paths only; ro manages nothing and pushes nothing.
        assert_eq!(access.check(&fp(2), Want::Manage, b"site/a"), Ok(()));
        let refusal = access.check(&fp(2), Want::Manage, b"other").unwrap_err();
        assert!(matches!(refusal, Refusal::OutsidePrefix { .. }), "{refusal:?}");
        let refusal = access.check(&fp(3), Want::Manage, b"site").unwrap_err();
        assert!(matches!(refusal, Refusal::CannotManage { permission: Permission::ReadOnly, .. }), "{refusal:?}");
        assert!(matches!(access.check(&fp(3), Want::Write, b"site"), Err(Refusal::ReadOnly { .. })));
        assert_eq!(access.check(&fp(3), Want::Read, b"site"), Ok(()));
    }

    #[test]
    fn permissions_cover_exactly_their_requests() {
        use Permission::*;
        let table = [
            (ReadOnly, [true, false, false]),
            (Append, [true, true, false]),
            (ReadWrite, [true, true, true]),
        ];
        for (permission, expected) in table {
            let covered = [Want::Read, Want::Write, Want::Manage].map(|w| permission.covers(w));
            assert_eq!(covered, expected, "{permission}");
        }
        let spelled = Access::parse(&format!("{} append-only /x\n", fp(1)), "x").unwrap();
        assert_eq!(spelled.grants()[0].permission, Append);
    }

    #[test]
    fn allow_admits_everything_for_listed_fingerprints() {
        let access = Access::allow(&[fp(1), fp(2)]);
        assert!(!access.is_empty() && access.knows(&fp(1)) && access.knows(&fp(2)));
        for client in [fp(1), fp(2)] {
            for want in [Want::Read, Want::Write, Want::Manage] {
                for path in ["", "a", "a/b/c", "..hidden"] {
                    assert_eq!(access.check(&client, want, path.as_bytes()), Ok(()), "{client} {want:?} {path}");
                }
            }
        }
        assert!(Access::allow(&[]).is_empty());
    }
}
