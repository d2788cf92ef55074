//! Delta planning over a 1,000,000-entry manifest, and the Merkle tree of it.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use xfer::chunk::{ChunkParams, ChunkRef, FileDigest};
use xfer::hash::{ChunkId, FileHash};
use xfer::manifest::{diff_trees, Entry, EntryKind, Manifest, Meta, Mtime, RelPath};
use xfer::plan::{plan, PlanOptions};

const DIRS: usize = 1000;
const FILES_PER_DIR: usize = 999;

fn id(n: u64, salt: u8) -> [u8; 32] {
    let mut bytes = [salt; 32];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    bytes
}

/// 1,000 directories of 999 one-chunk files: 1,000,000 entries. `edit`
/// changes every 1,000th file.
fn manifest(edit: bool) -> Manifest {
    let meta = Meta::basic(0o644, Mtime { secs: 1, nanos: 0 });
    let mut entries = Vec::with_capacity(DIRS * (FILES_PER_DIR + 1));
    for d in 0..DIRS {
        let dir = RelPath::new(format!("dir{d:04}")).expect("valid");
        entries.push(Entry { path: dir.clone(), meta: meta.clone(), kind: EntryKind::Dir });
        for f in 0..FILES_PER_DIR {
            let n = (d * FILES_PER_DIR + f) as u64;
            let salt = if edit && n % 1000 == 0 { 2 } else { 1 };
            let digest = FileDigest {
                size: 4096,
                hash: FileHash(id(n, salt)),
                params: ChunkParams::for_size(4096),
                chunks: vec![ChunkRef { id: ChunkId(id(n, salt)), len: 4096 }],
            };
            let path = dir.join(format!("file{f:04}").as_bytes()).expect("valid");
            entries.push(Entry { path, meta: meta.clone(), kind: EntryKind::File(digest) });
        }
    }
    Manifest::new(entries).expect("well formed")
}

fn planning(c: &mut Criterion) {
    let (v1, v2) = (manifest(false), manifest(true));
    let mut group = c.benchmark_group("plan_1m_entries");
    group.sample_size(10).throughput(Throughput::Elements(v2.len() as u64));
    group.bench_function("plan", |b| {
        b.iter(|| plan(&v2, &v1, |_| false, PlanOptions { delete: true, protect: None, ..Default::default() }))
    });
    group.bench_function("merkle_tree", |b| b.iter(|| v2.tree()));
    let (t1, t2) = (v1.tree(), v2.tree());
    group.bench_function("diff_trees", |b| b.iter(|| diff_trees(&t2, t1.root(), |dir| t1.listing(dir).to_vec())));
    group.finish();
}

criterion_group!(benches, planning);
criterion_main!(benches);
