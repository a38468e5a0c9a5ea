//! A fairness rule the allocation could not meet, typed from the solver to
//! whoever reports it; its text (`rule participant amount unit`) is what the
//! manifest, the logs and the CLI show.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The month's fairness rules a solution can fall short of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The floor on the month's share, short in kWh.
    Floor,
    /// Nobody worse off than pro rata over the month, short in EUR.
    ProRata,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Floor => "floor",
            Rule::ProRata => "pro_rata",
        }
    }

    /// The unit the rule's shortfall is measured in.
    pub fn unit(self) -> Unit {
        match self {
            Rule::Floor => Unit::Kwh,
            Rule::ProRata => Unit::Eur,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Rule {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The unit of a shortfall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unit {
    #[serde(rename = "kWh")]
    Kwh,
    #[serde(rename = "EUR")]
    Eur,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Kwh => "kWh",
            Unit::Eur => "EUR",
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Unit {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Appended to a shortfall measured over the month on the exported (rounded)
/// keys rather than on the solver's intended allocation.
const ON_ROUNDED_KEYS: &str = " (over the month, on the rounded keys)";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    pub rule: Rule,
    pub participant: String,
    pub amount: f64,
    pub unit: Unit,
    /// Measured over the month on the rounded keys, not on the solver's
    /// intended allocation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_rounded_keys: bool,
}

impl Violation {
    /// A shortfall of the solver's allocation, in the rule's unit.
    pub fn new(rule: Rule, participant: String, amount: f64) -> Self {
        Violation {
            rule,
            participant,
            amount,
            unit: rule.unit(),
            on_rounded_keys: false,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {:.6} {}",
            self.rule, self.participant, self.amount, self.unit
        )?;
        if self.on_rounded_keys {
            f.write_str(ON_ROUNDED_KEYS)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a fairness violation: {0:?}")]
pub struct BadViolation(String);

/// Reads back the text [`Violation`]'s `Display` writes (the manifest's).
impl FromStr for Violation {
    type Err = BadViolation;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadViolation(s.to_string());
        let (body, on_rounded_keys) = match s.strip_suffix(ON_ROUNDED_KEYS) {
            Some(b) => (b, true),
            None => (s, false),
        };
        let (rule, rest) = body.split_once(' ').ok_or_else(bad)?;
        let rule = match rule {
            "floor" => Rule::Floor,
            "pro_rata" => Rule::ProRata,
            _ => return Err(bad()),
        };
        let (rest, unit) = rest.rsplit_once(' ').ok_or_else(bad)?;
        let unit = match unit {
            "kWh" => Unit::Kwh,
            "EUR" => Unit::Eur,
            _ => return Err(bad()),
        };
        let (participant, amount) = rest.rsplit_once(' ').ok_or_else(bad)?;
        let amount = amount.parse::<f64>().map_err(|_| bad())?;
        Ok(Violation {
            rule,
            participant: participant.to_string(),
            amount,
            unit,
            on_rounded_keys,
        })
    }
}

/// Serde for a list of violations written as their text, as the keys'
/// manifest carries them.
pub mod as_text {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    use super::Violation;

    pub fn serialize<S: Serializer>(v: &[Violation], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(ToString::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Violation>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| t.parse().map_err(D::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        for t in [
            "pro_rata B 0.500000 EUR",
            "floor C 1.000000 kWh",
            "pro_rata A 0.100000 EUR (over the month, on the rounded keys)",
        ] {
            let v: Violation = t.parse().expect("parses");
            assert_eq!(v.to_string(), t);
        }
        assert!("pro_rata B".parse::<Violation>().is_err());
        assert!("ceiling B 1.0 kWh".parse::<Violation>().is_err());
    }
}
