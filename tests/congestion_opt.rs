//! `--congestion NAME`: each controller carries a push; a bad name is a
//! usage error listing the names; the config file's key is honoured.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command as StdCommand, Stdio};

use assert_cmd::Command;
use tempfile::TempDir;

use crate::util::seeded;

fn xfer(tmp: &Path) -> Command {
    let mut cmd = Command::cargo_bin("xfer").unwrap();
    cmd.env("XFER_STATE_DIR", tmp.join("state")).env("XFER_CONFIG_DIR", tmp.join("ccfg"));
    cmd
}

fn small_tree(src: &Path) {
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/a"), seeded(700_000, 3)).unwrap();
    fs::write(src.join("b"), b"hello").unwrap();
    fs::write(src.join("c.txt"), "some text ".repeat(5000)).unwrap();
}

/// `xfer serve` on loopback with `args`; returns the process, its address
/// and fingerprint (from the line it prints first).
fn serve(tmp: &Path, client: &str, args: &[&str]) -> (Child, String, String) {
    let mut server = StdCommand::new(assert_cmd::cargo::cargo_bin("xfer"))
        .args(["serve", "--listen", "127.0.0.1:0", "--allow", client, "--config-dir"])
        .arg(tmp.join("scfg"))
        .arg("--root")
        .arg(tmp.join("served"))
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(words.len() >= 3, "the server printed {line:?}");
    let (addr, fingerprint) = (words[words.len() - 3].to_string(), words[words.len() - 1].to_string());
    // Keep draining stderr: a server whose stderr is closed fails its log lines.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (server, addr, fingerprint)
}

/// The congestion controller of the server's last audit record.
fn audited(tmp: &Path) -> serde_json::Value {
    let log = fs::read_to_string(tmp.join("served/.xfer/audit.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    last["congestion"].clone()
}

fn client_id(tmp: &Path) -> String {
    let out = xfer(tmp).arg("id").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn each_controller_pushes_and_pulls_a_tree_over_loopback() {
    for name in ["xfer", "cubic", "newreno", "bbr"] {
        let tmp = TempDir::new().unwrap();
        let src = tmp.path().join("src");
        small_tree(&src);
        let client = client_id(tmp.path());
        let (mut server, addr, fp) = serve(tmp.path(), &client, &["--congestion", name]);
        let url = format!("xfer://{addr}/t");
        let log = tmp.path().join("client.jsonl");
        let out = xfer(tmp.path())
            .args(["push", "--json", "--congestion", name, "--server-fingerprint", &fp, "--log-json"])
            .arg(&log)
            .arg(&src)
            .arg(&url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["congestion"], name);
        assert_eq!(json["files_changed"], 3, "{name}");
        // Both sides' records name their controller.
        let record: serde_json::Value = serde_json::from_str(&fs::read_to_string(&log).unwrap()).unwrap();
        assert_eq!(record["congestion"], name);
        crate::util::assert_same_tree(
            &crate::util::read_tree(&tmp.path().join("served/t")),
            &crate::util::read_tree(&src),
        );

        let back = tmp.path().join("back");
        let out = xfer(tmp.path())
            .args(["pull", "--json", "--congestion", name, "--server-fingerprint", &fp, &url])
            .arg(&back)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["congestion"], name);
        crate::util::assert_same_tree(&crate::util::read_tree(&back), &crate::util::read_tree(&src));
        assert_eq!(audited(tmp.path()), name, "the server's audit record");
        server.kill().unwrap();
        let _ = server.wait();
    }
}

#[test]
fn a_local_push_takes_each_controller() {
    for name in ["xfer", "cubic", "newreno", "bbr"] {
        let tmp = TempDir::new().unwrap();
        let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
        small_tree(&src);
        let out =
            xfer(tmp.path()).args(["push", "--json", "--congestion", name]).arg(&src).arg(&dest).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["congestion"], name);
        crate::util::assert_same_tree(&crate::util::read_tree(&dest), &crate::util::read_tree(&src));
    }
}

#[test]
fn a_bad_name_exits_2_with_the_list() {
    let tmp = TempDir::new().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    small_tree(&src);
    for command in [&["push"][..], &["pull"][..]] {
        let out = xfer(tmp.path()).args(command).args(["--congestion", "vegas"]).arg(&src).arg(&dest).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{command:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for name in ["vegas", "xfer", "cubic", "newreno", "bbr"] {
            assert!(stderr.contains(name), "{command:?}: {stderr}");
        }
    }
    let out = xfer(tmp.path())
        .args(["serve", "--root"])
        .arg(tmp.path().join("served"))
        .args(["--congestion", "vegas"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("xfer, cubic, newreno, bbr"), "{stderr}");
    assert!(!dest.exists(), "a refused run wrote its destination");
}

#[test]
fn config_key_is_honoured_and_the_flag_wins() {
    let tmp = TempDir::new().unwrap();
    let (src, cfg) = (tmp.path().join("src"), tmp.path().join("ccfg"));
    small_tree(&src);
    fs::create_dir_all(&cfg).unwrap();
    fs::write(cfg.join("config.toml"), "[defaults]\ncongestion = \"newreno\"\n[push]\ncongestion = \"bbr\"\n").unwrap();
    let push = |dest: &str, extra: &[&str]| {
        let out = xfer(tmp.path()).args(["push", "--json"]).args(extra).arg(&src).arg(tmp.path().join(dest)).output();
        let out = out.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["congestion"].clone()
    };
    assert_eq!(push("d1", &[]), "bbr", "[push] wins over [defaults]");
    assert_eq!(push("d2", &["--congestion", "cubic"]), "cubic", "the flag wins over the config");
    fs::write(cfg.join("config.toml"), "[defaults]\ncongestion = \"newreno\"\n").unwrap();
    assert_eq!(push("d3", &[]), "newreno", "[defaults] applies to a push");

    // A bad name in the file names the file, the key and the valid names.
    fs::write(cfg.join("config.toml"), "[push]\ncongestion = \"fast\"\n").unwrap();
    let out = xfer(tmp.path()).arg("push").arg(&src).arg(tmp.path().join("d4")).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("config.toml") && stderr.contains("congestion"), "{stderr}");
    assert!(stderr.contains("xfer, cubic, newreno, bbr"), "{stderr}");
    assert!(!tmp.path().join("d4").exists());

    // The server reads [serve] from its own config dir; its flag wins.
    let scfg = tmp.path().join("scfg");
    fs::create_dir_all(&scfg).unwrap();
    fs::write(scfg.join("config.toml"), "[serve]\ncongestion = \"bbr\"\n").unwrap();
    fs::remove_file(cfg.join("config.toml")).unwrap();
    let client = client_id(tmp.path());
    for (args, expected) in [(&[][..], "bbr"), (&["--congestion", "newreno"][..], "newreno")] {
        let (mut server, addr, fp) = serve(tmp.path(), &client, args);
        let out = xfer(tmp.path())
            .args(["push", "--server-fingerprint", &fp])
            .arg(&src)
            .arg(format!("xfer://{addr}/t"))
            .output()
            .unwrap();
        server.kill().unwrap();
        let _ = server.wait();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(audited(tmp.path()), expected, "serve {args:?}");
    }
}

/// A UDP relay on loopback between one client and a server that drops a
/// seeded share of the client's packets, and records, as the client's
/// packets arrive, when and how many bytes the client had sent so far
/// (the bytes leaving the sender, counted before the loss).
struct LossyRelay {
    addr: std::net::SocketAddr,
    sent: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, u64)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl LossyRelay {
    fn start(server: std::net::SocketAddr, loss_permille: u64, seed: u64) -> LossyRelay {
        use std::net::UdpSocket;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        use std::time::{Duration, Instant};

        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};

        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        back.connect(server).unwrap();
        for socket in [&front, &back] {
            socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let addr = front.local_addr().unwrap();
        let client = Arc::new(Mutex::new(None));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (front2, back2) = (front.try_clone().unwrap(), back.try_clone().unwrap());
        let upstream = {
            let (client, sent, stop) = (client.clone(), sent.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut buf, mut total, mut rng) = (vec![0; 65536], 0u64, SmallRng::seed_from_u64(seed));
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = front.recv_from(&mut buf) else { continue };
                    *client.lock().unwrap() = Some(from);
                    total += len as u64;
                    sent.lock().unwrap().push((Instant::now(), total));
                    if rng.random_range(0..1000) >= loss_permille {
                        let _ = back.send(&buf[..len]);
                    }
                }
            })
        };
        let downstream = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(len) = back2.recv(&mut buf) else { continue };
                    if let Some(to) = *client.lock().unwrap() {
                        let _ = front2.send_to(&buf[..len], to);
                    }
                }
            })
        };
        LossyRelay { addr, sent, stop, threads: vec![upstream, downstream] }
    }

    /// Bytes per second the client sent between the moments it had sent
    /// `from` and `to` (shares of its total): the steady part of a transfer,
    /// without the handshake and the tail.
    fn steady_rate(&self, from: f64, to: f64) -> f64 {
        let sent = self.sent.lock().unwrap();
        let total = sent.last().unwrap().1 as f64;
        let at = |share: f64| *sent.iter().find(|(_, bytes)| *bytes as f64 >= share * total).unwrap();
        let ((t0, b0), (t1, b1)) = (at(from), at(to));
        (b1 - b0) as f64 / (t1 - t0).as_secs_f64()
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
    }
}

/// `--bwlimit` is a promise about the wire: packets lost and sent again
/// count against it. Through a relay that drops 15% of the client's
/// packets, the client sends no more than the cap (plus 5%) on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bwlimit_holds_on_the_wire_when_packets_are_lost() {
    use xfer::throttle::{Limiter, Rate};
    const CAP: u64 = 1 << 20;

    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // Random bytes: nothing compresses, so the payload is the data.
    fs::write(src.join("blob"), seeded(6 << 20, 9)).unwrap();
    let (client, server_id) = (xfer::Identity::generate().unwrap(), xfer::Identity::generate().unwrap());
    let root = tmp.path().join("served");
    fs::create_dir_all(&root).unwrap();
    let access = xfer::Access::allow(&[client.fingerprint()]);
    let server = xfer::Server::start("127.0.0.1:0".parse().unwrap(), root.clone(), access, &server_id).unwrap();
    let relay = LossyRelay::start(server.local_addr().unwrap(), 150, 0x5eed);
    let url = xfer::RemoteUrl { authority: relay.addr.to_string(), path: "t".into() };
    let options = xfer::Options {
        bwlimit: Limiter::new(Rate(Some(CAP))),
        busy_wait: std::time::Duration::from_secs(10),
        ..xfer::Options::new(tmp.path().join("state"))
    };
    let report =
        xfer::Client::new(client).push(&src, &url, server_id.fingerprint(), &options).await.expect("push through loss");
    assert_eq!(fs::read(root.join("t/blob")).unwrap(), seeded(6 << 20, 9));
    let rate = relay.steady_rate(0.2, 0.9);
    eprintln!("wire rate under 15% loss: {rate:.0} B/s, cap {CAP} B/s ({:+.1}%)", 100.0 * (rate / CAP as f64 - 1.0));
    relay.stop();
    server.shutdown().await;
    assert!(
        rate <= CAP as f64 * 1.05,
        "the client sent {rate:.0} B/s on the wire under a cap of {CAP} B/s ({:+.1}%); wire bytes {}",
        100.0 * (rate / CAP as f64 - 1.0),
        report.wire_bytes_sent
    );
    // And the cap is not a brake beyond what it promises.
    assert!(rate >= CAP as f64 * 0.5, "{rate:.0} B/s under a cap of {CAP} B/s");
}
