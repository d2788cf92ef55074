//! The library's facade: separate push, pull and server options, a report
//! on every outcome (a cancel and a closing window included), a per-file
//! done event, server options the CLI has, and errors without the CLI's
//! wording.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempfile::TempDir;
use xfer::{
    Access, CancellationToken, Client, Event, Identity, LocalTime, Progress, PullOptions, PushOptions, Rate, RemoteUrl,
    Server, ServerOptions, TransferError, Window,
};

use crate::util::seeded;

/// A server on loopback that admits `client`.
fn serve(tmp: &TempDir, client: &Client, options: impl FnOnce(ServerOptions) -> ServerOptions) -> (Server, PathBuf) {
    let root = tmp.path().join("served");
    let options = options(ServerOptions::new(&root, Access::allow(&[client.fingerprint()])));
    let server = Server::start("127.0.0.1:0".parse().unwrap(), &Identity::generate().unwrap(), options).unwrap();
    (server, root)
}

fn url(server: &Server, path: &str) -> RemoteUrl {
    RemoteUrl::parse_checked(&format!("xfer://{}/{path}", server.local_addr().unwrap())).unwrap()
}

fn tree(dir: &Path, files: usize, size: usize) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..files {
        fs::write(dir.join(format!("f{i}")), seeded(size, i as u64)).unwrap();
    }
}

/// Events of one kind, collected.
#[derive(Default)]
struct Collect(Mutex<Vec<Event>>);

impl Progress for Collect {
    fn event(&self, event: &Event) {
        self.0.lock().unwrap().push(event.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_reports_each_file_done() {
    let tmp = TempDir::new().unwrap();
    let client = Client::new(Identity::generate().unwrap());
    let (server, root) = serve(&tmp, &client, |o| o);
    tree(&root.join("tree"), 3, 10_000);
    let events = Arc::new(Collect::default());
    let options = PullOptions::new(tmp.path().join("state")).progress(events.clone());
    let dest = tmp.path().join("restored");
    let report = client.pull(&url(&server, "tree"), Some(server.fingerprint()), &dest, &options).await.unwrap();
    assert_eq!(report.files_changed, 3);
    let mut done: Vec<String> = events
        .0
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::FileDone { path } => Some(path.clone()),
            _ => None,
        })
        .collect();
    done.sort();
    assert_eq!(done, ["f0", "f1", "f2"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_push_reports_what_it_did() {
    let tmp = TempDir::new().unwrap();
    let client = Client::new(Identity::generate().unwrap());
    let (server, _) = serve(&tmp, &client, |o| o);
    let src = tmp.path().join("src");
    tree(&src, 1, 4 << 20);
    let cancel = CancellationToken::new();
    let options = PushOptions::new(tmp.path().join("state")).bwlimit(Rate(Some(512 << 10))).cancel(cancel.clone());
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cancel.cancel();
    });
    let result = client.push(&src, &url(&server, "t"), Some(server.fingerprint()), &options).await;
    stopper.await.unwrap();
    let Err(e @ TransferError::Cancelled { .. }) = result else { panic!("expected a cancel, got {result:?}") };
    let report = e.report().expect("a cancel carries its report");
    assert_eq!(report.files_scanned, Some(1));
    assert!(report.wire_bytes_sent > 100_000, "{report:?}");
    assert!(report.elapsed_s >= 1.0, "{report:?}");
    server.shutdown().await;
}

/// A clock the test moves: Monday 10:30 until `closed`, then 12:00.
fn moving_clock(closed: Arc<AtomicBool>) -> xfer::Clock {
    Arc::new(move || {
        let minute = if closed.load(Ordering::SeqCst) { 12 * 60 } else { 10 * 60 + 30 };
        Some(LocalTime { weekday: 0, minute })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_window_stops_a_push_with_its_report() {
    let tmp = TempDir::new().unwrap();
    let client = Client::new(Identity::generate().unwrap());
    let (server, _) = serve(&tmp, &client, |o| o);
    let src = tmp.path().join("src");
    tree(&src, 1, 4 << 20);
    let closed = Arc::new(AtomicBool::new(false));
    let window: Window = "Mon,10:00-11:00".parse().unwrap();
    let options = PushOptions::new(tmp.path().join("state"))
        .bwlimit_timetable("512K".parse().unwrap())
        .window(window.clone(), false)
        .clock(moving_clock(closed.clone()));
    let closer = tokio::spawn({
        let closed = closed.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            closed.store(true, Ordering::SeqCst);
        }
    });
    let result = client.push(&src, &url(&server, "t"), Some(server.fingerprint()), &options).await;
    closer.await.unwrap();
    let Err(e @ TransferError::WindowClosed { .. }) = result else { panic!("expected the window, got {result:?}") };
    assert!(e.report().expect("a window stop carries its report").wire_bytes_sent > 100_000);

    // Outside the window, without waiting: refused before anything moves.
    let result = client.push(&src, &url(&server, "t"), Some(server.fingerprint()), &options).await;
    assert!(matches!(result, Err(TransferError::OutsideWindow { opens_in_min: Some(_) })), "{result:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_options_reach_the_server() {
    let tmp = TempDir::new().unwrap();
    let client = Client::new(Identity::generate().unwrap());
    let audit = tmp.path().join("audit.jsonl");
    let (server, root) =
        serve(&tmp, &client, |o| o.audit_log(&audit).max_sessions(2).idle_timeout(Duration::from_secs(5)));
    let src = tmp.path().join("src");
    tree(&src, 2, 1000);
    let options = PushOptions::new(tmp.path().join("state"));
    client.push(&src, &url(&server, "t"), Some(server.fingerprint()), &options).await.unwrap();
    assert_eq!(fs::read(root.join("t/f1")).unwrap(), seeded(1000, 1));
    assert!(server.stop(Duration::from_secs(5)).await);
    let records = fs::read_to_string(&audit).unwrap();
    assert_eq!(records.lines().count(), 1, "{records}");
    assert!(records.contains(&client.fingerprint().to_string()), "{records}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_no_command_line_wording() {
    let tmp = TempDir::new().unwrap();
    let client = Client::new(Identity::generate().unwrap());
    let (server, _) = serve(&tmp, &client, |o| o);
    let src = tmp.path().join("src");
    tree(&src, 1, 10);
    let options = PushOptions::new(tmp.path().join("state"));
    let wrong = Identity::generate().unwrap().fingerprint();
    let result = client.push(&src, &url(&server, "t"), Some(wrong), &options).await;
    let Err(e @ TransferError::UntrustedServer { .. }) = result else { panic!("{result:?}") };
    let message = e.to_string();
    assert!(message.contains(&server.fingerprint().to_string()), "{message}");
    assert!(!message.contains("--") && !message.contains("xfer trust"), "{message}");

    let mut tags = std::collections::BTreeMap::new();
    tags.insert("a=b".to_string(), "c".to_string());
    let result = client.push(&src, &url(&server, "t"), Some(server.fingerprint()), &options.tags(tags)).await;
    let Err(e @ TransferError::BadTag(_)) = result else { panic!("{result:?}") };
    assert!(!e.to_string().contains("--tag"), "{e}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_pull_reports_the_files_it_kept() {
    let tmp = TempDir::new().unwrap();
    let client = Client::new(Identity::generate().unwrap());
    let (server, root) = serve(&tmp, &client, |o| o);
    tree(&root.join("tree"), 8, 256 << 10);
    let cancel = CancellationToken::new();
    let options = PullOptions::new(tmp.path().join("state")).bwlimit(Rate(Some(512 << 10))).cancel(cancel.clone());
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        cancel.cancel();
    });
    let dest = tmp.path().join("restored");
    let result = client.pull(&url(&server, "tree"), Some(server.fingerprint()), &dest, &options).await;
    stopper.await.unwrap();
    let Err(e @ TransferError::Cancelled { .. }) = result else { panic!("expected a cancel, got {result:?}") };
    let report = e.report().expect("a cancel carries its report");
    let kept = fs::read_dir(&dest).unwrap().filter(|e| e.as_ref().unwrap().path().is_file()).count() as u64;
    assert!(report.files_changed >= 1 && report.files_changed <= kept, "{report:?}, {kept} files kept");
    assert!(report.files_changed < 8, "{report:?}");
    server.shutdown().await;
}
