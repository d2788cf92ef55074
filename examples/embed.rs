//! Embedding xfer in a backup app: push a tree into a local directory
//! through the library, printing progress events as they come.
//!
//! ```sh
//! cargo run --example embed -- ./src /tmp/embed-copy
//! ```

use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use xfer::{Client, Event, Options, ProgressSink};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let src = PathBuf::from(args.next().unwrap_or_else(|| "src".into()));
    let dest =
        PathBuf::from(args.next().unwrap_or_else(|| std::env::temp_dir().join("xfer-embed").display().to_string()));

    // Events arrive on a bounded channel; a thread prints them.
    let (events, received) = mpsc::sync_channel::<Event>(1024);
    let printer = std::thread::spawn(move || {
        for event in received {
            match event {
                Event::Scanned { files, bytes } => println!("scanned {files} files, {bytes} bytes"),
                Event::Planned { files, bytes } => println!("to write: {files} files, {bytes} bytes"),
                Event::FileStarted { path, size } => println!("  {path} ({size} bytes)"),
                Event::Chunk { .. } => {}
                other => println!("{other:?}"),
            }
        }
    });

    let mut options = Options::new(std::env::temp_dir().join("xfer-embed-state"));
    options.progress = ProgressSink::new(Arc::new(events));
    let report = Client::push_local(&src, &dest, &options).await?;
    drop(options);
    let _ = printer.join();
    println!(
        "{} files written, {} chunk bytes sent, {} wire bytes, {:.2} s",
        report.files_changed, report.bytes_sent, report.wire_bytes_sent, report.elapsed_s
    );
    Ok(())
}
