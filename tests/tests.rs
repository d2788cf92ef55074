//! xfer's integration tests: one binary, one module per area.

mod util;

mod cli;
mod cli_schedule;
mod crash;
mod footguns;
mod fuzz_regressions;
mod hostile;
mod local_faults;
mod plan_model;
mod push;
mod remote;
mod session;
mod transport;
