//! One chunk index per client on a server: a tree a client pushed once is
//! not sent again when the same client pushes it to another path, while
//! another client learns nothing of it and sends everything, unless the
//! server dedups across clients (`serve --dedup-across-clients`).

use std::path::{Path, PathBuf};

use tempfile::TempDir;
use xfer::net::access::Access;
use xfer::net::identity::{Fingerprint, Identity};
use xfer::usecase::{push::push, RemoteUrl, Report, TransferOptions};
use xfer::ServerOptions;

use crate::util::{assert_same_tree, read_tree, seeded};

/// Files of the tree: (path, size); 5 MiB in all, random, two directories.
const FILES: [(&str, usize); 5] =
    [("f0", 1 << 20), ("f1", 1 << 20), ("sub/f2", 1 << 20), ("sub/f3", 1 << 20), ("sub/deeper/f4", 1 << 20)];
const TOTAL: u64 = 5 << 20;

struct Server {
    id: Fingerprint,
    addr: std::net::SocketAddr,
    root: PathBuf,
    _running: xfer::Server,
}

/// A server as `xfer serve` starts one: per-client indexes unless
/// `across_clients` (`--dedup-across-clients`).
fn start_server(tmp: &TempDir, clients: &[Fingerprint]) -> Server {
    start_server_with(tmp, clients, |options| options)
}

fn start_server_with(
    tmp: &TempDir,
    clients: &[Fingerprint],
    options: impl FnOnce(ServerOptions) -> ServerOptions,
) -> Server {
    let id = Identity::generate().unwrap();
    let root = tmp.path().join("served");
    std::fs::create_dir(&root).unwrap();
    let root = root.canonicalize().unwrap();
    let options = options(ServerOptions::new(&root, Access::allow(clients)));
    let running = xfer::Server::start("127.0.0.1:0".parse().unwrap(), &id, options).unwrap();
    Server { id: id.fingerprint(), addr: running.local_addr().unwrap(), root, _running: running }
}

fn source(tmp: &TempDir) -> PathBuf {
    let src = tmp.path().join("src");
    for (n, (path, len)) in FILES.iter().enumerate() {
        let file = src.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, seeded(*len, 100 + n as u64)).unwrap();
    }
    src
}

async fn push_to(tmp: &TempDir, server: &Server, client: &Identity, src: &Path, path: &str) -> Report {
    let url = RemoteUrl { authority: server.addr.to_string(), path: path.into() };
    let state = tmp.path().join(format!("client-state-{}", &client.fingerprint().to_string()[..8]));
    let options = TransferOptions { delete: true, ..TransferOptions::new(state) };
    let report = push(src, &url, client, Some(server.id), &options).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_same_tree(&read_tree(&server.root.join(path)), &read_tree(src));
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_client_second_path_sends_no_chunks_other_client_sends_all() {
    let tmp = TempDir::new().unwrap();
    let (alice, bob) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let server = start_server(&tmp, &[alice.fingerprint(), bob.fingerprint()]);
    let src = source(&tmp);

    let first = push_to(&tmp, &server, &alice, &src, "a").await;
    assert!(first.bytes_sent >= TOTAL, "first push sent {} of {TOTAL}", first.bytes_sent);

    let second = push_to(&tmp, &server, &alice, &src, "b").await;
    println!(
        "shared_index: /a sent {} bytes, /b sent {} bytes ({} chunks), {} chunks reused",
        first.bytes_sent, second.bytes_sent, second.chunks_sent, second.chunks_reused
    );
    assert_eq!(second.chunks_sent, 0, "the same client's tree on /a held every chunk");
    assert!(second.bytes_sent < TOTAL / 100, "{} bytes sent again", second.bytes_sent);
    assert!(second.wire_bytes_sent < TOTAL / 10, "{} bytes on the wire", second.wire_bytes_sent);

    // Another client: nothing of alice's trees counts, nothing is reused.
    let other = push_to(&tmp, &server, &bob, &src, "c").await;
    assert!(other.bytes_sent >= TOTAL, "bob sent {} of {TOTAL}", other.bytes_sent);
    assert_eq!(other.chunks_reused, 0, "bob's push drew on alice's chunks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_file_changed_behind_our_back_is_sent_again() {
    let tmp = TempDir::new().unwrap();
    let alice = Identity::generate().unwrap();
    let server = start_server(&tmp, &[alice.fingerprint()]);
    let src = source(&tmp);
    push_to(&tmp, &server, &alice, &src, "a").await;

    // Same size, other bytes: every chunk recorded for /a/f1 is stale.
    std::fs::write(server.root.join("a/f1"), seeded(1 << 20, 999)).unwrap();
    let second = push_to(&tmp, &server, &alice, &src, "b").await;
    assert!(second.bytes_sent >= 1 << 20, "f1 was not sent again: {} bytes", second.bytes_sent);
    assert!(second.bytes_sent < 2 << 20, "more than f1 was sent: {} bytes", second.bytes_sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_never_reads_through_a_symlink_out_of_the_root() {
    let tmp = TempDir::new().unwrap();
    let alice = Identity::generate().unwrap();
    let server = start_server(&tmp, &[alice.fingerprint()]);
    let src = source(&tmp);
    push_to(&tmp, &server, &alice, &src, "a").await;

    // /a/sub becomes a link to a copy outside the root holding the very
    // same bytes: they are there, but must not be read through the link.
    let outside = tmp.path().join("outside-sub");
    std::fs::rename(server.root.join("a/sub"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, server.root.join("a/sub")).unwrap();
    let second = push_to(&tmp, &server, &alice, &src, "b").await;
    assert!(second.bytes_sent >= 3 << 20, "chunks were read through a/sub: {} bytes sent", second.bytes_sent);
    assert!(second.bytes_sent < 4 << 20, "f0 and f1 were sent again: {} bytes", second.bytes_sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_clients_another_client_sends_no_chunks() {
    let tmp = TempDir::new().unwrap();
    let (alice, bob) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let server = start_server_with(&tmp, &[alice.fingerprint(), bob.fingerprint()], |o| o.dedup_across_clients(true));
    let src = source(&tmp);

    let first = push_to(&tmp, &server, &alice, &src, "a").await;
    assert!(first.bytes_sent >= TOTAL, "first push sent {} of {TOTAL}", first.bytes_sent);

    // Bob never sent any of it; the server-wide index holds alice's /a.
    let other = push_to(&tmp, &server, &bob, &src, "b").await;
    println!(
        "shared_index across clients: alice /a sent {} bytes, bob /b sent {} bytes ({} chunks, {} wire), {} chunks reused",
        first.bytes_sent, other.bytes_sent, other.chunks_sent, other.wire_bytes_sent, other.chunks_reused
    );
    assert_eq!(other.chunks_sent, 0, "alice's tree on /a held every chunk");
    assert!(other.chunks_reused > 0, "bob's push reused nothing");
    assert!(other.bytes_sent < TOTAL / 100, "{} bytes sent again", other.bytes_sent);
    assert!(other.wire_bytes_sent < TOTAL / 10, "{} bytes on the wire", other.wire_bytes_sent);
    assert!(server.root.join(".xfer/clients/all.redb").is_file(), "no server-wide index");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_clients_file_changed_behind_our_back_is_sent_again_and_its_places_dropped() {
    let tmp = TempDir::new().unwrap();
    let (alice, bob) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let server = start_server_with(&tmp, &[alice.fingerprint(), bob.fingerprint()], |o| o.dedup_across_clients(true));
    let src = source(&tmp);
    // Four copies: every chunk of f1 has as many places as the index keeps.
    let copies = ["a1", "a2", "a3", "a4"];
    for copy in copies {
        push_to(&tmp, &server, &alice, &src, copy).await;
    }

    // Same size, other bytes: every place of f1's chunks is stale, and
    // bob's push must not trust them.
    for copy in copies {
        std::fs::write(server.root.join(copy).join("f1"), seeded(1 << 20, 999)).unwrap();
    }
    let second = push_to(&tmp, &server, &bob, &src, "b").await;
    assert!(second.bytes_sent >= 1 << 20, "f1 was not sent again: {} bytes", second.bytes_sent);
    assert!(second.bytes_sent < 2 << 20, "more than f1 was sent: {} bytes", second.bytes_sent);

    // The stale places were dropped when found, which made room for /b's:
    // kept, they would fill every slot and /c would need f1 sent again.
    let third = push_to(&tmp, &server, &alice, &src, "c").await;
    assert_eq!(third.chunks_sent, 0, "{} chunks sent for /c: /b's f1 was not recorded", third.chunks_sent);
}
