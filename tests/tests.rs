//! xfer's integration tests: one binary, one module per area.

mod util;

mod cli;
mod hostile;
mod plan_model;
mod push;
mod remote;
mod session;
mod transport;
