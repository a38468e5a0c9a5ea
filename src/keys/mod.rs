//! Keys for the DSO: the `ped keys` job from the DSO's load curves
//! ([`job`]), the archive of its files in the ledger ([`archive`]), and the
//! key-file format the daemon and `ped keys` both write ([`format`]).
//!
//! The dependencies point one way: `keys` uses `dso` (file layouts, load
//! curves) and `ledger` (versions, outbox); neither of them uses `keys`.

pub mod archive;
pub mod format;
pub mod job;

pub use format::KeyFileFormat;
pub use job::*;
