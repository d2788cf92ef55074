//! What the fuzz targets (`tests/fuzz/`, `protocol/fuzz/`, run by
//! `scripts/fuzz.sh`) found in the receiving session, each replayed as the
//! message sequence that showed it, against a receiver writing into a real
//! destination. (Parser findings are unit tests next to the parsers.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;
use xfer::chunk::digest_bytes;
use xfer::fs::scan::TEMP_PREFIX;
use xfer::fs::store::MirrorStore;
use xfer::session::{OpenRequest, SessionError};

use xfer::fs::store::MirrorReceiver as Receiver;
use xfer_protocol::{msg, Message, PROTOCOL_VERSION};

use crate::util::seeded;

/// A receiver past `Hello` and `Open`, writing into `dest`, with what it
/// sent so far drained.
fn opened(dest: &Path, state: &Path) -> Receiver {
    let (dest, state) = (dest.to_path_buf(), state.to_path_buf());
    let mut receiver = Receiver::new(Box::new(move |_: &OpenRequest| {
        MirrorStore::open(&dest, &state).map(xfer::fs::store::Receiving::new).map_err(SessionError::from)
    }));
    let hello = msg::Hello { version: PROTOCOL_VERSION, features: 0, agent: "test".into() };
    receiver.handle(Message::Hello(hello)).unwrap();
    let open = crate::util::pair::open_root_push();
    receiver.handle(Message::Open(open)).unwrap();
    sent(&mut receiver);
    receiver
}

fn sent(receiver: &mut Receiver) -> Vec<Message> {
    std::iter::from_fn(|| receiver.poll_transmit()).collect()
}

/// A `WriteFile` for `data` at `path` with its full chunk list.
fn write_file(file: u32, path: &[u8], data: &[u8]) -> Message {
    let digest = digest_bytes(data);
    Message::WriteFile(msg::WriteFile {
        file,
        path: path.to_vec(),
        mode: 0o644,
        mtime: msg::Mtime { secs: 1, nanos: 0 },
        size: digest.size,
        hash: digest.hash.0,
        params: xfer::wire::params_to_wire(digest.params),
        list: msg::ChunkList::Full(digest.chunks.iter().map(xfer::wire::chunk_to_wire).collect()),
        more: false,
        attrs: Default::default(),
    })
}

/// The name of the receiver's `serial`-th temporary in this process.
fn temp_name(serial: u64) -> Vec<u8> {
    let mut name = TEMP_PREFIX.to_vec();
    name.extend_from_slice(format!("{}.{serial}", std::process::id()).as_bytes());
    name
}

fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dirent in fs::read_dir(dir).unwrap() {
        let path = dirent.unwrap().path();
        if path.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(TEMP_PREFIX)) {
            found.push(path.clone());
        }
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            found.extend(temporaries(&path));
        }
    }
    found
}

/// The session target left a directory named like a receiver temporary
/// behind (next test); the same names for a file were worse: a sender wrote
/// a file under the name the receiver was about to give the next file's
/// temporary. The commit renamed the first temporary over the second, then
/// the second (now holding the first file's bytes) into place: `b` ended up
/// empty, its declared content lost. Names of the temporaries' namespace
/// are now refused, as a scan never reports one.
#[test]
fn fuzz_file_named_like_a_temporary_cannot_replace_another() {
    let tmp = TempDir::new().unwrap();
    let (dest, state) = (tmp.path().join("dest"), tmp.path().join("state.redb"));
    let mut receiver = opened(&dest, &state);
    // The first file's temporary is serial 1; it is named like serial 2.
    receiver.handle(write_file(0, &temp_name(2), b"")).unwrap();
    let data = seeded(3000, 1);
    receiver.handle(write_file(1, b"b", &data)).unwrap();
    let needs: Vec<msg::NeedChunk> = sent(&mut receiver)
        .into_iter()
        .filter_map(|m| match m {
            Message::NeedChunk(need) => Some(need),
            _ => None,
        })
        .collect();
    assert_eq!(needs.len(), 1, "{needs:?}");
    let chunk = msg::ChunkData { file: 1, index: 0, codec: msg::CODEC_RAW, decoded_len: 3000, payload: data.clone() };
    receiver.handle(Message::ChunkData(chunk)).unwrap();
    receiver.handle(Message::Done(msg::Done)).unwrap();
    assert!(receiver.is_finished());
    let refused: Vec<&str> = receiver.failed().iter().map(|f| f.path.as_str()).collect();
    assert_eq!(refused, [String::from_utf8_lossy(&temp_name(2))], "{:?}", receiver.failed());
    assert!(receiver.failed()[0].error.contains("temporaries"), "{:?}", receiver.failed());
    drop(receiver);
    assert_eq!(fs::read(dest.join("b")).unwrap(), data, "b does not hold its declared content");
    assert!(temporaries(&dest).is_empty(), "{:?}", temporaries(&dest));
}

/// Found by the session target: a directory (or symlink) under a
/// temporary's name was created, then hidden from every scan (which skips
/// such names) and never removed. Now refused like a file.
#[test]
fn fuzz_directory_named_like_a_temporary_is_refused() {
    let tmp = TempDir::new().unwrap();
    let (dest, state) = (tmp.path().join("dest"), tmp.path().join("state.redb"));
    let mut receiver = opened(&dest, &state);
    let mtime = msg::Mtime { secs: 1, nanos: 0 };
    let mut nested = b"d/".to_vec();
    nested.extend_from_slice(&temp_name(1));
    receiver
        .handle(Message::Mkdir(msg::Mkdir { path: b"d".to_vec(), mode: 0o755, mtime, attrs: Default::default() }))
        .unwrap();
    receiver
        .handle(Message::Mkdir(msg::Mkdir { path: temp_name(1), mode: 0o755, mtime, attrs: Default::default() }))
        .unwrap();
    let symlink = msg::Symlink { path: nested.clone(), target: b"..".to_vec(), mtime, attrs: Default::default() };
    receiver.handle(Message::Symlink(symlink)).unwrap();
    receiver.handle(Message::Done(msg::Done)).unwrap();
    assert!(receiver.is_finished());
    assert_eq!(receiver.failed().len(), 2, "{:?}", receiver.failed());
    drop(receiver);
    assert!(dest.join("d").is_dir());
    assert!(temporaries(&dest).is_empty(), "{:?}", temporaries(&dest));
}

/// Found by reading the receiver while extending the session target to a
/// file size limit (the target now runs under RLIMIT_FSIZE and can forge a
/// file past it, to reach this path): a file whose
/// temporary failed while the receiver copied in its local chunks (here: a
/// full disk) had already joined the batch, and salvaging the failed
/// session renamed the half-built temporary into place. Now it is removed
/// and never renamed. Needs root (a size-limited tmpfs mounted by the test).
#[test]
fn fuzz_file_failing_while_built_is_never_installed() {
    let tmp = TempDir::new().unwrap();
    let mnt = tmp.path().join("small");
    fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "xfer-test"])
        .arg(&mnt)
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).output();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let old = seeded(700 << 10, 7);
    fs::write(mnt.join("old"), &old).unwrap();
    let mut receiver = opened(&mnt, &tmp.path().join("state.redb"));
    // Twice the old file: every chunk is local, and copying them in fills
    // the disk halfway through.
    let doubled = [old.clone(), old.clone()].concat();
    let result = receiver.handle(write_file(0, b"new", &doubled));
    let err = result.expect_err("the disk is full");
    assert!(err.to_string().to_lowercase().contains("no space"), "{err}");
    // What the transport does after any session error.
    receiver.salvage();
    drop(receiver);
    assert!(!mnt.join("new").exists(), "a half-built file was installed");
    assert_eq!(fs::read(mnt.join("old")).unwrap(), old);
    assert!(temporaries(&mnt).is_empty(), "{:?}", temporaries(&mnt));
}
