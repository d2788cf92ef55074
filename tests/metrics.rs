//! `xfer serve --metrics`: a complete push, a partial one and a refused
//! one to a served tree, then scrapes of `/metrics` parsed as Prometheus
//! text, with the values asserted; the last complete push survives a
//! restart of the server.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};
use tempfile::TempDir;

use crate::util::seeded;

fn xfer() -> Command {
    Command::new(assert_cmd::cargo::cargo_bin("xfer"))
}

fn fingerprint_of(config_dir: &Path) -> String {
    let out = xfer().arg("id").arg("--config-dir").arg(config_dir).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `xfer serve --metrics 127.0.0.1:0` admitting `client`; killed on drop.
struct Served {
    server: Child,
    addr: String,
    fingerprint: String,
    metrics: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Starts the server and reads its addresses from the lines it prints
/// ("xfer: serving ROOT on ADDR as FINGERPRINT", "xfer: metrics on
/// http://ADDR/metrics"); the rest of its log is drained.
fn serve(tmp: &Path, client: &str) -> Served {
    let mut server = xfer()
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--allow", client, "--config-dir"])
        .arg(tmp.join("server-cfg"))
        .arg("--root")
        .arg(tmp.join("served"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let (mut addr, mut fingerprint, mut metrics) = (None, None, None);
    while metrics.is_none() {
        let Some(Ok(line)) = lines.next() else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with("xfer: serving") {
            addr = Some(words[words.len() - 3].to_string());
            fingerprint = Some(words[words.len() - 1].to_string());
        }
        if let Some(url) = line.strip_prefix("xfer: metrics on http://") {
            metrics = url.strip_suffix("/metrics").map(str::to_string);
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let (Some(addr), Some(fingerprint), Some(metrics)) = (addr, fingerprint, metrics) else {
        let _ = server.kill();
        panic!("the server did not print its address and its metrics address");
    };
    Served { server, addr, fingerprint, metrics }
}

/// `GET /metrics`, parsed.
fn scrape(addr: &str) -> Scrape {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{head}");
    Scrape::parse(body.lines().map(|line| Ok(line.to_string()))).unwrap()
}

/// The value of the sample `metric` whose labels are exactly `labels`.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: HashMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let sample = scrape.samples.iter().find(|s| s.metric == metric && *s.labels == wanted)?;
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
        _ => None,
    }
}

/// Scrapes until `metric{labels}` reaches `at_least` (the server counts a
/// session once its connection has closed, a moment after the client
/// exits), for at most a minute.
fn scrape_when(addr: &str, metric: &str, labels: &[(&str, &str)], at_least: f64) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let scraped = scrape(addr);
        if value(&scraped, metric, labels).is_some_and(|v| v >= at_least) || Instant::now() > deadline {
            return scraped;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A push as `config_dir`'s client; its JSON report.
fn push(config_dir: &Path, src: &Path, url: &str, server: &str, state: &Path) -> (Option<i32>, serde_json::Value) {
    let out = xfer()
        .args(["push", "--json", "--tag", "project=web", "--server-fingerprint", server, "--config-dir"])
        .arg(config_dir)
        .arg("--state-dir")
        .arg(state)
        .arg(src)
        .arg(url)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), report)
}

fn wire(report: &serde_json::Value, key: &str) -> f64 {
    report[key].as_u64().unwrap_or_else(|| panic!("no {key} in {report}")) as f64
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success(), "mkfifo {}", path.display());
}

const FILE_SIZE: usize = 300_000;

#[test]
fn metrics_count_pushes_refusals_and_the_last_complete_push() {
    let tmp = TempDir::new().unwrap();
    let (client_cfg, intruder_cfg) = (tmp.path().join("client-cfg"), tmp.path().join("intruder-cfg"));
    let client = fingerprint_of(&client_cfg);
    let intruder = fingerprint_of(&intruder_cfg);
    let served = serve(tmp.path(), &client);
    let src: PathBuf = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("data"), seeded(FILE_SIZE, 7)).unwrap();
    let url = format!("xfer://{}/site", served.addr);
    let state = tmp.path().join("state");
    let ours = [("client", client.as_str()), ("tag", "project:web")];

    // A complete push.
    let (code, complete) = push(&client_cfg, &src, &url, &served.fingerprint, &state);
    assert_eq!(code, Some(0), "{complete}");
    let ok = [("direction", "push"), ("outcome", "ok")];
    let first = scrape_when(&served.metrics, "xfer_sessions_total", &ok, 1.0);
    let tree = [("tree", "/site")];
    let completed = value(&first, "xfer_tree_last_complete_push_timestamp_seconds", &tree).unwrap();
    assert!(completed > 1.7e9, "{completed}");
    let received = value(&first, "xfer_received_bytes_total", &ours).unwrap();
    let sent = value(&first, "xfer_sent_bytes_total", &ours).unwrap();
    // What the server received is what the client sent (the file, which
    // does not compress, and the protocol), give or take its close.
    assert!(received >= FILE_SIZE as f64 && received <= wire(&complete, "wire_bytes_sent") + 4096.0, "{received}");
    assert!(sent > 0.0 && sent <= wire(&complete, "wire_bytes_received") + 4096.0, "{sent}");

    // A partial push: the client skips a FIFO it cannot send.
    fs::write(src.join("more"), b"more data").unwrap();
    mkfifo(&src.join("pipe"));
    let (code, partial) = push(&client_cfg, &src, &url, &served.fingerprint, &state);
    assert_eq!(code, Some(3), "{partial}");
    // A client the server does not admit.
    let (code, _) = push(&intruder_cfg, &src, &url, &served.fingerprint, &state);
    assert_ne!(code, Some(0));
    let refused = [("direction", "none"), ("outcome", "refused")];
    scrape_when(&served.metrics, "xfer_sessions_total", &refused, 1.0);
    let second =
        scrape_when(&served.metrics, "xfer_sessions_total", &[("direction", "push"), ("outcome", "partial")], 1.0);

    assert_eq!(value(&second, "xfer_sessions_total", &ok), Some(1.0));
    assert_eq!(value(&second, "xfer_sessions_total", &[("direction", "push"), ("outcome", "partial")]), Some(1.0));
    assert_eq!(value(&second, "xfer_sessions_total", &refused), Some(1.0));
    assert_eq!(value(&second, "xfer_refusals_total", &[("reason", "unauthorized")]), Some(1.0));
    assert_eq!(value(&second, "xfer_sessions_active", &[]), Some(0.0));
    assert_eq!(value(&second, "xfer_session_duration_seconds_count", &[("direction", "push")]), Some(2.0));
    // Only the complete push moved the last complete push; both moved the last push.
    assert_eq!(value(&second, "xfer_tree_last_complete_push_timestamp_seconds", &tree), Some(completed));
    assert!(value(&second, "xfer_tree_last_push_timestamp_seconds", &tree).unwrap() >= completed);
    let both = received + wire(&partial, "wire_bytes_sent") + 4096.0;
    assert!(value(&second, "xfer_received_bytes_total", &ours).unwrap() <= both);
    // The refused client is counted as unknown, never by its own key.
    assert!(value(&second, "xfer_received_bytes_total", &[("client", "unknown"), ("tag", "")]).unwrap() > 0.0);
    assert!(second.samples.iter().all(|s| !s.labels.values().any(|v| v.contains(&intruder[5..]))));
    drop(served);

    // After a restart, the last complete push is still the complete one's.
    let restarted = serve(tmp.path(), &client);
    let third = scrape(&restarted.metrics);
    assert_eq!(value(&third, "xfer_tree_last_complete_push_timestamp_seconds", &tree), Some(completed));
    assert_eq!(value(&third, "xfer_sessions_total", &ok), None, "counters start again");
}
