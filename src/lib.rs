//! ped: the positive-energy district controller.
//!
//! Rooms (lower never import higher): ground (`time`, `units`, `ids`), data in
//! (`config`, `registers`, `modbus`, `devices`), decisions (`forecast`, `plan`,
//! `allocation`), data out (`ledger`, `dso`, `metrics`, `http`), top
//! (`simulator`, `daemon`). See README, "Architecture".

pub mod clock;
pub mod config;
pub mod daemon;
pub mod simulator;
pub mod devices;
pub mod http;
pub mod metrics;
pub mod ids;
pub mod modbus;
pub mod registers;
pub mod time;
pub mod units;
