//! Keys for the DSO: the `ped keys` job from the DSO's load curves
//! ([`job`], the outline, with its steps in `input.rs`, `allocate.rs`,
//! `month.rs`, `output.rs`, `manifest.rs` and `validate.rs`), the archive
//! of its files in the ledger ([`archive`]), the key-file format the daemon
//! and `ped keys` both write ([`format`]), and what is read back from a
//! run's output: the DSO's settlement against it ([`reconcile`]) and each
//! participant's statement ([`statement`]).
//!
//! The dependencies point one way: `keys` uses `dso` (file layouts, load
//! curves) and `ledger` (versions, outbox); neither of them uses `keys`.

mod allocate;
pub mod archive;
pub mod format;
mod input;
pub mod job;
mod manifest;
mod month;
mod output;
pub mod reconcile;
pub mod statement;
#[cfg(test)]
mod tests;
mod validate;

pub use format::KeyFileFormat;
pub use job::*;
