//! One suite of server-level history scenarios, run on every place a
//! server can keep its trees (`util::backend`): a served root (`local_*`),
//! a `file://` store (`file_*`) and a prefix of the Garage test bucket
//! (`garage_*`, ignored by default; `.ci/run` runs them on a fresh
//! cluster). The same scenario function runs on each: ransomware night,
//! restores of a tree, a subtree and a file, retention and prune, prune
//! while a push and a pull run, resume of a cut push, two clients kept
//! apart.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xfer::{Client, Fingerprint, PullOptions, PushOptions, Rate, RemoteUrl};

use crate::store_mode::settle_mtimes;
use crate::util::backend::{Backend, Served, Site};
use crate::util::{assert_same_tree, read_tree, rel, seeded, Model};

/// Test functions `local_X`, `file_X` and `garage_X` running `scenario`.
macro_rules! on_every_backend {
    ($scenario:ident: $local:ident, $file:ident, $garage:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $local() {
            $scenario(Backend::Local).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $file() {
            $scenario(Backend::FileUrl).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "needs a Garage cluster: eval \"$(scripts/garage.sh start DIR)\""]
        async fn $garage() {
            $scenario(Backend::Garage).await;
        }
    };
}

fn push_options(site: &Site, who: &str) -> PushOptions {
    PushOptions::new(site.path("state").join(who)).busy_wait(Duration::ZERO)
}

fn pull_options(site: &Site) -> PullOptions {
    PullOptions::new(site.path("pull-state"))
}

async fn push_ok(client: &Client, src: &Path, target: &RemoteUrl, pin: Option<Fingerprint>, o: &PushOptions) {
    let report = client.push(src, target, pin, o).await.unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
}

async fn pull_ok(client: &Client, target: &RemoteUrl, pin: Option<Fingerprint>, dest: &Path, o: &PullOptions) {
    let report = client.pull(target, pin, dest, o).await.unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
}

/// A grant line giving `client` read-write access to everything.
fn rw(client: &Client) -> String {
    format!("{} rw\n", client.fingerprint())
}

// ---------------------------------------------------------------------------
// 1. The ransomware night

/// Five nightly pushes by an `append` client; on night 4 every file is
/// encrypted and half deleted, pushed with `--delete`; night 3 restores
/// byte-exact; the client's forget, prune and writes into the history are
/// refused and audited.
async fn ransomware(backend: Backend) {
    crate::ransomware::night_before_survives(backend, 5, 4).await;
}

on_every_backend!(ransomware: local_ransomware, file_ransomware, garage_ransomware);

// ---------------------------------------------------------------------------
// 2. Restores

/// A small tree with directories of several modes, an empty file, a
/// symlink and a hard link.
fn restore_source(src: &Path) {
    fs::create_dir_all(src.join("docs/deep")).unwrap();
    fs::create_dir_all(src.join("private")).unwrap();
    fs::write(src.join("a.txt"), seeded(150_000, 2)).unwrap();
    fs::write(src.join("b.txt"), seeded(20_000, 3)).unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    fs::write(src.join("docs/c.txt"), seeded(70_000, 4)).unwrap();
    fs::write(src.join("docs/deep/d.txt"), b"deep").unwrap();
    fs::write(src.join("private/key"), seeded(300, 5)).unwrap();
    fs::set_permissions(src.join("private/key"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(src.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(src.join("b.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("docs/c.txt", src.join("link")).unwrap();
    fs::hard_link(src.join("a.txt"), src.join("docs/a-again.txt")).unwrap();
    settle_mtimes(src, 1_700_000_000);
}

/// Pushes two versions, then pulls the first `--at` its id: the whole
/// tree, a subtree and one file, each exact with modes and mtimes.
async fn restore(backend: Backend) {
    let site = backend.site();
    let owner = site.client("owner");
    let served = site.serve(&rw(&owner));
    let (target, pin) = (served.url("site"), served.pin);
    let src = site.path("src");
    restore_source(&src);
    let (v1, v1_docs) = (read_tree(&src), read_tree(&src.join("docs")));
    push_ok(&owner, &src, &target, pin, &push_options(&site, "owner")).await;
    // The second version rewrites, deletes and changes modes.
    fs::write(src.join("a.txt"), seeded(150_000, 20)).unwrap();
    fs::remove_file(src.join("b.txt")).unwrap();
    fs::remove_dir_all(src.join("docs/deep")).unwrap();
    fs::set_permissions(src.join("docs/c.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    settle_mtimes(&src, 1_700_100_000);
    push_ok(&owner, &src, &target, pin, &push_options(&site, "owner").delete(true)).await;
    let snapshots = owner.snapshots(&target, pin).await.unwrap();
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    assert!(snapshots.iter().all(|s| !s.partial), "{snapshots:?}");
    let first = &snapshots[0].id[..10];

    let whole = site.path("whole");
    owner.pull(&target, pin, &whole, &pull_options(&site).at(first)).await.unwrap();
    assert_same_tree(&read_tree(&whole), &v1);
    let ino = |p: &str| fs::metadata(whole.join(p)).unwrap().ino();
    assert_eq!(ino("a.txt"), ino("docs/a-again.txt"), "the hard link came back");

    let docs = site.path("docs");
    owner.pull(&served.url("site/docs"), pin, &docs, &pull_options(&site).at(first)).await.unwrap();
    assert_same_tree(&read_tree(&docs), &v1_docs);

    let one = site.path("one");
    owner.pull(&served.url("site/b.txt"), pin, &one, &pull_options(&site).at(first)).await.unwrap();
    let b = rel(b"b.txt");
    assert_same_tree(&read_tree(&one), &Model::from([(b.clone(), v1[&b].clone())]));

    let latest = site.path("latest");
    owner.pull(&target, pin, &latest, &pull_options(&site).at("latest")).await.unwrap();
    assert_same_tree(&read_tree(&latest), &read_tree(&src));
    served.server.shutdown().await;
}

on_every_backend!(restore: local_restore, file_restore, garage_restore);

// ---------------------------------------------------------------------------
// 3. Retention and prune

/// The file each version of a tree replaces with new random bytes: its
/// old versions are what the history keeps, and what a forgotten snapshot
/// alone holds.
const BIG: usize = 2 << 20;
/// What besides those versions a prune may free or leave (tree blobs,
/// index files, doom records).
const SLACK: u64 = 256 << 10;

/// Pushes `versions` versions of a tree to `target`, each with a new
/// `big`; returns each version's model.
async fn push_versions(
    site: &Site,
    client: &Client,
    served: &Served,
    tree: &str,
    versions: u64,
    seed: u64,
) -> Vec<Model> {
    let src = site.path(&format!("src-{tree}"));
    fs::create_dir_all(src.join("docs")).unwrap();
    fs::write(src.join("docs/readme"), b"the same in every snapshot").unwrap();
    let mut models = Vec::new();
    for n in 0..versions {
        fs::write(src.join("big"), seeded(BIG, seed + n)).unwrap();
        push_ok(client, &src, &served.url(tree), served.pin, &push_options(site, tree).delete(true)).await;
        models.push(read_tree(&src));
    }
    models
}

/// Restores each snapshot `--at` its id and compares it with its model.
async fn assert_restore(site: &Site, client: &Client, served: &Served, tree: &str, at: &[(&str, &Model)]) {
    for (id, model) in at {
        let out = site.path(&format!("restored-{}", &id[..12]));
        let _ = fs::remove_dir_all(&out);
        client.pull(&served.url(tree), served.pin, &out, &pull_options(site).at(*id)).await.unwrap();
        assert_same_tree(&read_tree(&out), model);
    }
}

/// Four versions; forgetting the first and the third, then pruning in
/// two phases, frees what only they held (two versions of `big`, as the
/// store's own bytes show), and the rest restores exact.
async fn retention_and_prune(backend: Backend) {
    let site = backend.site();
    let owner = site.client("owner");
    let served = site.serve(&rw(&owner));
    let (target, pin) = (served.url("site"), served.pin);
    let models = push_versions(&site, &owner, &served, "site", 4, 100).await;
    let snapshots = owner.snapshots(&target, pin).await.unwrap();
    assert_eq!(snapshots.len(), 4, "{snapshots:?}");
    let before = site.store_bytes().await;
    assert!(before >= 3 * BIG as u64, "{before}");

    let forgotten = owner.forget(&target, pin, &[snapshots[0].id.clone(), snapshots[2].id.clone()]).await.unwrap();
    assert_eq!(forgotten.forgotten, 2);
    let first = owner.prune(&target, pin).await.unwrap();
    let second = owner.prune(&target, pin).await.unwrap();
    let mut freed_by_prunes = first.bytes_freed + second.bytes_freed;
    if backend.is_bucket() {
        // Within the grace nothing goes: the packs are too young to tell
        // from a writer's that no snapshot references yet.
        assert_eq!(freed_by_prunes, 0, "{first:?} {second:?}");
        assert!(site.store_bytes().await + SLACK >= before, "deleted within the grace");
        let (doom, delete) = site.prune_after_grace(Duration::from_millis(500)).await.unwrap();
        assert!(doom.packs_doomed + doom.packs_repacked >= 1 && delete.packs_deleted >= 1, "{doom:?} {delete:?}");
        freed_by_prunes += doom.bytes_freed + delete.bytes_freed;
    } else {
        assert!(first.packs_doomed + first.packs_repacked >= 1, "{first:?}");
    }
    let after = site.store_bytes().await;
    let freed = before.saturating_sub(after);
    eprintln!("{backend:?}: store bytes {before} -> {after}, freed {freed} (prune says {freed_by_prunes})");
    let expected = 2 * BIG as u64;
    assert!(freed + SLACK >= expected && freed <= expected + SLACK, "freed {freed}, expected about {expected}");
    assert!(freed_by_prunes + SLACK >= expected, "prune reported {freed_by_prunes}");

    let left = owner.snapshots(&target, pin).await.unwrap();
    assert_eq!(left, vec![snapshots[1].clone(), snapshots[3].clone()]);
    assert_restore(&site, &owner, &served, "site", &[(&snapshots[1].id, &models[1]), (&snapshots[3].id, &models[3])])
        .await;
    let latest = site.path("latest");
    owner.pull(&target, pin, &latest, &pull_options(&site)).await.unwrap();
    assert_same_tree(&read_tree(&latest), &models[3]);
    served.server.shutdown().await;
}

on_every_backend!(retention_and_prune: local_retention_and_prune, file_retention_and_prune, garage_retention_and_prune);

// ---------------------------------------------------------------------------
// 4. Prune while a push and a pull run

/// What runs beside the prunes: which push and which pull are in flight
/// (their round number, 0 when none), and how many rounds completed.
#[derive(Default)]
struct InFlight {
    push: AtomicU64,
    pull: AtomicU64,
    rounds: AtomicU64,
}

/// Pushes a new version of /scratch and pulls /site's latest snapshot
/// over and over until `done`, each checked exact.
async fn traffic(
    site: Arc<Site>,
    served: Arc<Served>,
    client: Client,
    site_model: Model,
    state: Arc<InFlight>,
    done: xfer::CancellationToken,
) {
    let src = site.path("scratch");
    fs::create_dir_all(&src).unwrap();
    // Capped, so that each push and pull lasts a while.
    let rate = "4M".parse::<Rate>().unwrap();
    let push = push_options(&site, "scratch").bwlimit(rate);
    let mut round = 1;
    while !done.is_cancelled() {
        fs::write(src.join("f"), seeded(1 << 20, 5000 + round)).unwrap();
        state.push.store(round, Ordering::SeqCst);
        push_ok(&client, &src, &served.url("scratch"), served.pin, &push).await;
        state.push.store(0, Ordering::SeqCst);
        let pulled = site.path(&format!("traffic-pull{round}"));
        state.pull.store(round, Ordering::SeqCst);
        let pull = pull_options(&site).bwlimit(rate);
        pull_ok(&client, &served.url("site"), served.pin, &pulled, &pull).await;
        state.pull.store(0, Ordering::SeqCst);
        assert_same_tree(&read_tree(&pulled), &site_model);
        fs::remove_dir_all(&pulled).unwrap();
        let scratch = site.path(&format!("traffic-scratch{round}"));
        pull_ok(&client, &served.url("scratch"), served.pin, &scratch, &pull_options(&site)).await;
        assert_same_tree(&read_tree(&scratch), &read_tree(&src));
        fs::remove_dir_all(&scratch).unwrap();
        state.rounds.fetch_add(1, Ordering::SeqCst);
        round += 1;
    }
}

/// Prunes over the wire while a push and a pull run, until one push and
/// one pull each spanned a whole prune; on a bucket, a prune past the
/// grace deletes packs meanwhile too. Every push and pull completes
/// exact, and every kept snapshot restores exact after.
async fn prune_during_traffic(backend: Backend) {
    let site = Arc::new(backend.site());
    let owner = site.client("owner");
    let served = Arc::new(site.serve(&rw(&owner)));
    let (target, pin) = (served.url("site"), served.pin);
    let models = push_versions(&site, &owner, &served, "site", 3, 300).await;
    let snapshots = owner.snapshots(&target, pin).await.unwrap();
    owner.forget(&target, pin, &[snapshots[0].id.clone(), snapshots[1].id.clone()]).await.unwrap();

    let (state, done) = (Arc::new(InFlight::default()), xfer::CancellationToken::new());
    let running = tokio::spawn(traffic(
        Arc::clone(&site),
        Arc::clone(&served),
        site.client("owner"),
        models[2].clone(),
        Arc::clone(&state),
        done.clone(),
    ));
    let (mut push_spanned, mut pull_spanned, mut prunes) = (false, false, 0);
    let started = Instant::now();
    while !(push_spanned && pull_spanned && prunes >= 2) {
        assert!(started.elapsed() < Duration::from_secs(60), "no push or pull ran across a prune ({prunes} prunes)");
        assert!(!running.is_finished(), "the traffic stopped");
        let (push0, pull0) = (state.push.load(Ordering::SeqCst), state.pull.load(Ordering::SeqCst));
        owner.prune(&target, pin).await.unwrap();
        prunes += 1;
        push_spanned |= push0 != 0 && state.push.load(Ordering::SeqCst) == push0;
        pull_spanned |= pull0 != 0 && state.pull.load(Ordering::SeqCst) == pull0;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // On a bucket the wire prunes leave packs younger than the grace: a
    // shorter grace (longer than any push here) dooms and deletes /site's
    // forgotten ones now, with pushes and pulls still going.
    if let Some((doom, delete)) = site.prune_after_grace(Duration::from_secs(3)).await {
        assert!(doom.packs_doomed + doom.packs_repacked >= 1 && delete.packs_deleted >= 1, "{doom:?} {delete:?}");
    }
    let rounds_before = state.rounds.load(Ordering::SeqCst);
    while state.rounds.load(Ordering::SeqCst) < rounds_before + 1 {
        assert!(!running.is_finished(), "the traffic stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    done.cancel();
    running.await.unwrap();
    eprintln!("{backend:?}: {prunes} prunes, {} push+pull rounds", state.rounds.load(Ordering::SeqCst));

    assert_eq!(owner.snapshots(&target, pin).await.unwrap(), vec![snapshots[2].clone()]);
    assert_restore(&site, &owner, &served, "site", &[(&snapshots[2].id, &models[2])]).await;
    let scratch = owner.snapshots(&served.url("scratch"), pin).await.unwrap();
    let scratch = scratch.last().unwrap();
    let out = site.path("scratch-latest");
    owner.pull(&served.url("scratch"), pin, &out, &pull_options(&site).at(&scratch.id)).await.unwrap();
    assert_same_tree(&read_tree(&out), &read_tree(&site.path("scratch")));
    let served = Arc::into_inner(served).expect("invariant: the traffic task has ended");
    served.server.shutdown().await;
}

on_every_backend!(prune_during_traffic: local_prune_during_traffic, file_prune_during_traffic, garage_prune_during_traffic);

// ---------------------------------------------------------------------------
// 5. Resume

/// Bytes of the big file the server kept from a cut push: the verified
/// bytes of its partial (a served root), or what the store grew by.
async fn held_after_cut(site: &Site, store_before: u64) -> u64 {
    if site.backend.is_bucket() {
        return site.store_bytes().await - store_before;
    }
    let trees = site.root.join(".xfer/trees");
    let mut held = 0;
    for entry in fs::read_dir(&trees).unwrap() {
        let db = xfer::fs::store::state::StateDb::open(&entry.unwrap().path()).unwrap();
        held += db.partials().unwrap().iter().map(|(_, record)| record.bytes).sum::<u64>();
    }
    held
}

/// A push cancelled a while into a 32 MiB file leaves no snapshot or a
/// partial one; the next push sends only what the server did not keep
/// (within 5%), and the pull is exact.
async fn resume(backend: Backend) {
    let site = backend.site();
    let owner = site.client("owner");
    let served = site.serve(&rw(&owner));
    let (target, pin) = (served.url("site"), served.pin);
    let src = site.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("small.txt"), b"small").unwrap();
    let total = 32u64 << 20;
    fs::write(src.join("huge.bin"), seeded(total as usize, 5)).unwrap();
    let store_before = site.store_bytes().await;

    let slow = push_options(&site, "owner").bwlimit("16M".parse::<Rate>().unwrap());
    let cancel = slow.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        cancel.cancel();
    });
    let first = owner.push(&src, &target, pin, &slow).await;
    canceller.await.unwrap();
    assert!(first.is_err() || first.as_ref().is_ok_and(|r| !r.failed.is_empty()), "not cut: {first:?}");
    // The server's session ends (and records) just after the client gave up.
    let records = site.audit_when(|r| r.iter().any(|r| r["direction"] == "push")).await;
    let cut = records.iter().find(|r| r["direction"] == "push").unwrap();
    assert_ne!(cut["result"], "ok", "{cut}");
    let snapshots = owner.snapshots(&target, pin).await.unwrap();
    assert!(snapshots.iter().all(|s| s.partial), "a cut push claimed a whole tree: {snapshots:?}");

    let held = held_after_cut(&site, store_before).await;
    assert!(held >= 4 << 20 && held < total, "the server kept {held} of {total} bytes");
    let missing = total - held;
    let resumed = owner.push(&src, &target, pin, &push_options(&site, "owner")).await.unwrap();
    eprintln!(
        "{backend:?}: kept {held} of {total} bytes; the next push sent {} for {missing} missing",
        resumed.bytes_sent
    );
    assert!(resumed.failed.is_empty(), "{resumed:?}");
    assert!(resumed.bytes_sent <= missing + missing / 20, "sent {} for {missing} missing", resumed.bytes_sent);
    let snapshots = owner.snapshots(&target, pin).await.unwrap();
    assert!(!snapshots.last().unwrap().partial, "{snapshots:?}");
    let pulled = site.path("pulled");
    owner.pull(&target, pin, &pulled, &pull_options(&site)).await.unwrap();
    assert_same_tree(&read_tree(&pulled), &read_tree(&src));
    served.server.shutdown().await;
}

on_every_backend!(resume: local_resume, file_resume, garage_resume);

// ---------------------------------------------------------------------------
// 6. Two clients, no dedup across them

/// A pushes a tree to /a, then B (another key, on a server without
/// `--dedup-across-clients`) the same tree to /b: B sends every chunk
/// and reuses none of A's; A pushing it to /c sends nothing (the chunks
/// are its own); B's pull of /b is exact.
async fn two_clients(backend: Backend) {
    let site = backend.site();
    let (a, b) = (site.client("a"), site.client("b"));
    let served = site.serve(&format!("{} rw\n{} rw /b\n", a.fingerprint(), b.fingerprint()));
    let pin = served.pin;
    let src = site.path("src");
    for (n, path) in ["f0", "f1", "sub/f2"].iter().enumerate() {
        fs::create_dir_all(src.join(path).parent().unwrap()).unwrap();
        fs::write(src.join(path), seeded(1 << 20, 700 + n as u64)).unwrap();
    }
    let first = a.push(&src, &served.url("a"), pin, &push_options(&site, "a")).await.unwrap();
    let second = b.push(&src, &served.url("b"), pin, &push_options(&site, "b")).await.unwrap();
    assert!(first.failed.is_empty() && second.failed.is_empty(), "{first:?} {second:?}");
    assert!(first.bytes_sent >= 3 << 20, "{first:?}");
    assert_eq!((second.chunks_sent, second.bytes_sent), (first.chunks_sent, first.bytes_sent), "{second:?}");
    assert_eq!(second.chunks_reused, 0, "{second:?}");
    let again = a.push(&src, &served.url("c"), pin, &push_options(&site, "a")).await.unwrap();
    assert_eq!(again.chunks_sent, 0, "{again:?}");
    let pulled = site.path("pulled");
    b.pull(&served.url("b"), pin, &pulled, &pull_options(&site)).await.unwrap();
    assert_same_tree(&read_tree(&pulled), &read_tree(&src));
    served.server.shutdown().await;
}

on_every_backend!(two_clients: local_two_clients, file_two_clients, garage_two_clients);
