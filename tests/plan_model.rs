//! Property tests of the planner on in-memory trees: applying the plan to v1
//! yields exactly v2, using only chunks v1 holds plus the plan's missing list,
//! and agrees with a naive planner that rewrites everything.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use xfer::chunk::{cut_points, ChunkParams};
use xfer::hash::{ChunkId, FileHash};
use xfer::manifest::{EntryKind, Manifest, RelPath};
use xfer::plan::{apply_list_edit, chunk_list_edit, plan, Op, Plan, PlanOptions};

use crate::util::{manifest_of, rel, seeded, Model, Node};

/// Dir names include a non-UTF-8 one and a name that sorts between `a` and `a/x`.
const DIRS: &[&[u8]] = &[b"a", b"a/x", b"a.d", b"b", b"b/\xff\xfe", b"b/\xff\xfe/deep"];
const NAMES: &[&[u8]] = &[b"f", b"g.txt", b"h\xe9", b"i", b"j.bin"];

fn chunk_sizes() -> [usize; 8] {
    let p = ChunkParams::for_size(0);
    [0, 1, 100, p.min() as usize, p.avg() as usize, p.max() as usize, p.max() as usize + 1, 70_000]
}

fn content(rng: &mut SmallRng) -> Vec<u8> {
    let sizes = chunk_sizes();
    let len = if rng.random_bool(0.5) { sizes[rng.random_range(0..sizes.len())] } else { rng.random_range(0..90_000) };
    if rng.random_bool(0.5) {
        seeded(len, rng.random())
    } else {
        b"fn main() { println!(\"hello\"); }\n".iter().copied().cycle().take(len).collect()
    }
}

fn ensure_dirs(model: &mut Model, path: &RelPath, rng: &mut SmallRng) {
    let parent = path.parent();
    if parent.is_root() {
        return;
    }
    ensure_dirs(model, &parent, rng);
    if !matches!(model.get(&parent), Some(Node::Dir { .. })) {
        // Whatever stood there (a file) becomes a directory.
        model.retain(|p, _| *p != parent && !p.is_inside(&parent));
        model.insert(parent, Node::Dir { mode: 0o755, mtime: rng.random_range(1..1000) });
    }
}

fn random_path(rng: &mut SmallRng) -> RelPath {
    let name = NAMES[rng.random_range(0..NAMES.len())];
    if rng.random_bool(0.3) {
        return rel(name);
    }
    let dir = rel(DIRS[rng.random_range(0..DIRS.len())]);
    dir.join(name).unwrap()
}

fn insert(model: &mut Model, path: RelPath, node: Node, rng: &mut SmallRng) {
    ensure_dirs(model, &path, rng);
    model.retain(|p, _| !p.is_inside(&path));
    model.insert(path, node);
}

pub fn random_tree(rng: &mut SmallRng, files: usize) -> Model {
    let mut model = Model::new();
    for _ in 0..files {
        let path = random_path(rng);
        let node = match rng.random_range(0..10) {
            0 => Node::Symlink { target: b"../some/where".to_vec(), mtime: rng.random_range(1..1000) },
            1 => Node::Dir { mode: 0o750, mtime: rng.random_range(1..1000) },
            _ => Node::File { data: content(rng), mode: 0o644, mtime: rng.random_range(1..1000) },
        };
        insert(&mut model, path, node, rng);
    }
    model
}

fn files(model: &Model) -> Vec<RelPath> {
    model.iter().filter(|(_, n)| matches!(n, Node::File { .. })).map(|(p, _)| p.clone()).collect()
}

/// Applies one random edit: byte edits, renames, moves, copies, chmod,
/// symlink retargets, new empty files and dirs, deletions, type changes.
pub fn random_edit(model: &mut Model, rng: &mut SmallRng) {
    let paths = files(model);
    let pick = |rng: &mut SmallRng| paths.get(rng.random_range(0..paths.len().max(1))).cloned();
    let mtime = rng.random_range(1000..2000);
    match rng.random_range(0..14) {
        kind @ 0..=4 => {
            let Some(path) = pick(rng) else { return };
            let Some(Node::File { data, mtime: t, .. }) = model.get_mut(&path) else { return };
            let at = rng.random_range(0..=data.len());
            match kind {
                0 => {
                    let bytes = seeded(rng.random_range(1..300), rng.random());
                    data.splice(at..at, bytes);
                }
                1 => {
                    let end = (at + rng.random_range(1..5000)).min(data.len());
                    data.drain(at..end);
                }
                2 => {
                    for (i, b) in seeded(rng.random_range(1..200), rng.random()).into_iter().enumerate() {
                        if let Some(slot) = data.get_mut(at + i) {
                            *slot = b;
                        }
                    }
                }
                3 => data.truncate(at),
                _ => data.extend(seeded(rng.random_range(1..20_000), rng.random())),
            }
            *t = mtime;
        }
        kind @ 5..=7 => {
            let Some(from) = pick(rng) else { return };
            let to = random_path(rng);
            if to == from || from.is_inside(&to) {
                return;
            }
            let node = if kind == 7 { model[&from].clone() } else { model.remove(&from).unwrap() };
            insert(model, to, node, rng);
        }
        8 => {
            let Some(path) = pick(rng) else { return };
            if let Some(Node::File { mode, .. }) = model.get_mut(&path) {
                *mode = if *mode == 0o644 { 0o755 } else { 0o600 };
            }
        }
        9 => {
            let path = random_path(rng);
            insert(model, path, Node::Symlink { target: format!("t{mtime}").into_bytes(), mtime }, rng);
        }
        10 => {
            let path = random_path(rng);
            insert(model, path, Node::File { data: Vec::new(), mode: 0o644, mtime }, rng);
        }
        11 => {
            let path = random_path(rng);
            insert(model, path, Node::Dir { mode: 0o700, mtime }, rng);
        }
        12 => {
            let Some(path) = model.keys().nth(rng.random_range(0..model.len().max(1))).cloned() else { return };
            model.retain(|p, _| *p != path && !p.is_inside(&path));
        }
        _ => {
            let path = random_path(rng);
            insert(model, path, Node::File { data: content(rng), mode: 0o640, mtime }, rng);
        }
    }
}

/// Every chunk of every file of `model`, by id.
fn chunks_of(model: &Model) -> HashMap<ChunkId, Vec<u8>> {
    let mut chunks = HashMap::new();
    for node in model.values() {
        if let Node::File { data, .. } = node {
            for (offset, len) in cut_points(data, ChunkParams::for_size(data.len() as u64)) {
                let bytes = &data[offset..offset + len];
                chunks.insert(ChunkId::of(bytes), bytes.to_vec());
            }
        }
    }
    chunks
}

/// Applies `plan` to the manifest of `dest` the way a receiver must: chunk
/// bytes come only from files it held when the plan started and from the
/// plan's missing chunks, taken from the source.
fn apply_model(dest: &Model, plan: &Plan, source: &Model) -> Manifest {
    let mut chunks = chunks_of(dest);
    let source_chunks = chunks_of(source);
    for chunk in &plan.missing {
        chunks.insert(chunk.id, source_chunks[&chunk.id].clone());
    }
    let mut tree: std::collections::BTreeMap<RelPath, xfer::manifest::Entry> =
        manifest_of(dest).entries().iter().map(|e| (e.path.clone(), e.clone())).collect();
    let parent_is_dir = |tree: &std::collections::BTreeMap<RelPath, xfer::manifest::Entry>, path: &RelPath| {
        let parent = path.parent();
        parent.is_root() || matches!(tree.get(&parent).map(|e| &e.kind), Some(EntryKind::Dir))
    };
    for op in &plan.ops {
        match op {
            Op::Delete { path } => {
                assert!(tree.contains_key(path), "delete of absent {path}");
                tree.retain(|p, _| p != path && !p.is_inside(path));
            }
            Op::Mkdir { path, meta } => {
                assert!(parent_is_dir(&tree, path), "mkdir {path} without parent");
                // A file or symlink there is replaced; a directory never is.
                assert!(!matches!(tree.get(path).map(|e| &e.kind), Some(EntryKind::Dir)), "mkdir over dir {path}");
                tree.insert(path.clone(), entry(path, meta.clone(), EntryKind::Dir));
            }
            Op::WriteFile { path, meta, digest } => {
                assert!(parent_is_dir(&tree, path), "write {path} without parent");
                // A directory there is replaced, subtree and all.
                tree.retain(|p, _| !p.is_inside(path));
                let mut data = Vec::new();
                for chunk in &digest.chunks {
                    let bytes =
                        chunks.get(&chunk.id).unwrap_or_else(|| panic!("{path}: chunk {} unavailable", chunk.id));
                    data.extend_from_slice(bytes);
                }
                assert_eq!(FileHash::of(&data), digest.hash);
                tree.insert(path.clone(), entry(path, meta.clone(), EntryKind::File(digest.clone())));
            }
            Op::Symlink { path, target, meta } => {
                assert!(parent_is_dir(&tree, path), "symlink {path} without parent");
                tree.retain(|p, _| !p.is_inside(path));
                tree.insert(path.clone(), entry(path, meta.clone(), EntryKind::Symlink { target: target.clone() }));
            }
            Op::SetMeta { path, meta } => {
                let e = tree.get_mut(path).unwrap_or_else(|| panic!("set meta of absent {path}"));
                e.meta = meta.clone();
            }
            Op::Link { path, target, size, hash } => {
                assert!(parent_is_dir(&tree, path), "link {path} without parent");
                let t = tree.get(target).unwrap_or_else(|| panic!("link {path} to absent {target}"));
                assert!(matches!(&t.kind, EntryKind::File(d) if d.hash == *hash && d.size == *size), "{path}");
                let kind = EntryKind::HardLink { target: target.clone(), size: *size, hash: *hash };
                let meta = t.meta.clone();
                tree.retain(|p, _| !p.is_inside(path));
                tree.insert(path.clone(), entry(path, meta, kind));
            }
        }
    }
    Manifest::new(tree.into_values().collect()).unwrap()
}

fn entry(path: &RelPath, meta: xfer::manifest::Meta, kind: EntryKind) -> xfer::manifest::Entry {
    xfer::manifest::Entry { path: path.clone(), meta, kind }
}

/// The reference: delete everything, create everything, send every chunk
/// the receiver does not hold.
fn naive_plan(source: &Manifest, dest: &Manifest, dest_has: &HashSet<ChunkId>) -> Plan {
    let mut plan = Plan::default();
    for e in dest.entries().iter().filter(|e| e.path.depth() == 1) {
        plan.ops.push(Op::Delete { path: e.path.clone() });
    }
    let mut queued = HashSet::new();
    for e in source.entries() {
        plan.ops.push(match &e.kind {
            EntryKind::Dir => Op::Mkdir { path: e.path.clone(), meta: e.meta.clone() },
            EntryKind::Symlink { target } => {
                Op::Symlink { path: e.path.clone(), target: target.clone(), meta: e.meta.clone() }
            }
            EntryKind::HardLink { target, size, hash } => {
                Op::Link { path: e.path.clone(), target: target.clone(), size: *size, hash: *hash }
            }
            EntryKind::File(d) => {
                for c in &d.chunks {
                    if !dest_has.contains(&c.id) && queued.insert(c.id) {
                        plan.missing.push(*c);
                    }
                }
                Op::WriteFile { path: e.path.clone(), meta: e.meta.clone(), digest: d.clone() }
            }
        });
    }
    plan
}

fn plan_applies_impl(seed: u64, files: usize, edits: usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let v1 = random_tree(&mut rng, files);
    let mut v2 = v1.clone();
    for _ in 0..edits {
        random_edit(&mut v2, &mut rng);
    }
    let (m1, m2) = (manifest_of(&v1), manifest_of(&v2));
    let held: HashSet<ChunkId> = chunks_of(&v1).into_keys().collect();
    let plan =
        plan(&m2, &m1, |id| held.contains(id), PlanOptions { delete: true, protect: None, ..Default::default() });
    assert_eq!(apply_model(&v1, &plan, &v2), m2, "plan applied to v1 is not v2");

    let naive = naive_plan(&m2, &m1, &held);
    assert_eq!(apply_model(&v1, &naive, &v2), m2, "reference plan applied to v1 is not v2");
    let planned: HashSet<_> = plan.missing.iter().map(|c| c.id).collect();
    let reference: HashSet<_> = naive.missing.iter().map(|c| c.id).collect();
    assert!(planned.is_subset(&reference), "plan sends chunks the receiver holds");
    assert_eq!(planned.len(), plan.missing.len(), "a missing chunk is listed twice");

    // An unchanged tree plans nothing.
    let noop = xfer::plan::plan(&m2, &m2, |_| true, PlanOptions { delete: true, protect: None, ..Default::default() });
    assert!(noop.is_empty(), "{:?}", noop.ops);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn plan_applies_proptest(seed in any::<u64>(), files in 0usize..14, edits in 0usize..10) {
        plan_applies_impl(seed, files, edits);
    }

    #[test]
    fn list_edit_roundtrip_proptest(seed in any::<u64>(), edits in 0usize..6) {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut v1 = Model::new();
        insert(&mut v1, rel(b"f"), Node::File { data: seeded(200_000, seed), mode: 0o644, mtime: 1 }, &mut rng);
        let mut v2 = v1.clone();
        for _ in 0..edits {
            random_edit(&mut v2, &mut rng);
        }
        let list = |m: &Model| manifest_of(m).get(&rel(b"f")).and_then(|e| e.file().cloned()).map(|d| d.chunks).unwrap_or_default();
        let (old, new) = (list(&v1), list(&v2));
        let edit = chunk_list_edit(&old, &new);
        prop_assert_eq!(apply_list_edit(&old, &edit), Some(new));
    }
}

#[test]
fn plan_applies_cases() {
    for (seed, files, edits) in [(0, 0, 0), (1, 1, 0), (2, 10, 8), (3, 13, 9), (4, 5, 20)] {
        plan_applies_impl(seed, files, edits);
    }
}

#[test]
fn plan_rename_needs_no_chunks() {
    let mut rng = SmallRng::seed_from_u64(9);
    let mut v1 = Model::new();
    insert(&mut v1, rel(b"a/big"), Node::File { data: seeded(3 << 20, 1), mode: 0o644, mtime: 5 }, &mut rng);
    let mut v2 = Model::new();
    insert(&mut v2, rel(b"z/moved"), v1[&rel(b"a/big")].clone(), &mut rng);
    let held: HashSet<ChunkId> = chunks_of(&v1).into_keys().collect();
    let plan = plan(
        &manifest_of(&v2),
        &manifest_of(&v1),
        |id| held.contains(id),
        PlanOptions { delete: true, protect: None, ..Default::default() },
    );
    assert!(plan.missing.is_empty());
    assert_eq!(plan.files_written(), 1);
}

/// The source says `d` is now a file: the receiver's directory there is
/// replaced even without --delete (its content is gone from the source).
#[test]
fn plan_replaces_nonempty_dir_by_file_without_delete() {
    let mut rng = SmallRng::seed_from_u64(1);
    let mut dest = Model::new();
    insert(&mut dest, rel(b"d/keep"), Node::File { data: b"x".to_vec(), mode: 0o644, mtime: 1 }, &mut rng);
    let mut source = Model::new();
    insert(&mut source, rel(b"d"), Node::File { data: b"y".to_vec(), mode: 0o644, mtime: 1 }, &mut rng);
    let plan = plan(
        &manifest_of(&source),
        &manifest_of(&dest),
        |_| false,
        PlanOptions { delete: false, protect: None, ..Default::default() },
    );
    assert!(plan.skipped.is_empty(), "{:?}", plan.skipped);
    assert_eq!(apply_model(&dest, &plan, &source), manifest_of(&source));
}
