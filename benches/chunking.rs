//! Chunk+hash throughput: xfer's chunker against the fastcdc and blake3
//! crates alone, from memory and from a file, on seeded data.

use std::io::Write;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fastcdc::v2020::FastCDC;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use xfer::chunk::{digest_bytes, digest_stream_sized, ChunkParams};

const LEN: usize = 64 << 20;

fn seeded(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0; len];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn chunking(c: &mut Criterion) {
    let data = seeded(LEN, 1);
    let params = ChunkParams::for_size(LEN as u64);
    let mut group = c.benchmark_group("chunk_hash");
    group.throughput(Throughput::Bytes(LEN as u64)).sample_size(10);
    group.bench_function("crates_fastcdc_only", |b| {
        b.iter(|| FastCDC::new(&data, params.min(), params.avg(), params.max()).count())
    });
    group.bench_function("crates_blake3_only", |b| b.iter(|| blake3::hash(&data)));
    group.bench_function("crates_fastcdc_blake3_per_chunk", |b| {
        b.iter(|| {
            for c in FastCDC::new(&data, params.min(), params.avg(), params.max()) {
                std::hint::black_box(blake3::hash(&data[c.offset..c.offset + c.length]));
            }
        })
    });
    group.bench_function("xfer_digest_bytes", |b| b.iter(|| digest_bytes(&data)));
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(&data).expect("write temp file");
    group.bench_function("xfer_digest_stream_file", |b| {
        b.iter(|| {
            let f = std::fs::File::open(file.path()).expect("open temp file");
            digest_stream_sized(f, params, LEN as u64, |_, _, _| Ok(())).expect("read temp file")
        })
    });
    group.finish();
}

criterion_group!(benches, chunking);
criterion_main!(benches);
