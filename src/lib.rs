//! xfer moves directory trees between machines and sends only what changed.
//!
//! The core is free of I/O: [`chunk`] cuts byte streams into content-defined
//! chunks, [`manifest`] describes trees, [`plan`] computes what a receiver
//! needs, [`codec`] and [`patch`] encode the chunks it lacks. The edges touch
//! the world: [`scan`] reads a source tree, [`store`] rebuilds files on the
//! receiving side, and [`engine`] drives a local push.
#![warn(missing_docs, unreachable_pub)]

pub mod chunk;
pub mod codec;
pub mod engine;
pub mod error;
pub mod hash;
pub mod identity;
pub mod manifest;
pub mod patch;
pub mod plan;
pub mod scan;
pub mod session;
pub mod store;
pub mod throttle;
pub mod transport;
pub mod wire;

pub use error::{Error, Result};
