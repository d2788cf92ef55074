//! The I/O-free core of xfer: everything that decides what to send and how,
//! with no files, sockets, clock or runtime. The `xfer` crate's edges feed it
//! bytes and times and carry out what it decides.
//!
//! [`chunk`] cuts byte streams into content-defined chunks, [`hash`] names
//! them, [`manifest`] describes trees, [`filter`] decides what a transfer
//! leaves out, [`plan`] computes what a receiver needs, [`patch`] and
//! [`codec`] encode the chunks it lacks, [`adapt`] picks a compression
//! level from what the link shows, [`congestion`] paces the sender,
//! [`pacing`] holds bandwidth limits (rates, timetables, windows, a token
//! bucket) with times passed in, and [`wire`] and [`progress`] are the
//! messages and events the sessions exchange. [`fixture`] makes the
//! deterministic bytes of golden fixtures and fuzz inputs.
#![warn(missing_docs, unreachable_pub)]
// Tests may read files and the clock (see clippy.toml).
#![cfg_attr(test, allow(clippy::disallowed_methods, clippy::disallowed_types))]

pub mod adapt;
pub mod calendar;
pub mod chunk;
pub mod codec;
pub mod congestion;
pub mod filter;
pub mod fixture;
pub mod hash;
pub mod history;
pub mod manifest;
pub mod pacing;
pub mod patch;
pub mod plan;
pub mod progress;
pub mod retention;
pub mod session;
pub mod wire;
