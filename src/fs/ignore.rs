//! Reading exclusion patterns from files: `--exclude-from` and the source
//! root's [`IGNORE_FILE`]. The matching itself is the core's ([`Filter`]).

use std::io;
use std::path::Path;

use crate::filter::{Filter, FilterError, IGNORE_FILE};

/// A filter with the patterns of `root`'s [`IGNORE_FILE`], if it has one.
///
/// # Errors
/// As [`add_root_ignore`].
pub fn with_root_ignore(root: &Path) -> Result<Filter, FilterError> {
    let mut filter = Filter::new();
    add_root_ignore(&mut filter, root)?;
    Ok(filter)
}

/// Adds the patterns of `root`'s [`IGNORE_FILE`]; no file is no patterns.
/// Add it before command-line patterns, so that theirs win.
///
/// # Errors
/// As [`add_file`], except that a missing file is not an error.
pub fn add_root_ignore(filter: &mut Filter, root: &Path) -> Result<(), FilterError> {
    match add_file(filter, &root.join(IGNORE_FILE)) {
        Err(FilterError::Read { cause, .. }) if cause.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Adds the patterns of the file at `path`, one per line (`--exclude-from`).
///
/// # Errors
/// [`FilterError::Read`] if it cannot be read, and the errors of
/// [`Filter::add_patterns_file`].
pub fn add_file(filter: &mut Filter, path: &Path) -> Result<(), FilterError> {
    let bytes = std::fs::read(path).map_err(|cause| FilterError::Read { path: path.to_path_buf(), cause })?;
    filter.add_patterns_file(&bytes, path)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::manifest::RelPath;

    fn excluded(filter: &Filter, p: &str, is_dir: bool) -> bool {
        filter.is_excluded(&RelPath::new(p.as_bytes().to_vec()).unwrap(), is_dir)
    }

    #[test]
    fn file_with_comments_blank_lines_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("patterns");
        fs::write(&file, "\u{feff}# build output\r\n\r\n*.o\n   \n\\#literal\n/only-top  \n\\!bang\n!keep.o\n")
            .unwrap();
        let mut f = Filter::new();
        add_file(&mut f, &file).unwrap();
        assert!(excluded(&f, "a/b.o", false));
        assert!(!excluded(&f, "keep.o", false));
        assert!(excluded(&f, "#literal", false));
        assert!(!excluded(&f, "# build output", false), "comments are no patterns");
        assert!(excluded(&f, "only-top", false), "trailing spaces are dropped");
        assert!(!excluded(&f, "x/only-top", false));
        assert!(excluded(&f, "!bang", false));
    }

    #[test]
    fn file_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("patterns");
        fs::write(&file, "# fine\n*.o\nbad{\n").unwrap();
        let mut f = Filter::new();
        let err = add_file(&mut f, &file).unwrap_err();
        let origin = format!("{}:3", file.display());
        assert!(matches!(&err, FilterError::Pattern { origin: o, .. } if *o == origin), "{err}");
        assert!(err.to_string().starts_with(&format!("{origin}: bad exclude pattern \"bad{{\"")), "{err}");
        assert!(f.is_empty(), "nothing of a failed file is kept");

        fs::write(&file, b"*.o\nna\xefve\n").unwrap();
        let err = add_file(&mut f, &file).unwrap_err();
        assert!(matches!(err, FilterError::NotUtf8 { line: 2, .. }), "{err}");
        assert!(err.to_string().starts_with(&format!("{}:2: ", file.display())), "{err}");

        let missing = dir.path().join("missing");
        let err = add_file(&mut f, &missing).unwrap_err();
        assert!(matches!(err, FilterError::Read { .. }), "{err}");
        assert!(err.to_string().starts_with(&missing.display().to_string()), "{err}");
    }

    #[test]
    fn root_ignore_file_is_optional_and_comes_first() {
        let dir = tempfile::tempdir().unwrap();
        assert!(with_root_ignore(dir.path()).unwrap().is_empty());
        fs::write(dir.path().join(IGNORE_FILE), "secret.txt\n*.log\n").unwrap();
        let mut f = with_root_ignore(dir.path()).unwrap();
        assert!(excluded(&f, "secret.txt", false));
        assert!(excluded(&f, "a/secret.txt", false));
        assert!(!excluded(&f, IGNORE_FILE, false), "the rules file itself is transferred");
        // Command-line patterns come later and win.
        f.add_pattern("!keep.log", "--exclude").unwrap();
        assert!(!excluded(&f, "keep.log", false));
        assert!(excluded(&f, "drop.log", false));
        // An unreadable rules file is an error, not an empty filter.
        fs::remove_file(dir.path().join(IGNORE_FILE)).unwrap();
        fs::create_dir(dir.path().join(IGNORE_FILE)).unwrap();
        assert!(matches!(with_root_ignore(dir.path()), Err(FilterError::Read { .. })));
    }
}
