//! Pushing a tree with the library, printing progress events as they
//! come: to a server (`xfer://HOST:PORT/PATH` and the server's
//! fingerprint, from `xfer id` on the server) or into a local directory.
//!
//! ```sh
//! cargo run --example pusher -- ./src /tmp/pusher-copy
//! cargo run --example pusher -- ./src xfer://127.0.0.1:7878/backup FINGERPRINT
//! ```

use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use xfer::{Client, Event, Identity, PushOptions, RemoteUrl};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let src = PathBuf::from(args.next().unwrap_or_else(|| "src".into()));
    let dest = args.next().unwrap_or_else(|| std::env::temp_dir().join("xfer-pusher").display().to_string());
    let state = std::env::temp_dir().join("xfer-pusher-state");

    // Events arrive on a bounded channel (a full one drops events rather
    // than stall the transfer); a thread prints them.
    let (events, received) = mpsc::sync_channel::<Event>(1024);
    let printer = std::thread::spawn(move || {
        for event in received {
            match event {
                Event::Scanned { files, bytes } => println!("scanned {files} files, {bytes} bytes"),
                Event::Planned { files, bytes } => println!("to write: {files} files, {bytes} bytes"),
                Event::FileStarted { path, size } => println!("  {path} ({size} bytes)"),
                _ => {}
            }
        }
    });

    let options = PushOptions::new(&state).progress(Arc::new(events));
    let report = match RemoteUrl::parse(&dest) {
        Some(url) => {
            let server = args.next().ok_or("give the server's fingerprint after the URL")?.parse()?;
            let client = Client::new(Identity::load_or_create(&state.join("identity"))?);
            println!("this client is {} (allow it on the server)", client.fingerprint());
            client.push(&src, &url, Some(server), &options).await?
        }
        None => Client::push_local(&src, &PathBuf::from(dest), &options).await?,
    };
    drop(options);
    let _ = printer.join();
    println!(
        "{} files written, {} chunk bytes sent, {} wire bytes, {:.2} s",
        report.files_changed, report.bytes_sent, report.wire_bytes_sent, report.elapsed_s
    );
    Ok(())
}
