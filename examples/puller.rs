//! Pulling a tree from a server with a progress line per file, cancelled
//! by Ctrl-C or after a time limit: the files received whole are kept,
//! and the report says what was done.
//!
//! ```sh
//! cargo run --example puller -- xfer://127.0.0.1:7878/backup FINGERPRINT /tmp/restore [SECONDS]
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use xfer::{CancellationToken, Client, Event, Identity, Progress, PullOptions, RemoteUrl, TransferError};

/// Prints each file as it starts and ends (called from the transfer's
/// threads: it only prints).
struct Lines;

impl Progress for Lines {
    fn event(&self, event: &Event) {
        match event {
            Event::FileStarted { path, size } => println!("  receiving {path} ({size} bytes)"),
            Event::FileDone { path } => println!("  done      {path}"),
            _ => {}
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, server, dest, rest @ ..] = args.as_slice() else {
        return Err("usage: puller xfer://HOST:PORT/PATH FINGERPRINT DEST [SECONDS]".into());
    };
    let url = RemoteUrl::parse_checked(url)?;
    let state = std::env::temp_dir().join("xfer-puller-state");
    let client = Client::new(Identity::load_or_create(&state.join("identity"))?);
    println!("this client is {} (allow it on the server)", client.fingerprint());

    let cancel = CancellationToken::new();
    let options = PullOptions::new(&state).progress(Arc::new(Lines)).cancel(cancel.clone());
    let limit = rest.first().map(|s| s.parse()).transpose()?.map(Duration::from_secs);
    tokio::spawn(async move {
        match limit {
            Some(limit) => tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = tokio::time::sleep(limit) => {}
            },
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        cancel.cancel();
    });

    match client.pull(&url, Some(server.parse()?), &PathBuf::from(dest), &options).await {
        Ok(report) => println!("{} files written, {:.2} s", report.files_changed, report.elapsed_s),
        Err(e @ (TransferError::Cancelled { .. } | TransferError::WindowClosed { .. })) => {
            let report = e.report().expect("a stopped transfer has a report");
            println!("{e}\n{} wire bytes received in {:.2} s", report.wire_bytes_received, report.elapsed_s);
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
