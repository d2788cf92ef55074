//! The rules a decoded body must satisfy beyond its encoding: limits,
//! ranges and orderings (SPEC.md, "Limits").

use super::bodies::*;
use super::types::*;
use super::Kind;
use crate::error::DecodeError;
use crate::limits::*;

/// A broken rule, before the message kind is known to the caller.
pub(crate) enum Violation {
    Limit { what: &'static str, len: u64, max: u64 },
    Invalid(&'static str),
}

impl Violation {
    pub(super) fn at(self, kind: Kind) -> DecodeError {
        match self {
            Violation::Limit { what, len, max } => DecodeError::Limit { kind, what, len, max },
            Violation::Invalid(what) => DecodeError::Invalid { kind, what },
        }
    }
}

type Checked = Result<(), Violation>;

fn limit(what: &'static str, len: usize, max: usize) -> Checked {
    if len > max {
        Err(Violation::Limit { what, len: len as u64, max: max as u64 })
    } else {
        Ok(())
    }
}

fn path(what: &'static str, p: &[u8]) -> Checked {
    limit(what, p.len(), MAX_PATH_LEN)
}

fn text(what: &'static str, s: &str) -> Checked {
    limit(what, s.len(), MAX_TEXT_LEN)
}

fn mtime(m: &Mtime) -> Checked {
    if m.nanos >= 1_000_000_000 {
        return Err(Violation::Invalid("mtime nanoseconds of 1e9 or more"));
    }
    Ok(())
}

fn attrs(a: &Attrs) -> Checked {
    limit("user name", a.user.len(), MAX_OWNER_NAME_LEN)?;
    limit("group name", a.group.len(), MAX_OWNER_NAME_LEN)?;
    limit("xattrs", a.xattrs.len(), MAX_XATTRS)?;
    let mut total = 0;
    for (i, x) in a.xattrs.iter().enumerate() {
        limit("xattr name", x.name.len(), MAX_XATTR_NAME_LEN)?;
        limit("xattr value", x.value.len(), MAX_XATTR_VALUE_LEN)?;
        if x.name.is_empty() || x.name.contains(&0) {
            return Err(Violation::Invalid("xattr name empty or with a NUL byte"));
        }
        if i > 0 && a.xattrs[i - 1].name >= x.name {
            return Err(Violation::Invalid("xattr names not sorted and unique"));
        }
        total += x.name.len() + x.value.len();
    }
    limit("xattr bytes", total, MAX_XATTR_BYTES)
}

pub(super) fn params(p: &ChunkParams) -> Checked {
    limit("params.max", p.max as usize, MAX_CHUNK_LEN as usize)?;
    if !(p.min <= p.avg && p.avg <= p.max) {
        return Err(Violation::Invalid("chunk params not min <= avg <= max"));
    }
    Ok(())
}

fn refs(r: &[ChunkRef]) -> Checked {
    for c in r {
        limit("chunk length", c.len as usize, MAX_CHUNK_LEN as usize)?;
    }
    Ok(())
}

/// Items a chunk list counts against [`MAX_CHUNK_REFS_PER_MESSAGE`].
fn list_items(list: &ChunkList) -> usize {
    match list {
        ChunkList::Implied => 0,
        ChunkList::Full(r) => r.len(),
        ChunkList::Edit(edits) => edits
            .iter()
            .map(|e| match e {
                ListEdit::Keep { .. } => 1,
                ListEdit::New(r) => 1 + r.len(),
            })
            .sum(),
    }
}

fn list(l: &ChunkList) -> Checked {
    limit("chunk list items", list_items(l), MAX_CHUNK_REFS_PER_MESSAGE)?;
    match l {
        ChunkList::Implied => Ok(()),
        ChunkList::Full(r) => refs(r),
        ChunkList::Edit(edits) => edits.iter().try_for_each(|e| match e {
            ListEdit::Keep { .. } => Ok(()),
            ListEdit::New(r) => refs(r),
        }),
    }
}

/// Rules a decoded body must satisfy beyond its encoding.
pub(crate) trait Validate {
    fn validate(&self) -> Checked;
}

impl Validate for Hello {
    fn validate(&self) -> Checked {
        text("agent", &self.agent)
    }
}

impl Validate for ErrorMsg {
    fn validate(&self) -> Checked {
        text("message", &self.message)
    }
}

/// A string of at most `max` bytes without control characters.
fn label(what: &'static str, s: &str, max: usize) -> Checked {
    limit(what, s.len(), max)?;
    if s.chars().any(char::is_control) {
        return Err(Violation::Invalid("a control character in a label"));
    }
    Ok(())
}

fn tags(tags: &[Tag]) -> Checked {
    limit("tags", tags.len(), MAX_TAGS)?;
    if tags.iter().any(|t| t.check().is_err()) {
        return Err(Violation::Invalid("a tag breaks the tag rules"));
    }
    Ok(())
}

impl Validate for Open {
    fn validate(&self) -> Checked {
        path("path", &self.path)?;
        tags(&self.tags)?;
        if let Some(at) = &self.at {
            label("at", at, MAX_SELECTOR_LEN)?;
            if self.direction != Direction::Pull {
                return Err(Violation::Invalid("a snapshot selector outside a pull"));
            }
        }
        label("source_host", &self.source_host, MAX_HOST_LEN)?;
        label("source_path", &self.source_path, MAX_PATH_LEN)?;
        limit("forget ids", self.forget.len(), MAX_FORGET_IDS)?;
        if !self.forget.is_empty() && self.direction != Direction::Forget {
            return Err(Violation::Invalid("snapshot ids to forget outside a forget"));
        }
        Ok(())
    }
}

impl Validate for SnapshotList {
    fn validate(&self) -> Checked {
        limit("snapshots", self.snapshots.len(), MAX_SNAPSHOTS_PER_MESSAGE)?;
        for s in &self.snapshots {
            if s.nanos >= 1_000_000_000 {
                return Err(Violation::Invalid("snapshot time nanoseconds of 1e9 or more"));
            }
            label("tree", &s.tree, MAX_PATH_LEN)?;
            label("client", &s.client, MAX_HOST_LEN)?;
            label("host", &s.host, MAX_HOST_LEN)?;
            label("source", &s.source, MAX_PATH_LEN)?;
            tags(&s.tags)?;
        }
        Ok(())
    }
}

impl Validate for Forgotten {
    fn validate(&self) -> Checked {
        Ok(())
    }
}

impl Validate for Pruned {
    fn validate(&self) -> Checked {
        Ok(())
    }
}

impl Validate for DryRun {
    fn validate(&self) -> Checked {
        Ok(())
    }
}

impl Validate for StoreCosts {
    fn validate(&self) -> Checked {
        Ok(())
    }
}

impl Validate for Opened {
    fn validate(&self) -> Checked {
        Ok(())
    }
}

impl Validate for ListDir {
    fn validate(&self) -> Checked {
        path("dir", &self.dir)
    }
}

impl Validate for Listing {
    fn validate(&self) -> Checked {
        path("dir", &self.dir)?;
        limit("children", self.children.len(), MAX_CHILDREN_PER_LISTING)?;
        self.children.iter().try_for_each(|c| limit("name", c.name.len(), MAX_NAME_LEN))
    }
}

impl Validate for GetFiles {
    fn validate(&self) -> Checked {
        limit("paths", self.paths.len(), MAX_FILES_PER_MESSAGE)?;
        self.paths.iter().try_for_each(|p| path("path", p))
    }
}

impl Validate for FileInfos {
    fn validate(&self) -> Checked {
        limit("files", self.files.len(), MAX_FILES_PER_MESSAGE)?;
        let total: usize = self.files.iter().map(|f| f.chunks.len()).sum();
        limit("chunk refs", total, MAX_CHUNK_REFS_PER_MESSAGE)?;
        for f in &self.files {
            path("path", &f.path)?;
            params(&f.params)?;
            refs(&f.chunks)?;
        }
        Ok(())
    }
}

impl Validate for HasChunks {
    fn validate(&self) -> Checked {
        limit("ids", self.ids.len(), MAX_IDS_PER_BATCH)
    }
}

impl Validate for Have {
    fn validate(&self) -> Checked {
        limit("bitmap bytes", self.bits.len(), MAX_IDS_PER_BATCH / 8)
    }
}

impl Validate for Mkdir {
    fn validate(&self) -> Checked {
        path("path", &self.path)?;
        mtime(&self.mtime)?;
        attrs(&self.attrs)
    }
}

impl Validate for WriteFile {
    fn validate(&self) -> Checked {
        path("path", &self.path)?;
        mtime(&self.mtime)?;
        attrs(&self.attrs)?;
        params(&self.params)?;
        list(&self.list)?;
        if self.list == ChunkList::Implied {
            if self.more {
                return Err(Violation::Invalid("implied chunk list with more set"));
            }
            limit("implied chunk length", usize::try_from(self.size).unwrap_or(usize::MAX), MAX_CHUNK_LEN as usize)?;
        }
        Ok(())
    }
}

impl Validate for MoreChunks {
    fn validate(&self) -> Checked {
        if self.list == ChunkList::Implied {
            return Err(Violation::Invalid("implied chunk list in a continuation"));
        }
        list(&self.list)
    }
}

impl Validate for Symlink {
    fn validate(&self) -> Checked {
        path("path", &self.path)?;
        path("target", &self.target)?;
        mtime(&self.mtime)?;
        attrs(&self.attrs)
    }
}

impl Validate for Link {
    fn validate(&self) -> Checked {
        path("path", &self.path)?;
        path("target", &self.target)
    }
}

impl Validate for SetMeta {
    fn validate(&self) -> Checked {
        path("path", &self.path)?;
        mtime(&self.mtime)?;
        attrs(&self.attrs)
    }
}

impl Validate for Delete {
    fn validate(&self) -> Checked {
        path("path", &self.path)
    }
}

impl Validate for NeedChunk {
    fn validate(&self) -> Checked {
        limit("signature", self.signature.as_ref().map_or(0, Vec::len), MAX_SIGNATURE_LEN)
    }
}

impl Validate for RefineRequest {
    fn validate(&self) -> Checked {
        limit("ranges", self.ranges.len(), MAX_RANGES_LEN)
    }
}

impl Validate for FineSignatures {
    fn validate(&self) -> Checked {
        limit("signatures", self.signatures.len(), MAX_FINE_SIGNATURES)?;
        limit("signature bytes", self.signatures.iter().map(Vec::len).sum(), MAX_SIGNATURE_LEN)
    }
}

impl Validate for ChunkData {
    fn validate(&self) -> Checked {
        limit("decoded_len", self.decoded_len as usize, MAX_CHUNK_LEN as usize)?;
        limit("payload", self.payload.len(), MAX_PAYLOAD_LEN as usize)
    }
}

impl Validate for Commit {
    fn validate(&self) -> Checked {
        Ok(())
    }
}

impl Validate for Committed {
    fn validate(&self) -> Checked {
        Ok(())
    }
}

impl Validate for FileFailed {
    fn validate(&self) -> Checked {
        text("message", &self.message)
    }
}

impl Validate for Done {
    fn validate(&self) -> Checked {
        Ok(())
    }
}

impl Validate for Summary {
    fn validate(&self) -> Checked {
        Ok(())
    }
}
