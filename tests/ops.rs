//! The first night, as an operator meets it: the shipped systemd units and
//! the README's cron line run in the environment systemd or cron gives
//! them (no `HOME` for a system unit, nothing made beforehand), the run's
//! record on every outcome, where config and state are found, `XFER_*`
//! overrides and the system's config file, `RUST_LOG`, journald, and
//! `sd_notify`.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::util::seeded;

/// cron's and systemd's `PATH`: nothing of the test's.
const BARE_PATH: &str = "/usr/bin:/bin";

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("xfer")
}

/// The binary with an empty environment but a bare `PATH`.
fn clean() -> Command {
    let mut cmd = Command::new(bin());
    cmd.env_clear().env("PATH", BARE_PATH);
    cmd
}

fn text(out: &std::process::Output) -> String {
    format!("stdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A small tree of `n` files.
fn tree(at: &Path, n: u64) -> PathBuf {
    fs::create_dir_all(at.join("sub")).unwrap();
    for i in 0..n {
        let name = if i % 2 == 0 { format!("f{i}") } else { format!("sub/g{i}") };
        fs::write(at.join(name), seeded(10_000 + i as usize, i)).unwrap();
    }
    at.to_path_buf()
}

/// The JSON lines of a log.
fn records(log: &Path) -> Vec<Value> {
    let text = fs::read_to_string(log).unwrap_or_else(|e| panic!("no log at {}: {e}", log.display()));
    text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect()
}

/// A run's record names the run and carries every count of the summary.
fn assert_run_record(record: &Value, command: &str, source: &str, destination: &str, code: u64) {
    for field in ["run_id", "start", "end", "host", "version"] {
        assert!(record[field].as_str().is_some_and(|v| !v.is_empty()), "no {field}: {record}");
    }
    let (start, end) = (record["start"].as_str().unwrap(), record["end"].as_str().unwrap());
    assert!(start.ends_with('Z') && start.contains('T') && end.ends_with('Z'), "not RFC 3339 UTC: {record}");
    assert!(start <= end, "ended before it started: {record}");
    assert_eq!(record["version"], env!("CARGO_PKG_VERSION"), "{record}");
    assert!(record["pid"].as_u64().is_some(), "{record}");
    assert_eq!(record["command"], command, "{record}");
    assert_eq!(record["source"], source, "{record}");
    assert_eq!(record["destination"], destination, "{record}");
    assert_eq!(record["exit_code"].as_u64(), Some(code), "{record}");
    for count in [
        "files_changed",
        "files_deleted",
        "chunks_sent",
        "bytes_sent",
        "bytes_written",
        "chunks_delta",
        "chunks_reused",
        "wire_bytes_sent",
        "wire_bytes_received",
        "meta_kept",
    ] {
        assert!(record[count].as_u64().is_some(), "no count {count}: {record}");
    }
    assert!(record["elapsed_s"].as_f64().is_some() && record["failed"].is_array(), "{record}");
}

/// Waits for `child` up to `limit`; kills it and fails past that.
fn finish(mut child: Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("xfer still running after {limit:?}: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// Whether a transfer into `root` is writing (a temporary exists).
fn writing(root: &Path) -> bool {
    let Ok(dir) = fs::read_dir(root) else { return false };
    dir.flatten().any(|entry| {
        entry.file_name().to_string_lossy().starts_with(".xfer-tmp.")
            || (entry.file_type().is_ok_and(|t| t.is_dir()) && writing(&entry.path()))
    })
}

fn wait_until_writing(root: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !writing(root) {
        assert!(child.try_wait().unwrap().is_none(), "the push ended before it wrote");
        assert!(Instant::now() < deadline, "no temporary appeared under {}", root.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The clock the test build reads instead of the system's
/// (`XFER_CLOCK_FILE`): the night the shipped lines are written for.
fn night_clock(dir: &Path) -> PathBuf {
    let clock = dir.join("clock");
    set_clock(&clock, "Mon 23:00");
    clock
}

fn set_clock(clock: &Path, at: &str) {
    let temp = clock.with_extension("tmp");
    fs::write(&temp, at).unwrap();
    fs::rename(&temp, clock).unwrap();
}

/// `xfer id` in `env` (an empty environment otherwise): the key it makes.
fn identity(env: &[(&str, &Path)], config_dir: Option<&Path>) -> String {
    let mut cmd = clean();
    cmd.arg("id").envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = config_dir {
        cmd.arg("--config-dir").arg(dir);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "xfer id: {}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

// ---------------------------------------------------------------------
// The shipped units.

/// A unit file's settings, continuation lines joined.
struct Unit(HashMap<String, Vec<String>>);

impl Unit {
    fn read(path: &Path) -> Unit {
        let text = fs::read_to_string(path).unwrap();
        let mut settings: HashMap<String, Vec<String>> = HashMap::new();
        let mut pending = String::new();
        for line in text.lines() {
            let line = line.trim();
            if pending.is_empty() && (line.starts_with('#') || line.starts_with(';') || line.starts_with('[')) {
                continue;
            }
            if let Some(head) = line.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            pending.push_str(line);
            if let Some((key, value)) = pending.split_once('=') {
                settings.entry(key.trim().to_string()).or_default().push(value.trim().to_string());
            }
            pending.clear();
        }
        Unit(settings)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|values| values.last()).map(String::as_str)
    }

    /// `ExecStart=` as argv: words split as systemd splits them (double
    /// quotes group), specifiers expanded from `specifiers`.
    fn exec(&self, specifiers: &[(&str, &Path)]) -> Vec<String> {
        let line = self.get("ExecStart").expect("no ExecStart");
        let mut words = Vec::new();
        let (mut word, mut quoted, mut any) = (String::new(), false, false);
        for c in line.chars() {
            match c {
                '"' => (quoted, any) = (!quoted, true),
                c if c.is_whitespace() && !quoted => {
                    if any || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    any = false;
                }
                c => word.push(c),
            }
        }
        if any || !word.is_empty() {
            words.push(word);
        }
        words
            .into_iter()
            .map(|word| {
                let mut word = word;
                for (spec, value) in specifiers {
                    word = word.replace(spec, &value.display().to_string());
                }
                assert!(!word.contains('%'), "unexpanded specifier in {word}");
                word
            })
            .collect()
    }
}

fn cron_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cron")
}

/// Runs `argv` (the unit's ExecStart) with the binary for
/// /usr/local/bin/xfer and `env` alone.
fn unit_command(argv: &[String], env: &[(&str, String)]) -> Command {
    assert_eq!(argv[0], "/usr/local/bin/xfer", "the units name xfer by its full path");
    let mut cmd = Command::new(bin());
    cmd.args(&argv[1..]).env_clear().env("PATH", BARE_PATH).envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// What the units promise on their face: the serve unit's directories and
/// notify type; no `StandardOutput=append:` anywhere; only 4 as success.
fn assert_unit_settings(serve: &Unit, system: &Unit, user: &Unit) {
    assert_eq!(serve.get("Type"), Some("notify"));
    assert_eq!(serve.get("StateDirectory"), Some("xfer"));
    assert_eq!(serve.get("ConfigurationDirectory"), Some("xfer"));
    assert!(serve.get("WatchdogSec").is_some(), "no WatchdogSec in xfer-serve.service");
    for unit in [system, user] {
        assert_eq!(unit.get("SuccessExitStatus"), Some("4"), "only a closed window is a success");
        assert!(unit.get("ExecStart").unwrap().contains("--log-json"), "the push units log with --log-json");
    }
    for unit in [serve, system, user] {
        assert!(unit.get("StandardOutput").is_none_or(|v| !v.starts_with("append:")));
    }
    assert!(user.get("Wants").is_none_or(|v| !v.contains("network-online")), "does nothing in a user unit");
}

/// The server unit as systemd starts it: the directories it names set (and
/// made, as systemd makes them), `NOTIFY_SOCKET` and `WATCHDOG_USEC`, and
/// nothing else; its stderr lines come back on a channel.
struct ServeUnit {
    child: Child,
    lines: mpsc::Receiver<String>,
    notify: UnixDatagram,
    addr: String,
    fingerprint: String,
}

impl ServeUnit {
    fn start(unit: &Unit, machine: &Path, allowed: &[&str]) -> ServeUnit {
        let (etc, lib) = (machine.join("etc"), machine.join("var/lib"));
        fs::create_dir_all(etc.join("xfer")).unwrap();
        // The install step: one grant per client.
        let grants: String = allowed.iter().map(|fp| format!("{fp} rw\n")).collect();
        fs::write(etc.join("xfer/authorized_clients"), grants).unwrap();
        let socket = machine.join("notify.sock");
        let notify = UnixDatagram::bind(&socket).unwrap();
        notify.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let watchdog_s: u64 = unit.get("WatchdogSec").unwrap().parse().unwrap();
        let argv: Vec<String> = unit
            .exec(&[("%S", &lib), ("%E", &etc)])
            .into_iter()
            .map(|w| if w == "0.0.0.0:7878" { "127.0.0.1:0".to_string() } else { w })
            .collect();
        let env = [
            ("CONFIGURATION_DIRECTORY", etc.join("xfer").display().to_string()),
            ("STATE_DIRECTORY", lib.join("xfer").display().to_string()),
            ("NOTIFY_SOCKET", socket.display().to_string()),
            ("WATCHDOG_USEC", (watchdog_s * 1_000_000).to_string()),
        ];
        let mut child = unit_command(&argv, &env).stderr(Stdio::piped()).spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(30)).expect("the server said nothing");
        let words: Vec<&str> = first.split_whitespace().collect();
        assert!(first.contains("serving"), "{first}");
        let (addr, fingerprint) = (words[words.len() - 3].to_string(), words[words.len() - 1].to_string());
        ServeUnit { child, lines, notify, addr, fingerprint }
    }

    /// The next message on the notify socket.
    fn notified(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.notify.recv(&mut buf).expect("nothing on NOTIFY_SOCKET");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Waits for a notify message holding `state` (`READY=1`...).
    fn wait_for(&self, state: &str) {
        let mut seen = Vec::new();
        loop {
            let message = self.notified();
            if message.lines().any(|line| line == state) {
                return;
            }
            seen.push(message);
            assert!(seen.len() < 100, "no {state} among {seen:?}");
        }
    }

    /// Stops it as `systemctl stop` does: it says STOPPING and exits 0.
    fn stop(mut self) -> Vec<String> {
        sigterm(&self.child);
        self.wait_for("STOPPING=1");
        let status = finish_status(&mut self.child, Duration::from_secs(30));
        assert_eq!(status.code(), Some(0), "xfer serve did not stop cleanly");
        self.lines.try_iter().collect()
    }
}

fn finish_status(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The shipped units' ExecStart lines run as systemd runs them: the server
/// unit with only what systemd sets (its directories, NOTIFY_SOCKET,
/// WATCHDOG_USEC); the system push unit with no HOME and only its
/// directories; the user unit with a fresh HOME where nothing exists yet.
/// The remote `backup` comes from a drop-in's `Environment=` (XFER_REMOTES_*),
/// the source replaces /srv/www, and the test's clock stands for the night
/// (`XFER_CLOCK_FILE`, a test-build knob). Each succeeds and logs.
#[test]
fn ops_shipped_units_run_in_a_clean_environment() {
    let tmp = TempDir::new().unwrap();
    let serve = Unit::read(&cron_dir().join("xfer-serve.service"));
    let system = Unit::read(&cron_dir().join("system/xfer-push.service"));
    let user = Unit::read(&cron_dir().join("xfer-push.service"));
    assert_unit_settings(&serve, &system, &user);
    let www = tree(&tmp.path().join("www"), 6);
    let clock = night_clock(tmp.path());

    // Install steps: each client's key, printed as the units' comments say.
    let client = tmp.path().join("client");
    let system_fp = identity(&[], Some(&client.join("etc/xfer")));
    let home = tmp.path().join("home");
    fs::create_dir(&home).unwrap();
    let user_fp = identity(&[("HOME", &home)], None);
    assert!(!home.join(".local").exists(), "xfer id made the state directory");

    let server = ServeUnit::start(&serve, &tmp.path().join("server"), &[&system_fp, &user_fp]);
    server.wait_for("READY=1");
    let remote = [
        ("XFER_REMOTES_BACKUP_URL", format!("xfer://{}/www", server.addr)),
        ("XFER_REMOTES_BACKUP_FINGERPRINT", server.fingerprint.clone()),
        ("XFER_CLOCK_FILE", clock.display().to_string()),
    ];
    let www_arg = |argv: Vec<String>| -> Vec<String> {
        argv.into_iter().map(|w| if w == "/srv/www" { www.display().to_string() } else { w }).collect()
    };

    // The system unit: no HOME; systemd sets (and makes) its directories.
    let (etc, lib, log) = (client.join("etc"), client.join("var/lib"), client.join("var/log"));
    let argv = www_arg(system.exec(&[("%L", &log), ("%S", &lib), ("%E", &etc)]));
    let mut env = remote.to_vec();
    env.push(("CONFIGURATION_DIRECTORY", etc.join("xfer").display().to_string()));
    env.push(("STATE_DIRECTORY", lib.join("xfer").display().to_string()));
    env.push(("LOGS_DIRECTORY", log.join("xfer").display().to_string()));
    let out = unit_command(&argv, &env).output().unwrap();
    assert!(out.status.success(), "system/xfer-push.service: {}", text(&out));
    let logged = records(&log.join("xfer/push.jsonl"));
    assert_eq!(logged.len(), 1);
    assert_run_record(&logged[0], "push", &www.display().to_string(), "backup", 0);
    assert_eq!(logged[0]["files_changed"], 6, "{}", logged[0]);
    assert!(fs::read_dir(lib.join("xfer")).unwrap().next().is_some(), "no state in STATE_DIRECTORY");

    // The user unit: a fresh HOME; %S is its ~/.local/state.
    fs::write(www.join("new"), b"added").unwrap();
    let state = home.join(".local/state");
    let argv = www_arg(user.exec(&[("%S", &state), ("%h", &home)]));
    let mut env = remote.to_vec();
    env.push(("HOME", home.display().to_string()));
    let out = unit_command(&argv, &env).output().unwrap();
    assert!(out.status.success(), "xfer-push.service: {}", text(&out));
    let logged = records(&state.join("xfer/push.jsonl"));
    assert_eq!(logged.len(), 1);
    assert_run_record(&logged[0], "push", &www.display().to_string(), "backup", 0);
    assert!(logged[0]["files_changed"].as_u64() >= Some(1), "{}", logged[0]);

    let served = tmp.path().join("server/var/lib/xfer/trees/www");
    crate::util::assert_same_tree(&crate::util::read_tree(&served), &crate::util::read_tree(&www));
    let lines = server.stop();
    assert!(!lines.is_empty(), "the server logged nothing");
}

// ---------------------------------------------------------------------
// The cron line.

/// The command of a crontab line: the line without its five time fields.
fn cron_command(line: &str) -> String {
    let mut rest = line.trim_start();
    for _ in 0..5 {
        let end = rest.find(char::is_whitespace).expect("a crontab line has five time fields");
        rest = rest[end..].trim_start();
    }
    rest.to_string()
}

/// The crontab line in README.md's "From cron".
fn readme_cron_line() -> String {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = &readme[readme.find("## From cron").expect("no From cron section")..];
    let block = &section[section.find("```cron").expect("no cron block")..];
    let block = &block["```cron".len()..block[3..].find("```").unwrap() + 3];
    let lines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).collect();
    assert_eq!(lines.len(), 1, "{block}");
    lines[0].to_string()
}

/// The job line of scripts/cron/crontab.example.
fn example_cron_line() -> String {
    let text = fs::read_to_string(cron_dir().join("crontab.example")).unwrap();
    let jobs: Vec<&str> = text.lines().filter(|l| l.starts_with(|c: char| c.is_ascii_digit())).collect();
    assert_eq!(jobs.len(), 1);
    jobs[0].to_string()
}

/// Runs a crontab line as cron does on a fresh account: `sh -c` in HOME
/// with HOME, LOGNAME, SHELL and PATH only, where the user has made a key
/// (`xfer id`) and a config naming the remote `backup`, and nothing else:
/// ~/.local/state does not exist. Twice: two records, told apart.
fn run_cron_line(line: &str) {
    let tmp = TempDir::new().unwrap();
    let home = tmp.path().join("home");
    fs::create_dir(&home).unwrap();
    let client_fp = identity(&[("HOME", &home)], None);
    let (mut server, addr, server_fp) =
        crate::util::spawn_server(&client_fp, &tmp.path().join("server-cfg"), &tmp.path().join("served"));
    fs::write(
        home.join(".config/xfer/config.toml"),
        format!("[remotes.backup]\nurl = \"xfer://{addr}/www\"\nfingerprint = \"{server_fp}\"\n"),
    )
    .unwrap();
    assert!(!home.join(".local").exists());
    let www = tree(&tmp.path().join("www"), 4);
    let clock = night_clock(tmp.path());
    let command = cron_command(line)
        .replace("/usr/local/bin/xfer", &bin().display().to_string())
        .replace("/srv/www", &www.display().to_string());
    let run = || {
        Command::new("/bin/sh")
            .arg("-c")
            .arg(&command)
            .current_dir(&home)
            .env_clear()
            .env("HOME", &home)
            .env("LOGNAME", "backup")
            .env("SHELL", "/bin/sh")
            .env("PATH", BARE_PATH)
            // The night the line is written for (a test-build knob).
            .env("XFER_CLOCK_FILE", &clock)
            .output()
            .unwrap()
    };
    let first = run();
    let second = run();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(first.status.code(), Some(0), "{line}: {}", text(&first));
    assert_eq!(second.status.code(), Some(0), "{line}: {}", text(&second));
    assert!(first.stdout.is_empty() && first.stderr.is_empty(), "cron would mail this: {}", text(&first));
    let logged = records(&home.join(".local/state/xfer/push.jsonl"));
    assert_eq!(logged.len(), 2, "one record per run");
    for record in &logged {
        assert_run_record(record, "push", &www.display().to_string(), "backup", 0);
        assert_eq!(record["url"], format!("xfer://{addr}/www"), "{record}");
        assert_eq!(record["result"], "ok", "{record}");
    }
    assert_eq!((logged[0]["files_changed"].as_u64(), logged[1]["files_changed"].as_u64()), (Some(4), Some(0)));
    assert_ne!(logged[0]["run_id"], logged[1]["run_id"], "runs cannot be told apart");
    assert!(tmp.path().join("served/www/f0").exists());
}

#[test]
fn ops_readme_cron_line_runs_on_a_fresh_account() {
    run_cron_line(&readme_cron_line());
}

#[test]
fn ops_crontab_example_runs_on_a_fresh_account() {
    run_cron_line(&example_cron_line());
}

// ---------------------------------------------------------------------
// The run's record on a stop.

/// A window that closes mid-run (exit 4): the record on stdout (--json)
/// and in the log is the same, with the times, the run's names and what
/// was done until the window closed.
#[test]
fn ops_record_on_a_closed_window_carries_counts_and_times() {
    let tmp = TempDir::new().unwrap();
    let (src, dest, log) = (tmp.path().join("src"), tmp.path().join("dest"), tmp.path().join("logs/a/push.jsonl"));
    fs::create_dir(&src).unwrap();
    for i in 0..16 {
        fs::write(src.join(format!("f{i:02}")), seeded(512 << 10, 200 + i)).unwrap();
    }
    let clock = night_clock(tmp.path());
    let mut child = Command::new(bin())
        .args(["push", "--json", "--window", "22:00-06:00", "--bwlimit", "2M", "--log-json"])
        .arg(&log)
        .arg(&src)
        .arg(&dest)
        .env("XFER_STATE_DIR", tmp.path().join("state"))
        .env("XFER_CONFIG_DIR", tmp.path().join("cfg"))
        .env("XFER_CLOCK_FILE", &clock)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A build without the clock knob sees the real time, outside the
    // window at most hours of the day, and stops at once: its record is
    // checked all the same.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !writing(&dest) && child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    set_clock(&clock, "Tue 06:30");
    let out = finish(child, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let logged = records(&log);
    assert_eq!(logged.len(), 1);
    assert_eq!(printed, logged[0], "--json and --log-json print one record");
    let record = &logged[0];
    assert_run_record(record, "push", &src.display().to_string(), &dest.display().to_string(), 4);
    assert_eq!(record["result"], "window", "{record}");
    assert!(record["error"].as_str().unwrap().contains("22:00-06:00"), "{record}");
    assert_eq!(record["files_scanned"], 16, "the counts so far: {record}");
    assert!(record["wire_bytes_sent"].as_u64().unwrap() > 0, "the counts so far: {record}");
}

/// SIGTERM (systemctl stop) mid-push: exit 143, and the record still
/// carries the counts so far, the times, the names and the version.
#[test]
fn ops_record_on_sigterm_carries_counts_and_times() {
    let tmp = TempDir::new().unwrap();
    let (src, dest, log) = (tmp.path().join("src"), tmp.path().join("dest"), tmp.path().join("push.jsonl"));
    fs::create_dir(&src).unwrap();
    for i in 0..8 {
        fs::write(src.join(format!("f{i}")), seeded(1 << 20, 300 + i)).unwrap();
    }
    let mut child = Command::new(bin())
        .args(["push", "--json", "--bwlimit", "1M", "--log-json"])
        .arg(&log)
        .arg(&src)
        .arg(&dest)
        .env("XFER_STATE_DIR", tmp.path().join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_writing(&dest, &mut child);
    sigterm(&child);
    let out = finish(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(143), "{}", text(&out));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let logged = records(&log);
    assert_eq!(logged.len(), 1);
    assert_eq!(printed, logged[0], "--json and --log-json print one record");
    let record = &logged[0];
    assert_run_record(record, "push", &src.display().to_string(), &dest.display().to_string(), 143);
    assert_eq!(record["result"], "cancelled", "{record}");
    assert_eq!(record["files_scanned"], 8, "the counts so far: {record}");
    assert!(record["wire_bytes_sent"].as_u64().unwrap() > 0, "the counts so far: {record}");
}

// ---------------------------------------------------------------------
// Paths, config layers, logs.

/// A relative XDG_CONFIG_HOME or XDG_STATE_HOME is ignored (the XDG
/// specification says so): xfer uses HOME's directories, never ones below
/// the working directory.
#[test]
fn ops_relative_xdg_paths_are_ignored() {
    let tmp = TempDir::new().unwrap();
    let (home, work) = (tmp.path().join("home"), tmp.path().join("work"));
    fs::create_dir_all(&home).unwrap();
    fs::create_dir_all(&work).unwrap();
    let src = tree(&tmp.path().join("src"), 2);
    let run = |args: &[&str]| {
        clean()
            .args(args)
            .current_dir(&work)
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", "rel-config")
            .env("XDG_STATE_HOME", "rel-state")
            .output()
            .unwrap()
    };
    let id = run(&["id"]);
    assert!(id.status.success(), "{}", text(&id));
    let pushed = run(&["push", src.to_str().unwrap(), tmp.path().join("dest").to_str().unwrap()]);
    assert!(pushed.status.success(), "{}", text(&pushed));
    assert!(fs::read_dir(&work).unwrap().next().is_none(), "xfer wrote below the working directory");
    assert!(home.join(".config/xfer/identity.crt").exists(), "the key is not in ~/.config/xfer");
    assert!(home.join(".local/state/xfer").is_dir(), "the state is not in ~/.local/state/xfer");
}

/// RUST_LOG chooses what a push logs (here the scan's summary, which a
/// plain push does not show); a bad filter is a usage error naming it.
#[test]
fn ops_rust_log_is_honoured() {
    let tmp = TempDir::new().unwrap();
    let src = tree(&tmp.path().join("src"), 2);
    let push = |rust_log: Option<&str>, dest: &str| {
        let mut cmd = Command::new(bin());
        cmd.arg("push").arg(&src).arg(tmp.path().join(dest)).env("XFER_STATE_DIR", tmp.path().join("state"));
        match rust_log {
            Some(filter) => cmd.env("RUST_LOG", filter),
            None => cmd.env_remove("RUST_LOG"),
        };
        cmd.output().unwrap()
    };
    let plain = push(None, "a");
    assert!(plain.status.success(), "{}", text(&plain));
    assert!(!String::from_utf8_lossy(&plain.stderr).contains("scanned"), "{}", text(&plain));
    let logged = push(Some("xfer=info"), "b");
    assert!(logged.status.success(), "{}", text(&logged));
    let stderr = String::from_utf8_lossy(&logged.stderr);
    assert!(stderr.contains("INFO") && stderr.contains("scanned"), "RUST_LOG=xfer=info ignored: {stderr}");
    let bad = push(Some("xfer=loud"), "c");
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("RUST_LOG"), "{}", text(&bad));
}

/// Under journald (JOURNAL_STREAM names stderr's device and inode) log
/// lines carry no time of their own; elsewhere they do.
#[test]
fn ops_no_double_timestamps_under_journald() {
    use std::os::unix::fs::MetadataExt;
    let tmp = TempDir::new().unwrap();
    let src = tree(&tmp.path().join("src"), 2);
    let push = |journal: bool, name: &str| {
        let stderr_file = tmp.path().join(format!("{name}.stderr"));
        let file = fs::File::create(&stderr_file).unwrap();
        let meta = file.metadata().unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["-v", "push"])
            .arg(&src)
            .arg(tmp.path().join(name))
            .env("XFER_STATE_DIR", tmp.path().join("state"))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(file);
        if journal {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        } else {
            cmd.env_remove("JOURNAL_STREAM");
        }
        assert!(cmd.status().unwrap().success());
        fs::read_to_string(&stderr_file).unwrap()
    };
    let stamped =
        |line: &str| line.len() > 20 && line.as_bytes()[..4].iter().all(u8::is_ascii_digit) && &line[10..11] == "T";
    let journal = push(true, "journal");
    let logged: Vec<&str> = journal.lines().filter(|l| l.contains("INFO")).collect();
    assert!(!logged.is_empty(), "-v logged nothing: {journal}");
    assert!(logged.iter().all(|l| !stamped(l)), "a timestamp under journald: {journal}");
    let terminal = push(false, "terminal");
    assert!(terminal.lines().filter(|l| l.contains("INFO")).all(stamped), "no timestamp elsewhere: {terminal}");
}

/// XFER_<SECTION>_<KEY> sets any config key: over the config file, under
/// the command line; a bad value or an unknown key is a usage error
/// naming the variable.
#[test]
fn ops_xfer_environment_overrides_config_keys() {
    let tmp = TempDir::new().unwrap();
    let (src, dest, cfg) = (tmp.path().join("src"), tmp.path().join("dest"), tmp.path().join("cfg"));
    tree(&src, 2);
    fs::create_dir_all(&cfg).unwrap();
    fs::write(cfg.join("config.toml"), "[defaults]\nwindow = \"22:00-06:00\"\n").unwrap();
    let clock = tmp.path().join("clock");
    set_clock(&clock, "Wed 12:00");
    let push = |env: &[(&str, &str)], args: &[&str]| {
        let mut cmd = Command::new(bin());
        cmd.arg("push").args(args).arg(&src).arg(&dest);
        cmd.env("XFER_STATE_DIR", tmp.path().join("state")).env("XFER_CONFIG_DIR", &cfg).env("XFER_CLOCK_FILE", &clock);
        cmd.envs(env.iter().copied()).output().unwrap()
    };
    let closed = push(&[], &[]);
    assert_eq!(closed.status.code(), Some(4), "the config's window: {}", text(&closed));
    let open = [("XFER_DEFAULTS_WINDOW", "always")];
    let first = push(&open, &[]);
    assert!(first.status.success(), "XFER_DEFAULTS_WINDOW did not win over the file: {}", text(&first));
    for stale in ["x", "y", "z"] {
        fs::write(dest.join(stale), b"stale").unwrap();
    }
    let overrides = [("XFER_DEFAULTS_WINDOW", "always"), ("XFER_PUSH_DELETE", "true"), ("XFER_PUSH_MAX_DELETE", "2")];
    let refused = push(&overrides, &[]);
    assert_eq!(refused.status.code(), Some(2), "XFER_PUSH_* ignored: {}", text(&refused));
    assert!(dest.join("x").exists(), "a refused run deleted");
    let allowed = push(&overrides, &["--max-delete", "3"]);
    assert!(allowed.status.success(), "the command line did not win: {}", text(&allowed));
    assert!(!dest.join("x").exists() && !dest.join("z").exists(), "XFER_PUSH_DELETE=true was not applied");

    for (name, value) in
        [("XFER_PUSH_MAX_DELETE", "lots"), ("XFER_PUSH_MAX_DELET", "1"), ("XFER_DEFAULTS_BWLIMIT", "fast")]
    {
        let bad = push(&[open[0], (name, value)], &[]);
        assert_eq!(bad.status.code(), Some(2), "{name}={value}: {}", text(&bad));
        assert!(String::from_utf8_lossy(&bad.stderr).contains(name), "{name} not named: {}", text(&bad));
    }
}

/// The system's config file (/etc/xfer/config.toml; XFER_SYSTEM_CONFIG_DIR
/// here) is read under the user's, whose settings win.
#[test]
fn ops_system_config_is_read_under_the_users() {
    let tmp = TempDir::new().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    let (system, cfg) = (tmp.path().join("etc-xfer"), tmp.path().join("cfg"));
    tree(&src, 2);
    fs::write(src.join("skip.tmp"), b"scratch").unwrap();
    fs::create_dir_all(&system).unwrap();
    fs::create_dir_all(&cfg).unwrap();
    let system_config = "[defaults]\nwindow = \"22:00-06:00\"\n[push]\nexclude = [\"*.tmp\"]\ndelete = true\n";
    fs::write(system.join("config.toml"), system_config).unwrap();
    fs::write(cfg.join("config.toml"), "[defaults]\nwindow = \"08:00-18:00\"\n").unwrap();
    fs::create_dir_all(&dest).unwrap();
    fs::write(dest.join("stale"), b"old").unwrap();
    let clock = tmp.path().join("clock");
    set_clock(&clock, "Wed 12:00");
    let out = Command::new(bin())
        .arg("push")
        .arg(&src)
        .arg(&dest)
        .env("XFER_STATE_DIR", tmp.path().join("state"))
        .env("XFER_CONFIG_DIR", &cfg)
        .env("XFER_SYSTEM_CONFIG_DIR", &system)
        .env("XFER_CLOCK_FILE", &clock)
        .output()
        .unwrap();
    assert!(out.status.success(), "the user's window did not win: {}", text(&out));
    assert!(dest.join("f0").exists());
    assert!(!dest.join("skip.tmp").exists(), "the system config's exclude was not read");
    assert!(!dest.join("stale").exists(), "the system config's delete was not read");
}

/// `xfer serve` under systemd: READY=1 once it listens, WATCHDOG=1 at
/// half $WATCHDOG_USEC (for the pid $WATCHDOG_PID names), STOPPING=1 on
/// SIGTERM, on the socket $NOTIFY_SOCKET names.
#[test]
fn ops_serve_notifies_systemd() {
    let tmp = TempDir::new().unwrap();
    let socket_path = tmp.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let client = identity(&[("HOME", tmp.path())], None);
    // systemd sets WATCHDOG_PID to the service's pid: the shell's, kept by exec.
    let mut server = Command::new("/bin/sh")
        .args(["-c", r#"export WATCHDOG_PID=$$; exec "$0" "$@""#])
        .arg(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--allow", &client, "--root"])
        .arg(tmp.path().join("served"))
        .env_clear()
        .env("PATH", BARE_PATH)
        .env("CONFIGURATION_DIRECTORY", tmp.path().join("etc"))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut messages = Vec::new();
    let next = || {
        let mut buf = [0u8; 4096];
        match socket.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => String::from(if e.kind() == std::io::ErrorKind::WouldBlock { "(timed out)" } else { "(error)" }),
        }
    };
    messages.push(next());
    let ready = messages[0].lines().any(|l| l == "READY=1");
    messages.push(next());
    let watchdog = messages[1].lines().any(|l| l == "WATCHDOG=1");
    sigterm(&server);
    let stopping = (0..200).map(|_| next()).find(|m| m.lines().any(|l| l == "STOPPING=1" || l.starts_with('(')));
    let status = finish_status(&mut server, Duration::from_secs(30));
    assert!(ready, "no READY=1 first: {messages:?}");
    assert!(watchdog, "no WATCHDOG=1 after it: {messages:?}");
    assert_eq!(stopping.as_deref().map(str::trim), Some("STOPPING=1"), "no STOPPING=1 on SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(tmp.path().join("etc/identity.key").exists(), "the key is not in CONFIGURATION_DIRECTORY");
}
