//! Quick-check re-scan of 100,000 unchanged files (no file is read).

use std::collections::HashMap;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use xfer::fs::scan::{scan, ScanOptions};

const FILES: usize = 100_000;

fn rescan(c: &mut Criterion) {
    let dir = tempfile::TempDir::new().expect("temp dir");
    for d in 0..100 {
        let sub = dir.path().join(format!("d{d:02}"));
        std::fs::create_dir(&sub).expect("mkdir");
        for f in 0..FILES / 100 {
            std::fs::write(sub.join(format!("f{f:04}")), format!("{d}/{f}")).expect("write");
        }
    }
    let first = scan(dir.path(), &HashMap::new(), ScanOptions::default()).expect("scan");
    assert_eq!(first.records.len(), FILES);
    let mut group = c.benchmark_group("rescan");
    group.sample_size(10).throughput(Throughput::Elements(FILES as u64));
    group.bench_function("quick_check_100k_files", |b| {
        b.iter(|| {
            let again = scan(dir.path(), &first.records, ScanOptions::default()).expect("scan");
            assert_eq!(again.files_read, 0);
        })
    });
    group.finish();
}

criterion_group!(benches, rescan);
criterion_main!(benches);
