//! Keys for the DSO: the `ped keys` job from the DSO's load curves
//! ([`job`]), the archive of its files in the ledger ([`archive`]), the
//! key-file format the daemon and `ped keys` both write ([`format`]), and
//! what is read back from a run's output: the DSO's settlement against it
//! ([`reconcile`]) and each participant's statement ([`statement`]).
//!
//! The dependencies point one way: `keys` uses `dso` (file layouts, load
//! curves) and `ledger` (versions, outbox); neither of them uses `keys`.

pub mod archive;
pub mod format;
pub mod job;
pub mod reconcile;
pub mod statement;

pub use format::KeyFileFormat;
pub use job::*;
