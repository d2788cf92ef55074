//! Remote pushes over QUIC on loopback: a server task and a client in one
//! process, pinned identities both ways.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tempfile::TempDir;
use xfer::net::access::Access;
use xfer::net::admission::serve;
use xfer::net::identity::Identity;
use xfer::net::limiter::Limiter;
use xfer::net::served::ServeConfig;
use xfer::net::{server_endpoint, Tuning};
use xfer::usecase::{local::push_local, pull::pull, push::push, RemoteUrl, TransferError, TransferOptions};
use xfer_core::pacing::Rate;

use crate::plan_model::{random_edit, random_tree};
use crate::util::{assert_same_tree, materialize, read_tree, seeded};

struct Server {
    id: Identity,
    addr: SocketAddr,
    root: std::path::PathBuf,
}

fn start_server(tmp: &TempDir, allow: Vec<xfer::net::identity::Fingerprint>) -> Server {
    start_server_tuned(tmp, allow, Tuning::default())
}

fn start_server_tuned(tmp: &TempDir, allow: Vec<xfer::net::identity::Fingerprint>, tuning: Tuning) -> Server {
    start_server_with(tmp, Access::allow(&allow), tuning)
}

fn start_server_with(tmp: &TempDir, access: Access, tuning: Tuning) -> Server {
    let id = Identity::generate().unwrap();
    let root = tmp.path().join("served");
    std::fs::create_dir(&root).unwrap();
    let endpoint = server_endpoint("127.0.0.1:0".parse().unwrap(), &id, tuning).unwrap();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(serve(endpoint, Arc::new(ServeConfig::new(root.clone(), access))));
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

fn options(tmp: &TempDir) -> TransferOptions {
    TransferOptions {
        delete: true,
        busy_wait: std::time::Duration::from_secs(10),
        ..TransferOptions::new(tmp.path().join("client-state"))
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
        TransferError::UntrustedServer { seen, .. } => assert_eq!(*seen, server.id.fingerprint()),
        other => panic!("expected an untrusted-server error, got {other}"),
    }
    // The library names the key; the CLI adds how to trust it (cli.rs).
    assert!(unpinned.to_string().contains(&server.id.fingerprint().to_string()), "{unpinned}");

    let stranger = Identity::generate().unwrap();
    let refused = push(&src, &url, &stranger, Some(server.id.fingerprint()), &options(&tmp)).await;
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("is not allowed") && message.contains("--allow"), "{message}");
    assert!(!server.root.join("f").exists());
}

#[test]
fn remote_url_parses() {
    let url = RemoteUrl::parse("xfer://backup.example:9000/site/www").unwrap();
    assert_eq!((url.authority.as_str(), url.path.as_str()), ("backup.example:9000", "site/www"));
    assert_eq!(
        RemoteUrl::parse("xfer://host/.").unwrap(),
        RemoteUrl { authority: "host:7878".into(), path: String::new() }
    );
    // No path at all is refused: the root must be named.
    assert!(RemoteUrl::parse("xfer://host").is_none() && RemoteUrl::parse("xfer://host:1/").is_none());
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
    let report = xfer::usecase::pull::pull(&url, &restored, &client, pin, &options(&tmp)).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_same_tree(&read_tree(&restored), &v1);
    let again = xfer::usecase::pull::pull(&url, &restored, &client, pin, &options(&tmp)).await.unwrap();
    assert!(again.wire_bytes_sent + again.wire_bytes_received < 20_000);
    assert_same_tree(&read_tree(&restored), &v1);
}

/// The CLI's local push (an embedded server, the session protocol) with
/// exclusions: excluded entries stay on the sender, the receiver's excluded
/// entries survive `--delete`, an excluded directory there included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_push_honours_exclusions() {
    let tmp = TempDir::new().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    let filter = Arc::new(crate::push::exclusion_scenario(&src, &dest));
    std::fs::create_dir_all(dest.join("target/deep")).unwrap();
    std::fs::write(dest.join("target/deep/old"), "build output").unwrap();
    let options = TransferOptions { filter: Some(filter), ..options(&tmp) };
    let report = push_local(&src, &dest, &options).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!((report.files_changed, report.files_deleted), (3, 1));
    assert_eq!(std::fs::read(dest.join("target/deep/old")).unwrap(), b"build output");
    let again = push_local(&src, &dest, &options).await.unwrap();
    assert_eq!((again.files_changed, again.files_deleted), (0, 0));
    std::fs::remove_dir_all(dest.join("target")).unwrap();
    crate::push::assert_exclusion_outcome(&dest);

    // A pull's source is scanned by the server: patterns are refused, not ignored.
    let url = RemoteUrl { authority: "127.0.0.1:9".into(), path: String::new() };
    let client = Identity::generate().unwrap();
    let refused = pull(&url, &tmp.path().join("pulled"), &client, None, &options).await;
    assert!(matches!(refused, Err(TransferError::PullFilter)), "{refused:?}");
}

/// A UDP relay in front of `server` that forwards both ways and sets
/// `reached` once `budget` bytes went up; with `cut_link` it then drops
/// everything: a link that dies mid-session.
async fn relay(server: SocketAddr, budget: usize, reached: Arc<AtomicBool>, cut_link: bool) -> SocketAddr {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    back.connect(server).await.unwrap();
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut up, mut down) = (vec![0u8; 65_536], vec![0u8; 65_536]);
        let (mut client, mut forwarded) = (None, 0);
        loop {
            tokio::select! {
                Ok((n, from)) = front.recv_from(&mut up) => {
                    client = Some(from);
                    forwarded += n;
                    if forwarded > budget {
                        reached.store(true, Ordering::SeqCst);
                    }
                    if !(cut_link && reached.load(Ordering::SeqCst)) {
                        let _ = back.send(&up[..n]).await;
                    }
                }
                Ok(n) = back.recv(&mut down) => {
                    if let (Some(to), false) = (client, cut_link && reached.load(Ordering::SeqCst)) {
                        let _ = front.send_to(&down[..n], to).await;
                    }
                }
            }
        }
    });
    addr
}

fn temporaries(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".xfer-tmp.")).map(|e| e.path()).collect()
}

/// The link dies mid-push: the server notices (its idle timeout), commits
/// the files it had received and verified, leaves no temporary behind and
/// nothing torn under a final name; the re-push sends exactly the chunks of
/// the files still missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_push_cut_midway_then_resumed() {
    interrupted_push_resumes(true).await;
}

/// The same when the client cancels (a closing window, Ctrl-C): the call
/// returns `Cancelled` and the server keeps what it has whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_push_cancelled_midway_then_resumed() {
    interrupted_push_resumes(false).await;
}

async fn interrupted_push_resumes(cut_link: bool) {
    const FILES: u64 = 24;
    const SIZE: usize = 1 << 20;
    let tmp = TempDir::new().unwrap();
    let client = Arc::new(Identity::generate().unwrap());
    let tuning = Tuning { idle_timeout: std::time::Duration::from_secs(1), ..Tuning::default() };
    let server = start_server_tuned(&tmp, vec![client.fingerprint()], tuning);
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..FILES {
        std::fs::write(src.join(format!("f{i:02}")), seeded(SIZE, i)).unwrap();
    }
    let pin = Some(server.id.fingerprint());
    let reached = Arc::new(AtomicBool::new(false));
    let front = relay(server.addr, FILES as usize * SIZE / 2, reached.clone(), cut_link).await;
    let relayed = RemoteUrl { authority: front.to_string(), path: "cut".into() };
    let first_options = options(&tmp);
    let cancel = first_options.cancel.clone();
    let first = tokio::spawn({
        let (src, client) = (src.clone(), client.clone());
        async move { push(&src, &relayed, &client, pin, &first_options).await }
    });

    // Halfway through the data, the link dies or the client cancels.
    let dest = server.root.join("cut");
    let started = std::time::Instant::now();
    while !reached.load(Ordering::SeqCst) {
        assert!(!first.is_finished(), "the push ended before the interruption");
        assert!(started.elapsed().as_secs() < 60, "the push never got going");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    if cut_link {
        first.abort();
    } else {
        cancel.cancel();
        let ended = first.await.unwrap();
        assert!(matches!(ended, Err(TransferError::Cancelled { .. })), "{ended:?}");
    }
    // The server gives up on the client and salvages what it has.
    while !temporaries(&dest).is_empty() {
        assert!(started.elapsed().as_secs() < 60, "temporaries left behind");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let mut missing_chunks = 0;
    let mut committed = 0;
    for i in 0..FILES {
        let data = seeded(SIZE, i);
        match std::fs::read(dest.join(format!("f{i:02}"))) {
            Ok(held) => {
                assert!(held == data, "f{i:02} is torn");
                committed += 1;
            }
            Err(_) => missing_chunks += xfer::chunk::digest_bytes(&data).chunks.len() as u64,
        }
    }
    assert!((1..FILES).contains(&committed), "{committed} files committed at the interruption");

    // Straight to the server this time (the busy lock is gone by now).
    let url = RemoteUrl { authority: server.addr.to_string(), path: "cut".into() };
    let again = push(&src, &url, &client, pin, &options(&tmp)).await.unwrap();
    eprintln!("stopped after {committed} of {FILES} files; re-push sent {} chunks", again.chunks_sent);
    assert_eq!(again.files_changed, FILES - committed);
    assert_eq!(again.chunks_sent, missing_chunks, "the re-push sent chunks the server held");
    for i in 0..FILES {
        assert!(std::fs::read(dest.join(format!("f{i:02}"))).unwrap() == seeded(SIZE, i));
    }
}

/// Grants from an authorized-clients file: a read-only client may pull but
/// not push, a client confined to a prefix may push there and nowhere else;
/// each refusal says why and leaves the server's tree untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_authorized_clients_file() {
    let tmp = TempDir::new().unwrap();
    let (writer, reader) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let grants = format!(
        "# test grants\n{}  rw  /laptop\n{}  ro   # everything, read-only\n",
        writer.fingerprint(),
        reader.fingerprint()
    );
    let access = Access::parse(&grants, "test").unwrap();
    let server = start_server_with(&tmp, access, Tuning::default());
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    let pin = Some(server.id.fingerprint());
    let at = |path: &str| RemoteUrl { authority: server.addr.to_string(), path: path.into() };

    push(&src, &at("laptop/home"), &writer, pin, &options(&tmp)).await.unwrap();
    assert_eq!(std::fs::read(server.root.join("laptop/home/f")).unwrap(), b"data");

    let outside = push(&src, &at("elsewhere"), &writer, pin, &options(&tmp)).await.unwrap_err().to_string();
    assert!(outside.contains("may not use /elsewhere") && outside.contains("/laptop"), "{outside}");
    let sibling = push(&src, &at("laptop2"), &writer, pin, &options(&tmp)).await.unwrap_err().to_string();
    assert!(sibling.contains("may not use"), "{sibling}");

    let read_only = push(&src, &at("laptop/home"), &reader, pin, &options(&tmp)).await.unwrap_err().to_string();
    assert!(read_only.contains("may only read"), "{read_only}");
    let restored = tmp.path().join("restored");
    pull(&at("laptop/home"), &restored, &reader, pin, &options(&tmp)).await.unwrap();
    assert_eq!(std::fs::read(restored.join("f")).unwrap(), b"data");

    assert!(!server.root.join("elsewhere").exists() && !server.root.join("laptop2").exists());
}

/// Two pushes to one path at once: the second waits for the first (the
/// server answers busy meanwhile) and both complete; the tree is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_concurrent_pushes_to_one_path_serialize() {
    let tmp = TempDir::new().unwrap();
    let client = Arc::new(Identity::generate().unwrap());
    let server = start_server(&tmp, vec![client.fingerprint()]);
    let pin = Some(server.id.fingerprint());
    let mut tasks = Vec::new();
    for n in 0..2u64 {
        let src = tmp.path().join(format!("src{n}"));
        std::fs::create_dir(&src).unwrap();
        for i in 0..8 {
            std::fs::write(src.join(format!("f{i}")), seeded(256 << 10, n * 100 + i)).unwrap();
        }
        let url = RemoteUrl { authority: server.addr.to_string(), path: "same".into() };
        let (client, mut options) = (client.clone(), options(&tmp));
        options.state_dir = tmp.path().join(format!("state{n}"));
        tasks.push(tokio::spawn(async move { push(&src, &url, &client, pin, &options).await }));
    }
    for task in tasks {
        let report = task.await.unwrap().unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
    }
    // Whichever finished last, every file is one source's whole version.
    for i in 0..8 {
        let held = std::fs::read(server.root.join(format!("same/f{i}"))).unwrap();
        assert!(held == seeded(256 << 10, i) || held == seeded(256 << 10, 100 + i), "f{i} is torn");
    }
}

/// Text-like bytes: this crate's own source, each line numbered and
/// tagged with `seed` (so no two files share a chunk), repeated to `len`.
fn wordy(len: usize, seed: u64) -> Vec<u8> {
    let mut sources: Vec<_> =
        ["src/core/codec.rs", "src/core/plan/mod.rs", "src/core/patch/tests.rs", "src/net/driver.rs"]
            .iter()
            .map(|p| std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(p)).unwrap())
            .collect();
    sources.rotate_left(seed as usize % 4);
    let mut out = Vec::with_capacity(len + 256);
    for (n, line) in sources.iter().flat_map(|s| s.lines()).cycle().enumerate() {
        if out.len() >= len {
            break;
        }
        out.extend_from_slice(format!("{seed}.{n}: {line}\n").as_bytes());
    }
    out.truncate(len);
    out
}

/// `--compress auto` adapts its zstd level to the link: under a low
/// `--bwlimit` the encoder has time to spare and climbs, while over the
/// unlimited link the level stays at the cheapest. The same compressible
/// tree never travels in more bytes for it: a zstd stream takes a new level
/// only once a frame has carried `LEVEL_HOLD` bytes (each data stream here
/// carries less, so the bytes are those of level 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_compression_climbs_on_a_slow_link() {
    let tmp = TempDir::new().unwrap();
    // One client per push: a client's tree already on the server is not
    // sent again to another path, and each push here must send it all.
    let clients: Vec<Identity> = (0..3).map(|_| Identity::generate().unwrap()).collect();
    let server = start_server(&tmp, clients.iter().map(Identity::fingerprint).collect());
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    for i in 0..8 {
        std::fs::write(src.join(format!("f{i}.txt")), wordy(1 << 20, i)).unwrap();
    }
    let pin = Some(server.id.fingerprint());
    let mut reports = Vec::new();
    for (client, (path, limit)) in clients.iter().zip([("fast", None), ("slow", Some(512u64 << 10))]) {
        let url = RemoteUrl { authority: server.addr.to_string(), path: path.into() };
        let options = TransferOptions { bwlimit: Limiter::new(Rate(limit)), ..options(&tmp) };
        let report = push(&src, &url, client, pin, &options).await.unwrap();
        assert_eq!(report.files_changed, 8);
        assert_eq!(std::fs::read(server.root.join(path).join("f3.txt")).unwrap(), wordy(1 << 20, 3));
        reports.push(report);
    }
    let (fast, slow) = (&reports[0], &reports[1]);
    let levels = |r: &xfer::Report| (r.zstd_level_last, r.zstd_level_max, r.bytes_sent);
    assert!(slow.zstd_level_max > fast.zstd_level_max, "fast {:?}, slow {:?}", levels(fast), levels(slow));
    assert!(slow.bytes_sent <= fast.bytes_sent, "fast {:?}, slow {:?}", levels(fast), levels(slow));
    // A fixed level stays put, whatever the link.
    let url = RemoteUrl { authority: server.addr.to_string(), path: "fixed".into() };
    let options = TransferOptions {
        bwlimit: Limiter::new(Rate(Some(1 << 20))),
        compression: xfer::codec::Compression::Zstd { level: 2 },
        ..options(&tmp)
    };
    let fixed = push(&src, &url, &clients[2], pin, &options).await.unwrap();
    assert_eq!((fixed.zstd_level_last, fixed.zstd_level_max), (Some(2), Some(2)));
}
