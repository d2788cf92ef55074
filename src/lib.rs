//! xfer moves directory trees between machines and sends only what changed.
//!
//! The core is free of I/O: [`chunk`] cuts byte streams into content-defined
//! chunks, [`manifest`] describes trees, [`plan`] computes what a receiver
//! needs, [`codec`] and [`patch`] encode the chunks it lacks, and [`filter`]
//! decides what a transfer leaves out. The edges touch the world: [`scan`]
//! reads a source tree, [`store`] rebuilds files on the receiving side, and
//! [`engine`] drives a local push.
//!
//! For backup apps, [`Client`] pushes and pulls and [`Server`] embeds a
//! receiver; progress arrives as [`progress::Event`]s, and cancelling
//! [`Options::cancel`] stops a transfer at a commit point:
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use xfer::{Access, Client, Identity, Options, RemoteUrl, Server};
//!
//! let tmp = tempfile::tempdir()?;
//! let (src, served) = (tmp.path().join("src"), tmp.path().join("served"));
//! std::fs::create_dir_all(&src)?;
//! std::fs::write(src.join("hello.txt"), "hello")?;
//!
//! // A server that admits one client, read-write.
//! let client = Client::new(Identity::generate()?);
//! let server_id = Identity::generate()?;
//! let access = Access::allow(&[client.fingerprint()]);
//! let server = Server::start("127.0.0.1:0".parse()?, served.clone(), access, &server_id)?;
//!
//! let url = RemoteUrl { authority: server.local_addr()?.to_string(), path: "backup".into() };
//! let options = Options::new(tmp.path().join("state"));
//! let report = client.push(&src, &url, server.fingerprint(), &options).await?;
//! assert_eq!(report.files_changed, 1);
//! assert_eq!(std::fs::read_to_string(served.join("backup/hello.txt"))?, "hello");
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs, unreachable_pub)]

mod api;
mod crashpoint;
pub mod engine;
pub mod error;
pub mod fs;
pub mod net;
pub mod session;
pub mod throttle;

pub use xfer_core::{adapt, chunk, codec, congestion, filter, hash, manifest, patch, plan, progress, wire};

pub use api::{
    Access, CancellationToken, Client, Congestion, Event, Fingerprint, Identity, Options, Progress, ProgressSink,
    RemoteError, RemoteUrl, Report, Server,
};
pub use error::{Error, Result};
