//! QUIC throughput over loopback: xfer's socket buffers and windows against
//! quinn's and the kernel's defaults, side by side in one run, on one stream
//! and on four. Client and server share this process's runtime.

use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use xfer::net::identity::Identity;
use xfer::net::{client_config, client_endpoint, server_endpoint, ServerPin, Tuning};

const BYTES: u64 = 256 << 20;
const PIECE: usize = 1 << 20;

/// Sends `BYTES` split over `streams` unidirectional streams and waits until
/// the server has read them all.
async fn transfer(tuning: Tuning, streams: u64) {
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let (server_id, client_id) = (Identity::generate().expect("identity"), Identity::generate().expect("identity"));
    let server = server_endpoint(loopback, &server_id, tuning).expect("server");
    let addr = server.local_addr().expect("bound");
    let receiving = tokio::spawn(async move {
        let connection = server.accept().await.expect("incoming").await.expect("handshake");
        let mut readers = Vec::new();
        for _ in 0..streams {
            let mut recv = connection.accept_uni().await.expect("stream");
            readers.push(tokio::spawn(async move {
                let mut total = 0u64;
                while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.expect("read") {
                    total += chunk.bytes.len() as u64;
                }
                total
            }));
        }
        let mut total = 0;
        for reader in readers {
            total += reader.await.expect("reader");
        }
        connection.close(0u32.into(), b"done");
        total
    });
    let client = client_endpoint(loopback, tuning).expect("client");
    let config = client_config(&client_id, &ServerPin::new(Some(server_id.fingerprint())), tuning).expect("config");
    let connection = client.connect_with(config, addr, "xfer").expect("connect").await.expect("handshake");
    let piece = bytes::Bytes::from(vec![0x5a; PIECE]);
    let mut senders = Vec::new();
    for _ in 0..streams {
        let mut send = connection.open_uni().await.expect("stream");
        let piece = piece.clone();
        senders.push(tokio::spawn(async move {
            for _ in 0..BYTES / streams / PIECE as u64 {
                send.write_chunk(piece.clone()).await.expect("write");
            }
            send.finish().expect("finish");
            let _ = send.stopped().await;
        }));
    }
    for sender in senders {
        sender.await.expect("sender");
    }
    assert_eq!(receiving.await.expect("receiver"), BYTES);
    client.wait_idle().await;
}

fn quic(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut group = c.benchmark_group("quic_loopback");
    group.throughput(Throughput::Bytes(BYTES)).sample_size(10);
    for streams in [1, 4] {
        let buffers_only = Tuning { large_windows: false, ..Tuning::default() };
        let windows_only = Tuning { socket_buffer: None, ..Tuning::default() };
        let configs = [
            ("xfer", Tuning::default()),
            ("stock", Tuning::stock()),
            ("buffers_only", buffers_only),
            ("windows_only", windows_only),
        ];
        for (name, tuning) in configs {
            group.bench_function(format!("{name}_{streams}_streams"), |b| {
                b.iter(|| runtime.block_on(transfer(tuning, streams)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, quic);
criterion_main!(benches);
