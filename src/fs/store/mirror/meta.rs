//! Metadata: modes, times, owners and xattrs as the policy allows, and
//! a file with several names detached before it changes.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use filetime::FileTime;

use super::sparse::copy_sparse;
use super::{open_dir_nofollow, MirrorStore};
use crate::error::{IoContext, Result};
use crate::fs::scan;
use crate::manifest::{Meta, RelPath};

impl MirrorStore {
    /// Gives `path`, a file with other names, a copy of its own with `meta`:
    /// a change in place would reach every other name, a snapshot's outside
    /// the tree too. The copy is durable before it takes the name.
    ///
    /// The rename gives the directory a new mtime, which a metadata change
    /// must not: the plan sets directory times back only where names come
    /// or go, so the directory keeps the mtime it had.
    pub(super) fn detach(&mut self, path: &RelPath, abs: &Path, meta: &Meta) -> Result<Meta> {
        let parent = self.abs(&path.parent());
        let dir = open_dir_nofollow(&parent).at(&parent)?;
        let dir_mtime = FileTime::from_last_modification_time(&dir.metadata().at(&parent)?);
        let temp = self.temp_beside(path);
        let copied = copy_sparse(abs, &temp)
            .at(&temp)
            .and_then(|_| self.apply_meta(&temp, meta))
            .and_then(|applied| File::open(&temp).and_then(|f| f.sync_all()).at(&temp).map(|()| applied))
            .and_then(|applied| fs::rename(&temp, abs).at(abs).map(|()| applied));
        if copied.is_err() {
            let _ = fs::remove_file(&temp);
        }
        let applied = copied?;
        // Best effort once the change is made: a directory of another user
        // keeps the new time, and the next run sees it differ and sets it.
        let _ = filetime::set_file_handle_times(&dir, None, Some(dir_mtime));
        Ok(applied)
    }

    /// Gives the entry at `abs` (a temporary or a final name) the metadata
    /// `meta` as the policy allows, and returns what it then holds, as a
    /// scan reads it.
    ///
    /// Owners first (a chown clears setuid, setgid and file capabilities),
    /// xattrs next, mode then (it sets an ACL's mask), mtime last. A chown
    /// or xattr this process may not apply is left out, not an error: the
    /// difference is kept in the records.
    pub(super) fn apply_meta(&self, abs: &Path, meta: &Meta) -> Result<Meta> {
        let lstat = fs::symlink_metadata(abs).at(abs)?;
        let symlink = lstat.file_type().is_symlink();
        if self.policy.owners() {
            use std::os::unix::fs::MetadataExt;
            let uid = self.names.map_uid(&meta.user, meta.uid);
            let gid = self.names.map_gid(&meta.group, meta.gid);
            if (lstat.uid(), lstat.gid()) != (uid, gid) {
                let _ = std::os::unix::fs::lchown(abs, Some(uid), Some(gid));
            }
        }
        self.apply_xattrs(abs, &meta.xattrs);
        let time = to_filetime(meta);
        if symlink {
            filetime::set_symlink_file_times(abs, time, time).at(abs)?;
        } else {
            fs::set_permissions(abs, fs::Permissions::from_mode(self.policy.mode(meta.mode))).at(abs)?;
            filetime::set_file_mtime(abs, time).at(abs)?;
        }
        let lstat = fs::symlink_metadata(abs).at(abs)?;
        Ok(scan::meta_of(abs, &lstat, &self.names).0)
    }

    /// Makes the xattrs of `abs` that the policy lets this receiver manage
    /// those of `wanted`, as far as this process may.
    pub(super) fn apply_xattrs(&self, abs: &Path, wanted: &[crate::manifest::Xattr]) {
        let current = scan::read_xattrs(abs).unwrap_or_default();
        for old in &current {
            if self.policy.xattr(&old.name) && !wanted.iter().any(|x| x.name == old.name) {
                let _ = rustix::fs::lremovexattr(abs, old.name.as_slice());
            }
        }
        for new in wanted {
            if self.policy.xattr(&new.name) && !current.contains(new) {
                let _ = rustix::fs::lsetxattr(abs, new.name.as_slice(), &new.value, rustix::fs::XattrFlags::empty());
            }
        }
    }
}

pub(super) fn to_filetime(meta: &Meta) -> FileTime {
    FileTime::from_unix_time(meta.mtime.secs, meta.mtime.nanos)
}
