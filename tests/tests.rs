//! xfer's integration tests: one binary, one module per area.

mod util;

mod api;
mod atomic_replace;
mod cli;
mod cli_schedule;
mod congestion_opt;
mod crash;
mod delete_safety;
mod footguns;
mod fuzz_regressions;
mod hardlinks;
mod history;
mod history_backends;
mod history_store;
mod history_wire;
mod hostile;
mod local_faults;
mod locks_signals;
mod metadata;
mod never_lose;
mod pipelining;
mod plan_model;
mod push;
mod ransomware;
mod remote;
mod restore_stream;
mod resume;
mod retention_schedule;
mod session;
mod shared_index;
mod sparse_readonly;
mod store_mode;
mod transport;
