//! Exclusion filters: gitignore-style patterns that keep entries out of a
//! transfer (`--exclude`, `--exclude-from`, a `.xferignore` in the source
//! root) and, as rsync does, protect the receiver's matching entries from
//! `--delete`.
//!
//! The rules are git's (gitignore(5)), matched by ripgrep's `ignore` crate:
//!
//! - a pattern without `/` matches a name at any depth: `*.tmp`, `node_modules`;
//! - a leading `/` anchors it at the tree's root: `/build` is `build` at the top only;
//! - a `/` elsewhere makes it relative to the root: `build/out`, `docs/*.html`;
//! - a trailing `/` matches directories only: `target/`;
//! - `*` and `?` stay within one name, `**` spans any number of directories
//!   (`**/cache`, `logs/**`, `a/**/b`), `[abc]` and `{a,b}` are classes and alternatives;
//! - a leading `!` re-includes what an earlier pattern excluded; the last
//!   pattern that matches decides;
//! - in files, blank lines and lines starting with `#` are ignored; `\#` and
//!   `\!` start a pattern with a literal `#` or `!`, and trailing spaces are
//!   dropped unless escaped with `\`.
//!
//! An excluded directory is excluded with everything below it: the scan does
//! not descend into it, so a `!` pattern cannot bring back an entry inside it
//! (as in git).
//!
//! Patterns are UTF-8 text; the names they match are raw bytes and need not be.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use thiserror::Error;

use crate::manifest::RelPath;

/// Name of the patterns file read from the source tree's root (only there,
/// like a top-level `.gitignore`; one in a subdirectory is an ordinary file).
/// It is itself transferred, so the receiver keeps the same rules.
pub const IGNORE_FILE: &str = ".xferignore";

/// Why patterns were refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FilterError {
    /// A pattern that does not parse, or that would match nothing.
    #[error(
        "{origin}: bad exclude pattern {pattern:?}: {reason}; expected a gitignore-style pattern such as \
         `*.log`, `/build`, `target/`, `docs/**/*.html` or `!keep.log`"
    )]
    Pattern {
        /// Where it came from: `--exclude` or `FILE:LINE`.
        origin: String,
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Patterns that parse one by one but not together.
    #[error(
        "{origin}: the exclude patterns cannot be compiled together: {reason}; expected fewer or simpler patterns"
    )]
    Set {
        /// The last source of patterns added.
        origin: String,
        /// What the matcher reported.
        reason: String,
    },
    /// A patterns file that cannot be read.
    #[error("{}: cannot read exclude patterns: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        cause: io::Error,
    },
    /// A line of a patterns file that is not UTF-8.
    #[error(
        "{}:{line}: exclude pattern is not UTF-8; expected UTF-8 text (the names patterns match need not be)",
        path.display()
    )]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
    },
}

/// A set of exclusion patterns, in the order they were added.
///
/// Each `add_*` call checks and compiles the whole set again, so a large set
/// is best added as a file rather than pattern by pattern. A failed call
/// leaves the filter as it was.
#[derive(Clone, Debug)]
pub struct Filter {
    builder: GitignoreBuilder,
    matcher: Gitignore,
}

impl Default for Filter {
    fn default() -> Self {
        Filter::new()
    }
}

impl Filter {
    /// A filter that excludes nothing.
    pub fn new() -> Self {
        // "/" can never prefix a relative path, so the builder strips nothing
        // from the paths it is given.
        Filter { builder: GitignoreBuilder::new("/"), matcher: Gitignore::empty() }
    }

    /// Adds one pattern; `origin` names where it came from (`--exclude`,
    /// `FILE:LINE`) for error messages.
    ///
    /// # Errors
    /// [`FilterError::Pattern`] if it does not parse, or is blank or a `#`
    /// comment, which would silently match nothing.
    pub fn add_pattern(&mut self, pattern: &str, origin: &str) -> Result<(), FilterError> {
        let refuse = |reason: &str| FilterError::Pattern {
            origin: origin.to_owned(),
            pattern: pattern.to_owned(),
            reason: reason.to_owned(),
        };
        if pattern.trim().is_empty() {
            return Err(refuse("it is blank and would match nothing"));
        }
        if pattern.starts_with('#') {
            return Err(refuse(
                "a leading `#` makes it a comment that matches nothing (write `\\#` for a name starting with #)",
            ));
        }
        let mut builder = self.builder.clone();
        add_line(&mut builder, pattern, origin)?;
        self.commit(builder, origin)
    }

    /// Adds the patterns in `bytes`, the contents of the patterns file at
    /// `path` (`--exclude-from`, [`IGNORE_FILE`]), one per line; the edge
    /// that read the file passes its path for error messages.
    ///
    /// # Errors
    /// [`FilterError::NotUtf8`] for a line that is not UTF-8,
    /// [`FilterError::Pattern`] (naming the file and line) for a pattern
    /// that does not parse.
    pub fn add_patterns_file(&mut self, bytes: &[u8], path: &Path) -> Result<(), FilterError> {
        // Editors on some systems start UTF-8 files with a byte order mark; git skips it too.
        let text = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
        let mut builder = self.builder.clone();
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = std::str::from_utf8(line)
                .map_err(|_| FilterError::NotUtf8 { path: path.to_path_buf(), line: i + 1 })?;
            // Comments and blank lines are skipped by the builder.
            add_line(&mut builder, line, &format!("{}:{}", path.display(), i + 1))?;
        }
        self.commit(builder, &path.display().to_string())
    }

    /// Compiles `builder` and makes it the filter's.
    fn commit(&mut self, builder: GitignoreBuilder, origin: &str) -> Result<(), FilterError> {
        // Single patterns were checked when added; what can still fail here
        // is the set as a whole (a size limit of the compiled matcher).
        self.matcher =
            builder.build().map_err(|e| FilterError::Set { origin: origin.to_owned(), reason: e.to_string() })?;
        self.builder = builder;
        Ok(())
    }

    /// Whether no pattern was added.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_empty()
    }

    /// Whether `path` (a directory if `is_dir`) is excluded, by a pattern
    /// matching it or one of the directories above it.
    pub fn is_excluded(&self, path: &RelPath, is_dir: bool) -> bool {
        if self.is_empty() || path.is_root() {
            return false;
        }
        let bytes = path.as_bytes();
        let mut ancestors = bytes.iter().enumerate().filter(|&(_, &b)| b == b'/').map(|(i, _)| &bytes[..i]);
        ancestors.any(|dir| self.matches(dir, true)) || self.matches(bytes, is_dir)
    }

    /// Whether the patterns exclude `path` itself, the directories above it
    /// assumed not excluded: what a top-down walk that never enters an
    /// excluded directory needs, at one match per entry.
    pub fn excludes_entry(&self, path: &RelPath, is_dir: bool) -> bool {
        !self.is_empty() && !path.is_root() && self.matches(path.as_bytes(), is_dir)
    }

    fn matches(&self, path: &[u8], is_dir: bool) -> bool {
        self.matcher.matched(Path::new(OsStr::from_bytes(path)), is_dir).is_ignore()
    }
}

/// Adds one line to `builder` (nothing for a comment or a blank line).
fn add_line(builder: &mut GitignoreBuilder, line: &str, origin: &str) -> Result<(), FilterError> {
    builder.add_line(Some(PathBuf::from(origin)), line).map_err(|e| FilterError::Pattern {
        origin: origin.to_owned(),
        pattern: line.to_owned(),
        reason: match e {
            ignore::Error::Glob { err, .. } => err,
            other => other.to_string(),
        },
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(patterns: &[&str]) -> Filter {
        let mut filter = Filter::new();
        for pattern in patterns {
            filter.add_pattern(pattern, "--exclude").unwrap();
        }
        filter
    }

    fn path(bytes: &[u8]) -> RelPath {
        RelPath::new(bytes.to_vec()).unwrap()
    }

    fn excluded(filter: &Filter, p: &str, is_dir: bool) -> bool {
        filter.is_excluded(&path(p.as_bytes()), is_dir)
    }

    #[test]
    fn empty_filter_excludes_nothing() {
        let f = Filter::new();
        assert!(f.is_empty());
        assert!(!excluded(&f, "a", false));
        assert!(!excluded(&f, "a/b", true));
        assert!(!filter(&["x"]).is_empty());
    }

    #[test]
    fn name_without_slash_matches_at_any_depth() {
        let f = filter(&["*.tmp", "node_modules"]);
        for p in ["a.tmp", "x/a.tmp", "x/y/z/a.tmp"] {
            assert!(excluded(&f, p, false), "{p}");
        }
        assert!(excluded(&f, "node_modules", true));
        assert!(excluded(&f, "web/app/node_modules", true));
        assert!(excluded(&f, "node_modules", false), "no trailing `/`: files too");
        assert!(!excluded(&f, "a.tmpx", false));
        assert!(!excluded(&f, "my_node_modules", true));
        // `*` stays within one name.
        assert!(!filter(&["a*b"]).excludes_entry(&path(b"a/b"), false));
    }

    #[test]
    fn leading_slash_anchors_at_the_root() {
        let f = filter(&["/build"]);
        assert!(excluded(&f, "build", true));
        assert!(excluded(&f, "build", false));
        assert!(!excluded(&f, "src/build", true));
    }

    #[test]
    fn inner_slash_is_relative_to_the_root() {
        let f = filter(&["build/out", "docs/*.html"]);
        assert!(excluded(&f, "build/out", false));
        assert!(!excluded(&f, "x/build/out", false));
        assert!(excluded(&f, "docs/index.html", false));
        assert!(!excluded(&f, "docs/api/index.html", false), "`*` does not cross `/`");
        assert!(!excluded(&f, "x/docs/index.html", false));
    }

    #[test]
    fn trailing_slash_matches_directories_only() {
        let f = filter(&["target/"]);
        assert!(excluded(&f, "target", true));
        assert!(excluded(&f, "crates/x/target", true));
        assert!(!excluded(&f, "target", false));
        assert!(!excluded(&f, "crates/target", false));
    }

    #[test]
    fn double_star_spans_directories() {
        let f = filter(&["**/cache", "logs/**", "a/**/b"]);
        assert!(excluded(&f, "cache", true));
        assert!(excluded(&f, "x/y/cache", false));
        assert!(excluded(&f, "logs/1", false));
        assert!(excluded(&f, "logs/2025/1", false));
        assert!(!f.excludes_entry(&path(b"logs"), true), "`logs/**` is what is inside `logs`");
        assert!(excluded(&f, "a/b", false));
        assert!(excluded(&f, "a/x/y/b", false));
        assert!(!excluded(&f, "c/a/x/b", false));
    }

    #[test]
    fn negation_last_match_wins() {
        let f = filter(&["*.log", "!keep.log"]);
        assert!(excluded(&f, "other.log", false));
        assert!(!excluded(&f, "keep.log", false));
        assert!(!excluded(&f, "d/keep.log", false));
        // The same patterns the other way round: `*.log` comes last and wins.
        let f = filter(&["!keep.log", "*.log"]);
        assert!(excluded(&f, "keep.log", false));
        // Directories only re-included: files stay excluded.
        let f = filter(&["*", "!*/"]);
        assert!(!excluded(&f, "d", true));
        assert!(excluded(&f, "d", false));
    }

    #[test]
    fn excluded_directory_excludes_its_subtree() {
        let f = filter(&["target/", "!target/keep"]);
        assert!(excluded(&f, "target/debug/app", false));
        assert!(excluded(&f, "x/target/a", false));
        // As in git, nothing inside an excluded directory comes back.
        assert!(excluded(&f, "target/keep", false));
        // A walk that never enters `target` asks about entries themselves.
        assert!(!f.excludes_entry(&path(b"target/debug/app"), false));
        assert!(f.excludes_entry(&path(b"target"), true));
    }

    #[test]
    fn non_utf8_names_match_on_bytes() {
        let f = filter(&["*.log", "caf?.txt", "raw/"]);
        assert!(f.is_excluded(&path(b"caf\xe9.log"), false));
        assert!(f.is_excluded(&path(b"\xff\xfe/x.log"), false));
        assert!(f.is_excluded(&path(b"caf\xe9.txt"), false));
        assert!(f.is_excluded(&path(b"a/raw/\x80"), false), "inside an excluded directory");
        assert!(!f.is_excluded(&path(b"caf\xe9.dat"), false));
        assert!(!f.is_excluded(&path(b"\xff/raw"), false), "dir-only pattern, file");
    }

    #[test]
    fn bad_pattern_names_its_origin_and_changes_nothing() {
        let mut f = Filter::new();
        for bad in ["a{b", "trailing\\"] {
            let err = f.add_pattern(bad, "--exclude").unwrap_err();
            assert!(
                matches!(&err, FilterError::Pattern { origin, pattern, .. } if origin == "--exclude" && pattern == bad)
            );
            let message = err.to_string();
            assert!(message.starts_with("--exclude: bad exclude pattern"), "{message}");
            assert!(message.contains("expected a gitignore-style pattern"), "{message}");
        }
        for silent in ["", "   ", "#x"] {
            let err = f.add_pattern(silent, "--exclude").unwrap_err();
            assert!(err.to_string().contains("matches nothing") || err.to_string().contains("match nothing"), "{err}");
        }
        assert!(f.is_empty(), "failed adds leave the filter as it was");
        f.add_pattern("\\#x", "--exclude").unwrap();
        assert!(excluded(&f, "#x", false));
    }
}
