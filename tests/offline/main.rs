//! Offline checks in one test binary (no simulator, no daemon): the
//! settlement grid against the data set's DST days, `ped audit verify` on a
//! ledger file, and `ped plan` dumping and replaying instances. Test names
//! carry their module (`dst_data::…`, `ledger_cli::…`, `plan_cli::…`).

#[path = "../common/mod.rs"]
mod common;

mod dst_data;
mod ledger_cli;
mod plan_cli;
