//! A changed file's chunk list as an edit of the receiver's old one.

use crate::chunk::{ChunkRef, FileDigest};
use crate::hash::ChunkId;

/// A file's new chunk list described against the receiver's old one: runs
/// of old chunks to keep and the new chunks between them. This is what a
/// changed file costs in chunk metadata on the wire when the sender knows the
/// receiver's old list, instead of every id of the new list.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ListEdit {
    /// `count` chunks of the old list, starting at old index `from`.
    Keep {
        /// First old index.
        from: u32,
        /// How many consecutive old chunks.
        count: u32,
    },
    /// Chunks the old list does not have at this point.
    New(Vec<ChunkRef>),
}

/// Describes `new` as edits of `old` (greedy: continue the current run of old
/// chunks where possible, else jump to any old occurrence of the same id).
pub fn chunk_list_edit(old: &[ChunkRef], new: &[ChunkRef]) -> Vec<ListEdit> {
    let mut position: std::collections::HashMap<ChunkId, usize> = std::collections::HashMap::new();
    for (i, chunk) in old.iter().enumerate().rev() {
        position.insert(chunk.id, i);
    }
    let mut edits: Vec<ListEdit> = Vec::new();
    for chunk in new {
        if let Some(ListEdit::Keep { from, count }) = edits.last_mut() {
            let next = (*from + *count) as usize;
            if old.get(next) == Some(chunk) {
                *count += 1;
                continue;
            }
        }
        match position.get(&chunk.id) {
            Some(&i) if old[i] == *chunk => edits.push(ListEdit::Keep { from: i as u32, count: 1 }),
            _ => match edits.last_mut() {
                Some(ListEdit::New(chunks)) => chunks.push(*chunk),
                _ => edits.push(ListEdit::New(vec![*chunk])),
            },
        }
    }
    edits
}

/// What a changed file's chunk list costs on the wire: nothing when it is
/// one chunk (its id is then the whole-file hash, which is sent anyway),
/// else its edit against the receiver's old list of the same path.
pub fn wire_chunk_list(old: &[ChunkRef], new: &FileDigest) -> Option<Vec<ListEdit>> {
    match new.chunks.as_slice() {
        [only] if only.id.0 == new.hash.0 => None,
        [] => None,
        chunks => Some(chunk_list_edit(old, chunks)),
    }
}

/// Rebuilds the new chunk list from `old` and `edits`; `None` if an edit
/// points outside `old`.
pub fn apply_list_edit(old: &[ChunkRef], edits: &[ListEdit]) -> Option<Vec<ChunkRef>> {
    let mut list = Vec::new();
    for edit in edits {
        match edit {
            ListEdit::Keep { from, count } => {
                let end = (*from as usize).checked_add(*count as usize)?;
                list.extend_from_slice(old.get(*from as usize..end)?);
            }
            ListEdit::New(chunks) => list.extend_from_slice(chunks),
        }
    }
    Some(list)
}
