//! Push sessions driven as an in-memory pair: every message goes through the
//! frame codec (so limits are checked) and is counted in each direction.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tempfile::TempDir;
use xfer::codec::{Compression, Encoder};
use xfer::manifest::Manifest;
use xfer::plan::PlanOptions;
use xfer::scan::{scan, ScanOptions};
use xfer::session::{FileReader, OpenRequest, Receiver, Sender, SessionError};
use xfer::store::MirrorStore;
use xfer_protocol::frame;

use crate::plan_model::{random_edit, random_tree};
use crate::util::{assert_same_tree, materialize, read_tree, seeded, Model, Node};

#[derive(Default, Debug)]
struct Wire {
    client_to_server: u64,
    server_to_client: u64,
}

fn roundtrip(message: xfer_protocol::Message, counter: &mut u64) -> xfer_protocol::Message {
    let mut bytes = Vec::new();
    frame::encode(&message, &mut bytes);
    *counter += bytes.len() as u64;
    let (decoded, used) = frame::decode(&bytes).expect("valid frame").expect("complete frame");
    assert_eq!(used, bytes.len());
    decoded
}

/// Runs the pair until neither side has anything to say.
fn drive(sender: &mut Sender<FileReader>, receiver: &mut Receiver) -> Result<Wire, SessionError> {
    let mut wire = Wire::default();
    loop {
        let mut progressed = false;
        while let Some(message) = sender.poll_data() {
            receiver.handle(roundtrip(message, &mut wire.client_to_server))?;
            progressed = true;
        }
        while receiver.wants_input() {
            let Some(message) = sender.poll_transmit() else { break };
            receiver.handle(roundtrip(message, &mut wire.client_to_server))?;
            progressed = true;
        }
        while let Some(message) = receiver.poll_transmit() {
            sender.handle(roundtrip(message, &mut wire.server_to_client))?;
            progressed = true;
        }
        if !progressed {
            return Ok(wire);
        }
    }
}

struct Sides {
    _tmp: TempDir,
    src: PathBuf,
    dest: PathBuf,
    state: PathBuf,
}

fn sides() -> Sides {
    let tmp = TempDir::new().unwrap();
    let (src, dest, state) = (tmp.path().join("src"), tmp.path().join("dest"), tmp.path().join("state.redb"));
    fs::create_dir(&src).unwrap();
    Sides { _tmp: tmp, src, dest, state }
}

fn source_manifest(src: &Path) -> Manifest {
    scan(src, &HashMap::new(), ScanOptions::default()).unwrap().manifest
}

/// One push session over the pair; returns the wire counts and what the
/// sender would remember.
fn push(sides: &Sides, remembered: Option<Manifest>) -> (Wire, Manifest) {
    let source = source_manifest(&sides.src);
    let reader = FileReader::new(sides.src.clone());
    let encoder = Encoder::new(Compression::Auto).unwrap();
    let options = PlanOptions { delete: true };
    let mut sender = Sender::new(source.clone(), reader, encoder, Vec::new(), options, false, remembered);
    let (dest, state) = (sides.dest.clone(), sides.state.clone());
    let mut receiver =
        Receiver::new(Box::new(move |_: &OpenRequest| MirrorStore::open(&dest, &state).map_err(SessionError::from)));
    let wire = drive(&mut sender, &mut receiver).unwrap();
    assert!(sender.is_finished() && receiver.is_finished(), "session stalled: {wire:?}");
    assert!(receiver.failed().is_empty(), "{:?}", receiver.failed());
    (wire, source)
}

fn replace_src(sides: &Sides, model: &Model) {
    fs::remove_dir_all(&sides.src).unwrap();
    fs::create_dir(&sides.src).unwrap();
    materialize(model, &sides.src);
}

fn session_push_impl(seed: u64, files: usize, edits: usize) {
    let sides = sides();
    let mut rng = SmallRng::seed_from_u64(seed);
    let v1 = random_tree(&mut rng, files);
    materialize(&v1, &sides.src);
    let (_, remembered) = push(&sides, None);
    assert_same_tree(&read_tree(&sides.dest), &v1);
    let mut v2 = v1.clone();
    for _ in 0..edits {
        random_edit(&mut v2, &mut rng);
    }
    replace_src(&sides, &v2);
    // Without memory (trees compared top-down), then the same with memory
    // from a fresh start.
    push(&sides, None);
    assert_same_tree(&read_tree(&sides.dest), &v2);
    let (noop, _) = push(&sides, Some(source_manifest(&sides.src)));
    assert!(noop.client_to_server + noop.server_to_client < 512, "{noop:?}");
    let _ = remembered;
}

#[test]
fn session_push_cases() {
    for (seed, files, edits) in [(1, 0, 0), (2, 10, 8), (3, 14, 12), (4, 6, 20), (5, 12, 3)] {
        session_push_impl(seed, files, edits);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 16, ..Default::default() })]
    #[test]
    fn session_push_proptest(seed in proptest::prelude::any::<u64>(), files in 0usize..12, edits in 0usize..10) {
        session_push_impl(seed, files, edits);
    }
}

#[test]
fn session_remembered_delta_sends_little() {
    let sides = sides();
    let data = seeded(8 << 20, 21);
    fs::write(sides.src.join("disk.img"), &data).unwrap();
    let (_, remembered) = push(&sides, None);
    let mut edited = data.clone();
    edited[5_000_000..5_000_100].copy_from_slice(&seeded(100, 22));
    fs::write(sides.src.join("disk.img"), &edited).unwrap();
    let (wire, _) = push(&sides, Some(remembered));
    assert_eq!(fs::read(sides.dest.join("disk.img")).unwrap(), edited);
    eprintln!("100-byte overwrite in 8 MiB, remembered: {wire:?}");
    assert!(wire.client_to_server < 1024, "{wire:?}");
    assert!(wire.server_to_client < 1024, "{wire:?}");
}

#[test]
fn session_unchanged_tree_costs_a_handshake() {
    let sides = sides();
    let mut model = Model::new();
    model.insert(crate::util::rel(b"d"), Node::Dir { mode: 0o755, mtime: 1 });
    for i in 0..5000 {
        let path = crate::util::rel(format!("d/f{i:05}").as_bytes());
        model.insert(path, Node::File { data: format!("file {i}").into_bytes(), mode: 0o644, mtime: 1 });
    }
    materialize(&model, &sides.src);
    push(&sides, None);
    // Equal roots: no memory needed.
    let (wire, _) = push(&sides, None);
    eprintln!("noop of 5,000 files: {wire:?}");
    assert!(wire.client_to_server + wire.server_to_client < 512, "{wire:?}");
}

/// A sender that does not follow its plan: writes through a symlinked
/// directory and into the parent are refused, and nothing lands outside.
#[test]
fn session_refuses_paths_that_escape() {
    use xfer_protocol::msg;
    let sides = sides();
    let outside = sides.src.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::create_dir(&sides.dest).unwrap();
    std::os::unix::fs::symlink(&outside, sides.dest.join("evil")).unwrap();
    let (dest, state) = (sides.dest.clone(), sides.state.clone());
    let mut receiver =
        Receiver::new(Box::new(move |_: &OpenRequest| MirrorStore::open(&dest, &state).map_err(SessionError::from)));
    let data = b"payload".to_vec();
    let hash = *blake3::hash(&data).as_bytes();
    let write = |file: u32, path: &[u8]| {
        xfer_protocol::Message::WriteFile(msg::WriteFile {
            file,
            path: path.to_vec(),
            mode: 0o644,
            mtime: msg::Mtime { secs: 1, nanos: 0 },
            size: data.len() as u64,
            hash,
            params: xfer::wire::params_to_wire(xfer::chunk::ChunkParams::for_size(7)),
            list: msg::ChunkList::Implied,
            more: false,
        })
    };
    let hello = msg::Hello { version: xfer_protocol::PROTOCOL_VERSION, features: 0, agent: "test".into() };
    receiver.handle(xfer_protocol::Message::Hello(hello)).unwrap();
    let open = msg::Open {
        direction: msg::Direction::Push,
        path: Vec::new(),
        delete: false,
        checksum: false,
        remembered_root: None,
    };
    receiver.handle(xfer_protocol::Message::Open(open)).unwrap();
    receiver.handle(write(0, b"evil/planted")).unwrap();
    // `..` never even decodes into a path.
    assert!(receiver.handle(write(1, b"../escaped")).is_err());
    assert!(!outside.join("planted").exists());
    assert!(!sides.src.join("escaped").exists());
    assert!(receiver.failed().iter().any(|f| f.path == "evil/planted" && f.error.contains("not a directory")));
}

/// A pull: the client's receiver asks, the server's sender answers; the
/// transport reads the client's Hello and Open before starting the sender.
fn pull(sides: &Sides) -> Wire {
    let store = MirrorStore::open(&sides.dest, &sides.state).unwrap();
    let mut receiver = Receiver::initiate(store, b"tree".to_vec(), true, false).unwrap();
    let mut wire = Wire::default();
    let hello = receiver.poll_transmit().unwrap();
    assert!(matches!(hello, xfer_protocol::Message::Hello(_)));
    let Some(xfer_protocol::Message::Open(open)) = receiver.poll_transmit() else { panic!("Open expected") };
    assert_eq!(open.direction, xfer_protocol::msg::Direction::Pull);
    let source = source_manifest(&sides.src);
    let encoder = Encoder::new(Compression::Auto).unwrap();
    let mut sender = Sender::respond(
        source,
        FileReader::new(sides.src.clone()),
        encoder,
        PlanOptions { delete: open.delete },
        open.remembered_root,
    );
    // The pair as before, with the roles of the directions swapped.
    loop {
        let mut progressed = false;
        while let Some(message) = sender.poll_data() {
            receiver.handle(roundtrip(message, &mut wire.server_to_client)).unwrap();
            progressed = true;
        }
        while receiver.wants_input() {
            let Some(message) = sender.poll_transmit() else { break };
            receiver.handle(roundtrip(message, &mut wire.server_to_client)).unwrap();
            progressed = true;
        }
        while let Some(message) = receiver.poll_transmit() {
            sender.handle(roundtrip(message, &mut wire.client_to_server)).unwrap();
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    assert!(sender.is_finished() && receiver.is_finished(), "pull stalled: {wire:?}");
    wire
}

#[test]
fn session_pull_restores_and_updates() {
    let sides = sides();
    let mut rng = SmallRng::seed_from_u64(31);
    let v1 = random_tree(&mut rng, 12);
    materialize(&v1, &sides.src);
    pull(&sides);
    assert_same_tree(&read_tree(&sides.dest), &v1);
    let mut v2 = v1.clone();
    for _ in 0..10 {
        random_edit(&mut v2, &mut rng);
    }
    replace_src(&sides, &v2);
    pull(&sides);
    assert_same_tree(&read_tree(&sides.dest), &v2);
    let noop = pull(&sides);
    assert!(noop.client_to_server + noop.server_to_client < 512, "{noop:?}");
}
