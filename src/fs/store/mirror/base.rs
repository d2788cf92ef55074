//! Building a new version of a file on its old one. The chunks that stay
//! at the same offset are cloned (a reflink, where the filesystem shares
//! extents: xfs, btrfs) or copied inside the kernel, instead of being read
//! into memory, hashed and written back one by one. On a large file with a
//! few edits that was most of the receiver's work.
//!
//! The old file is trusted to hold the chunks its record lists while its
//! stat key (size, mtime, mode, inode, ctime) is the one recorded, as
//! everywhere else on the receiver: the sender skipped those chunks on the
//! same word. The whole-file hash taken before the rename still reads every
//! byte of the result, so a file whose old bytes rotted under an unchanged
//! stat is refused, never renamed into place, and its record is dropped so
//! the next run reads it again.
//!
//! The temporary keeps the invariant the sparse writes rely on: every range
//! not yet written reads as zeros. A clone brings all the old bytes, so the
//! ranges between kept chunks are punched out right after it.

use std::fs::File;
use std::io;

use rustix::fs::{FallocateFlags, SeekFrom};

use super::{open_nofollow, MirrorStore};
use crate::chunk::FileDigest;
use crate::error::{IoContext, Result};
use crate::fs::scan::StatKey;
use crate::manifest::RelPath;

/// For each chunk of `new`, whether `old` holds the same chunk at the same
/// offset (the ranges an edit left where they were).
pub(super) fn kept_in_place(old: &FileDigest, new: &FileDigest) -> Vec<bool> {
    let mut kept = vec![false; new.chunks.len()];
    let mut old_chunks = old.chunks.iter().peekable();
    let mut old_at = 0u64;
    let mut at = 0u64;
    for (i, chunk) in new.chunks.iter().enumerate() {
        while old_at < at {
            match old_chunks.next() {
                Some(passed) => old_at += u64::from(passed.len),
                None => break,
            }
        }
        kept[i] = old_at == at && old_chunks.peek().is_some_and(|o| o.id == chunk.id && o.len == chunk.len);
        at += u64::from(chunk.len);
    }
    kept
}

/// The byte ranges the kept chunks cover, merged where they touch.
pub(super) fn kept_ranges(new: &FileDigest, kept: &[bool]) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut at = 0u64;
    for (chunk, &keep) in new.chunks.iter().zip(kept) {
        let end = at + u64::from(chunk.len);
        if keep {
            match ranges.last_mut() {
                Some((_, hi)) if *hi == at => *hi = end,
                _ => ranges.push((at, end)),
            }
        }
        at = end;
    }
    ranges
}

/// Makes the new, empty `temp` `size` bytes long, holding `old`'s bytes in
/// `ranges` and zeros everywhere else. `Ok(false)`: neither a clone nor a
/// kernel copy worked here (another filesystem, an old kernel); `temp` is
/// then all zeros and the caller copies the chunks itself.
pub(super) fn lay_base(old: &File, temp: &File, size: u64, ranges: &[(u64, u64)]) -> io::Result<bool> {
    if clone_then_clear(old, temp, size, ranges).is_ok() {
        return Ok(true);
    }
    reset(temp, size)?;
    if copy_ranges(old, temp, ranges).is_ok() {
        return Ok(true);
    }
    reset(temp, size)?;
    Ok(false)
}

/// Empties `temp` and sizes it again: all zeros.
fn reset(temp: &File, size: u64) -> io::Result<()> {
    temp.set_len(0)?;
    temp.set_len(size)
}

/// Clones all of `old` into `temp` (shared extents, no bytes copied), then
/// punches out everything outside `ranges`.
fn clone_then_clear(old: &File, temp: &File, size: u64, ranges: &[(u64, u64)]) -> io::Result<()> {
    rustix::fs::ioctl_ficlone(temp, old)?;
    temp.set_len(size)?;
    let mut at = 0u64;
    let gaps = ranges.iter().copied().chain(std::iter::once((size, size)));
    for (lo, hi) in gaps {
        if lo > at {
            rustix::fs::fallocate(temp, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, at, lo - at)?;
        }
        at = hi;
    }
    Ok(())
}

/// Copies `ranges` of `old` to the same offsets of `temp` inside the
/// kernel, the data only: holes of `old` stay holes.
fn copy_ranges(old: &File, temp: &File, ranges: &[(u64, u64)]) -> io::Result<()> {
    for &(lo, hi) in ranges {
        let mut at = lo;
        while at < hi {
            let data = match rustix::fs::seek(old, SeekFrom::Data(at)) {
                Ok(data) => data,
                // Only a hole from here to the end.
                Err(rustix::io::Errno::NXIO) => break,
                Err(e) => return Err(e.into()),
            };
            if data >= hi {
                break;
            }
            let end = rustix::fs::seek(old, SeekFrom::Hole(data))?.min(hi);
            copy_exact(old, temp, data, end)?;
            at = end;
        }
    }
    Ok(())
}

/// Copies bytes `from..to` of `old` to the same offsets of `temp`.
fn copy_exact(old: &File, temp: &File, from: u64, to: u64) -> io::Result<()> {
    let (mut read_at, mut write_at) = (from, from);
    while read_at < to {
        let want = usize::try_from(to - read_at).unwrap_or(usize::MAX).min(1 << 30);
        let copied = rustix::fs::copy_file_range(old, Some(&mut read_at), temp, Some(&mut write_at), want)?;
        if copied == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the old file is shorter than its record"));
        }
    }
    Ok(())
}

impl MirrorStore {
    /// The old version of `path`, open, and the chunks its record lists,
    /// if that record still vouches for it: a regular file whose stat key
    /// is the recorded one. `None` when there is none or it changed.
    pub(super) fn trusted_old(&self, path: &RelPath) -> Result<Option<(File, FileDigest)>> {
        let Some(record) = self.db.file(path)? else { return Ok(None) };
        let abs = self.abs(path);
        // Without blocking on a FIFO that took the file's place.
        let Ok(file) = open_nofollow(&abs, false, rustix::fs::OFlags::NONBLOCK) else { return Ok(None) };
        let stat = file.metadata().at(&abs)?;
        Ok((stat.is_file() && StatKey::of(&stat) == record.stat).then_some((file, record.digest)))
    }

    /// After a build on `path`'s old version failed its whole-file hash:
    /// the record that vouched for the old bytes goes, so the next run
    /// reads the file again instead of trusting it.
    pub(super) fn distrust_old(&self, path: &RelPath) -> Result<()> {
        self.db.update(&[], std::slice::from_ref(path))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::chunk::{ChunkParams, ChunkRef};
    use crate::hash::{ChunkId, FileHash};

    fn digest(chunks: &[(u8, u32)]) -> FileDigest {
        let chunks: Vec<ChunkRef> =
            chunks.iter().map(|&(tag, len)| ChunkRef { id: ChunkId::of(&[tag]), len }).collect();
        let size = chunks.iter().map(|c| u64::from(c.len)).sum();
        FileDigest { size, hash: FileHash::from(blake3::hash(b"")), params: ChunkParams::for_size(size), chunks }
    }

    #[test]
    fn chunks_kept_are_the_same_at_the_same_offset() {
        let old = digest(&[(1, 10), (2, 10), (3, 10), (4, 10)]);
        // 2 grew, so everything after it moved.
        let new = digest(&[(1, 10), (9, 15), (3, 10), (5, 5), (4, 10)]);
        assert_eq!(kept_in_place(&old, &new), vec![true, false, false, false, false]);
        let new = digest(&[(1, 10), (9, 10), (3, 10), (4, 10), (6, 3)]);
        assert_eq!(kept_in_place(&old, &new), vec![true, false, true, true, false]);
        assert_eq!(kept_ranges(&new, &kept_in_place(&old, &new)), vec![(0, 10), (20, 40)]);
    }

    #[test]
    fn a_chunk_of_another_length_is_not_kept() {
        let old = digest(&[(1, 10), (2, 10)]);
        let new = digest(&[(1, 12), (2, 8)]);
        assert_eq!(kept_in_place(&old, &new), vec![false, false]);
        assert!(kept_in_place(&digest(&[]), &new).iter().all(|k| !k));
    }

    /// A file of three 1 MiB pieces: data, a hole, data.
    fn sparse_old(dir: &Path) -> (File, Vec<u8>) {
        use std::os::unix::fs::FileExt;
        let mut bytes = vec![0u8; 3 << 20];
        for (i, b) in bytes.iter_mut().enumerate() {
            if !(1 << 20..2 << 20).contains(&i) {
                *b = (i % 251) as u8 | 1;
            }
        }
        let path = dir.join("old");
        let file = File::options().read(true).write(true).create_new(true).open(&path).unwrap();
        file.set_len(3 << 20).unwrap();
        file.write_all_at(&bytes[..1 << 20], 0).unwrap();
        file.write_all_at(&bytes[2 << 20..], 2 << 20).unwrap();
        file.sync_all().unwrap();
        (file, bytes)
    }

    /// A way of laying a base: `lay_base` or one of its two halves.
    type Lay = fn(&File, &File, u64, &[(u64, u64)]) -> io::Result<()>;

    /// What `lay_base` must leave: the old bytes in `ranges`, zeros elsewhere.
    fn expected(old: &[u8], size: usize, ranges: &[(u64, u64)]) -> Vec<u8> {
        let mut want = vec![0u8; size];
        for &(lo, hi) in ranges {
            let (lo, hi) = (lo as usize, (hi as usize).min(old.len()));
            want[lo..hi].copy_from_slice(&old[lo..hi]);
        }
        want
    }

    fn laid(dir: &Path, size: u64, ranges: &[(u64, u64)], how: Lay) -> (Vec<u8>, u64) {
        use std::os::unix::fs::MetadataExt;
        let (old, old_bytes) = sparse_old(dir);
        let temp_path = dir.join("temp");
        let temp = File::options().read(true).write(true).create_new(true).open(&temp_path).unwrap();
        how(&old, &temp, size, ranges).unwrap();
        temp.sync_all().unwrap();
        let got = std::fs::read(&temp_path).unwrap();
        assert_eq!(got, expected(&old_bytes, size as usize, ranges));
        let blocks = temp.metadata().unwrap().blocks() * 512;
        (got, blocks)
    }

    // Kept ranges cross the hole and end inside a data piece; the file
    // grows past the old end.
    const RANGES: [(u64, u64); 2] = [(100, 5000), ((1 << 20) - 777, (2 << 20) + 4096 * 3 + 5)];

    #[test]
    fn a_kernel_copy_lays_only_the_kept_data_and_keeps_holes() {
        let tmp = tempfile::TempDir::new().unwrap();
        let copy = |old: &File, temp: &File, size: u64, ranges: &[(u64, u64)]| {
            temp.set_len(size)?;
            copy_ranges(old, temp, ranges)
        };
        let (_, allocated) = laid(tmp.path(), 4 << 20, &RANGES, copy);
        // About 5 KiB and 16 KiB of data; the hole between stays a hole.
        assert!(allocated < 256 << 10, "{allocated} bytes allocated");
    }

    #[test]
    fn lay_base_lays_the_kept_ranges_on_this_filesystem() {
        let tmp = tempfile::TempDir::new().unwrap();
        let lay = |old: &File, temp: &File, size: u64, ranges: &[(u64, u64)]| {
            assert!(lay_base(old, temp, size, ranges)?);
            Ok(())
        };
        laid(tmp.path(), (3 << 20) - 10, &RANGES, lay);
    }

    /// A clone on a filesystem that shares extents (xfs in a loop image,
    /// when this runs as root with mkfs.xfs; skipped otherwise, saying why).
    #[test]
    fn a_clone_is_cleared_outside_the_kept_ranges() {
        let Some(mount) = reflink::Mount::new() else { return };
        let (_, allocated) = laid(mount.dir(), 4 << 20, &RANGES, clone_then_clear);
        // Shared extents are released at the filesystem's own granularity,
        // not to the byte: the old 2 MiB of data and 1 MiB hole must not
        // come back, but a few blocks around each kept range may stay.
        assert!(allocated < 1 << 20, "{allocated} bytes allocated");
        let lay = |old: &File, temp: &File, size: u64, ranges: &[(u64, u64)]| {
            assert!(lay_base(old, temp, size, ranges)?);
            Ok(())
        };
        let again = mount.dir().join("again");
        std::fs::create_dir(&again).unwrap();
        laid(&again, 3 << 20, &RANGES, lay);
    }

    /// An xfs filesystem in a loop image, mounted for one test.
    mod reflink {
        use std::path::{Path, PathBuf};
        use std::process::Command;

        pub(super) struct Mount {
            _tmp: tempfile::TempDir,
            dir: PathBuf,
        }

        fn run(program: &str, args: &[&str]) -> bool {
            Command::new(program).args(args).output().is_ok_and(|out| out.status.success())
        }

        impl Mount {
            pub(super) fn new() -> Option<Mount> {
                let tmp = tempfile::TempDir::new().ok()?;
                let (image, dir) = (tmp.path().join("xfs.img"), tmp.path().join("mnt"));
                std::fs::create_dir(&dir).ok()?;
                std::fs::File::create(&image).and_then(|f| f.set_len(320 << 20)).ok()?;
                let (image, dir_str) = (image.to_str()?, dir.to_str()?);
                if !run("mkfs.xfs", &["-q", "-m", "reflink=1", image]) || !run("mount", &["-o", "loop", image, dir_str]) {
                    eprintln!("skipped: no xfs loop mount here (needs root, mkfs.xfs from xfsprogs and loop devices)");
                    return None;
                }
                Some(Mount { _tmp: tmp, dir })
            }

            pub(super) fn dir(&self) -> &Path {
                &self.dir
            }
        }

        impl Drop for Mount {
            fn drop(&mut self) {
                let _ = Command::new("umount").arg(&self.dir).status();
            }
        }
    }
}
