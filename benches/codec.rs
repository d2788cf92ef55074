//! Chunk codec and sub-chunk delta throughput on seeded 64 KiB inputs, and
//! the zstd stream codec against chunks compressed alone on a batch of
//! small similar files.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use xfer::codec::{decode, Codec, Compression, EncodedChunk, Encoder, StreamDecoder};
use xfer::hash::ChunkId;
use xfer::patch;

const LEN: usize = 64 * 1024;

const CODECS: [(&str, Compression); 3] =
    [("zstd1", Compression::Zstd { level: 1 }), ("zstd3", Compression::Zstd { level: 3 }), ("lz4", Compression::Lz4)];

fn random_input(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// Source-code-like text: indented lines of keywords, identifiers drawn from
/// a small vocabulary with seeded suffixes, literals and punctuation.
fn text_input(len: usize, seed: u64) -> Vec<u8> {
    const KEYWORDS: [&str; 10] = ["let", "fn", "if", "for", "match", "return", "pub", "impl", "while", "use"];
    const NAMES: [&str; 12] =
        ["buffer", "offset", "chunk", "len", "state", "reader", "config", "index", "result", "count", "hash", "entry"];
    const PUNCT: [&str; 8] = [" = ", "(", ");", ".", " + ", ", ", " {", "}"];
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = String::with_capacity(len + 128);
    let mut depth = 1usize;
    while out.len() < len {
        out.push_str(&"    ".repeat(depth));
        out.push_str(KEYWORDS[rng.random_range(0..KEYWORDS.len())]);
        out.push(' ');
        for _ in 0..rng.random_range(2..7) {
            out.push_str(NAMES[rng.random_range(0..NAMES.len())]);
            if rng.random_bool(0.3) {
                out.push_str(&format!("_{}", rng.random_range(0..20)));
            }
            out.push_str(PUNCT[rng.random_range(0..PUNCT.len())]);
        }
        if rng.random_bool(0.2) {
            out.push_str(&format!(" // {}", rng.random_range(0..100_000)));
        }
        out.push('\n');
        depth = (depth + rng.random_range(0..3)).saturating_sub(1).clamp(1, 4);
    }
    out.truncate(len);
    out.into_bytes()
}

/// `old` with a few small edits: three overwrites, an insertion, a deletion.
fn edited(old: &[u8], seed: u64) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut new = old.to_vec();
    for _ in 0..3 {
        let at = rng.random_range(0..new.len() - 100);
        let len = rng.random_range(20..80);
        rng.fill_bytes(&mut new[at..at + len]);
    }
    let at = rng.random_range(0..new.len());
    new.splice(at..at, old[..50].iter().copied());
    let at = rng.random_range(0..new.len() - 40);
    new.drain(at..at + 40);
    new
}

fn inputs() -> [(&'static str, Vec<u8>); 2] {
    [("random", random_input(LEN, 1)), ("text", text_input(LEN, 2))]
}

fn codecs(c: &mut Criterion) {
    let inputs = inputs();
    for (input_name, data) in &inputs {
        for (codec_name, compression) in CODECS {
            let chunk = Encoder::new(compression).expect("valid level").encode(data);
            eprintln!(
                "{codec_name:>6} {input_name:>6}: {:>6} -> {:>6} bytes, ratio {:.2} ({:?})",
                data.len(),
                chunk.payload.len(),
                data.len() as f64 / chunk.payload.len() as f64,
                chunk.codec
            );
        }
    }

    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Bytes(LEN as u64));
    for (input_name, data) in &inputs {
        for (codec_name, compression) in CODECS {
            let mut encoder = Encoder::new(compression).expect("valid level");
            group.bench_with_input(BenchmarkId::new(codec_name, input_name), data, |b, data| {
                b.iter(|| encoder.encode(black_box(data)))
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Bytes(LEN as u64));
    for (input_name, data) in &inputs {
        let id = ChunkId::of(data);
        for (codec_name, compression) in CODECS {
            let chunk: EncodedChunk = Encoder::new(compression).expect("valid level").encode(data);
            group.bench_with_input(BenchmarkId::new(codec_name, input_name), &chunk, |b, chunk| {
                b.iter(|| decode(black_box(chunk), &id, None).expect("roundtrip"))
            });
        }
    }
    group.finish();
}

fn delta(c: &mut Criterion) {
    let mut group = c.benchmark_group("patch");
    group.throughput(Throughput::Bytes(LEN as u64));
    for (input_name, old) in inputs() {
        // The receiver's base: the old 64 KiB chunk and 32 KiB that followed it.
        let base = [&old[..], &random_input(LEN / 2, 3)[..]].concat();
        let new = edited(&old, 4);
        let sig = patch::signature(&base);
        let sig_bytes = sig.encode().len();
        let diff = patch::diff(&sig, &new);
        let patch_bytes = patch::encode_patch(&diff, &new).len();
        eprintln!(
            " delta {input_name:>6}: 64 KiB chunk, 5 edits, 96 KiB base: signature {sig_bytes} \
             + patch {patch_bytes} = {} bytes ({} literal)",
            sig_bytes + patch_bytes,
            diff.literal_len()
        );
        group.bench_with_input(BenchmarkId::new("diff_encode", input_name), &new, |b, new| {
            b.iter(|| patch::encode_patch(&patch::diff(&sig, black_box(new)), new))
        });
        let encoded = patch::encode_patch(&diff, &new);
        group.bench_with_input(BenchmarkId::new("apply", input_name), &encoded, |b, encoded| {
            b.iter(|| patch::apply(black_box(encoded), &base, LEN * 2).expect("roundtrip"))
        });
    }
    group.finish();
}

/// Small source-like files with a shared header, as one chunk each.
fn small_files() -> Vec<Vec<u8>> {
    let header = b"// Copyright the project's authors. Licensed under the terms in LICENSE.\nuse std::io;\n\n";
    (0..256u64).map(|i| [&header[..], &text_input(2048 + (i as usize * 97) % 6144, 100 + i)[..]].concat()).collect()
}

/// Encodes `files` one chunk each, on one data stream's zstd stream or
/// alone, at level 1 as an unlimited link runs.
fn encode_all(encoder: &mut Encoder, files: &[Vec<u8>], stream: bool) -> Vec<EncodedChunk> {
    files.iter().map(|f| if stream { encoder.encode_on_stream(0, f) } else { encoder.encode(f) }).collect()
}

fn streams(c: &mut Criterion) {
    let files = small_files();
    let total: usize = files.iter().map(Vec::len).sum();
    let mut group = c.benchmark_group("stream");
    group.throughput(Throughput::Bytes(total as u64));
    for (name, stream) in [("alone", false), ("stream", true)] {
        let mut encoder = Encoder::new(Compression::Zstd { level: 1 }).expect("valid level");
        let sent: usize = encode_all(&mut encoder, &files, stream).iter().map(|c| c.payload.len()).sum();
        eprintln!(
            "{name:>6}: {} small files, {total} -> {sent} bytes, ratio {:.2}",
            files.len(),
            total as f64 / sent as f64
        );
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            // A fresh stream each round (made before the clock starts):
            // the files must not be in its window already.
            let fresh = || {
                let mut encoder = Encoder::new(Compression::Zstd { level: 1 }).expect("valid level");
                encoder.encode_on_stream(0, b"warm");
                encoder
            };
            b.iter_batched(
                fresh,
                |mut encoder| encode_all(&mut encoder, black_box(&files), stream),
                BatchSize::SmallInput,
            )
        });
    }
    let chunks = encode_all(&mut Encoder::new(Compression::Zstd { level: 1 }).expect("valid level"), &files, true);
    let alone = encode_all(&mut Encoder::new(Compression::Zstd { level: 1 }).expect("valid level"), &files, false);
    let ids: Vec<ChunkId> = files.iter().map(|f| ChunkId::of(f)).collect();
    group.bench_function(BenchmarkId::new("decode", "alone"), |b| {
        b.iter(|| {
            alone
                .iter()
                .zip(&ids)
                .map(|(c, id)| decode(black_box(c), id, None).expect("roundtrip").len())
                .sum::<usize>()
        })
    });
    group.bench_function(BenchmarkId::new("decode", "stream"), |b| {
        b.iter(|| {
            // A stream decodes from its start: a new decoder each round.
            let mut decoder = StreamDecoder::new().expect("a decoder");
            // Then checked against the id, as every chunk is.
            chunks
                .iter()
                .zip(&ids)
                .map(|(c, id)| {
                    assert_eq!(c.codec, Codec::ZstdStream);
                    let bytes = decoder.decode(black_box(&c.payload), c.decoded_len).expect("roundtrip");
                    assert_eq!(ChunkId::of(&bytes), *id);
                    bytes.len()
                })
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = codecs, delta, streams
}
criterion_main!(benches);
