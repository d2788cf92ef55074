//! What the receiver tells the sender of its tree: listings and file
//! digests, in message-sized parts.

use xfer_protocol::msg::{self, Message};
use xfer_protocol::{MAX_CHILDREN_PER_LISTING, MAX_CHUNK_REFS_PER_MESSAGE};

use crate::manifest::RelPath;
use crate::session::destination::Destination;
use crate::session::SessionError;
use crate::wire::{self};

use super::{path, Receiver};

impl<D: Destination> Receiver<D> {
    pub(super) fn list_dir(&mut self, list: msg::ListDir) -> Result<(), SessionError> {
        let dir = match list.dir.as_slice() {
            [] => RelPath::root(),
            bytes => path(bytes.to_vec())?,
        };
        let children = self.tree.listing(&dir);
        let parts: Vec<_> = children.chunks(MAX_CHILDREN_PER_LISTING).collect();
        if parts.is_empty() {
            self.outbox.push_back(Message::Listing(msg::Listing {
                dir: list.dir.clone(),
                children: Vec::new(),
                more: false,
            }));
        }
        for (i, part) in parts.iter().enumerate() {
            self.outbox.push_back(Message::Listing(msg::Listing {
                dir: list.dir.clone(),
                children: part.iter().map(wire::child_to_wire).collect(),
                more: i + 1 < parts.len(),
            }));
        }
        Ok(())
    }

    pub(super) fn get_files(&mut self, get: msg::GetFiles) -> Result<(), SessionError> {
        let mut files = Vec::new();
        for raw in get.paths {
            let Some(digest) = self.manifest().get(&path(raw.clone())?).and_then(|e| e.file()) else { continue };
            let parts: Vec<_> = digest.chunks.chunks(MAX_CHUNK_REFS_PER_MESSAGE).collect();
            let count = parts.len().max(1);
            for i in 0..count {
                files.push(msg::FileInfo {
                    path: raw.clone(),
                    size: digest.size,
                    hash: digest.hash.0,
                    params: wire::params_to_wire(digest.params),
                    chunks: parts.get(i).map_or(Vec::new(), |p| p.iter().map(wire::chunk_to_wire).collect()),
                    continued: i + 1 < count,
                });
            }
        }
        // One message unless a huge chunk list needs several.
        let mut message = Vec::new();
        let mut refs = 0;
        for info in files {
            if refs + info.chunks.len() > MAX_CHUNK_REFS_PER_MESSAGE && !message.is_empty() {
                self.outbox
                    .push_back(Message::FileInfos(msg::FileInfos { files: std::mem::take(&mut message), more: true }));
                refs = 0;
            }
            refs += info.chunks.len();
            message.push(info);
        }
        self.outbox.push_back(Message::FileInfos(msg::FileInfos { files: message, more: false }));
        Ok(())
    }
}
