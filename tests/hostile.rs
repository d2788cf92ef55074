//! Hostile peers and access refusals against a real server: a raw-protocol
//! client sends what no xfer client would (mismatching chunks, oversized
//! frames, bombs, escaping paths, absurd counts, messages out of order,
//! stalls, floods) while a well-behaved client pushes to the same server.
//! Each misdeed gets a typed close code (or a timeout); the good push
//! completes with a correct tree; nothing lands outside the served root.
//!
//! The memory and flood checks run `xfer serve` as its own process and read
//! its peak RSS. `scripts/hostile.sh` runs the `#[ignore]`d slow ones.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use xfer::net::access::Access;
use xfer::net::admission::serve;
use xfer::net::identity::{Fingerprint, Identity};
use xfer::net::limiter::Limiter;
use xfer::net::served::ServeConfig;
use xfer::net::{server_endpoint, Tuning};
use xfer::usecase::{push::push, RemoteUrl, Report, TransferError, TransferOptions};
use xfer_core::pacing::Rate;
use xfer_protocol::msg::{self, Direction};
use xfer_protocol::{CloseCode, Message, MAX_FRAME_LEN};

use crate::util::raw::{self, chunk_data, connect, hello, open, send_on, write_file, Closed, RawClient};
use crate::util::{assert_same_tree, materialize, read_tree, seeded, Model, Node};

/// How long a test waits for the server to close a misbehaving connection.
const CLOSE_WAIT: Duration = Duration::from_secs(20);

/// Answers come quickly on loopback; this only bounds a broken server.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// The server's peak RSS must stay below this through every attack (the
/// 2 GiB round trip measured 52 MiB on the server).
const MEMORY_LIMIT: u64 = 150 << 20;

fn rel(path: &str) -> xfer::manifest::RelPath {
    crate::util::rel(path.as_bytes())
}

/// A server task in this process, with short timeouts.
struct InProcess {
    id: Identity,
    addr: SocketAddr,
    root: PathBuf,
}

/// A hostile client and a well-behaved one, both allowed on a fresh
/// in-process server.
fn bad_and_good_served(tmp: &TempDir, idle: Duration, max_sessions: usize) -> (Identity, Arc<Identity>, InProcess) {
    let (bad, good) = (Identity::generate().unwrap(), Arc::new(Identity::generate().unwrap()));
    let server = serve_in_process(tmp, &[bad.fingerprint(), good.fingerprint()], idle, max_sessions);
    (bad, good, server)
}

fn serve_in_process(tmp: &TempDir, allow: &[Fingerprint], idle: Duration, max_sessions: usize) -> InProcess {
    let id = Identity::generate().unwrap();
    let root = tmp.path().join("served");
    std::fs::create_dir_all(&root).unwrap();
    let tuning = Tuning { idle_timeout: idle, ..Tuning::default() };
    let endpoint = server_endpoint("127.0.0.1:0".parse().unwrap(), &id, tuning).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let config =
        ServeConfig { idle_timeout: idle, max_sessions, ..ServeConfig::new(root.clone(), Access::allow(allow)) };
    tokio::spawn(serve(endpoint, Arc::new(config)));
    InProcess { id, addr, root }
}

/// `xfer serve` as its own process, its log (stderr) collected line by line.
struct ServeProcess {
    child: Child,
    addr: SocketAddr,
    fingerprint: Fingerprint,
    root: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl ServeProcess {
    fn start(tmp: &TempDir, clients_file: &Path) -> ServeProcess {
        let root = tmp.path().join("served");
        let mut child = Command::new(env!("CARGO_BIN_EXE_xfer"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config-dir"])
            .arg(tmp.path().join("server-cfg"))
            .arg("--root")
            .arg(&root)
            .arg("--authorized-clients")
            .arg(clients_file)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        // "xfer: serving ROOT on ADDR as FINGERPRINT"
        let first = lines.next().unwrap().unwrap();
        let words: Vec<&str> = first.split_whitespace().collect();
        assert!(first.starts_with("xfer: serving"), "{first}");
        let addr = words[words.len() - 3].parse().unwrap();
        let fingerprint = words[words.len() - 1].parse().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        ServeProcess { child, addr, fingerprint, root: root.canonicalize().unwrap(), log }
    }

    /// Peak resident memory so far (VmHWM), in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }

    /// Prints the peak so far, after `phase`.
    fn report_peak(&self, phase: &str) {
        eprintln!("xfer serve peak RSS after {phase}: {} MiB", self.peak_rss() >> 20);
    }

    /// Whether the process is still running.
    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The first log line holding every one of `needles`, waiting for it
    /// a little (the record may follow the close by a moment).
    async fn record(&self, needles: &[&str]) -> String {
        let started = Instant::now();
        loop {
            let found = self.log.lock().unwrap().iter().find(|l| needles.iter().all(|n| l.contains(n))).cloned();
            if let Some(line) = found {
                return line;
            }
            assert!(started.elapsed() < ANSWER_WAIT, "no server record with {needles:?} in:\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A well-behaved push, running while the hostile clients do their worst:
/// throttled so that it lasts, and checked whole at the end.
struct GoodPush {
    task: tokio::task::JoinHandle<Result<Report, TransferError>>,
    model: Model,
    dest: PathBuf,
}

/// Files of the good client's tree, and their size: 1.5 MiB, about 1.5 s
/// at the cap below.
const GOOD_FILES: u64 = 24;
const GOOD_FILE_SIZE: usize = 64 << 10;
const GOOD_RATE: u64 = 1 << 20;

fn good_push(tmp: &TempDir, addr: SocketAddr, server: Fingerprint, identity: Arc<Identity>, root: &Path) -> GoodPush {
    let src = tmp.path().join("good-src");
    std::fs::create_dir_all(&src).unwrap();
    let mut model = Model::new();
    model.insert(rel("docs"), Node::Dir { mode: 0o755, mtime: 1_600_000_000 });
    for i in 0..GOOD_FILES {
        let path = if i % 2 == 0 { format!("f{i:02}") } else { format!("docs/f{i:02}") };
        model.insert(
            rel(&path),
            Node::File { data: seeded(GOOD_FILE_SIZE, 1000 + i), mode: 0o644, mtime: 1_600_000_000 },
        );
    }
    materialize(&model, &src);
    let options = TransferOptions {
        busy_wait: Duration::from_secs(60),
        bwlimit: Limiter::new(Rate(Some(GOOD_RATE))),
        ..TransferOptions::new(tmp.path().join("good-state"))
    };
    let url = RemoteUrl { authority: addr.to_string(), path: "good".into() };
    let task = tokio::spawn(async move { push(&src, &url, &identity, Some(server), &options).await });
    GoodPush { task, model, dest: root.join("good") }
}

impl GoodPush {
    /// The hostile part began while this push was still running.
    fn assert_running(&self) {
        assert!(!self.task.is_finished(), "the good push ended before the hostile clients started");
    }

    async fn finish(self) {
        let report = self.task.await.unwrap().unwrap_or_else(|e| panic!("the good push failed: {e}"));
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert_same_tree(&read_tree(&self.dest), &self.model);
    }
}

/// Asserts the server closed `client` with `code`, its reason holding `words`.
async fn assert_closed(client: &RawClient, code: CloseCode, words: &str) -> Closed {
    let closed = client.closed(CLOSE_WAIT).await;
    assert_eq!(closed.code, Some(code), "{closed:?}");
    assert!(closed.reason.contains(words), "reason {:?} lacks {words:?}", closed.reason);
    closed
}

/// Connects, sends `Hello` and `Open` for a push to `path`, and waits for
/// `Opened`.
async fn opened_push(addr: SocketAddr, server: Fingerprint, id: &Identity, path: &str) -> RawClient {
    let mut client = connect(addr, server, id).await.unwrap();
    assert!(client.open(Direction::Push, path.as_bytes()).await);
    let opened = client.recv_until(ANSWER_WAIT, |m| matches!(m, Message::Opened(_))).await;
    assert!(opened.is_some(), "no Opened for {path}");
    client
}

/// The `NeedChunk` for `file`'s chunk, once the server asks.
async fn need_for(client: &mut RawClient, file: u32) -> msg::NeedChunk {
    needs_for(client, &[file]).await.into_iter().find(|n| n.file == file).expect("waited for it")
}

/// Waits until the server asked for a chunk of each of `files`.
async fn needs_for(client: &mut RawClient, files: &[u32]) -> Vec<msg::NeedChunk> {
    let mut needs: Vec<msg::NeedChunk> = Vec::new();
    while !files.iter().all(|f| needs.iter().any(|n| n.file == *f)) {
        match client.recv(ANSWER_WAIT).await {
            Some(Message::NeedChunk(need)) => needs.push(need),
            Some(_) => {}
            None => panic!("no NeedChunk for each of {files:?}; got {needs:?}"),
        }
    }
    needs
}

/// `Done`, then the server's `Summary`.
async fn finish_session(client: &mut RawClient) -> msg::Summary {
    assert!(client.send(&Message::Done(msg::Done)).await);
    match client.recv_until(ANSWER_WAIT, |m| matches!(m, Message::Summary(_))).await {
        Some(Message::Summary(summary)) => summary,
        other => panic!("no Summary: {other:?}"),
    }
}

/// Temporaries left anywhere under `dir`.
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with(".xfer-tmp.") {
            found.push(path);
        } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(temporaries(&path));
        }
    }
    found
}

/// Waits (briefly) until `dir` holds no temporary: a session's end removes
/// what it did not finish.
async fn assert_no_temporaries(dir: &Path) {
    let started = Instant::now();
    while !temporaries(dir).is_empty() {
        assert!(started.elapsed() < ANSWER_WAIT, "temporaries left: {:?}", temporaries(dir));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A session that stops talking, in each place it can: before opening a
/// stream, after `Hello`, after `Open`, with a chunk asked for and never
/// sent, and a pull that never answers. The server closes each with
/// `Timeout` (QUIC keep-alives alone would keep them open forever) and
/// leaves no temporary behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_stalled_sessions_time_out() {
    let tmp = TempDir::new().unwrap();
    let idle = Duration::from_secs(1);
    let (bad, good, server) = bad_and_good_served(&tmp, idle, 64);
    let fp = server.id.fingerprint();
    let good_push = good_push(&tmp, server.addr, fp, good.clone(), &server.root);

    let silent = connect(server.addr, fp, &bad).await.unwrap();
    good_push.assert_running();
    let mut greeted = connect(server.addr, fp, &bad).await.unwrap();
    assert!(greeted.send(&hello()).await);
    let opened = opened_push(server.addr, fp, &bad, "stalled").await;
    let mut asked = opened_push(server.addr, fp, &bad, "stalled-chunk").await;
    let data = seeded(50_000, 5);
    assert!(asked.send(&write_file(0, b"f", &data)).await);
    need_for(&mut asked, 0).await;
    let mut pull = connect(server.addr, fp, &bad).await.unwrap();
    std::fs::create_dir_all(server.root.join("pulled")).unwrap();
    std::fs::write(server.root.join("pulled/a"), b"a").unwrap();
    assert!(pull.open(Direction::Pull, b"pulled").await);
    assert!(pull.recv_until(ANSWER_WAIT, |m| matches!(m, Message::ListDir(_))).await.is_some());

    for client in [&silent, &greeted, &opened, &asked, &pull] {
        assert_closed(client, CloseCode::Timeout, "sent nothing").await;
    }
    assert_no_temporaries(&server.root.join("stalled-chunk")).await;
    assert!(!server.root.join("stalled-chunk/f").exists());
    good_push.finish().await;
}

/// Sessions past `max_sessions` are refused with `Busy` and a reason; a
/// stalled session frees its place when it times out, and the good client
/// (which retries while busy) gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sessions_over_the_cap_are_told_busy() {
    let tmp = TempDir::new().unwrap();
    let (bad, good, server) = bad_and_good_served(&tmp, Duration::from_secs(2), 2);
    let fp = server.id.fingerprint();
    let holders =
        [opened_push(server.addr, fp, &bad, "hold1").await, opened_push(server.addr, fp, &bad, "hold2").await];
    let third = connect(server.addr, fp, &bad).await.unwrap();
    assert_closed(&third, CloseCode::Busy, "serving 2 sessions, its limit").await;

    let good_push = good_push(&tmp, server.addr, fp, good.clone(), &server.root);
    for holder in &holders {
        assert_closed(holder, CloseCode::Timeout, "sent nothing").await;
    }
    good_push.finish().await;
}

/// One hostile script: messages on the control stream or on a data stream.
enum Step {
    Control(Message),
    Data(Message),
    /// Waits for the server's `NeedChunk` for this file.
    AwaitNeed(u32),
}

/// Messages out of order, or on the wrong stream: each is a protocol
/// error (or a version mismatch) that closes the session with its code,
/// and the destination stays empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_out_of_order_are_refused() {
    let tmp = TempDir::new().unwrap();
    let (bad, good, server) = bad_and_good_served(&tmp, Duration::from_secs(5), 64);
    let fp = server.id.fingerprint();
    let good_push = good_push(&tmp, server.addr, fp, good.clone(), &server.root);

    let data = seeded(5000, 3);
    let push = || open(Direction::Push, b"ooo");
    let old_hello = Message::Hello(msg::Hello {
        version: xfer_protocol::PROTOCOL_VERSION + 1,
        features: 0,
        agent: "future".into(),
    });
    let summary = Message::Summary(msg::Summary::default());
    let list_dir = Message::ListDir(msg::ListDir { dir: Vec::new() });
    let refine = Message::RefineRequest(msg::RefineRequest { file: 0, index: 0, ranges: Vec::new() });
    let opened = Message::Opened(msg::Opened { root: [0; 32], remembered: false });
    let more = Message::MoreChunks(msg::MoreChunks { file: 0, list: msg::ChunkList::Full(Vec::new()), more: false });
    use Step::{AwaitNeed, Control, Data};
    // Most cases begin as a well-formed push does.
    let after_open =
        |steps: Vec<Step>| -> Vec<Step> { [Control(hello()), Control(push())].into_iter().chain(steps).collect() };
    let cases: Vec<(&str, Vec<Step>, CloseCode, &str)> = vec![
        ("Open first", vec![Control(push())], CloseCode::ProtocolError, "waiting for Hello"),
        ("another version", vec![Control(old_hello)], CloseCode::VersionMismatch, "theirs 4"),
        ("Hello twice", after_open(vec![Control(hello())]), CloseCode::ProtocolError, "Hello"),
        ("MoreChunks alone", after_open(vec![Control(more)]), CloseCode::ProtocolError, "MoreChunks"),
        ("a receiver's Summary", after_open(vec![Control(summary)]), CloseCode::ProtocolError, "Summary"),
        ("a server's Opened", after_open(vec![Control(opened)]), CloseCode::ProtocolError, "Opened"),
        (
            "chunk on the control stream",
            after_open(vec![Control(write_file(0, b"f", &data)), AwaitNeed(0), Control(chunk_data(0, &data))]),
            CloseCode::ProtocolError,
            "control stream",
        ),
        ("ListDir on a data stream", after_open(vec![Data(list_dir)]), CloseCode::ProtocolError, "data stream"),
        ("chunk never asked for", after_open(vec![Data(chunk_data(9, &data))]), CloseCode::ProtocolError, "file 9"),
        (
            "chunk sent twice",
            after_open(vec![
                Control(write_file(0, b"f", &data)),
                AwaitNeed(0),
                Data(chunk_data(0, &data)),
                Data(chunk_data(0, &data)),
            ]),
            CloseCode::ProtocolError,
            "file 0",
        ),
        ("refinement never asked for", after_open(vec![Data(refine)]), CloseCode::ProtocolError, "refinement"),
        (
            "pull of nothing",
            vec![Control(hello()), Control(open(Direction::Pull, b"missing"))],
            CloseCode::NotFound,
            "/missing",
        ),
    ];
    let mut first = true;
    for (name, steps, code, words) in cases {
        let mut client = connect(server.addr, fp, &bad).await.unwrap();
        let mut data_stream = None;
        for step in steps {
            match step {
                Control(message) => {
                    client.send(&message).await;
                }
                Data(message) => {
                    if data_stream.is_none() {
                        data_stream = Some(client.data_stream().await);
                    }
                    send_on(data_stream.as_mut().unwrap(), &message).await;
                }
                AwaitNeed(file) => drop(need_for(&mut client, file).await),
            }
        }
        if first {
            good_push.assert_running();
            first = false;
        }
        let closed = client.closed(CLOSE_WAIT).await;
        assert_eq!(closed.code, Some(code), "{name}: {closed:?}");
        assert!(closed.reason.contains(words), "{name}: reason {:?} lacks {words:?}", closed.reason);
    }
    // The one chunk that was accepted is not enough to commit a session
    // that then failed: nothing under a final name but whole files.
    assert_no_temporaries(&server.root.join("ooo")).await;
    for entry in std::fs::read_dir(server.root.join("ooo")).unwrap().flatten() {
        assert_eq!(entry.file_name(), "f", "unexpected {entry:?}");
        assert!(std::fs::read(entry.path()).unwrap() == data, "f is torn");
    }
    good_push.finish().await;
}

/// Paths that escape: `..`, absolute, NUL bytes and the server's own state
/// are refused; a symlink a client planted never leads a write, a mkdir, a
/// delete, a chmod or a later session's destination out of the served root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_never_leave_the_root() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new().unwrap();
    let (bad, good, server) = bad_and_good_served(&tmp, Duration::from_secs(5), 64);
    let fp = server.id.fingerprint();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"keep").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o750)).unwrap();
    let outside_before = read_tree(&outside);
    let good_push = good_push(&tmp, server.addr, fp, good.clone(), &server.root);

    // Destinations that are not paths under the root.
    for (path, code, words) in [
        (&b"../outside"[..], CloseCode::ProtocolError, "`..`"),
        (b"/etc", CloseCode::ProtocolError, "absolute"),
        (b"site\0x", CloseCode::ProtocolError, "NUL"),
        (b".xfer/trees", CloseCode::OutsideAllowedPath, "server's own state"),
    ] {
        let mut client = connect(server.addr, fp, &bad).await.unwrap();
        client.open(Direction::Push, path).await;
        assert_closed(&client, code, words).await;
    }
    good_push.assert_running();
    // Entries that are not paths under the destination.
    for (path, words) in [(&b"../x"[..], "`..`"), (b"/tmp/x", "absolute"), (b"a\0b", "NUL")] {
        let mut client = opened_push(server.addr, fp, &bad, "site").await;
        client.send(&write_file(0, path, b"data")).await;
        assert_closed(&client, CloseCode::ProtocolError, words).await;
    }

    // A symlink to the outside, committed (a SetMeta commits what came
    // before), then every kind of change through it.
    let mut client = opened_push(server.addr, fp, &bad, "site").await;
    let target = outside.as_os_str().as_encoded_bytes().to_vec();
    let link = Message::Symlink(msg::Symlink {
        path: b"evil".to_vec(),
        target,
        mtime: raw::mtime(),
        attrs: Default::default(),
    });
    client.send(&link).await;
    client
        .send(&Message::Mkdir(msg::Mkdir {
            path: b"real".to_vec(),
            mode: 0o755,
            mtime: raw::mtime(),
            attrs: Default::default(),
        }))
        .await;
    client
        .send(&Message::SetMeta(msg::SetMeta {
            path: b"real".to_vec(),
            mode: 0o755,
            mtime: raw::mtime(),
            attrs: Default::default(),
        }))
        .await;
    let planted = b"planted".to_vec();
    let through: Vec<Message> = vec![
        write_file(1, b"evil/planted", &planted),
        Message::Mkdir(msg::Mkdir {
            path: b"evil/made".to_vec(),
            mode: 0o777,
            mtime: raw::mtime(),
            attrs: Default::default(),
        }),
        Message::Symlink(msg::Symlink {
            path: b"evil/link".to_vec(),
            target: b"/".to_vec(),
            mtime: raw::mtime(),
            attrs: Default::default(),
        }),
        Message::SetMeta(msg::SetMeta {
            path: b"evil/secret".to_vec(),
            mode: 0o777,
            mtime: raw::mtime(),
            attrs: Default::default(),
        }),
        Message::Delete(msg::Delete { path: b"evil/secret".to_vec() }),
    ];
    let refused = through.len() as u64;
    for message in &through {
        client.send(message).await;
    }
    // The link itself as a directory: a type change, the link replaced,
    // never followed: metadata must not reach its target.
    client
        .send(&Message::Mkdir(msg::Mkdir {
            path: b"evil".to_vec(),
            mode: 0o777,
            mtime: raw::mtime(),
            attrs: Default::default(),
        }))
        .await;
    let summary = finish_session(&mut client).await;
    assert!(summary.failed >= refused, "{summary:?}");
    drop(client);
    let evil = server.root.join("site/evil");
    assert!(std::fs::symlink_metadata(&evil).unwrap().is_dir(), "Mkdir did not replace the symlink");
    // Planted again for the sessions below.
    std::fs::remove_dir(&evil).unwrap();
    std::os::unix::fs::symlink(&outside, &evil).unwrap();

    // A later session whose destination passes through the link.
    for (direction, path) in
        [(Direction::Push, &b"site/evil"[..]), (Direction::Push, b"site/evil/deeper"), (Direction::Pull, b"site/evil")]
    {
        let mut client = connect(server.addr, fp, &bad).await.unwrap();
        client.open(direction, path).await;
        assert_closed(&client, CloseCode::OutsideAllowedPath, "/site/evil is a symlink").await;
    }

    assert_eq!(read_tree(&outside), outside_before, "something changed outside the served root");
    assert_eq!(std::fs::metadata(&outside).unwrap().permissions().mode() & 0o7777, 0o750);
    good_push.finish().await;
}

/// Chunk bytes that do not hash to their id: that file fails (counted in
/// the summary, its old version kept), the rest of the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_chunk_not_matching_its_id_fails_the_file_only() {
    let tmp = TempDir::new().unwrap();
    let (bad, good, server) = bad_and_good_served(&tmp, Duration::from_secs(5), 64);
    let fp = server.id.fingerprint();
    std::fs::create_dir_all(server.root.join("mixed")).unwrap();
    std::fs::write(server.root.join("mixed/x"), b"old version").unwrap();
    let good_push = good_push(&tmp, server.addr, fp, good.clone(), &server.root);

    let mut client = opened_push(server.addr, fp, &bad, "mixed").await;
    good_push.assert_running();
    let (claimed, sent, honest) = (seeded(40_000, 1), seeded(40_000, 2), seeded(30_000, 3));
    client.send(&write_file(0, b"x", &claimed)).await;
    client.send(&write_file(1, b"y", &honest)).await;
    needs_for(&mut client, &[0, 1]).await;
    let mut data = client.data_stream().await;
    send_on(&mut data, &chunk_data(0, &sent)).await;
    send_on(&mut data, &chunk_data(1, &honest)).await;
    let summary = finish_session(&mut client).await;
    assert_eq!((summary.files_written, summary.failed), (1, 1), "{summary:?}");
    assert_eq!(std::fs::read(server.root.join("mixed/x")).unwrap(), b"old version");
    assert!(std::fs::read(server.root.join("mixed/y")).unwrap() == honest);
    assert_no_temporaries(&server.root.join("mixed")).await;
    good_push.finish().await;
}

/// An authorized-clients file granting each of `grants` (fingerprint,
/// permission and prefix) in `tmp`.
fn clients_file(tmp: &TempDir, grants: &[(Fingerprint, &str)]) -> PathBuf {
    let path = tmp.path().join("authorized-clients");
    let text: String = grants.iter().map(|(fp, grant)| format!("{fp} {grant}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// A zstd frame of `len` zero bytes: a few kilobytes that expand to `len`.
fn zstd_bomb(len: u64) -> Vec<u8> {
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 19).unwrap();
    std::io::copy(&mut std::io::Read::take(std::io::repeat(0), len), &mut encoder).unwrap();
    encoder.finish().unwrap()
}

/// Chunk refs of `count` chunks of `len` bytes, each id distinct.
fn refs(count: usize, len: u32, seed: u32) -> Vec<msg::ChunkRef> {
    (0..count as u32)
        .map(|i| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            id[4..8].copy_from_slice(&seed.to_le_bytes());
            msg::ChunkRef { id, len }
        })
        .collect()
}

/// A `WriteFile` whose fields the test chooses freely.
fn write_file_with(
    file: u32,
    path: &[u8],
    size: u64,
    params: msg::ChunkParams,
    list: msg::ChunkList,
) -> msg::WriteFile {
    msg::WriteFile {
        file,
        path: path.to_vec(),
        mode: 0o644,
        mtime: raw::mtime(),
        size,
        hash: [9; 32],
        params,
        list,
        more: false,
        attrs: Default::default(),
    }
}

/// Frames over the limit, decompression bombs, absurd sizes and counts,
/// and a peer asking without reading the answers, against `xfer serve` as
/// its own process: each gets its close code (a bomb fails its file only),
/// the good push completes, and the server's peak memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bombs_and_absurd_sizes_keep_server_memory_bounded() {
    use xfer_protocol::Kind;
    let tmp = TempDir::new().unwrap();
    let (bad, good) = (Identity::generate().unwrap(), Arc::new(Identity::generate().unwrap()));
    let served = tmp.path().join("served");
    // Old files the hostile lists refer to, and a wide directory to list.
    let old = seeded(1 << 20, 77);
    for dir in ["keep", "refine"] {
        std::fs::create_dir_all(served.join(dir)).unwrap();
        std::fs::write(served.join(dir).join("old"), &old).unwrap();
    }
    std::fs::create_dir_all(served.join("wide")).unwrap();
    for i in 0..500 {
        std::fs::write(served.join(format!("wide/entry-with-a-longish-name-{i:04}")), b"").unwrap();
    }
    let clients = clients_file(&tmp, &[(bad.fingerprint(), "rw"), (good.fingerprint(), "rw")]);
    let mut server = ServeProcess::start(&tmp, &clients);
    let (addr, fp) = (server.addr, server.fingerprint);
    let good_push = good_push(&tmp, addr, fp, good.clone(), &server.root);

    // A declared frame length over the limit, on the control stream and on
    // a data stream: refused from the header alone.
    let oversized = [(MAX_FRAME_LEN + 1).to_le_bytes().as_slice(), &[Kind::WriteFile as u8]].concat();
    let mut client = connect(addr, fp, &bad).await.unwrap();
    client.send_bytes(&oversized).await;
    assert_closed(&client, CloseCode::TooLarge, "exceeds the maximum").await;
    good_push.assert_running();
    let client = opened_push(addr, fp, &bad, "frames").await;
    let mut data = client.data_stream().await;
    let _ = data.write_all(&oversized).await;
    assert_closed(&client, CloseCode::TooLarge, "exceeds the maximum").await;
    // An unknown kind, a body that does not decode, a field over its limit.
    for (bytes, words) in [
        (vec![1, 0, 0, 0, 200], "unknown message kind 200"),
        (vec![7, 0, 0, 0, Kind::ListDir as u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], "malformed ListDir"),
        (
            raw::unchecked_frame(
                Kind::ChunkData,
                &msg::ChunkData { file: 0, index: 0, codec: 0, decoded_len: u32::MAX, payload: vec![] },
            ),
            "decoded_len",
        ),
    ] {
        let mut client = opened_push(addr, fp, &bad, "frames").await;
        client.send_bytes(&bytes).await;
        assert_closed(&client, CloseCode::ProtocolError, words).await;
    }
    server.report_peak("oversized and malformed frames");

    // Bombs: a zstd frame of 1 GiB of zeros and an lz4 block of 64 MiB,
    // each for a 4 KiB chunk. Decoding stops at the declared length; the
    // files fail, the session goes on.
    let mut client = opened_push(addr, fp, &bad, "bombs").await;
    let (z, l) = (seeded(4096, 1), seeded(4096, 2));
    client.send(&write_file(0, b"z", &z)).await;
    client.send(&write_file(1, b"l", &l)).await;
    needs_for(&mut client, &[0, 1]).await;
    let bomb =
        |file, codec, payload| Message::ChunkData(msg::ChunkData { file, index: 0, codec, decoded_len: 4096, payload });
    let mut data = client.data_stream().await;
    send_on(&mut data, &bomb(0, 1, zstd_bomb(1 << 30))).await;
    send_on(&mut data, &bomb(1, 2, lz4_flex::block::compress(&vec![0u8; 64 << 20]))).await;
    let summary = finish_session(&mut client).await;
    assert_eq!((summary.files_written, summary.failed), (0, 2), "{summary:?}");
    drop(client);
    server.report_peak("zstd and lz4 bombs");

    // A file of u64::MAX bytes in one chunk; 65,536 one-byte chunks for a
    // file whose chunks are at least 4 KiB.
    let small = xfer::wire::params_to_wire(xfer::chunk::ChunkParams::for_size(65_536));
    let huge = write_file_with(0, b"huge", u64::MAX, small, msg::ChunkList::Implied);
    let crowded = write_file_with(0, b"crowded", 65_536, small, msg::ChunkList::Full(refs(65_536, 1, 1)));
    for (frame, words) in [
        (raw::unchecked_frame(Kind::WriteFile, &huge), "implied chunk length"),
        (raw::frame_of(&Message::WriteFile(crowded)), "does not describe a file of 65536 bytes"),
    ] {
        let mut client = opened_push(addr, fp, &bad, "absurd").await;
        client.send_bytes(&frame).await;
        assert_closed(&client, CloseCode::ProtocolError, words).await;
    }

    // A chunk list that never ends: refused at its millionth chunk, before
    // the server holds more.
    let big = msg::ChunkParams { min: 256 << 10, avg: 1 << 20, max: 4 << 20 };
    let mut endless = write_file_with(0, b"endless", 1 << 50, big, msg::ChunkList::Full(refs(65_536, 4 << 20, 0)));
    endless.more = true;
    let mut client = opened_push(addr, fp, &bad, "absurd").await;
    client.send(&Message::WriteFile(endless)).await;
    for part in 1..64u32 {
        let more = msg::MoreChunks { file: 0, list: msg::ChunkList::Full(refs(65_536, 4 << 20, part)), more: true };
        if !client.send(&Message::MoreChunks(more)).await {
            break;
        }
    }
    assert_closed(&client, CloseCode::TooLarge, "over the limit of 1048576").await;
    server.report_peak("a chunk list that never ends");

    // Keeping the old file's chunks 65,536 times over: a list of millions
    // from one message, refused before it is built.
    let old_chunks = xfer::chunk::digest_bytes(&old).chunks.len() as u32;
    assert!(old_chunks as usize * 65_536 > xfer::wire::MAX_FILE_CHUNKS, "{old_chunks} chunks");
    let keep = msg::ListEdit::Keep { from: 0, count: old_chunks };
    let params = xfer::wire::params_to_wire(xfer::chunk::ChunkParams::for_size(old.len() as u64));
    let amplified = write_file_with(0, b"old", old.len() as u64, params, msg::ChunkList::Edit(vec![keep; 65_536]));
    let mut client = opened_push(addr, fp, &bad, "keep").await;
    client.send(&Message::WriteFile(amplified)).await;
    assert_closed(&client, CloseCode::TooLarge, "over the limit of 1048576").await;
    assert!(std::fs::read(served.join("keep/old")).unwrap() == old, "the old file changed");
    server.report_peak("kept chunks repeated");

    // Refining the same chunk twice: the second is refused (each answer
    // can be half a megabyte).
    let mut edited = old.clone();
    edited[500_000..500_100].fill(0xee);
    let digest = xfer::chunk::digest_bytes(&edited);
    let list = msg::ChunkList::Full(digest.chunks.iter().map(xfer::wire::chunk_to_wire).collect());
    let mut write = write_file_with(0, b"old", digest.size, xfer::wire::params_to_wire(digest.params), list);
    write.hash = digest.hash.0;
    let mut client = opened_push(addr, fp, &bad, "refine").await;
    client.send(&Message::WriteFile(write)).await;
    let need = need_for(&mut client, 0).await;
    assert!(need.signature.is_some(), "no base offered for the edited chunk");
    let refine = Message::RefineRequest(msg::RefineRequest { file: 0, index: need.index, ranges: Vec::new() });
    let mut data = client.data_stream().await;
    send_on(&mut data, &refine).await;
    send_on(&mut data, &refine).await;
    assert_closed(&client, CloseCode::ProtocolError, "refined already").await;

    // A full queue of entry changes (behind a file whose chunk never
    // comes), then 240 MB of large messages: they wait in QUIC's flow
    // control, not in the server's memory.
    let mut client = opened_push(addr, fp, &bad, "queue").await;
    client.send(&write_file(0, b"pending", &seeded(1000, 4))).await;
    need_for(&mut client, 0).await;
    let meta = |n: usize| {
        Message::SetMeta(msg::SetMeta {
            path: format!("{n:04}{}", "x".repeat(250)).into_bytes(),
            mode: 0o644,
            mtime: raw::mtime(),
            attrs: Default::default(),
        })
    };
    let flood: Vec<u8> = (0..xfer::session::MAX_QUEUED_OPS).flat_map(|n| raw::frame_of(&meta(n))).collect();
    let large: Vec<u8> = (1..=100u32)
        .flat_map(|n| {
            let list = msg::ChunkList::Full(refs(65_536, 4 << 20, n));
            raw::frame_of(&Message::WriteFile(write_file_with(n, b"large", 1 << 40, big, list)))
        })
        .collect();
    let sent = tokio::time::timeout(Duration::from_secs(2), async {
        client.send_bytes(&flood).await && client.send_bytes(&large).await
    });
    assert!(sent.await.is_err(), "the server took 240 MB of messages it could not apply");
    client.connection.close(0u32.into(), b"bye");
    server.report_peak("a full queue, then large messages");

    // Asking without reading: 20,000 listings of a directory of 500
    // entries (20 KiB each) are never read; the server stops reading
    // instead of queueing 400 MB of answers.
    let mut client = opened_push(addr, fp, &bad, "wide").await;
    let list = raw::frame_of(&Message::ListDir(msg::ListDir { dir: Vec::new() }));
    let asks: Vec<u8> = list.iter().copied().cycle().take(list.len() * 20_000).collect();
    let _ = tokio::time::timeout(Duration::from_secs(2), client.send_bytes(&asks)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.connection.close(0u32.into(), b"bye");
    server.report_peak("unread answers");

    good_push.finish().await;
    assert!(server.is_running(), "the server died:\n{}", server.log_text());
    let peak = server.peak_rss();
    eprintln!("xfer serve peak RSS through bombs and absurd sizes: {} MiB", peak >> 20);
    assert!(peak < MEMORY_LIMIT, "server peak RSS {} MiB", peak >> 20);
    assert!(temporaries(&server.root).is_empty(), "{:?}", temporaries(&server.root));
}

/// Hundreds of connections at once: some close at once, some stay open
/// and silent, some abandon their handshake. The server stays up, refuses
/// what it cannot take with a record, serves the good client, and its
/// memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_connection_flood_leaves_the_server_serving() {
    const QUICK: usize = 150;
    const HELD: usize = 100;
    const ABANDONED: usize = 50;
    let tmp = TempDir::new().unwrap();
    let (bad, good) = (Arc::new(Identity::generate().unwrap()), Arc::new(Identity::generate().unwrap()));
    let clients = clients_file(&tmp, &[(bad.fingerprint(), "rw"), (good.fingerprint(), "rw")]);
    let mut server = ServeProcess::start(&tmp, &clients);
    let (addr, fp) = (server.addr, server.fingerprint);
    let good_push = good_push(&tmp, addr, fp, good.clone(), &server.root);

    let sockets: Vec<quinn::Endpoint> = (0..8)
        .map(|_| xfer::net::client_endpoint("127.0.0.1:0".parse().unwrap(), Tuning::default()).unwrap())
        .collect();
    let mut tasks = Vec::new();
    for n in 0..QUICK + HELD {
        let (endpoint, bad) = (sockets[n % sockets.len()].clone(), bad.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(client) = raw::connect_from(&endpoint, addr, fp, &bad).await else { return };
            if n >= QUICK {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            client.connection.close(0u32.into(), b"bye");
        }));
    }
    let mut ghosts = Vec::new();
    for _ in 0..ABANDONED {
        ghosts.push(raw::half_open(addr, &bad).await);
    }
    good_push.assert_running();
    for task in tasks {
        task.await.unwrap();
    }
    good_push.finish().await;
    drop(ghosts);

    // Still serving after the flood.
    let client = opened_push(addr, fp, &bad, "after").await;
    drop(client);
    assert!(server.is_running(), "the server died:\n{}", server.log_text());
    let log = server.log_text();
    assert!(log.contains("too many"), "no refusal recorded:\n{log}");
    let peak = server.peak_rss();
    eprintln!("xfer serve peak RSS through a flood of {} connections: {} MiB", QUICK + HELD + ABANDONED, peak >> 20);
    assert!(peak < MEMORY_LIMIT, "server peak RSS {} MiB", peak >> 20);
}

/// Unknown, revoked and read-only clients, a client outside its prefix,
/// and a client that pinned another server key: each refused, with a
/// message that says what to do, and a record in the server's log. The
/// revoked client is refused without restarting the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_access_refusals_are_clear_and_recorded() {
    let tmp = TempDir::new().unwrap();
    let ids: Vec<Identity> = (0..5).map(|_| Identity::generate().unwrap()).collect();
    let [writer, reader, revoked, stranger, good] = <[Identity; 5]>::try_from(ids).ok().unwrap();
    let good = Arc::new(good);
    let grants = |with_revoked: bool| {
        let mut grants =
            vec![(writer.fingerprint(), "rw /laptop"), (reader.fingerprint(), "ro"), (good.fingerprint(), "rw")];
        if with_revoked {
            grants.push((revoked.fingerprint(), "rw /revoked"));
        }
        grants
    };
    let clients = clients_file(&tmp, &grants(true));
    let server = ServeProcess::start(&tmp, &clients);
    let (addr, fp) = (server.addr, server.fingerprint);
    let good_push = good_push(&tmp, addr, fp, good.clone(), &server.root);

    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    let options = TransferOptions { busy_wait: Duration::ZERO, ..TransferOptions::new(tmp.path().join("state")) };
    let at = |path: &str| RemoteUrl { authority: addr.to_string(), path: path.into() };
    let refused = |result: Result<Report, TransferError>| match result {
        Ok(report) => panic!("not refused: {report:?}"),
        Err(e) => e.to_string(),
    };

    let message = refused(push(&src, &at("laptop"), &stranger, Some(fp), &options).await);
    good_push.assert_running();
    assert!(
        message.contains("is not allowed") && message.contains(&format!("--allow {}", stranger.fingerprint())),
        "{message}"
    );
    server.record(&["session refused or failed", &stranger.fingerprint().to_string(), "code=3"]).await;

    let message = refused(push(&src, &at("laptop"), &reader, Some(fp), &options).await);
    assert!(message.contains("may only read"), "{message}");
    server.record(&["session refused or failed", &reader.fingerprint().to_string(), "code=5"]).await;

    let message = refused(push(&src, &at("elsewhere"), &writer, Some(fp), &options).await);
    assert!(message.contains("may not use /elsewhere") && message.contains("/laptop"), "{message}");
    server.record(&["session refused or failed", &writer.fingerprint().to_string(), "code=6"]).await;

    // Revoked: admitted, then removed from the file, then refused on its
    // next connection by the same server process.
    push(&src, &at("revoked"), &revoked, Some(fp), &options).await.unwrap();
    clients_file(&tmp, &grants(false));
    let message = refused(push(&src, &at("revoked"), &revoked, Some(fp), &options).await);
    assert!(message.contains("is not allowed"), "{message}");
    server.record(&["session refused or failed", &revoked.fingerprint().to_string(), "code=3"]).await;

    // A client that pinned another key: it refuses the server and names
    // the server and the key it saw (the CLI adds the command that would
    // trust it: cli.rs); the server records the failed handshake.
    let wrong = Identity::generate().unwrap().fingerprint();
    match push(&src, &at("laptop"), &writer, Some(wrong), &options).await {
        Err(e @ TransferError::UntrustedServer { .. }) => {
            let message = e.to_string();
            assert!(message.contains(&fp.to_string()), "{message}");
            assert!(message.contains(&format!("{addr} presents {fp}")), "{message}");
        }
        other => panic!("expected an untrusted server, got {other:?}"),
    }
    server.record(&["handshake failed"]).await;

    good_push.finish().await;
    assert!(!server.root.join("elsewhere").exists());
    assert!(!server.root.join("laptop/f").exists());
    assert_eq!(std::fs::read(server.root.join("revoked/f")).unwrap(), b"data");
}

/// The flood at scale: 200 abandoned handshakes, more than the server
/// runs at once ([`xfer::net::admission::MAX_HANDSHAKES`]), and 2,000
/// connections in waves. New connections are refused before their
/// handshake until the abandoned ones time out; the good client retries
/// and gets through; memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: waits out the handshake timeout; scripts/hostile.sh runs it"]
async fn hostile_heavy_flood_with_abandoned_handshakes() {
    const GHOSTS: usize = 200;
    const WAVES: usize = 10;
    const PER_WAVE: usize = 200;
    let tmp = TempDir::new().unwrap();
    let (bad, good) = (Arc::new(Identity::generate().unwrap()), Arc::new(Identity::generate().unwrap()));
    let clients = clients_file(&tmp, &[(bad.fingerprint(), "rw"), (good.fingerprint(), "rw")]);
    let mut server = ServeProcess::start(&tmp, &clients);
    let (addr, fp) = (server.addr, server.fingerprint);
    let mut ghosts = Vec::new();
    for _ in 0..GHOSTS {
        ghosts.push(raw::half_open(addr, &bad).await);
    }
    let good_push = good_push(&tmp, addr, fp, good.clone(), &server.root);
    let sockets: Vec<quinn::Endpoint> = (0..16)
        .map(|_| xfer::net::client_endpoint("127.0.0.1:0".parse().unwrap(), Tuning::default()).unwrap())
        .collect();
    for wave in 0..WAVES {
        let tasks: Vec<_> = (0..PER_WAVE)
            .map(|n| {
                let (endpoint, bad) = (sockets[(wave + n) % sockets.len()].clone(), bad.clone());
                tokio::spawn(async move {
                    if let Ok(client) = raw::connect_from(&endpoint, addr, fp, &bad).await {
                        client.connection.close(0u32.into(), b"bye");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    }
    good_push.finish().await;
    drop(ghosts);

    let client = opened_push(addr, fp, &bad, "after").await;
    drop(client);
    assert!(server.is_running(), "the server died:\n{}", server.log_text());
    server.record(&["too many handshakes"]).await;
    server.record(&["handshake timed out"]).await;
    let peak = server.peak_rss();
    eprintln!(
        "xfer serve peak RSS through {GHOSTS} abandoned handshakes and {} connections: {} MiB",
        WAVES * PER_WAVE,
        peak >> 20
    );
    assert!(peak < MEMORY_LIMIT, "server peak RSS {} MiB", peak >> 20);
}

/// `xfer serve` with its default timeouts: a session stalled after `Open`
/// is closed with `Timeout` after the idle timeout, and an abandoned
/// handshake is dropped after the handshake timeout, each with a record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: waits out the default idle timeout (60 s); scripts/hostile.sh runs it"]
async fn hostile_default_timeouts_of_xfer_serve() {
    let tmp = TempDir::new().unwrap();
    let bad = Identity::generate().unwrap();
    let clients = clients_file(&tmp, &[(bad.fingerprint(), "rw")]);
    let server = ServeProcess::start(&tmp, &clients);
    let ghost = raw::half_open(server.addr, &bad).await;
    let stalled = opened_push(server.addr, server.fingerprint, &bad, "stalled").await;
    let closed = stalled.closed(xfer::net::IDLE_TIMEOUT + Duration::from_secs(30)).await;
    assert_eq!(closed.code, Some(CloseCode::Timeout), "{closed:?}");
    server.record(&["session refused or failed", &bad.fingerprint().to_string(), "code=11"]).await;
    server.record(&["handshake timed out"]).await;
    drop(ghost);
}

/// The most one file may cost the server: a list of
/// [`xfer::wire::MAX_FILE_CHUNKS`] chunks of 64 bytes, none of which it
/// holds (38 MB on the wire). Measured 633 MiB, about 600 bytes per
/// missing chunk across the session's and the store's bookkeeping; the
/// limit is what keeps it from growing further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: about 650 MiB of server memory; scripts/hostile.sh runs it"]
async fn hostile_longest_chunk_list_in_flight() {
    const PER_MESSAGE: usize = 65_536;
    let tmp = TempDir::new().unwrap();
    let bad = Identity::generate().unwrap();
    let clients = clients_file(&tmp, &[(bad.fingerprint(), "rw")]);
    let server = ServeProcess::start(&tmp, &clients);
    let tiny = msg::ChunkParams { min: 64, avg: 256, max: 1024 };
    let parts = xfer::wire::MAX_FILE_CHUNKS / PER_MESSAGE;
    let size = 64 * xfer::wire::MAX_FILE_CHUNKS as u64;
    let mut head = write_file_with(0, b"long", size, tiny, msg::ChunkList::Full(refs(PER_MESSAGE, 64, 0)));
    head.more = true;
    let mut client = opened_push(server.addr, server.fingerprint, &bad, "long").await;
    client.send(&Message::WriteFile(head)).await;
    for part in 1..parts as u32 {
        let list = msg::ChunkList::Full(refs(PER_MESSAGE, 64, part));
        client.send(&Message::MoreChunks(msg::MoreChunks { file: 0, list, more: part + 1 < parts as u32 })).await;
    }
    // Taken whole: the server asks for its chunks.
    need_for(&mut client, 0).await;
    let peak = server.peak_rss();
    eprintln!(
        "xfer serve peak RSS with one file of {} missing chunks: {} MiB",
        xfer::wire::MAX_FILE_CHUNKS,
        peak >> 20
    );
    assert!(peak < 1 << 30, "server peak RSS {} MiB", peak >> 20);
}
