//! Sessions driven in memory on real stores: a source held in memory
//! ([`ModelReader`]) and the plumbing to push it into a mirror tree.

use std::collections::HashMap;

use xfer::chunk::ChunkRef;
use xfer::codec::{Compression, Encoder};
use xfer::fs::store::{MirrorReceiver, MirrorStore, Receiving};
use xfer::manifest::{Manifest, RelPath};
use xfer::plan::PlanOptions;
use xfer::session::pair::{self, Traffic};
use xfer::session::{ChunkReader, OpenRequest, Receiver, Sender, SenderConfig, SessionError};

/// Serves chunks from file contents held in memory.
pub struct ModelReader(pub HashMap<RelPath, Vec<u8>>);

impl ChunkReader for ModelReader {
    type Error = xfer::Error;

    fn read(&mut self, path: &RelPath, offset: u64, chunk: ChunkRef) -> xfer::Result<Vec<u8>> {
        let data = &self.0[path];
        let start = offset as usize;
        Ok(data[start..start + chunk.len as usize].to_vec())
    }
}

/// A receiver into `store`, which it opens once.
pub fn receiver_into(store: MirrorStore) -> MirrorReceiver {
    let mut store = Some(Receiving::new(store));
    Receiver::new(Box::new(move |_: &OpenRequest| {
        store.take().ok_or_else(|| SessionError::Protocol("opened twice".into()))
    }))
}

/// Pushes `source` (its files' bytes from `reader`) into `store` with
/// deletes, in memory; the session's end and the receiver.
pub fn push_into<R: ChunkReader>(
    source: Manifest,
    reader: R,
    store: MirrorStore,
) -> (Result<Traffic, SessionError>, MirrorReceiver) {
    let mut config = SenderConfig::new(source, reader, Encoder::new(Compression::Auto).unwrap());
    config.plan = PlanOptions { delete: true, ..Default::default() };
    let mut sender = Sender::new(config);
    let mut receiver = receiver_into(store);
    let result = pair::run(&mut sender, &mut receiver);
    if result.is_ok() {
        assert!(sender.is_finished() && receiver.is_finished(), "the session stalled");
    }
    (result, receiver)
}

/// The `Open` of a plain push into the receiver's root: no deletes, the
/// quick check, nothing remembered, no tags.
pub fn open_root_push() -> xfer_protocol::msg::Open {
    xfer_protocol::msg::Open {
        direction: xfer_protocol::msg::Direction::Push,
        path: Vec::new(),
        delete: false,
        checksum: false,
        remembered_root: None,
        tags: Vec::new(),
        at: None,
        source_host: String::new(),
        source_path: String::new(),
        forget: Vec::new(),
    }
}
