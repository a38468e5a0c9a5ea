//! DSO file formats, one module per format, so a layout can change without
//! touching the allocation that produced the keys.

pub mod channels;
pub mod delivery;
pub mod enedis;
pub mod keys;
pub mod loadcurve;
pub mod reconcile;
pub mod spain;
pub mod statement;

use chrono::{DateTime, Utc};

/// One step of keys: the step's UTC start and one integer key per consumer,
/// in units of an [`crate::allocation::Precision`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub start: DateTime<Utc>,
    pub units: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum DsoError {
    /// A file (or rows about to become one) breaks the layout; `line` and
    /// `column` are 1-based, `column` counting `;`-separated fields.
    #[error("line {line}, column {column}: {message}")]
    Invalid {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("precision of {0} units per one has no fixed number of percent decimals")]
    Precision(u32),
    #[error("producer PRM {0} appears twice")]
    DuplicateProducer(crate::ids::Prm),
    #[error("nothing to write: {0}")]
    Empty(&'static str),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DsoError {
    pub(crate) fn invalid(line: usize, column: usize, message: impl Into<String>) -> Self {
        DsoError::Invalid {
            line,
            column,
            message: message.into(),
        }
    }
}
