//! A long link stays full: the receiver keeps as much asked for as its
//! request window holds, files waiting for their chunks hold no file
//! descriptor, and nothing asked for ever exceeds the limits.
//!
//! The pair runs in rounds, each a round trip: the sender's entry changes
//! reach the receiver, the receiver's requests reach the sender, and the
//! sender's answers arrive only in the next round (the link's delay).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use tempfile::TempDir;
use xfer::codec::{Compression, Encoder};
use xfer::fs::scan::{scan, ScanOptions, TEMP_PREFIX};
use xfer::fs::store::MirrorStore;
use xfer::plan::PlanOptions;
use xfer::session::{
    FileReader, Limits, OpenRequest, Sender, SenderConfig, SessionError, MAX_FILES_IN_FLIGHT, MAX_OUTSTANDING_BYTES,
    MAX_OUTSTANDING_CHUNKS, MIN_FILES_IN_FLIGHT,
};

use xfer::fs::store::MirrorReceiver as Receiver;
use xfer_protocol::Message;

use crate::util::{read_tree, seeded};

/// Small incompressible files (~4 KB each on the wire, like a compressed
/// source file), in a few directories.
const FILES: usize = 2000;

fn source(root: &Path) {
    for i in 0..FILES {
        let dir = root.join(format!("d{}", i % 7));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("f{i}")), seeded(4300, i as u64 + 1)).unwrap();
    }
}

/// Temporaries under `dest` this process holds open.
fn open_temps(dest: &Path) -> usize {
    let Ok(fds) = fs::read_dir("/proc/self/fd") else { return 0 };
    fds.filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.starts_with(dest))
        .filter(|target| target.file_name().is_some_and(|name| name.as_encoded_bytes().starts_with(TEMP_PREFIX)))
        .count()
}

/// What the rounds saw: the most files and chunks in flight at once, and
/// the most temporaries held open while files were in flight.
#[derive(Debug, Default)]
struct Seen {
    files: usize,
    chunks: usize,
    open_temps: usize,
    /// Round trips with chunks asked for.
    data_rounds: usize,
}

/// Pushes a fresh tree of [`FILES`] files with the receiver's request
/// window at `window` (none: the transport never measured one).
fn push_in_rounds(window: Option<u64>) -> Seen {
    let tmp = TempDir::new().unwrap();
    let (src, dest, state) = (tmp.path().join("src"), tmp.path().join("dest"), tmp.path().join("state.redb"));
    source(&src);
    let manifest = scan(&src, &HashMap::new(), ScanOptions::default()).unwrap().manifest;
    let encoder = Encoder::new(Compression::Auto).unwrap();
    let options = PlanOptions { delete: true, protect: None, ..Default::default() };
    let mut config = SenderConfig::new(manifest, FileReader::new(src.clone()), encoder);
    config.plan = options;
    let mut sender = Sender::new(config);
    let (d, s) = (dest.clone(), state.clone());
    let mut receiver = Receiver::new(Box::new(move |_: &OpenRequest| {
        MirrorStore::open(&d, &s).map(xfer::fs::store::Receiving::new).map_err(SessionError::from)
    }));
    if let Some(window) = window {
        receiver.set_request_window(window);
    }
    let mut seen = Seen::default();
    let mut answers: Vec<(usize, Message)> = Vec::new();
    let check = |receiver: &Receiver| {
        let (now, limits) = (receiver.in_flight(), receiver.limits());
        assert!(now.files <= limits.files && now.chunks <= limits.chunks, "{now:?} over {limits:?}");
        // One chunk may pass the byte limit (a chunk is always asked for).
        assert!(now.chunks <= 1 || now.bytes <= limits.bytes, "{now:?} over {limits:?}");
        assert!(limits.files <= MAX_FILES_IN_FLIGHT && limits.chunks <= MAX_OUTSTANDING_CHUNKS);
        assert!(limits.bytes <= MAX_OUTSTANDING_BYTES);
    };
    loop {
        let mut progressed = false;
        for (stream, message) in answers.drain(..) {
            receiver.handle_data(stream as u64, message).unwrap();
            check(&receiver);
            progressed = true;
        }
        // The transport sends the receiver's requests as they are made, so
        // its outbox never holds up reading; they reach the sender at the
        // end of the round.
        let mut requests = Vec::new();
        while receiver.wants_input() {
            let Some(message) = sender.poll_transmit() else { break };
            receiver.handle(message).unwrap();
            check(&receiver);
            requests.extend(std::iter::from_fn(|| receiver.poll_transmit()));
            progressed = true;
        }
        let now = receiver.in_flight();
        seen.files = seen.files.max(now.files);
        seen.chunks = seen.chunks.max(now.chunks);
        if now.files > 0 {
            seen.open_temps = seen.open_temps.max(open_temps(&dest));
        }
        seen.data_rounds += usize::from(now.chunks > 0);
        requests.extend(std::iter::from_fn(|| receiver.poll_transmit()));
        for message in requests {
            sender.handle(message).unwrap();
            progressed = true;
        }
        answers.extend(std::iter::from_fn(|| sender.poll_data().unwrap()));
        if !progressed {
            break;
        }
    }
    assert!(sender.is_finished() && receiver.is_finished(), "stalled: {seen:?}");
    assert!(receiver.failed().is_empty(), "{:?}", receiver.failed());
    assert_eq!(read_tree(&dest), read_tree(&src));
    seen
}

#[test]
fn pipelining_window_keeps_more_files_in_flight_than_the_floor() {
    // 2x the BDP of 100 Mbit/s at 150 ms.
    let seen = push_in_rounds(Some(3_750_000));
    assert!(seen.files > MIN_FILES_IN_FLIGHT, "{seen:?}");
    // Once chunk sizes are known the window fills: as many files in flight
    // as it holds (each file is one ~4.3 KB incompressible chunk).
    let holds = Limits::for_window(3_750_000, 1, 4300, 4300).files;
    assert!(seen.files >= holds * 9 / 10, "{seen:?}, the window holds {holds}");
}

#[test]
fn pipelining_floor_keeps_the_old_counts() {
    let seen = push_in_rounds(None);
    assert_eq!(seen.files, MIN_FILES_IN_FLIGHT, "{seen:?}");
    // The floor's files a round trip: it takes FILES / floor round trips of
    // data, a measured window two (the first tells the chunk sizes).
    assert!(seen.data_rounds >= FILES / MIN_FILES_IN_FLIGHT, "{seen:?}");
    let fast = push_in_rounds(Some(3_750_000));
    assert!(fast.data_rounds <= 3, "{fast:?}");
}

#[test]
fn pipelining_files_in_flight_hold_no_descriptor() {
    let seen = push_in_rounds(Some(3_750_000));
    assert_eq!(seen.open_temps, 0, "{seen:?}");
    assert!(seen.files > MIN_FILES_IN_FLIGHT, "{seen:?}");
}

#[test]
fn pipelining_absurd_window_stays_under_the_ceilings() {
    // A transport that measured nonsense: the ceilings hold (`check`
    // asserts them after every message).
    let seen = push_in_rounds(Some(u64::MAX));
    assert!(seen.files <= MAX_FILES_IN_FLIGHT && seen.chunks <= MAX_OUTSTANDING_CHUNKS, "{seen:?}");
    let limits = Limits::for_window(u64::MAX, 1, 1, u64::MAX);
    assert_eq!(
        (limits.files, limits.chunks, limits.bytes),
        (MAX_FILES_IN_FLIGHT, MAX_OUTSTANDING_CHUNKS, MAX_OUTSTANDING_BYTES)
    );
}
