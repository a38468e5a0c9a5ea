//! Settlement, pure: energy counters → energy per settlement period, the
//! period's keys for every operation, and the month-to-date figures that
//! month-aware keys honour. It takes the site and plain values; the daemon
//! feeds it readings and stores, logs and counts what it returns.

mod counters;
mod keys;
mod month;
mod period;

pub use counters::*;
pub use keys::*;
pub use month::*;
pub use period::*;
