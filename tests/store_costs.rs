//! What a store-only server's sessions cost its history store (`serve
//! --store URL`): each push, pull and prune's requests by kind and bytes
//! each way reach the server's audit record (`store`), and a push that
//! changes nothing writes one object, its snapshot record.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use xfer::{Access, Client, Identity, PullOptions, PushOptions, RemoteUrl, Server, ServerOptions};

use crate::util::{assert_same_tree, read_tree, seeded};

/// The audit records of `log` once there are `n`, as JSON.
fn records(log: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.lines().count() >= n || Instant::now() > deadline {
            return text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One count of a record's store costs.
fn cost(record: &serde_json::Value, what: &str) -> u64 {
    record["store"][what].as_u64().unwrap_or_else(|| panic!("no store.{what} in {record}"))
}

/// Pushes a tree, pushes it again unchanged, pushes a small change,
/// pulls it back and prunes through a server on the store `store`; checks
/// each session's costs in the audit log.
async fn costs_reach_the_audit_log(store: &str) {
    let tmp = TempDir::new().unwrap();
    let client = Client::new(Identity::load_or_create(&tmp.path().join("id")).unwrap());
    let log = tmp.path().join("audit.jsonl");
    let options = ServerOptions::store(store.to_string(), Access::allow(&[client.fingerprint()])).audit_log(&log);
    let server = Server::start("127.0.0.1:0".parse().unwrap(), &Identity::generate().unwrap(), options).unwrap();
    let target = RemoteUrl::parse_checked(&format!("xfer://{}/site", server.local_addr().unwrap())).unwrap();
    let pin = Some(server.fingerprint());
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..20u64 {
        fs::write(src.join(format!("d/f{i}")), seeded(30_000, i)).unwrap();
    }
    fs::write(src.join("big"), seeded(3 << 20, 99)).unwrap();
    let push = PushOptions::new(tmp.path().join("state")).busy_wait(Duration::ZERO);

    client.push(&src, &target, pin, &push).await.unwrap();
    client.push(&src, &target, pin, &push).await.unwrap();
    fs::write(src.join("d/f3"), seeded(30_000, 1003)).unwrap();
    client.push(&src, &target, pin, &push).await.unwrap();
    let out = tmp.path().join("out");
    client.pull(&target, pin, &out, &PullOptions::new(tmp.path().join("pull-state"))).await.unwrap();
    assert_same_tree(&read_tree(&out), &read_tree(&src));
    client.prune(&target, pin).await.unwrap();

    let all = records(&log, 5);
    assert_eq!(all.len(), 5, "{all:?}");
    for r in &all {
        eprintln!("{store}: {} {}", r["direction"], r["store"]);
    }
    let (first, same, delta, pull, prune) = (&all[0], &all[1], &all[2], &all[3], &all[4]);
    assert_eq!(first["direction"], "push");
    assert!(cost(first, "bytes_put") >= 3 << 20, "{first}");
    // Unchanged: the snapshot record is the one object written; reading
    // the latest snapshot costs a handful of requests (the config, the
    // index listing and files, the snapshot listing and records, the tree
    // blobs, the client's chunk lists), none per file.
    assert_eq!((cost(same, "puts"), cost(same, "deletes")), (1, 0), "{same}");
    assert!(cost(same, "gets") + cost(same, "lists") <= 16, "{same}");
    // One file changed: its pack and index file, tree blobs' pack and
    // index file, the record and the client's chunk list, at most.
    assert!((3..=6).contains(&cost(delta, "puts")), "{delta}");
    assert!(cost(delta, "bytes_put") < 1 << 20, "{delta}");
    // A pull reads the packs by range, not a request per chunk (the tree
    // has ~70 chunks).
    assert_eq!(pull["direction"], "pull");
    assert!(cost(pull, "bytes_got") >= 3 << 20, "{pull}");
    assert!(cost(pull, "gets") < 30, "{pull}");
    assert_eq!(prune["direction"], "prune");
    assert!(cost(prune, "lists") >= 1, "{prune}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_costs_reach_the_audit_log() {
    let tmp = TempDir::new().unwrap();
    costs_reach_the_audit_log(&format!("file://{}", tmp.path().join("store").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_costs_reach_the_audit_log() {
    costs_reach_the_audit_log(&format!("memory:store-costs-{}", std::process::id())).await;
}

/// The same on the Garage cluster `.ci/run` starts (`scripts/garage.sh`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Garage cluster: eval \"$(scripts/garage.sh start)\""]
async fn garage_store_costs_reach_the_audit_log() {
    let bucket = std::env::var("XFER_TEST_BUCKET")
        .expect("XFER_TEST_BUCKET unset: start a cluster with eval \"$(scripts/garage.sh start)\"");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    costs_reach_the_audit_log(&format!("s3://{bucket}/costs-{nanos}")).await;
}

/// The client is told what the server's store cost each push and pull
/// (`StoreCosts`, in its report and `--json`), the same figures as the
/// server's audit record; a dry run records nothing and estimates the
/// writes a real push would make; a mirror server reports no store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_is_told_what_the_store_cost() {
    let tmp = TempDir::new().unwrap();
    let client = Client::new(Identity::load_or_create(&tmp.path().join("id")).unwrap());
    let log = tmp.path().join("audit.jsonl");
    let store = format!("memory:told-costs-{}", std::process::id());
    let options = ServerOptions::store(store, Access::allow(&[client.fingerprint()])).audit_log(&log);
    let server = Server::start("127.0.0.1:0".parse().unwrap(), &Identity::generate().unwrap(), options).unwrap();
    let target = RemoteUrl::parse_checked(&format!("xfer://{}/site", server.local_addr().unwrap())).unwrap();
    let pin = Some(server.fingerprint());
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big"), seeded(3 << 20, 5)).unwrap();
    let push = PushOptions::new(tmp.path().join("state")).busy_wait(Duration::ZERO);

    let pushed = client.push(&src, &target, pin, &push).await.unwrap();
    let out = tmp.path().join("out");
    let pulled = client.pull(&target, pin, &out, &PullOptions::new(tmp.path().join("pull-state"))).await.unwrap();
    let all = records(&log, 2);
    let told = |costs: Option<xfer::StoreCosts>| serde_json::to_value(costs.expect("no store costs reported")).unwrap();
    assert_eq!(told(pushed.store), all[0]["store"], "push");
    assert_eq!(told(pulled.store), all[1]["store"], "pull");
    assert!(pushed.store.unwrap().bytes_put >= 3 << 20 && pulled.store.unwrap().bytes_got >= 3 << 20);

    // A dry run of a 3 MiB change: no new snapshot, and the writes of a
    // real push (a pack with its index, the client's chunk list, tree
    // blobs and the snapshot record) estimated.
    fs::write(src.join("other"), seeded(3 << 20, 6)).unwrap();
    let before = client.snapshots(&target, pin).await.unwrap().len();
    let planned = client.push(&src, &target, pin, &push.clone().dry_run(true)).await.unwrap();
    assert_eq!(client.snapshots(&target, pin).await.unwrap().len(), before, "a dry run recorded a snapshot");
    let estimate = planned.store.expect("a dry run reports the store's costs");
    let real = client.push(&src, &target, pin, &push).await.unwrap().store.unwrap();
    eprintln!("dry run estimate {estimate:?}\nreal push {real:?}");
    assert!(estimate.puts >= real.puts && estimate.puts <= real.puts + 3, "{estimate:?} vs {real:?}");
    assert!(estimate.bytes_put >= real.bytes_put / 2 && estimate.bytes_put <= real.bytes_put * 2);

    let mirror = ServerOptions::new(tmp.path().join("mirror"), Access::allow(&[client.fingerprint()]));
    let mirror = Server::start("127.0.0.1:0".parse().unwrap(), &Identity::generate().unwrap(), mirror).unwrap();
    let at = RemoteUrl::parse_checked(&format!("xfer://{}/site", mirror.local_addr().unwrap())).unwrap();
    let pushed = client.push(&src, &at, Some(mirror.fingerprint()), &push).await.unwrap();
    assert_eq!(pushed.store, None);
}
