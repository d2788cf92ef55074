//! The receiver's side of a local delta push. `delta_128mib_32_edits`:
//! one large file with scattered edits; the sender reads, cuts and hashes
//! it all, the receiver rebuilds it beside the old version (laying the
//! unchanged chunks in from the old one), checks the whole-file hash and
//! syncs it before the rename. `metadata_512_dirs`: only the directories'
//! times changed, so the receiver sets metadata and commits its state.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use xfer::codec::Compression;
use xfer::usecase::memory::{push_local, PushOptions};

const SIZE: usize = 128 << 20;
const EDITS: usize = 32;

/// Random bytes from a fixed seed (xorshift: no dependency for a bench).
fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `base` with `EDITS` 4 KiB pieces overwritten, spread over the file; `round`
/// picks which bytes they get, so each version differs from the last.
fn edited(base: &[u8], round: u64) -> Vec<u8> {
    let mut data = base.to_vec();
    for e in 0..EDITS {
        let at = (e * SIZE / EDITS + 12_345) % (SIZE - 4096);
        data[at..at + 4096].copy_from_slice(&random_bytes(4096, round * 1000 + e as u64 + 1));
    }
    data
}

fn delta_push(c: &mut Criterion) {
    let dir = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let (src, dest) = (dir.path().join("src"), dir.path().join("dest"));
    std::fs::create_dir(&src).expect("mkdir");
    let options = PushOptions {
        delete: true,
        checksum: false,
        compression: Compression::Auto,
        state_dir: dir.path().join("state"),
        filter: None,
    };
    let base = random_bytes(SIZE, 42);
    std::fs::write(src.join("big"), &base).expect("write");
    push_local(&src, &dest, &options).expect("first push");
    let mut round = 0u64;
    let mut group = c.benchmark_group("rebuild");
    group.sample_size(10).throughput(Throughput::Bytes(SIZE as u64));
    group.bench_function("delta_128mib_32_edits", |b| {
        b.iter_batched(
            || {
                round += 1;
                std::fs::write(src.join("big"), edited(&base, round)).expect("write");
            },
            |()| {
                let stats = push_local(&src, &dest, &options).expect("push");
                assert_eq!(stats.files_changed, 1);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

const DIRS: usize = 512;

fn metadata_only(c: &mut Criterion) {
    let dir = tempfile::TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let (src, dest) = (dir.path().join("src"), dir.path().join("dest"));
    let options = PushOptions {
        delete: true,
        checksum: false,
        compression: Compression::Auto,
        state_dir: dir.path().join("state"),
        filter: None,
    };
    let dirs: Vec<_> = (0..DIRS).map(|d| src.join(format!("d{d:03}"))).collect();
    for (d, path) in dirs.iter().enumerate() {
        std::fs::create_dir_all(path).expect("mkdir");
        std::fs::write(path.join("f"), random_bytes(100, d as u64 + 1)).expect("write");
    }
    push_local(&src, &dest, &options).expect("first push");
    let mut round = 0u64;
    let mut group = c.benchmark_group("rebuild");
    group.sample_size(10);
    group.bench_function("metadata_512_dirs", |b| {
        b.iter_batched(
            || {
                round += 1;
                let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + round * 60);
                for path in &dirs {
                    std::fs::File::open(path).and_then(|d| d.set_modified(when)).expect("touch dir");
                }
            },
            |()| {
                let stats = push_local(&src, &dest, &options).expect("push");
                assert_eq!(stats.files_changed, 0);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, delta_push, metadata_only);
criterion_main!(benches);
