//! Identifiers validated on parse: PRM (French metering point), device and participant ids.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("PRM `{0}` must be exactly 14 digits (found {1} characters)")]
    PrmLength(String, usize),
    #[error("PRM `{0}` must contain only digits 0-9")]
    PrmDigits(String),
    #[error("identifier `{0}` must be 1-64 characters of A-Z, a-z, 0-9, '-', '_' or '.'")]
    BadId(String),
}

/// A *point de référence mesure*: 14 decimal digits. Kept as a string so leading
/// zeros survive every round trip through files.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Prm(String);

impl Prm {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Prm {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if !s.chars().all(|c| c.is_ascii_digit()) {
            return Err(IdError::PrmDigits(s.to_string()));
        }
        if s.len() != 14 {
            return Err(IdError::PrmLength(s.to_string(), s.len()));
        }
        Ok(Prm(s.to_string()))
    }
}

impl TryFrom<String> for Prm {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Prm> for String {
    fn from(p: Prm) -> String {
        p.0
    }
}

impl fmt::Display for Prm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Device and participant ids appear in metric labels and file names, so they
/// are restricted to a safe alphabet.
pub fn validate_id(s: &str) -> Result<(), IdError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(IdError::BadId(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prm_accepts_14_digits_and_keeps_leading_zeros() {
        let p: Prm = "01234567890123".parse().unwrap();
        assert_eq!(p.as_str(), "01234567890123");
    }

    #[test]
    fn prm_rejects_wrong_length_and_letters() {
        assert!(matches!(
            "1234".parse::<Prm>(),
            Err(IdError::PrmLength(_, 4))
        ));
        assert!(matches!(
            "1234567890123A".parse::<Prm>(),
            Err(IdError::PrmDigits(_))
        ));
    }

    #[test]
    fn ids_are_label_safe() {
        assert!(validate_id("PV-01").is_ok());
        assert!(validate_id("bad id").is_err());
        assert!(validate_id("").is_err());
    }
}
