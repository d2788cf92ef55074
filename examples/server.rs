//! An embedded server: serves a directory to the clients named on the
//! command line, with a bandwidth cap and an audit log, until Ctrl-C,
//! then stops each session at its next commit point.
//!
//! ```sh
//! cargo run --example server -- /tmp/served 127.0.0.1:7878 CLIENT_FINGERPRINT...
//! ```

use std::time::Duration;

use xfer::{Access, Fingerprint, Identity, Rate, Server, ServerOptions, Timetable};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, listen, clients @ ..] = args.as_slice() else {
        return Err("usage: server ROOT HOST:PORT CLIENT_FINGERPRINT...".into());
    };
    let clients = clients.iter().map(|c| c.parse()).collect::<Result<Vec<Fingerprint>, _>>()?;
    let identity = Identity::load_or_create(&std::env::temp_dir().join("xfer-server-identity"))?;
    let options = ServerOptions::new(root, Access::allow(&clients))
        // 10 MB/s for everyone together, off at night.
        .bwlimit_total("08:00,10M 22:00,off".parse::<Timetable>()?)
        .bwlimit(Rate(None))
        .max_sessions(8)
        .idle_timeout(Duration::from_secs(30))
        .audit_log_in_root();
    let server = Server::start(listen.parse()?, &identity, options)?;
    println!("serving {root} on {} as {}", server.local_addr()?, server.fingerprint());
    tokio::signal::ctrl_c().await?;
    if !server.stop(Duration::from_secs(10)).await {
        println!("some sessions were still running after 10 s and were closed");
    }
    Ok(())
}
