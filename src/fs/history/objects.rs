//! Where the history store's objects live: a local directory (durable
//! writes, writer locks beside it) or an object store (S3 and compatible
//! stores, local files and memory through `object_store`). Both take keys
//! that are the local layout's relative paths (`packs/XY/HASH`, ...) and
//! count the requests they make.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use object_store::path::Path as Key;
use object_store::{ClientConfigKey, ObjectStore, ObjectStoreExt, PutPayload};

use super::disk;
use crate::error::{Error, IoContext, Result};

/// The requests a history store made and the bytes they moved, since it
/// was opened (a local directory counts the same operations): the
/// protocol's `StoreCosts`, which reports them to the client.
pub type Requests = xfer_protocol::msg::StoreCosts;

/// What a history store has cost so far, readable after the store is
/// handed on (a session's audit record reads it at its end).
#[derive(Clone, Debug)]
pub struct RequestMeter(Arc<Counter>);

impl RequestMeter {
    /// The requests made so far and their bytes.
    pub fn requests(&self) -> Requests {
        self.0.snapshot()
    }
}

/// Keys an S3 listing returns per page.
const LIST_PAGE: u64 = 1000;

#[derive(Debug, Default)]
pub struct Counter {
    puts: AtomicU64,
    gets: AtomicU64,
    lists: AtomicU64,
    deletes: AtomicU64,
    bytes_put: AtomicU64,
    bytes_got: AtomicU64,
    keys_listed: AtomicU64,
}

impl Counter {
    fn put(&self, bytes: usize) {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.bytes_put.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn get(&self, bytes: usize) {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.bytes_got.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn list(&self, keys: usize) {
        self.lists.fetch_add((keys as u64).div_ceil(LIST_PAGE).max(1), Ordering::Relaxed);
        self.keys_listed.fetch_add(keys as u64, Ordering::Relaxed);
    }

    fn delete(&self) {
        self.deletes.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Requests {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Requests {
            puts: load(&self.puts),
            gets: load(&self.gets),
            lists: load(&self.lists),
            deletes: load(&self.deletes),
            bytes_put: load(&self.bytes_put),
            bytes_got: load(&self.bytes_got),
            keys_listed: load(&self.keys_listed),
        }
    }
}

/// One object as listed.
#[derive(Clone, Debug)]
pub(super) struct Listed {
    /// The key's last part (a hex name).
    pub(super) name: String,
    /// The whole key.
    pub(super) key: String,
    pub(super) size: u64,
    /// When it was last written, ms since the epoch, by the store's clock.
    pub(super) modified_ms: u64,
}

/// The operations the history store needs from where it lives. Every
/// object is written whole or not at all.
pub(super) trait Objects: Send + Sync + std::fmt::Debug {
    /// How errors and listings name `key` (a path, or a URL).
    fn label(&self, key: &str) -> PathBuf;
    /// Writes `bytes` as `key`, replacing any object there.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<()>;
    /// The object `key`, or `None` if absent; larger than `max` is an error.
    fn get(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>>;
    /// `range` of the object `key`.
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>>;
    /// The size of `key`, or `None` if absent.
    fn size(&self, key: &str) -> Result<Option<u64>>;
    /// The hex-named objects under `prefix/`, at any depth, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<Listed>>;
    /// Deletes `key`; one already gone is fine.
    fn delete(&self, key: &str) -> Result<()>;
    /// What this store has cost so far.
    fn requests(&self) -> Requests;
    /// Reads what this store costs, now and later.
    fn meter(&self) -> RequestMeter;
    /// Starts reading `range` of `key` and returns at once where the store
    /// can (an object store's requests run on its own runtime, several at
    /// a time); [`Fetch::wait`] gives the bytes. Reads here and now by
    /// default.
    fn start_range(&self, key: &str, range: Range<u64>) -> Fetch {
        Fetch(FetchState::Done(self.get_range(key, range)))
    }
}

/// A ranged read started by [`Objects::start_range`]. Dropping it unread
/// cancels the request if it has not begun.
#[derive(Debug)]
pub(super) struct Fetch(FetchState);

#[derive(Debug)]
enum FetchState {
    Done(Result<Vec<u8>>),
    Waiting { rx: std::sync::mpsc::Receiver<Result<Vec<u8>>>, cancelled: Arc<AtomicBool>, label: PathBuf },
}

impl Fetch {
    /// The bytes read, once they are there.
    ///
    /// # Errors
    /// The read's failure, or a short read.
    pub(super) fn wait(mut self) -> Result<Vec<u8>> {
        match std::mem::replace(&mut self.0, FetchState::Done(Ok(Vec::new()))) {
            FetchState::Done(result) => result,
            FetchState::Waiting { rx, label, .. } => rx.recv().unwrap_or_else(|_| Err(no_answer(label))),
        }
    }
}

impl Drop for Fetch {
    fn drop(&mut self) {
        if let FetchState::Waiting { cancelled, .. } = &self.0 {
            cancelled.store(true, Ordering::Relaxed);
        }
    }
}

/// The error of a request whose task ended without answering.
fn no_answer(label: PathBuf) -> Error {
    Error::ObjectStore {
        url: label.display().to_string(),
        cause: Box::new(object_store::Error::Generic {
            store: "xfer",
            source: "the request's task ended without an answer".into(),
        }),
    }
}

/// Whether `name` is an object name (64 hex digits): temporaries and
/// strays are not.
fn is_object_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The local layout: one file per object under a directory.
#[derive(Debug)]
pub(super) struct LocalDir {
    root: PathBuf,
    /// The pack read last, kept open: a restore reads runs of blobs from one pack.
    open_file: Mutex<Option<(String, File)>>,
    counter: Arc<Counter>,
}

impl LocalDir {
    pub(super) fn new(root: &Path) -> LocalDir {
        LocalDir { root: root.to_path_buf(), open_file: Mutex::new(None), counter: Arc::default() }
    }
}

impl Objects for LocalDir {
    fn label(&self, key: &str) -> PathBuf {
        if key.is_empty() {
            self.root.clone()
        } else {
            self.root.join(key)
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.root.join(key);
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
            return Err(Error::io(path, std::io::ErrorKind::InvalidInput.into()));
        };
        disk::ensure_dir(dir)?;
        disk::write_durably(dir, name, bytes)?;
        self.counter.put(bytes.len());
        Ok(())
    }

    fn get(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let path = self.root.join(key);
        match super::read_bounded(&path, max) {
            Ok(bytes) => {
                self.counter.get(bytes.len());
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let path = self.root.join(key);
        let len = usize::try_from(range.end.saturating_sub(range.start))
            .map_err(|_| Error::io(&path, std::io::ErrorKind::InvalidInput.into()))?;
        let mut open = self.open_file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.as_ref().is_none_or(|(k, _)| k != key) {
            *open = Some((key.to_string(), File::open(&path).at(&path)?));
        }
        let (_, file) = open.as_ref().expect("invariant: opened above");
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, range.start).at(&path)?;
        self.counter.get(len);
        Ok(bytes)
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.root.join(key);
        self.counter.get(0);
        match std::fs::metadata(&path) {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        list_dir(&self.root.join(prefix), prefix, &mut out)?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        self.counter.list(out.len());
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.root.join(key);
        let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
            return Err(Error::io(path, std::io::ErrorKind::InvalidInput.into()));
        };
        disk::remove(dir, name)?;
        self.counter.delete();
        Ok(())
    }

    fn requests(&self) -> Requests {
        self.counter.snapshot()
    }

    fn meter(&self) -> RequestMeter {
        RequestMeter(Arc::clone(&self.counter))
    }
}

/// Adds the hex-named files under `dir` (whose key is `key`) to `out`,
/// descending into subdirectories; a missing directory has none.
fn list_dir(dir: &Path, key: &str, out: &mut Vec<Listed>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at(dir),
    };
    for entry in entries {
        let entry = entry.at(dir)?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        let file_type = entry.file_type().at(entry.path())?;
        if file_type.is_dir() {
            list_dir(&entry.path(), &format!("{key}/{name}"), out)?;
        } else if file_type.is_file() && is_object_name(&name) {
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Removed since the listing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).at(entry.path()),
            };
            let modified_ms = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            out.push(Listed { key: format!("{key}/{name}"), name, size: meta.len(), modified_ms });
        }
    }
    Ok(())
}

/// Requests one history store may have in flight at once.
const IN_FLIGHT: usize = 8;

/// The runtime an object store's futures run on, shut down without
/// waiting when its last user goes (a drop may happen on a runtime thread,
/// where waiting is not allowed).
#[derive(Debug)]
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// An `object_store` store under a key prefix.
#[derive(Debug)]
pub(super) struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// The store's URL, for messages.
    url: String,
    /// Async calls run here, never on the caller's runtime: the history
    /// store is called from blocking threads and from inside tasks alike.
    runtime: Arc<OwnRuntime>,
    permits: Arc<tokio::sync::Semaphore>,
    /// Shared with requests still running ([`Objects::start_range`]).
    counter: Arc<Counter>,
}

impl Bucket {
    pub(super) fn new(store: Arc<dyn ObjectStore>, prefix: &str, url: &str) -> Result<Bucket> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("xfer-store")
            .enable_all()
            .build()
            .map_err(|e| Error::io(url, e))?;
        Ok(Bucket {
            store,
            prefix: prefix.trim_matches('/').to_string(),
            url: url.to_string(),
            runtime: Arc::new(OwnRuntime(Some(runtime))),
            permits: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)),
            counter: Arc::new(Counter::default()),
        })
    }

    fn key(&self, key: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(key)
        } else {
            Key::from(format!("{}/{key}", self.prefix))
        }
    }

    fn error(&self, key: &str, source: object_store::Error) -> Error {
        Error::ObjectStore { url: self.label(key).display().to_string(), cause: Box::new(source) }
    }

    /// Runs `make(store)` on the store's own runtime and waits for it,
    /// from any thread.
    fn run<T, F>(&self, key: &str, make: impl FnOnce(Arc<dyn ObjectStore>) -> F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = object_store::Result<T>> + Send + 'static,
    {
        let runtime = self.runtime.0.as_ref().expect("invariant: the runtime lives until drop");
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let permits = Arc::clone(&self.permits);
        let future = make(Arc::clone(&self.store));
        runtime.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let _ = tx.send(future.await);
        });
        match rx.recv() {
            Ok(result) => result.map_err(|e| self.error(key, e)),
            Err(_) => Err(no_answer(self.label(key))),
        }
    }
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

/// `Ok(None)` for a missing object.
fn absent_ok<T>(result: object_store::Result<T>) -> object_store::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Objects for Bucket {
    fn label(&self, key: &str) -> PathBuf {
        PathBuf::from(format!("{}/{key}", self.url.trim_end_matches('/')))
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let path = self.key(key);
        let payload = PutPayload::from(bytes.to_vec());
        self.run(key, move |store| async move { store.put(&path, payload).await })?;
        self.counter.put(bytes.len());
        Ok(())
    }

    fn get(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>> {
        let path = self.key(key);
        let got = self.run(key, move |store| async move {
            let Some(result) = absent_ok(store.get(&path).await)? else { return Ok(None) };
            if result.meta.size > max {
                return Ok(Some(Err(result.meta.size)));
            }
            Ok::<_, object_store::Error>(Some(Ok(result.bytes().await?)))
        })?;
        match got {
            None => Ok(None),
            Some(Ok(bytes)) => {
                self.counter.get(bytes.len());
                Ok(Some(bytes.to_vec()))
            }
            Some(Err(size)) => Err(Error::io(
                self.label(key),
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{size} bytes, larger than {max}")),
            )),
        }
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let path = self.key(key);
        let want = range.end.saturating_sub(range.start);
        let bytes = self.run(key, move |store| async move { store.get_range(&path, range).await })?;
        self.counter.get(bytes.len());
        if bytes.len() as u64 != want {
            return Err(Error::io(self.label(key), std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(bytes.to_vec())
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.key(key);
        let meta = self.run(key, move |store| async move { absent_ok(store.head(&path).await) })?;
        self.counter.get(0);
        Ok(meta.map(|m| m.size))
    }

    fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        use futures_util::TryStreamExt;
        let path = self.key(prefix);
        let metas: Vec<object_store::ObjectMeta> =
            self.run(prefix, move |store| async move { store.list(Some(&path)).try_collect().await })?;
        self.counter.list(metas.len());
        let strip = if self.prefix.is_empty() { 0 } else { self.prefix.len() + 1 };
        let mut out: Vec<Listed> = metas
            .into_iter()
            .filter_map(|meta| {
                let full = meta.location.as_ref();
                let key = full.get(strip..)?.to_string();
                let name = key.rsplit('/').next()?.to_string();
                is_object_name(&name).then(|| Listed {
                    key,
                    name,
                    size: meta.size,
                    modified_ms: u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or(0),
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.key(key);
        self.run(key, move |store| async move { absent_ok(store.delete(&path).await) })?;
        self.counter.delete();
        Ok(())
    }

    fn requests(&self) -> Requests {
        self.counter.snapshot()
    }

    fn meter(&self) -> RequestMeter {
        RequestMeter(Arc::clone(&self.counter))
    }

    fn start_range(&self, key: &str, range: Range<u64>) -> Fetch {
        let runtime = self.runtime.0.as_ref().expect("invariant: the runtime lives until drop");
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let cancelled = Arc::new(AtomicBool::new(false));
        let (path, label, want) = (self.key(key), self.label(key), range.end.saturating_sub(range.start));
        let (store, permits, counter) = (Arc::clone(&self.store), Arc::clone(&self.permits), Arc::clone(&self.counter));
        let (task_label, task_cancelled) = (label.clone(), Arc::clone(&cancelled));
        runtime.spawn(async move {
            let _permit = permits.acquire_owned().await;
            // Given up while waiting for a permit: no request.
            if task_cancelled.load(Ordering::Relaxed) {
                return;
            }
            let url = task_label.display().to_string();
            let result = match store.get_range(&path, range).await {
                Ok(bytes) if bytes.len() as u64 == want => {
                    counter.get(bytes.len());
                    Ok(bytes.to_vec())
                }
                Ok(bytes) => {
                    counter.get(bytes.len());
                    Err(Error::io(task_label, std::io::ErrorKind::UnexpectedEof.into()))
                }
                Err(e) => Err(Error::ObjectStore { url, cause: Box::new(e) }),
            };
            let _ = tx.send(result);
        });
        Fetch(FetchState::Waiting { rx, cancelled, label })
    }
}

/// Where a history store is, as a URL names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// A local directory in the local layout (writer locks, durable
    /// renames): `/PATH`.
    Dir(PathBuf),
    /// An S3 bucket and key prefix: `s3://BUCKET/PREFIX`.
    S3 {
        /// The bucket.
        bucket: String,
        /// The key prefix (may be empty).
        prefix: String,
    },
    /// A local directory kept as an object store would be: `file:///PATH`.
    File(PathBuf),
    /// A store in this process's memory (tests): `memory:NAME`; the same
    /// name opens the same store.
    Memory(String),
}

/// Longest key prefix taken.
const MAX_PREFIX: usize = 400;

/// What a bad store URL is told.
const ACCEPTED: &str = "use s3://BUCKET/PREFIX, file:///ABSOLUTE/PATH, memory:NAME or an absolute directory path";

impl StoreUrl {
    /// Parses `url`.
    ///
    /// # Errors
    /// Anything but the accepted forms; the message lists them.
    pub fn parse(url: &str) -> Result<StoreUrl> {
        let bad = |reason: &str| Error::StoreUrl { url: url.to_string(), reason: format!("{reason}; {ACCEPTED}") };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || bucket.contains(['?', '#', ' ']) {
                return Err(bad("no bucket name"));
            }
            let prefix = prefix.trim_matches('/');
            if prefix.split('/').any(|part| part == "." || part == "..") {
                return Err(bad("a prefix may not hold . or .. parts"));
            }
            // Keys are the prefix and at most 74 bytes; some S3 servers
            // (Garage on LMDB) refuse keys over 479.
            if prefix.len() > MAX_PREFIX {
                return Err(bad(&format!("a prefix of at most {MAX_PREFIX} bytes")));
            }
            return Ok(StoreUrl::S3 { bucket: bucket.to_string(), prefix: prefix.to_string() });
        }
        if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(bad("a file URL needs an absolute path (three slashes)"));
            }
            return Ok(StoreUrl::File(PathBuf::from(rest)));
        }
        if let Some(name) = url.strip_prefix("memory:") {
            return Ok(StoreUrl::Memory(name.to_string()));
        }
        if url.contains("://") {
            return Err(bad("unknown scheme"));
        }
        if url.starts_with('/') {
            return Ok(StoreUrl::Dir(PathBuf::from(url)));
        }
        Err(bad("not a URL nor an absolute path"))
    }

    /// Opens the object store this URL names (not [`StoreUrl::Dir`], whose
    /// layout is the local one).
    pub(super) fn bucket(&self, url: &str) -> Result<Bucket> {
        let wrap = |source| Error::ObjectStore { url: url.to_string(), cause: Box::new(source) };
        match self {
            StoreUrl::Dir(_) => Err(Error::StoreUrl { url: url.to_string(), reason: "a directory, not an object store".into() }),
            StoreUrl::S3 { bucket, prefix } => Bucket::new(Arc::new(s3(bucket).map_err(wrap)?), prefix, url),
            StoreUrl::File(path) => {
                disk::ensure_dir(path)?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(path).map_err(wrap)?.with_fsync(true);
                Bucket::new(Arc::new(store), "", url)
            }
            StoreUrl::Memory(name) => Bucket::new(memory(name), "", url),
        }
    }
}

/// How long an S3 connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one S3 request may take in all, body included. A whole pack
/// (16 MiB, or a little more) is one PUT: object_store's 30 s default
/// fails every pack PUT below 0.55 MB/s, which one node's uplink shared by
/// a few pushes to a cloud bucket easily is; then no retry can succeed and
/// no push ever completes. Five minutes carries a pack at 60 KB/s and
/// still ends a request to a server that stopped answering.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a failed request is retried (with exponential backoff from
/// 0.1 s to 15 s) before the push fails with its error: long enough to
/// ride out a cluster's restart or a node failing over.
const RETRY_FOR: Duration = Duration::from_secs(180);

/// Retries of one request, enough that `RETRY_FOR` is what ends them
/// (object_store's default of 10 gives up after about a minute).
const MAX_RETRIES: usize = 25;

fn client_key(key: ClientConfigKey) -> object_store::aws::AmazonS3ConfigKey {
    object_store::aws::AmazonS3ConfigKey::Client(key)
}

/// An S3 client from the `AWS_*` environment for `bucket`, with
/// conditional writes off: some S3 servers (Garage) accept and ignore them,
/// and nothing here depends on them.
fn s3(bucket: &str) -> object_store::Result<object_store::aws::AmazonS3> {
    // reqwest is built without a crypto provider of its own: use ring, as
    // the QUIC side does. Installed already is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let endpoint = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")).unwrap_or_default();
    let mut builder = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_conditional_put(object_store::aws::S3ConditionalPut::Disabled)
        .with_config(client_key(ClientConfigKey::ConnectTimeout), format!("{}s", CONNECT_TIMEOUT.as_secs()))
        .with_config(client_key(ClientConfigKey::Timeout), format!("{}s", REQUEST_TIMEOUT.as_secs()))
        .with_retry(object_store::RetryConfig {
            backoff: object_store::BackoffConfig::default(),
            max_retries: MAX_RETRIES,
            retry_timeout: RETRY_FOR,
        });
    if endpoint.starts_with("http://") {
        builder = builder.with_allow_http(true);
    }
    builder.build()
}

/// The in-memory store called `name`, made on first use.
fn memory(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let mut stores = STORES.get_or_init(Mutex::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    Arc::clone(stores.entry(name.to_string()).or_insert_with(|| Arc::new(object_store::memory::InMemory::new())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_say_what_is_accepted() {
        assert_eq!(
            StoreUrl::parse("s3://b/some/prefix/").unwrap(),
            StoreUrl::S3 { bucket: "b".into(), prefix: "some/prefix".into() }
        );
        assert_eq!(StoreUrl::parse("s3://b").unwrap(), StoreUrl::S3 { bucket: "b".into(), prefix: String::new() });
        assert_eq!(StoreUrl::parse("file:///srv/h").unwrap(), StoreUrl::File("/srv/h".into()));
        assert_eq!(StoreUrl::parse("memory:t").unwrap(), StoreUrl::Memory("t".into()));
        assert_eq!(StoreUrl::parse("/srv/h").unwrap(), StoreUrl::Dir("/srv/h".into()));
        let long = format!("s3://b/{}", "p".repeat(401));
        for bad in ["s3:///x", "file://rel/path", "gs://b/p", "relative/dir", "s3://b/a/../c", &long] {
            let err = StoreUrl::parse(bad).unwrap_err().to_string();
            assert!(err.contains("s3://BUCKET/PREFIX") && err.contains(bad), "{bad}: {err}");
        }
    }
}
