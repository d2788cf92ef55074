//! Where a push's bytes go: runs the push session of `SRC` into `DEST` as
//! an in-memory pair (no sockets) and prints the framed bytes per message
//! kind and direction. A tuning aid for the wire format.
//!
//! ```sh
//! cargo run --release --example wire_breakdown -- SRC DEST STATE_FILE [--remember]
//! ```
//! Run it twice (v1, then v2 into the same DEST) to see a delta.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use xfer::codec::{Compression, Encoder};
use xfer::fs::scan::{scan, ScanOptions};
use xfer::fs::store::{MirrorReceiver as Receiver, MirrorStore, Receiving};
use xfer::plan::PlanOptions;
use xfer::session::pair::{self, Toward};
use xfer::session::{FileReader, OpenRequest, Sender, SenderConfig, SessionError};
use xfer_protocol::{frame, Message};

type Tally = BTreeMap<(&'static str, String), (u64, u64)>;

fn count(tally: &mut Tally, direction: &'static str, message: &Message) {
    let mut bytes = Vec::new();
    frame::encode(message, &mut bytes);
    let entry = tally.entry((direction, format!("{:?}", message.kind()))).or_default();
    entry.0 += 1;
    entry.1 += bytes.len() as u64;
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [src, dest, state, rest @ ..] = args.as_slice() else {
        return Err("usage: wire_breakdown SRC DEST STATE_FILE [--remember]".into());
    };
    let (src, dest, state) = (PathBuf::from(src), PathBuf::from(dest), PathBuf::from(state));
    std::fs::create_dir_all(&dest)?;
    let source = scan(&src, &HashMap::new(), ScanOptions::default())?.manifest;
    let memory = state.with_extension("memory");
    let remembered = if rest.iter().any(|a| a == "--remember") {
        std::fs::read(&memory).ok().and_then(|b| xfer::manifest::Manifest::decode(&b).ok())
    } else {
        None
    };
    let encoder = Encoder::new(Compression::Auto)?;
    let mut config = SenderConfig::new(source.clone(), FileReader::new(src.clone()), encoder);
    config.plan = PlanOptions { delete: true, protect: None, ..Default::default() };
    config.remembered = remembered;
    let mut sender = Sender::new(config);
    let mut receiver = Receiver::new(Box::new(move |_: &OpenRequest| {
        MirrorStore::open(&dest, &state).map(Receiving::new).map_err(SessionError::from)
    }));
    let mut tally = Tally::new();
    pair::run_with(&mut sender, &mut receiver, |toward, message| {
        count(&mut tally, if toward == Toward::Receiver { "up" } else { "down" }, &message);
        message
    })?;
    std::fs::write(&memory, source.encode())?;
    let mut totals = (0, 0);
    for ((direction, kind), (messages, bytes)) in &tally {
        println!("{direction:>4} {kind:<16} {messages:>8} msgs {bytes:>12} B");
        if *direction == "up" {
            totals.0 += bytes;
        } else {
            totals.1 += bytes;
        }
    }
    println!("total up {} B, down {} B", totals.0, totals.1);
    Ok(())
}
