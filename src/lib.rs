//! xfer moves directory trees between machines and sends only what changed.
//!
//! # Guide
//!
//! A [`Client`] pushes a local tree to a server, or pulls one back, as one
//! [`Identity`]; a [`Server`] serves a directory to the clients its
//! [`Access`] admits. Both ends pin each other's key ([`Fingerprint`]),
//! so a transfer never talks to a stranger. [`Client::push_local`] copies
//! into a local directory with the same protocol and checks, and no keys.
//!
//! Every transfer takes its options as a builder ([`PushOptions`],
//! [`PullOptions`], [`ServerOptions`]) and ends with a [`Report`]: in
//! `Ok` when it ran to the end (some entries may have failed: see
//! [`Report::failed`]), inside the error when it was stopped on purpose,
//! by its cancel token or its window ([`TransferError::report`]). A stop
//! always lands on a commit point: the files received whole are kept, and
//! the next run goes on from there. Progress arrives as [`Event`]s on a
//! [`Progress`] of your own.
//!
//! A push to an embedded server, and back:
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use xfer::{Access, Client, Identity, PullOptions, PushOptions, RemoteUrl, Server, ServerOptions};
//!
//! let tmp = tempfile::tempdir()?;
//! let (src, served) = (tmp.path().join("src"), tmp.path().join("served"));
//! std::fs::create_dir_all(&src)?;
//! std::fs::write(src.join("hello.txt"), "hello")?;
//!
//! // A server that admits one client, read-write.
//! let client = Client::new(Identity::generate()?);
//! let access = Access::allow(&[client.fingerprint()]);
//! let server = Server::start("127.0.0.1:0".parse()?, &Identity::generate()?, ServerOptions::new(&served, access))?;
//!
//! let url = RemoteUrl::parse_checked(&format!("xfer://{}/backup", server.local_addr()?))?;
//! let pushed = client.push(&src, &url, Some(server.fingerprint()), &PushOptions::new(tmp.path().join("state"))).await?;
//! assert_eq!(pushed.files_changed, 1);
//! assert_eq!(std::fs::read_to_string(served.join("backup/hello.txt"))?, "hello");
//!
//! let restored = tmp.path().join("restored");
//! let options = PullOptions::new(tmp.path().join("state"));
//! client.pull(&url, Some(server.fingerprint()), &restored, &options).await?;
//! assert_eq!(std::fs::read_to_string(restored.join("hello.txt"))?, "hello");
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! A cancelled push still reports what it did:
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use xfer::{CancellationToken, Client, PushOptions, TransferError};
//!
//! let tmp = tempfile::tempdir()?;
//! let src = tmp.path().join("src");
//! std::fs::create_dir_all(&src)?;
//! std::fs::write(src.join("a"), "a")?;
//!
//! let cancel = CancellationToken::new();
//! cancel.cancel();
//! let options = PushOptions::new(tmp.path().join("state")).cancel(cancel);
//! match Client::push_local(&src, &tmp.path().join("copy"), &options).await {
//!     Err(e @ TransferError::Cancelled { .. }) => assert!(e.report().is_some()),
//!     other => panic!("expected a cancel, got {other:?}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The `xfer` command line is built on this API alone.
#![deny(missing_docs)]

mod api;
mod crashpoint;
mod error;

pub use api::*;
pub use error::{Error, Result};

/// Declares the edge modules: private to the library, or public and
/// hidden from its documentation with the test-only `internals` feature
/// (integration tests, benches and tools drive them directly). Without it
/// their `pub` re-exports for those callers go unused; dead code is still
/// linted, and what only tests and tools use sits behind the feature.
macro_rules! internal_modules {
    ($($module:ident),+) => {
        $(
            #[cfg(feature = "internals")]
            #[doc(hidden)]
            pub mod $module;
            #[cfg(not(feature = "internals"))]
            #[allow(unreachable_pub, unused_imports)]
            mod $module;
        )+
    };
}

internal_modules!(fs, net, session, usecase);

#[cfg(not(feature = "internals"))]
use xfer_core::{adapt, chunk, codec, congestion, filter, hash, manifest, pacing, patch, plan, progress};
#[cfg(feature = "internals")]
#[doc(hidden)]
pub use xfer_core::{
    adapt, chunk, codec, congestion, filter, hash, manifest, pacing, patch, plan, progress, retention, wire,
};
