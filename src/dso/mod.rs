//! DSO file formats, one module per format, so a layout can change without
//! touching the allocation that produced the keys.

pub mod channels;
pub mod delivery;
pub mod enedis;
pub mod loadcurve;
pub mod reconcile;
pub mod spain;
pub mod statement;

use chrono::{DateTime, Utc};

/// Whether `name` can become a file name inside an output folder as it is:
/// letters, digits, `.`, `_`, `-`, at most 100 of them, not starting with a
/// dot. So no separator, no `..`, no hidden file: a participant id from a
/// manifest or a CAU on the command line can never write outside `--out`.
pub fn is_plain_file_stem(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// One step of keys: the step's UTC start and one integer key per consumer,
/// in units of an [`crate::allocation::Precision`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub start: DateTime<Utc>,
    pub units: Vec<u32>,
}

#[cfg(test)]
mod name_tests {
    #[test]
    fn only_plain_stems_pass() {
        for ok in ["FLAT-1", "ES0031405712345678JY1A000", "a.b_c"] {
            assert!(super::is_plain_file_stem(ok), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "/etc/x",
            "a\0b",
            "é",
            &"x".repeat(101),
        ] {
            assert!(!super::is_plain_file_stem(bad), "{bad}");
        }
    }
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
