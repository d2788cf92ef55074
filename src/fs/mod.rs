//! The filesystem edge: reading a source tree ([`scan`]) and rebuilding
//! one on the receiving side ([`store`]), with the state each keeps.

pub mod ignore;
pub mod scan;
pub mod store;
