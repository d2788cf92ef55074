//! Reading an entry's metadata as xfer records it: mode, times, owners by
//! id and by name, extended attributes (ACLs are among them).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::manifest::{Meta, Mtime, Xattr};

/// Names of the users and groups of this machine, from `/etc/passwd` and
/// `/etc/group`: what a scan carries beside numeric ids, and what a
/// receiver maps names back with.
#[derive(Clone, Debug, Default)]
pub struct IdNames {
    users: HashMap<u32, Vec<u8>>,
    groups: HashMap<u32, Vec<u8>>,
    uids: HashMap<Vec<u8>, u32>,
    gids: HashMap<Vec<u8>, u32>,
}

impl IdNames {
    /// This machine's names; missing or unreadable files give none.
    pub fn load() -> IdNames {
        let read = |path: &str| fs::read(path).unwrap_or_default();
        IdNames::parse(&read("/etc/passwd"), &read("/etc/group"))
    }

    /// Names from the contents of a passwd and a group file (`name:x:id:...`
    /// lines; the first line for a name or an id wins, as lookups do).
    pub fn parse(passwd: &[u8], group: &[u8]) -> IdNames {
        let mut names = IdNames::default();
        for (file, by_id, by_name) in
            [(passwd, &mut names.users, &mut names.uids), (group, &mut names.groups, &mut names.gids)]
        {
            for line in file.split(|&b| b == b'\n') {
                let mut fields = line.split(|&b| b == b':');
                let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next()) else { continue };
                let Some(id) = std::str::from_utf8(id).ok().and_then(|id| id.parse::<u32>().ok()) else { continue };
                if name.is_empty() || name.starts_with(b"#") || name.starts_with(b"+") || name.starts_with(b"-") {
                    continue;
                }
                by_id.entry(id).or_insert_with(|| name.to_vec());
                by_name.entry(name.to_vec()).or_insert(id);
            }
        }
        names
    }

    /// The name of user `uid` (empty: none).
    pub fn user(&self, uid: u32) -> &[u8] {
        self.users.get(&uid).map_or(&[], Vec::as_slice)
    }

    /// The name of group `gid` (empty: none).
    pub fn group(&self, gid: u32) -> &[u8] {
        self.groups.get(&gid).map_or(&[], Vec::as_slice)
    }

    /// The id a sender's owner maps to here: by name when the name exists
    /// here, else the sender's number.
    pub fn map_uid(&self, name: &[u8], uid: u32) -> u32 {
        self.uids.get(name).copied().unwrap_or(uid)
    }

    /// As [`IdNames::map_uid`], for groups.
    pub fn map_gid(&self, name: &[u8], gid: u32) -> u32 {
        self.gids.get(name).copied().unwrap_or(gid)
    }
}

/// Why an entry's xattrs could not all be read, or are more than the
/// protocol carries: the entry goes without them, and the scan says so.
fn xattrs_over_limits(xattrs: &[Xattr]) -> bool {
    use xfer_protocol::{MAX_XATTRS, MAX_XATTR_BYTES, MAX_XATTR_NAME_LEN, MAX_XATTR_VALUE_LEN};
    let total: usize = xattrs.iter().map(|x| x.name.len() + x.value.len()).sum();
    xattrs.len() > MAX_XATTRS
        || total > MAX_XATTR_BYTES
        || xattrs.iter().any(|x| x.name.len() > MAX_XATTR_NAME_LEN || x.value.len() > MAX_XATTR_VALUE_LEN)
}

/// The extended attributes of `path` itself (not of a symlink's target),
/// sorted by name; none where the filesystem has none.
///
/// # Errors
/// Failures listing or reading them.
pub fn read_xattrs(path: &Path) -> io::Result<Vec<Xattr>> {
    use rustix::io::Errno;
    let mut list = Vec::new();
    loop {
        let size = match rustix::fs::llistxattr_query(path) {
            Ok(size) => size,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        list.resize(size, 0);
        match rustix::fs::llistxattr(path, &mut list[..]) {
            Ok(len) => {
                list.truncate(len);
                break;
            }
            // Grown since the query: ask again.
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut xattrs = Vec::new();
    for name in list.split(|&b| b == 0).filter(|name| !name.is_empty()) {
        let mut value = Vec::new();
        loop {
            let size = match rustix::fs::lgetxattr_query(path, name) {
                Ok(size) => size,
                // Removed since the listing.
                Err(Errno::NODATA) => break,
                Err(e) => return Err(e.into()),
            };
            value.resize(size, 0);
            match rustix::fs::lgetxattr(path, name, &mut value[..]) {
                Ok(len) => {
                    value.truncate(len);
                    xattrs.push(Xattr { name: name.to_vec(), value: std::mem::take(&mut value) });
                    break;
                }
                Err(Errno::RANGE) => continue,
                Err(Errno::NODATA) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    xattrs.sort();
    xattrs.dedup_by(|a, b| a.name == b.name);
    Ok(xattrs)
}

/// The metadata of the entry at `path` whose `lstat` is `meta`: mode
/// (0 for a symlink), mtime, owner and group with their names here, and
/// xattrs. The second value says why the xattrs were left out, if they were.
pub fn meta_of(path: &Path, meta: &fs::Metadata, names: &IdNames) -> (Meta, Option<String>) {
    let mode = if meta.file_type().is_symlink() { 0 } else { meta.mode() & 0o7777 };
    let (xattrs, problem) = match read_xattrs(path) {
        Ok(xattrs) if xattrs_over_limits(&xattrs) => (
            Vec::new(),
            Some(format!(
                "extended attributes over what xfer carries ({} at most, {} KiB together, values up to {} KiB): \
                 carried without them",
                xfer_protocol::MAX_XATTRS,
                xfer_protocol::MAX_XATTR_BYTES / 1024,
                xfer_protocol::MAX_XATTR_VALUE_LEN / 1024
            )),
        ),
        Ok(xattrs) => (xattrs, None),
        Err(e) => (Vec::new(), Some(format!("cannot read extended attributes ({e}): carried without them"))),
    };
    let meta = Meta {
        mode,
        mtime: Mtime { secs: meta.mtime(), nanos: meta.mtime_nsec() as u32 },
        uid: meta.uid(),
        gid: meta.gid(),
        user: names.user(meta.uid()).to_vec(),
        group: names.group(meta.gid()).to_vec(),
        xattrs,
    };
    (meta, problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_names_map_by_name_else_by_number() {
        let passwd = b"root:x:0:0:root:/root:/bin/sh\n# comment:x:5:5\nalice:x:1000:1000::/home/alice:/bin/sh\n\
                       alias:x:1000:1000::/:/bin/sh\nalice:x:2000:2000::/:/bin/sh\nbroken:x:nan:0\n+nis:x:7:7\n";
        let group = b"root:x:0:\nstaff:x:50:alice\n";
        let names = IdNames::parse(passwd, group);
        // The first line for an id or a name wins, as getpwuid/getpwnam do.
        assert_eq!(names.user(1000), b"alice");
        assert_eq!(names.map_uid(b"alice", 4242), 1000);
        assert_eq!(names.map_uid(b"alias", 4242), 1000);
        // A name unknown here maps by number; so does no name at all.
        assert_eq!(names.map_uid(b"bob", 4242), 4242);
        assert_eq!(names.map_uid(b"", 4242), 4242);
        assert_eq!(names.user(5), b"");
        assert_eq!(names.user(7), b"");
        assert_eq!(names.group(50), b"staff");
        assert_eq!(names.map_gid(b"staff", 9), 50);
        assert_eq!(names.map_gid(b"wheel", 9), 9);
    }

    #[test]
    fn xattr_limits_follow_the_protocol() {
        let x = |len: usize| Xattr { name: b"user.a".to_vec(), value: vec![0; len] };
        assert!(!xattrs_over_limits(&[x(xfer_protocol::MAX_XATTR_VALUE_LEN)]));
        assert!(xattrs_over_limits(&[x(xfer_protocol::MAX_XATTR_VALUE_LEN + 1)]));
        let many: Vec<Xattr> = (0..=xfer_protocol::MAX_XATTRS)
            .map(|n| Xattr { name: format!("user.{n}").into_bytes(), value: Vec::new() })
            .collect();
        assert!(xattrs_over_limits(&many));
        assert!(!xattrs_over_limits(&many[1..]));
    }
}
