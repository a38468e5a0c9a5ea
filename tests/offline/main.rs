//! Offline checks in one test binary (no simulator, no daemon): the
//! settlement grid against the data set's DST days, and `ped audit verify`
//! on a ledger file. Each module was once its own binary; their test names
//! are kept under the module name (`dst_data::…`, `ledger_cli::…`).

mod dst_data;
mod ledger_cli;
