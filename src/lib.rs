//! ped: the positive-energy district controller.
//!
//! Rooms (lower never import higher): ground (`time`, `clock`, `units`,
//! `ids`), data in (`config`, `prices`, `registers`, `modbus`, `devices`),
//! decisions, pure (`forecast`, `plan`: the dispatch LP, `allocation`: the
//! ex-post keys and the month solver, `settle`: counters, period energies,
//! the period's keys and the month to date), data out (`ledger`, `dso`,
//! `keys`, `metrics`, `events`, `http`), top (`simulator`, `daemon`,
//! `backtest`). See README, "Architecture", and its checklists for adding a
//! device kind, a DSO format or a plan constraint.

pub mod allocation;
pub mod backtest;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod devices;
pub mod dso;
pub mod events;
pub mod forecast;
pub mod http;
pub mod ids;
pub mod keys;
pub mod ledger;
pub mod metrics;
pub mod modbus;
pub mod plan;
pub mod prices;
pub mod registers;
pub mod settle;
pub mod simulator;
pub mod time;
pub mod units;
