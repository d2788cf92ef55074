//! Remote pushes over QUIC on loopback: a server task and a client in one
//! process, pinned identities both ways.

use std::net::SocketAddr;
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tempfile::TempDir;
use xfer::codec::Compression;
use xfer::identity::Identity;
use xfer::transport::client::{push, RemoteError, RemotePush, RemoteUrl};
use xfer::transport::driver::{serve, ServeConfig};
use xfer::transport::{server_endpoint, Tuning};

use crate::plan_model::{random_edit, random_tree};
use crate::util::{assert_same_tree, materialize, read_tree};

struct Server {
    id: Identity,
    addr: SocketAddr,
    root: std::path::PathBuf,
}

fn start_server(tmp: &TempDir, allow: Vec<xfer::identity::Fingerprint>) -> Server {
    let id = Identity::generate().unwrap();
    let root = tmp.path().join("served");
    std::fs::create_dir(&root).unwrap();
    let endpoint = server_endpoint("127.0.0.1:0".parse().unwrap(), &id, Tuning::default()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(serve(endpoint, Arc::new(ServeConfig::new(root.clone(), allow))));
    Server { id, addr, root }
}

/// A random tree of 12 entries in `tmp/src`, with the generator for edits.
fn random_source(tmp: &TempDir, seed: u64) -> (std::path::PathBuf, crate::util::Model, SmallRng) {
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
    let tree = random_tree(&mut rng, 12);
    materialize(&tree, &src);
    (src, tree, rng)
}

fn options(tmp: &TempDir) -> RemotePush {
    RemotePush {
        delete: true,
        checksum: false,
        compression: Compression::Auto,
        state_dir: tmp.path().join("client-state"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_push_roundtrip_and_noop() {
    let tmp = TempDir::new().unwrap();
    let client = Identity::generate().unwrap();
    let server = start_server(&tmp, vec![client.fingerprint()]);
    let (src, v1, mut rng) = random_source(&tmp, 7);
    let url = RemoteUrl { authority: server.addr.to_string(), path: "backups/site".into() };
    let pin = Some(server.id.fingerprint());
    let first = push(&src, &url, &client, pin, &options(&tmp)).await.unwrap();
    assert_same_tree(&read_tree(&server.root.join("backups/site")), &v1);
    assert!(first.failed.is_empty(), "{:?}", first.failed);

    let mut v2 = v1.clone();
    for _ in 0..8 {
        random_edit(&mut v2, &mut rng);
    }
    std::fs::remove_dir_all(&src).unwrap();
    std::fs::create_dir(&src).unwrap();
    materialize(&v2, &src);
    push(&src, &url, &client, pin, &options(&tmp)).await.unwrap();
    assert_same_tree(&read_tree(&server.root.join("backups/site")), &v2);

    let noop = push(&src, &url, &client, pin, &options(&tmp)).await.unwrap();
    let noop_wire = noop.wire_bytes_sent + noop.wire_bytes_received;
    assert_eq!(noop.files_changed, 0);
    assert!(noop_wire < 20_000, "{noop_wire}");
    // The server's own state stays out of the served tree.
    assert!(server.root.join(".xfer").is_dir());
    assert!(!server.root.join("backups/site/.xfer").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_refuses_untrusted_server_and_unknown_client() {
    let tmp = TempDir::new().unwrap();
    let client = Identity::generate().unwrap();
    let server = start_server(&tmp, vec![client.fingerprint()]);
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    let url = RemoteUrl { authority: server.addr.to_string(), path: String::new() };

    let unpinned = push(&src, &url, &client, None, &options(&tmp)).await.unwrap_err();
    match &unpinned {
        RemoteError::UntrustedServer { seen, .. } => assert_eq!(*seen, server.id.fingerprint()),
        other => panic!("expected an untrusted-server error, got {other}"),
    }
    assert!(unpinned.to_string().contains("xfer trust"), "{unpinned}");

    let stranger = Identity::generate().unwrap();
    let refused = push(&src, &url, &stranger, Some(server.id.fingerprint()), &options(&tmp)).await;
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("not allowed") || message.contains("closed"), "{message}");
    assert!(!server.root.join("f").exists());
}

#[test]
fn remote_url_parses() {
    let url = RemoteUrl::parse("xfer://backup.example:9000/site/www").unwrap();
    assert_eq!((url.authority.as_str(), url.path.as_str()), ("backup.example:9000", "site/www"));
    assert_eq!(RemoteUrl::parse("xfer://host").unwrap().authority, "host:7878");
    assert!(RemoteUrl::parse("/local/path").is_none());
    assert!(RemoteUrl::parse("xfer:///x").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_push_then_pull_back() {
    let tmp = TempDir::new().unwrap();
    let client = Identity::generate().unwrap();
    let server = start_server(&tmp, vec![client.fingerprint()]);
    let (src, v1, _) = random_source(&tmp, 11);
    let url = RemoteUrl { authority: server.addr.to_string(), path: "site".into() };
    let pin = Some(server.id.fingerprint());
    push(&src, &url, &client, pin, &options(&tmp)).await.unwrap();
    // Restore into an empty directory, then pull again: nothing to do.
    let restored = tmp.path().join("restored");
    let report = xfer::transport::client::pull(&url, &restored, &client, pin, &options(&tmp)).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_same_tree(&read_tree(&restored), &v1);
    let again = xfer::transport::client::pull(&url, &restored, &client, pin, &options(&tmp)).await.unwrap();
    assert!(again.wire_bytes_sent + again.wire_bytes_received < 20_000);
    assert_same_tree(&read_tree(&restored), &v1);
}
