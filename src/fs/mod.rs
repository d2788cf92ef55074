//! The filesystem edge: reading a source tree ([`scan`], [`reader`]) and rebuilding
//! one on the receiving side ([`store`]), with the state each keeps.

pub mod dirs;
pub mod history;
pub mod ignore;
pub mod meta;
pub mod reader;
pub mod scan;
pub mod state_dir;
pub mod store;
