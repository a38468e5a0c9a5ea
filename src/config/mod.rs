//! Site configuration: schema (serde), loading (`config` crate: the file, then
//! `PED__…` environment overrides) and validation that names the key and the fix.
//!
//! Validation happens once, at start: every later stage receives a [`Site`]
//! that is known to be coherent (unique ids and PRMs, resolvable addresses,
//! known register maps, meters that exist).

mod check;
pub mod limits;
mod load;
mod resolved;
mod schema;
#[cfg(test)]
mod tests;
mod warnings;

pub use check::check;
pub use check::delivery::read_delivery_token;
pub use load::load_unvalidated;
pub use resolved::*;
pub use schema::*;
pub use warnings::warnings;

use crate::time::Grid;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found in a site config: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (fix: {})", self.key, self.message, self.fix)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read site config {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("site config {file} cannot be parsed: {message} (fix: {fix})")]
    Parse {
        file: PathBuf,
        message: String,
        fix: String,
    },
    #[error("site config {file} has {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        file: PathBuf,
        problems: Vec<Problem>,
    },
}

/// A validated site: the config plus what validation resolved.
#[derive(Debug, Clone)]
pub struct Site {
    pub config: SiteConfig,
    pub grid: Grid,
    pub source: PathBuf,
}

impl Site {
    pub fn device(&self, id: &str) -> Option<&DeviceConfig> {
        self.config.devices.iter().find(|d| d.id == id)
    }
    pub fn devices_of(&self, kind: DeviceKind) -> impl Iterator<Item = &DeviceConfig> {
        self.config.devices.iter().filter(move |d| d.kind == kind)
    }
    /// Producers in file order: PV plants then batteries (batteries produce while discharging).
    pub fn producers(&self) -> Vec<&DeviceConfig> {
        let mut v: Vec<&DeviceConfig> = self.devices_of(DeviceKind::PvInverter).collect();
        v.extend(self.devices_of(DeviceKind::Battery));
        v
    }
    /// The site's operations: the declared `[[operations]]` or, when none
    /// is, one operation of every producer and participant.
    pub fn operations(&self) -> Vec<Operation> {
        let cfg = &self.config;
        let producers = self.producers();
        if cfg.operations.is_empty() {
            return vec![Operation {
                id: cfg.keys.operation_id.clone(),
                name: cfg.site.name.clone(),
                producers: (0..producers.len()).collect(),
                participants: (0..cfg.participants.len()).collect(),
            }];
        }
        cfg.operations
            .iter()
            .map(|o| Operation {
                id: Some(o.id.clone()),
                name: o.name.clone().unwrap_or_else(|| o.id.clone()),
                producers: (0..producers.len())
                    .filter(|&i| o.producers.contains(&producers[i].id))
                    .collect(),
                participants: (0..cfg.participants.len())
                    .filter(|&i| o.participants.contains(&cfg.participants[i].id))
                    .collect(),
            })
            .collect()
    }
    /// Devices grouped by Modbus endpoint: one connection per endpoint.
    pub fn endpoints(&self) -> BTreeMap<String, Vec<&DeviceConfig>> {
        let mut m: BTreeMap<String, Vec<&DeviceConfig>> = BTreeMap::new();
        for d in &self.config.devices {
            m.entry(d.address.clone()).or_default().push(d);
        }
        m
    }
}

/// Loads a site config: the TOML file, then `PED__SECTION__KEY` environment
/// overrides (e.g. `PED__SITE__SETTLEMENT_MINUTES=30`), then validation.
/// `known_maps` are the register-map keys available (built in and `models_dir`).
pub fn load(path: &Path, known_maps: &BTreeSet<String>) -> Result<Site, ConfigError> {
    let config = load_unvalidated(path)?;
    validate(config, path, known_maps)
}

fn problem(key: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> Problem {
    Problem {
        key: key.into(),
        message: message.into(),
        fix: fix.into(),
    }
}

pub fn validate(
    config: SiteConfig,
    path: &Path,
    known_maps: &BTreeSet<String>,
) -> Result<Site, ConfigError> {
    let problems = check(&config, known_maps);
    if !problems.is_empty() {
        return Err(ConfigError::Invalid {
            file: path.to_path_buf(),
            problems,
        });
    }
    let tz: chrono_tz::Tz = config
        .site
        .timezone
        .parse()
        .map_err(|_| ConfigError::Invalid {
            file: path.to_path_buf(),
            problems: vec![problem(
                "site.timezone",
                "not a time zone",
                "use \"Europe/Paris\"",
            )],
        })?;
    let grid = Grid::new(config.site.settlement_minutes, tz).map_err(|e| ConfigError::Invalid {
        file: path.to_path_buf(),
        problems: vec![problem(
            "site.settlement_minutes",
            e.to_string(),
            "use 15 or 30",
        )],
    })?;
    Ok(Site {
        config,
        grid,
        source: path.to_path_buf(),
    })
}

/// A duration in seconds from a config value, `None` if it is not a finite,
/// non-negative number a `Duration` can hold (`Duration::from_secs_f64`
/// would panic on it).
pub fn duration_s(s: f64) -> Option<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(s).ok()
}
