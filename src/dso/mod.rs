//! DSO file formats, one module per format, so a layout can change without
//! touching the allocation that produced the keys.

pub mod channels;
pub mod delivery;
pub mod enedis;
pub mod loadcurve;
pub mod spain;

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

/// The records of a `;`-separated text (the DSO's and ped's own CSV files),
/// each with its 1-based line number, fields trimmed, blank lines skipped,
/// a byte-order mark ignored; `comment` starts a line to skip. A record the
/// reader cannot take (e.g. not UTF-8) comes back as its error text.
pub fn semicolon_records(
    text: &str,
    comment: Option<u8>,
) -> impl Iterator<Item = (usize, Result<csv::StringRecord, String>)> + '_ {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // The reader's own line count leaves out the blank and comment lines it
    // skips: lines are counted from each record's byte offset instead.
    let (mut seen_byte, mut seen_line) = (0usize, 1usize);
    let bytes = text.as_bytes();
    let mut line_at = move |byte: usize| {
        // A record's offset is where the reader started: before the empty
        // and comment lines it skipped on the way.
        let mut byte = byte.min(text.len());
        loop {
            let rest = &bytes[byte..];
            let skip = if rest.starts_with(b"\n") {
                1
            } else if rest.starts_with(b"\r\n") {
                2
            } else if comment.is_some() && rest.first() == comment.as_ref() {
                rest.iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |k| k + 1)
            } else {
                0
            };
            if skip == 0 {
                break;
            }
            byte += skip;
        }
        if byte >= seen_byte {
            seen_line += bytes[seen_byte..byte]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            seen_byte = byte;
        }
        seen_line
    };
    csv::ReaderBuilder::new()
        .delimiter(b';')
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(comment)
        .from_reader(text.as_bytes())
        .into_records()
        .map(move |r| match r {
            Ok(rec) => (
                line_at(rec.position().map_or(0, |p| p.byte() as usize)),
                Ok(rec),
            ),
            Err(e) => (
                line_at(e.position().map_or(0, |p| p.byte() as usize)),
                Err(e.to_string()),
            ),
        })
}

/// One step of keys: the step's UTC start and one integer key per consumer,
/// in units of an [`crate::allocation::Precision`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub start: DateTime<Utc>,
    pub units: Vec<u32>,
}

#[cfg(test)]
mod record_tests {
    use super::semicolon_records;

    /// Line numbers are the file's, across a BOM, blank lines, comments and
    /// a quoted field holding a line break.
    #[test]
    fn records_keep_their_line_numbers() {
        let text = "\u{feff}PRM;CUPS\n\n# a comment\n 1 ; ES1 \n\"a\nb\";c\n2;ES2";
        let got: Vec<(usize, Vec<String>)> = semicolon_records(text, Some(b'#'))
            .map(|(l, r)| (l, r.unwrap().iter().map(str::to_string).collect()))
            .collect();
        assert_eq!(
            got,
            [
                (1, vec!["PRM".to_string(), "CUPS".to_string()]),
                (4, vec!["1".to_string(), "ES1".to_string()]),
                (5, vec!["a\nb".to_string(), "c".to_string()]),
                (7, vec!["2".to_string(), "ES2".to_string()]),
            ]
        );
    }
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
