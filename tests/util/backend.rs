//! Where a server keeps what it is pushed, for tests that run the same
//! scenario on each: a served root (mirror trees, history beside them), a
//! `file://` store, or a prefix of the Garage test bucket
//! (`eval "$(scripts/garage.sh start DIR)"` sets `XFER_TEST_BUCKET` and the
//! `AWS_*` variables).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tempfile::TempDir;
use xfer::fs::history::{History, PruneReport};
use xfer::{Access, Client, Identity, RemoteUrl, Server, ServerOptions};

/// How the server keeps the trees pushed to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `xfer serve --root ROOT`: a mirror tree per path, the history in
    /// `ROOT/.xfer/history`.
    Local,
    /// `xfer serve --store file:///TMP/store`.
    FileUrl,
    /// `xfer serve --store s3://$XFER_TEST_BUCKET/PREFIX`, a fresh prefix.
    Garage,
}

/// One test's server side: its temporary directory, where the trees go,
/// and the audit log every server it starts appends to.
pub struct Site {
    pub backend: Backend,
    pub tmp: TempDir,
    /// The served root (`Local`); unused otherwise.
    pub root: PathBuf,
    /// The store URL (`FileUrl`, `Garage`).
    pub url: Option<String>,
    pub audit: PathBuf,
}

fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{}-{nanos}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The test bucket, or a panic saying how to get one (the `garage_` tests
/// are ignored by default: run on purpose, they must not pass silently).
fn test_bucket() -> String {
    let missing: Vec<&str> = ["XFER_TEST_BUCKET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"]
        .into_iter()
        .filter(|v| std::env::var(v).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "garage_ tests need a Garage cluster, but {missing:?} unset: run \
         eval \"$(scripts/garage.sh start /var/tmp/g)\" first (scripts/garage.sh stop /var/tmp/g after)"
    );
    std::env::var("XFER_TEST_BUCKET").unwrap()
}

impl Backend {
    /// A fresh site: an empty root or store.
    pub fn site(self) -> Site {
        let tmp = TempDir::new().unwrap();
        let url = match self {
            Backend::Local => None,
            Backend::FileUrl => Some(format!("file://{}/store", tmp.path().display())),
            Backend::Garage => Some(format!("s3://{}/suite-{}", test_bucket(), unique())),
        };
        let (root, audit) = (tmp.path().join("served"), tmp.path().join("audit.jsonl"));
        Site { backend: self, tmp, root, url, audit }
    }

    /// Whether the history lives on an object store, where prune waits a
    /// grace period (24 h by default) before it deletes.
    pub fn is_bucket(self) -> bool {
        self != Backend::Local
    }
}

impl Site {
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A client whose key is kept under `TMP/id/NAME`.
    pub fn client(&self, name: &str) -> Client {
        Client::new(Identity::load_or_create(&self.path("id").join(name)).unwrap())
    }

    /// The server's options for `grants` (authorized-clients lines), with
    /// the audit log.
    pub fn options(&self, grants: &str) -> ServerOptions {
        let access = Access::parse(grants, "grants").unwrap();
        let options = match &self.url {
            None => ServerOptions::new(&self.root, access),
            Some(url) => ServerOptions::store(url.clone(), access),
        };
        options.audit_log(&self.audit)
    }

    /// Starts a server on loopback with `options`.
    pub fn start(&self, options: ServerOptions) -> Served {
        let server = Server::start("127.0.0.1:0".parse().unwrap(), &Identity::generate().unwrap(), options).unwrap();
        let addr = server.local_addr().unwrap().to_string();
        Served { pin: Some(server.fingerprint()), server, addr }
    }

    /// Starts a server with `grants` and the defaults.
    pub fn serve(&self, grants: &str) -> Served {
        self.start(self.options(grants))
    }

    /// Bytes the history store holds: files on disk, or the sizes an
    /// object listing of the prefix gives.
    pub async fn store_bytes(&self) -> u64 {
        match (self.backend, &self.url) {
            (Backend::Local, _) => dir_bytes(&self.root.join(".xfer/history")),
            (Backend::FileUrl, Some(url)) => dir_bytes(Path::new(url.strip_prefix("file://").unwrap())),
            (Backend::Garage, Some(url)) => {
                let (bucket, prefix) = url.strip_prefix("s3://").unwrap().split_once('/').unwrap();
                bucket_bytes(bucket, prefix).await
            }
            _ => unreachable!("a store backend has a URL"),
        }
    }

    /// On an object store, two prunes run as a node would run them once
    /// the grace period is over (24 h by default, `grace` here): the first
    /// dooms the packs no snapshot needs that are older than `grace`, the
    /// second, `grace` later, deletes them. Packs younger than `grace`
    /// (a writer's, maybe not yet referenced) are left alone. `None` on a
    /// served root, whose prune needs no wait.
    pub async fn prune_after_grace(&self, grace: Duration) -> Option<(PruneReport, PruneReport)> {
        let url = self.url.clone()?;
        let prune = move || {
            let url = url.clone();
            tokio::task::spawn_blocking(move || {
                let mut history = History::open_url(&url).unwrap();
                history.set_prune_grace(grace);
                history.prune().unwrap()
            })
        };
        tokio::time::sleep(grace).await;
        let first = prune().await.unwrap();
        tokio::time::sleep(grace).await;
        let second = prune().await.unwrap();
        Some((first, second))
    }

    /// The audit records, once `done` holds for them (the server writes
    /// a session's record just after the client has its answer).
    pub async fn audit_when(&self, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        let mut records = Vec::new();
        for _ in 0..200 {
            let text = fs::read_to_string(&self.audit).unwrap_or_default();
            records = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            if done(&records) {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        records
    }
}

/// A running server and what a client needs to reach it.
pub struct Served {
    pub server: Server,
    pub addr: String,
    pub pin: Option<xfer::Fingerprint>,
}

impl Served {
    /// `xfer://ADDR/PATH`.
    pub fn url(&self, path: &str) -> RemoteUrl {
        RemoteUrl::parse_checked(&format!("xfer://{}/{}", self.addr, path.trim_start_matches('/'))).unwrap()
    }
}

/// Bytes of the files under `dir` (0 if it is missing).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    let mut total = 0;
    // An object a prune deletes during the walk is gone: it counts nothing.
    for entry in entries.filter_map(Result::ok) {
        let Ok(meta) = entry.metadata() else { continue };
        total += if meta.is_dir() { dir_bytes(&entry.path()) } else { meta.len() };
    }
    total
}

/// Bytes of the objects under `prefix` in `bucket`, by listing them.
async fn bucket_bytes(bucket: &str, prefix: &str) -> u64 {
    use futures_util::TryStreamExt;
    use object_store::ObjectStore;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store =
        object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket).with_allow_http(true).build().unwrap();
    let prefix = object_store::path::Path::from(prefix);
    let listed: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
    listed.iter().map(|o| o.size).sum()
}
