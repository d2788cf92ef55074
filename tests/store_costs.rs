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
