//! Sessions between a sender and a receiver in memory, on a tree held in
//! memory: the state machines need no file, socket or store of the `xfer`
//! crate, only the two traits.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::pair;
use super::{
    ApplyReport, ChunkReader, Destination, EntryError, NeedInfo, OpenRequest, Put, Receiver, Sender, SenderConfig,
    SessionError,
};
use crate::chunk::{digest_bytes, ChunkRef, FileDigest};
use crate::codec::{decode, Compression, EncodedChunk, Encoder};
use crate::hash::{ChunkId, FileHash};
use crate::manifest::{Entry, EntryKind, Manifest, Meta, RelPath};
use crate::patch::Signature;
use crate::plan::{Op, PlanOptions};
use xfer_protocol::{Kind, Message};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
}

type Model = BTreeMap<RelPath, Node>;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct MemError(String);

impl EntryError for MemError {
    fn is_per_entry(&self) -> bool {
        true
    }
}

fn manifest_of(model: &Model) -> Manifest {
    let entries = model
        .iter()
        .map(|(path, node)| {
            let kind = match node {
                Node::Dir => EntryKind::Dir,
                Node::File(data) => EntryKind::File(digest_bytes(data)),
                Node::Symlink(target) => EntryKind::Symlink { target: target.clone() },
            };
            let mode = if matches!(node, Node::Dir) { 0o755 } else { 0o644 };
            Entry { path: path.clone(), meta: Meta { mode, ..Meta::default() }, kind }
        })
        .collect();
    Manifest::new(entries).expect("invariant: models are whole trees")
}

/// Source bytes from a model.
struct ModelReader(Model);

impl ChunkReader for ModelReader {
    type Error = MemError;

    fn read(&mut self, path: &RelPath, offset: u64, chunk: ChunkRef) -> Result<Vec<u8>, MemError> {
        let Some(Node::File(data)) = self.0.get(path) else { return Err(MemError(format!("{path}: gone"))) };
        let bytes = data.get(offset as usize..offset as usize + chunk.len as usize).unwrap_or_default();
        if ChunkId::of(bytes) != chunk.id {
            return Err(MemError(format!("{path}: changed")));
        }
        Ok(bytes.to_vec())
    }
}

/// A file being rebuilt: its bytes so far and which chunks are in.
struct Building {
    path: RelPath,
    hash: FileHash,
    bytes: Vec<u8>,
    chunks: Vec<(u64, ChunkRef)>,
    stored: Vec<bool>,
}

/// A receiving tree in memory, which asks for every chunk of every file.
#[derive(Default)]
struct MemTree {
    model: Model,
    manifest: Manifest,
    building: HashMap<u32, Building>,
    report: ApplyReport,
    /// Where the tree goes when the session finishes it.
    done: Option<std::sync::mpsc::Sender<Model>>,
}

impl MemTree {
    fn remove_under(&mut self, path: &RelPath) {
        self.model.retain(|p, _| p != path && !p.is_inside(path));
    }

    fn place(&mut self, path: &RelPath, node: Node) {
        if self.model.get(path).is_some_and(|old| *old == Node::Dir) != (node == Node::Dir) {
            self.remove_under(path);
        }
        self.model.insert(path.clone(), node);
    }
}

impl Destination for MemTree {
    type Error = MemError;

    fn refresh(&mut self, _checksum: bool) -> Result<&Manifest, MemError> {
        self.manifest = manifest_of(&self.model);
        Ok(&self.manifest)
    }

    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn has_chunks(&self, ids: &[ChunkId]) -> Result<Vec<bool>, MemError> {
        Ok(vec![false; ids.len()])
    }

    fn apply_op(&mut self, op: &Op) -> Result<(), MemError> {
        match op {
            Op::Mkdir { path, .. } => self.place(path, Node::Dir),
            Op::Symlink { path, target, .. } => self.place(path, Node::Symlink(target.clone())),
            Op::Delete { path } => {
                self.remove_under(path);
                self.report.entries_deleted += 1;
            }
            Op::Link { path, target, .. } => {
                let node = self.model.get(target).cloned().ok_or_else(|| MemError(format!("{target}: no target")))?;
                self.place(path, node);
            }
            Op::SetMeta { .. } => {}
            Op::WriteFile { .. } => return Err(MemError("WriteFile goes through begin_file".into())),
        }
        Ok(())
    }

    fn batch_full(&self) -> bool {
        false
    }

    fn begin_file(
        &mut self,
        file: u32,
        path: &RelPath,
        _: &Meta,
        digest: &FileDigest,
    ) -> Result<Vec<NeedInfo>, MemError> {
        let mut offset = 0;
        let mut chunks = Vec::new();
        for chunk in &digest.chunks {
            chunks.push((offset, *chunk));
            offset += u64::from(chunk.len);
        }
        let needs = chunks
            .iter()
            .enumerate()
            .map(|(n, &(offset, chunk))| NeedInfo { need: n, index: n, offset, chunk, signature: None })
            .collect();
        let stored = vec![false; chunks.len()];
        let bytes = vec![0; digest.size as usize];
        self.building.insert(file, Building { path: path.clone(), hash: digest.hash, bytes, chunks, stored });
        Ok(needs)
    }

    fn fine_signatures(&self, _: u32, _: usize, _: &[u8]) -> Option<Vec<Signature>> {
        None
    }

    fn put_chunk(&mut self, file: u32, need: usize, encoded: &EncodedChunk, _: bool) -> Result<Put, MemError> {
        let building = self.building.get_mut(&file).ok_or_else(|| MemError(format!("file {file} unknown")))?;
        let &(offset, chunk) = building.chunks.get(need).ok_or_else(|| MemError(format!("need {need} unknown")))?;
        let bytes = decode(encoded, &chunk.id, None).map_err(|e| MemError(e.to_string()))?;
        building.bytes[offset as usize..offset as usize + bytes.len()].copy_from_slice(&bytes);
        building.stored[need] = true;
        self.report.chunks_fetched += 1;
        self.report.bytes_fetched += encoded.payload.len() as u64;
        Ok(Put::Stored(Vec::new()))
    }

    fn file_ready(&self, file: u32) -> bool {
        self.building.get(&file).is_some_and(|b| b.stored.iter().all(|&s| s))
    }

    fn complete_file(&mut self, file: u32) -> Result<(), MemError> {
        let building = self.building.remove(&file).ok_or_else(|| MemError(format!("file {file} unknown")))?;
        if FileHash::of(&building.bytes) != building.hash {
            return Err(MemError(format!("{}: content does not match", building.path)));
        }
        self.place(&building.path, Node::File(building.bytes));
        self.report.files_written += 1;
        Ok(())
    }

    fn abandon_file(&mut self, file: u32, _: &str) -> Vec<(u32, NeedInfo)> {
        self.building.remove(&file);
        Vec::new()
    }

    fn finish(self, _complete: bool) -> Result<ApplyReport, MemError> {
        if let Some(done) = &self.done {
            let _ = done.send(self.model.clone());
        }
        Ok(self.report)
    }
}

/// Pushes `source` into `dest` in memory; the receiving tree after it and
/// the receiver's summary of files written and chunks received.
fn push(source: &Model, dest: Model) -> (Model, (u64, u64)) {
    let reader = ModelReader(source.clone());
    let mut config = SenderConfig::new(manifest_of(source), reader, Encoder::new(Compression::Auto).unwrap());
    config.plan = PlanOptions { delete: true, ..PlanOptions::default() };
    let mut sender = Sender::new(config);
    let (tree, summary) = run_into(&mut sender, dest);
    (tree, (summary.files_written, summary.chunks_received))
}

/// Runs `sender` against a receiver holding `dest`; the tree it leaves and
/// the receiver's summary.
fn run_into(sender: &mut Sender<ModelReader>, dest: Model) -> (Model, xfer_protocol::msg::Summary) {
    // The tree is handed over at Open and comes back when finished.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut tree = Some(MemTree { model: dest, done: Some(tx), ..MemTree::default() });
    let mut receiver = Receiver::new(Box::new(move |_: &OpenRequest| {
        tree.take().ok_or_else(|| SessionError::Protocol("opened twice".into()))
    }));
    pair::run(sender, &mut receiver).unwrap();
    assert!(sender.is_finished() && receiver.is_finished());
    assert!(receiver.failed().is_empty(), "{:?}", receiver.failed());
    (rx.recv().unwrap(), *receiver.summary().unwrap())
}

/// As [`push`], the source walked rather than held, keeping `kept` writes
/// sent (fewer than the files: chunk requests then plan again).
fn push_walked(source: &Model, dest: Model, kept: usize) -> Model {
    use crate::plan::ManifestSource;
    use std::sync::Arc;
    let manifest = manifest_of(source);
    let root = manifest.tree().root();
    let reader = ModelReader(source.clone());
    let mut config = SenderConfig::new(Manifest::default(), reader, Encoder::new(Compression::Auto).unwrap());
    config.walked = Some(super::WalkedSource { tree: Arc::new(ManifestSource(Arc::new(manifest))), root });
    config.plan = PlanOptions { delete: true, ..PlanOptions::default() };
    let mut sender = Sender::new(config);
    super::sender::KEPT.with(|k| k.set(kept));
    // A failing run panics on the test's own thread, whose setting dies with it.
    let (tree, _) = run_into(&mut sender, dest);
    super::sender::KEPT.with(|k| k.set(usize::MAX));
    assert!(sender.ops().is_empty(), "a walked source's plan is never held");
    tree
}

fn rel(path: &str) -> RelPath {
    RelPath::new(path).unwrap()
}

/// A tree of up to a few directories, files and symlinks, with contents
/// drawn from a few shared blocks.
fn model_strategy() -> impl Strategy<Value = Model> {
    let node = prop_oneof![
        4 => proptest::collection::vec(0u8..4, 0..6).prop_map(|blocks| {
            Node::File(blocks.iter().flat_map(|&b| vec![b.wrapping_mul(37); 3000 + usize::from(b) * 700]).collect())
        }),
        1 => (0u8..3).prop_map(|t| Node::Symlink(vec![b'a' + t])),
        1 => Just(Node::Dir),
    ];
    proptest::collection::btree_map((0u8..3, 0u8..5), node, 0..10).prop_map(|picked| {
        let mut model = Model::new();
        for ((dir, name), node) in picked {
            let path = if dir == 0 {
                format!("n{name}")
            } else {
                model.insert(rel(&format!("d{dir}")), Node::Dir);
                format!("d{dir}/n{name}")
            };
            model.insert(rel(&path), node);
        }
        model
    })
}

#[test]
fn a_push_into_an_empty_tree_then_again_sends_nothing_the_second_time() {
    let mut source = Model::new();
    source.insert(rel("d"), Node::Dir);
    source.insert(rel("d/f"), Node::File(vec![7; 100_000]));
    source.insert(rel("g"), Node::File(b"hello".to_vec()));
    source.insert(rel("l"), Node::Symlink(b"g".to_vec()));
    let (dest, (files, chunks)) = push(&source, Model::new());
    assert_eq!(dest, source);
    assert_eq!(files, 2);
    assert!(chunks >= 2);
    let (again, (files, chunks)) = push(&source, dest);
    assert_eq!(again, source);
    assert_eq!((files, chunks), (0, 0));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever the receiving tree held, a push leaves it equal to the
    /// source, through the traits alone.
    #[test]
    fn a_push_in_memory_makes_the_tree_the_source(source in model_strategy(), dest in model_strategy()) {
        let (after, _) = push(&source, dest);
        prop_assert_eq!(after, source);
    }

    /// The same from a source walked, not held: its plan made as it is
    /// sent, and the writes whose chunks are asked for after they left the
    /// ones kept found again by planning anew.
    #[test]
    fn a_walked_source_makes_the_tree_the_source(source in model_strategy(), dest in model_strategy(), kept in 0usize..3) {
        let after = push_walked(&source, dest, kept);
        prop_assert_eq!(after, source);
    }
}

/// A receiver holding `tree`, reporting `costs` as its store's at the end.
fn costly_receiver(tree: MemTree, costs: xfer_protocol::msg::StoreCosts) -> Receiver<MemTree> {
    let mut tree = Some(MemTree { report: ApplyReport { store: Some(costs), ..ApplyReport::default() }, ..tree });
    let mut receiver = Receiver::new(Box::new(move |_: &OpenRequest| {
        tree.take().ok_or_else(|| SessionError::Protocol("opened twice".into()))
    }));
    receiver.offer_store_costs();
    receiver
}

/// `StoreCosts` and `DryRun` are used only when both sides offered their
/// feature bits: a client that offers none (an older one) gets neither
/// the report nor a refusal of its `Done`, and cannot end with `DryRun`.
#[test]
fn feature_messages_need_both_sides() {
    use xfer_protocol::msg;
    let costs = msg::StoreCosts { puts: 7, bytes_put: 70, ..msg::StoreCosts::default() };
    let hello = |features| {
        Message::Hello(msg::Hello { version: xfer_protocol::PROTOCOL_VERSION, features, agent: "old".into() })
    };
    // A push's `Open`, as a sender makes it.
    let mut source = Model::new();
    source.insert(rel("f"), Node::File(vec![3; 50_000]));
    let config = |dry_run: bool| {
        let encoder = Encoder::new(Compression::Auto).unwrap();
        let mut config = SenderConfig::new(manifest_of(&source), ModelReader(source.clone()), encoder);
        config.dry_run = dry_run;
        config
    };
    let mut opening = Sender::new(config(false));
    let (_hello, open) = (opening.poll_transmit(), opening.poll_transmit().unwrap());
    let drain =
        |r: &mut Receiver<MemTree>| std::iter::from_fn(|| r.poll_transmit()).map(|m| m.kind()).collect::<Vec<_>>();

    let mut old = costly_receiver(MemTree::default(), costs);
    old.handle(hello(0)).unwrap();
    old.handle(open.clone()).unwrap();
    drain(&mut old);
    old.handle(Message::Done(msg::Done)).unwrap();
    assert_eq!(drain(&mut old), [Kind::Summary], "StoreCosts sent to a client that did not offer it");

    let mut old = costly_receiver(MemTree::default(), costs);
    old.handle(hello(0)).unwrap();
    old.handle(open).unwrap();
    assert!(old.handle(Message::DryRun(msg::DryRun)).is_err(), "DryRun taken from a client that did not offer it");

    // Both offer: a push is told the costs; a dry run records nothing
    // (the destination is never finished) and is told them too.
    for dry_run in [false, true] {
        let mut sender = Sender::new(config(dry_run));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut receiver = costly_receiver(MemTree { done: Some(tx), ..MemTree::default() }, costs);
        pair::run(&mut sender, &mut receiver).unwrap();
        assert!(sender.is_finished() && receiver.is_finished());
        let told = sender.store_costs().copied();
        if dry_run {
            assert!(rx.try_recv().is_err(), "a dry run finished (committed) the destination");
            assert_eq!(told, Some(msg::StoreCosts::default()));
        } else {
            assert_eq!(rx.try_recv().unwrap(), source);
            assert_eq!(told, Some(costs));
        }
    }
}

/// Chunk codecs of every `ChunkData` of a push of `source` into an empty
/// tree, with the sender offering the zstd stream codec or not, and
/// `strip` clearing the feature bit from the `Hello` going `strip`'s way
/// (a peer that does not know it); and how the session ended.
fn codecs_of_push(
    source: &Model,
    offer: bool,
    strip: Option<pair::Toward>,
) -> (Vec<u8>, Result<(), SessionError>, Model) {
    let mut config =
        SenderConfig::new(manifest_of(source), ModelReader(source.clone()), Encoder::new(Compression::Auto).unwrap());
    config.zstd_stream = offer;
    let mut sender = Sender::new(config);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut tree = Some(MemTree { done: Some(tx), ..MemTree::default() });
    let mut receiver = Receiver::new(Box::new(move |_: &OpenRequest| {
        tree.take().ok_or_else(|| SessionError::Protocol("opened twice".into()))
    }));
    let mut codecs = Vec::new();
    let ran = pair::run_with(&mut sender, &mut receiver, |toward, message| match message {
        Message::Hello(mut hello) if strip == Some(toward) => {
            hello.features &= !xfer_protocol::FEATURE_ZSTD_STREAM;
            Message::Hello(hello)
        }
        Message::ChunkData(data) => {
            codecs.push(data.codec);
            Message::ChunkData(data)
        }
        other => other,
    });
    (codecs, ran.map(|_| ()), rx.try_recv().unwrap_or_default())
}

/// The zstd stream codec is used only when both sides offer its bit: a
/// peer without it (an older xfer) gets per-chunk zstd as before, and a
/// receiver that did not offer it refuses the codec.
#[test]
fn zstd_stream_needs_both_sides() {
    use pair::Toward;
    use xfer_protocol::codec::{CODEC_RAW, CODEC_ZSTD, CODEC_ZSTD_STREAM};
    let mut source = Model::new();
    for i in 0..40 {
        let text = format!("fn item_{i}() -> usize {{ /* the same shape in every file */ {i} }}\n").repeat(40 + i);
        source.insert(rel(&format!("f{i:02}.rs")), Node::File(text.into_bytes()));
    }
    let (codecs, ran, tree) = codecs_of_push(&source, true, None);
    ran.unwrap();
    assert_eq!(tree, source);
    assert!(!codecs.is_empty() && codecs.iter().all(|&c| c == CODEC_ZSTD_STREAM), "{codecs:?}");
    // The sender does not offer it; a receiver, or a sender, that does not
    // know the bit: chunks go alone, as zstd frames.
    for (offer, strip) in [(false, None), (true, Some(Toward::Sender))] {
        let (codecs, ran, tree) = codecs_of_push(&source, offer, strip);
        ran.unwrap();
        assert_eq!(tree, source);
        assert!(codecs.iter().all(|&c| c == CODEC_ZSTD || c == CODEC_RAW), "{codecs:?}");
        assert!(codecs.contains(&CODEC_ZSTD), "{codecs:?}");
    }
    // A sender that uses the codec although the receiver never saw its
    // offer: the receiver refuses the first such chunk.
    let (_, ran, _) = codecs_of_push(&source, true, Some(Toward::Receiver));
    match ran {
        Err(SessionError::Protocol(message)) => assert!(message.contains("no feature in effect"), "{message}"),
        other => panic!("{other:?}"),
    }
}
