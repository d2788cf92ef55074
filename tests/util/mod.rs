//! Test helpers: an in-memory tree model, seeded data, and trees on disk.

#![allow(dead_code)]

pub mod backend;
pub mod pair;
pub mod raw;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use xfer::chunk::digest_bytes;
use xfer::manifest::{Entry, EntryKind, Manifest, Meta, Mtime, RelPath};

/// Pseudo-random bytes, the same for the same seed; a shorter run is a
/// prefix of a longer one.
pub fn seeded(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0; len];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// One node of a model tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32, mtime: i64 },
    File { data: Vec<u8>, mode: u32, mtime: i64 },
    Symlink { target: Vec<u8>, mtime: i64 },
}

/// A tree as a sorted map from path to node; every parent is a `Dir`.
pub type Model = BTreeMap<RelPath, Node>;

pub fn rel(path: &[u8]) -> RelPath {
    RelPath::new(path.to_vec()).expect("test paths are valid")
}

/// The manifest the model describes.
pub fn manifest_of(model: &Model) -> Manifest {
    let entries = model
        .iter()
        .map(|(path, node)| {
            let (meta, kind) = match node {
                Node::Dir { mode, mtime } => (meta(*mode, *mtime), EntryKind::Dir),
                Node::File { data, mode, mtime } => (meta(*mode, *mtime), EntryKind::File(digest_bytes(data))),
                Node::Symlink { target, mtime } => (meta(0, *mtime), EntryKind::Symlink { target: target.clone() }),
            };
            Entry { path: path.clone(), meta, kind }
        })
        .collect();
    Manifest::new(entries).expect("model trees are well formed")
}

/// The model's regular files and their bytes.
pub fn file_contents(model: &Model) -> std::collections::HashMap<RelPath, Vec<u8>> {
    model
        .iter()
        .filter_map(|(p, n)| match n {
            Node::File { data, .. } => Some((p.clone(), data.clone())),
            _ => None,
        })
        .collect()
}

/// Removes `path` and everything below it from the model.
pub fn remove_subtree(model: &mut Model, path: &RelPath) {
    model.retain(|p, _| p != path && !p.is_inside(path));
}

/// A tree's `manifest` as a model, every file's bytes read through
/// `reader` (which verifies them); models hold no hard links.
pub fn model_from<R: xfer::session::ChunkReader>(manifest: &Manifest, reader: &mut R) -> Model
where
    R::Error: std::fmt::Debug,
{
    let mut model = Model::new();
    for entry in manifest.entries() {
        let (mode, mtime) = (entry.meta.mode, entry.meta.mtime.secs);
        let node = match &entry.kind {
            EntryKind::Dir => Node::Dir { mode, mtime },
            EntryKind::Symlink { target } => Node::Symlink { target: target.clone(), mtime },
            EntryKind::File(digest) => {
                let mut data = Vec::new();
                let mut offset = 0;
                for chunk in &digest.chunks {
                    data.extend(reader.read(&entry.path, offset, *chunk).unwrap());
                    offset += u64::from(chunk.len);
                }
                Node::File { data, mode, mtime }
            }
            EntryKind::HardLink { .. } => panic!("models hold no hard links"),
        };
        model.insert(entry.path.clone(), node);
    }
    model
}

pub fn meta(mode: u32, mtime: i64) -> Meta {
    Meta::basic(mode, Mtime { secs: mtime, nanos: 0 })
}

/// Writes the model under `root` (which must exist and be empty).
pub fn materialize(model: &Model, root: &Path) {
    for (path, node) in model {
        let abs = path.to_path(root);
        match node {
            Node::Dir { .. } => fs::create_dir(&abs).unwrap(),
            Node::File { data, mode, mtime } => {
                fs::write(&abs, data).unwrap();
                fs::set_permissions(&abs, fs::Permissions::from_mode(*mode)).unwrap();
                filetime::set_file_mtime(&abs, filetime::FileTime::from_unix_time(*mtime, 0)).unwrap();
            }
            Node::Symlink { target, mtime } => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &abs).unwrap();
                let t = filetime::FileTime::from_unix_time(*mtime, 0);
                filetime::set_symlink_file_times(&abs, t, t).unwrap();
            }
        }
    }
    // Directory modes and mtimes last, deepest first, as content changes them.
    for (path, node) in model.iter().rev() {
        if let Node::Dir { mode, mtime } = node {
            let abs = path.to_path(root);
            fs::set_permissions(&abs, fs::Permissions::from_mode(*mode)).unwrap();
            filetime::set_file_mtime(&abs, filetime::FileTime::from_unix_time(*mtime, 0)).unwrap();
        }
    }
}

/// Reads the tree under `root` back into a model (no xfer code involved).
pub fn read_tree(root: &Path) -> Model {
    let mut model = Model::new();
    read_dir_into(root, &RelPath::root(), &mut model);
    model
}

fn read_dir_into(dir: &Path, rel_dir: &RelPath, model: &mut Model) {
    use std::os::unix::fs::MetadataExt;
    for dirent in fs::read_dir(dir).unwrap() {
        let dirent = dirent.unwrap();
        let rel = rel_dir.join(dirent.file_name().as_bytes()).unwrap();
        let meta = fs::symlink_metadata(dirent.path()).unwrap();
        let node = if meta.is_dir() {
            read_dir_into(&dirent.path(), &rel, model);
            Node::Dir { mode: meta.mode() & 0o7777, mtime: meta.mtime() }
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(dirent.path()).unwrap().as_os_str().as_bytes().to_vec();
            Node::Symlink { target, mtime: meta.mtime() }
        } else {
            Node::File { data: fs::read(dirent.path()).unwrap(), mode: meta.mode() & 0o7777, mtime: meta.mtime() }
        };
        model.insert(rel, node);
    }
}

/// Asserts two models are equal, naming the first difference.
pub fn assert_same_tree(actual: &Model, expected: &Model) {
    for (path, node) in expected {
        match actual.get(path) {
            None => panic!("{path} missing"),
            Some(got) if got != node => panic!("{path} differs: {}", describe(got, node)),
            _ => {}
        }
    }
    for path in actual.keys() {
        assert!(expected.contains_key(path), "{path} should not exist");
    }
}

fn describe(got: &Node, want: &Node) -> String {
    match (got, want) {
        (Node::File { data: a, mode: ma, mtime: ta }, Node::File { data: b, mode: mb, mtime: tb }) => {
            format!("len {} vs {}, same bytes {}, mode {ma:o} vs {mb:o}, mtime {ta} vs {tb}", a.len(), b.len(), a == b)
        }
        _ => format!("{got:?} vs {want:?}"),
    }
}

/// Starts `xfer serve` on loopback for `root`, admitting the client whose
/// fingerprint is `client`, with its own config in `server_cfg`; returns
/// the process, its address and its fingerprint, read from the line it
/// prints first ("xfer: serving ROOT on ADDR as FINGERPRINT").
pub fn spawn_server(client: &str, server_cfg: &Path, root: &Path) -> (std::process::Child, String, String) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut server = Command::new(assert_cmd::cargo::cargo_bin("xfer"))
        .args(["serve", "--listen", "127.0.0.1:0", "--allow", client, "--config-dir"])
        .arg(server_cfg)
        .arg("--root")
        .arg(root)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stderr.take().unwrap()).read_line(&mut line).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    let (addr, fingerprint) = (words[words.len() - 3].to_string(), words[words.len() - 1].to_string());
    (server, addr, fingerprint)
}

/// `xfer serve` on loopback for `TMP/served`, its config in
/// `TMP/server-cfg` (see [`spawn_server`]); killed when dropped.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: String,
    pub fingerprint: String,
    pub root: std::path::PathBuf,
}

impl ServerProcess {
    /// Serves `tmp/served`, admitting the client whose fingerprint is `client`.
    pub fn start(client: &str, tmp: &Path) -> ServerProcess {
        let root = tmp.join("served");
        let (child, addr, fingerprint) = spawn_server(client, &tmp.join("server-cfg"), &root);
        ServerProcess { child, addr, fingerprint, root }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to `limit` for `child`; kills it past that.
pub fn wait_within(child: &mut std::process::Child, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Whether the tests run as root (`/proc/self` belongs to the effective user).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Runs `cmd` as the unprivileged user `nobody` (root reads anything, so
/// permission errors need another user); `None` when that is impossible.
pub fn as_nobody(cmd: &std::process::Command) -> Option<std::process::Command> {
    use std::process::Command;
    if !is_root() {
        return Some(clone(cmd, None));
    }
    Command::new("setpriv").arg("--version").output().ok()?;
    Some(clone(cmd, Some(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])))
}

fn clone(cmd: &std::process::Command, prefix: Option<[&str; 4]>) -> std::process::Command {
    use std::process::Command;
    let mut out = match prefix {
        Some(p) => {
            let mut c = Command::new(p[0]);
            c.args(&p[1..]).arg(cmd.get_program());
            c
        }
        None => Command::new(cmd.get_program()),
    };
    out.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            out.env(k, v);
        }
    }
    out
}
