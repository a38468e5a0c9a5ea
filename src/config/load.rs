//! Reading the site file and its environment overrides into a [`SiteConfig`].

use super::{ConfigError, SiteConfig};
use std::path::Path;

pub fn load_unvalidated(path: &Path) -> Result<SiteConfig, ConfigError> {
    if let Err(e) = std::fs::metadata(path) {
        return Err(ConfigError::Read {
            file: path.to_path_buf(),
            source: e,
        });
    }
    let built = ::config::Config::builder()
        .add_source(::config::File::from(path).format(::config::FileFormat::Toml))
        .add_source(
            ::config::Environment::with_prefix("PED")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .map_err(|e| ConfigError::Parse {
            file: path.to_path_buf(),
            message: e.to_string(),
            fix: "check the TOML syntax at the place named (quotes, brackets, one value per key)"
                .into(),
        })?;
    built
        .try_deserialize::<SiteConfig>()
        .map_err(|e| ConfigError::Parse {
            file: path.to_path_buf(),
            fix: parse_fix(&e.to_string()),
            message: e.to_string(),
        })
}

fn parse_fix(msg: &str) -> String {
    if msg.contains("unknown field") {
        "remove or rename the key; the accepted keys are listed in the message and in site-configs/README.md".into()
    } else if msg.contains("missing field") {
        "add the missing key (see site-configs/README.md for its meaning and unit)".into()
    } else if msg.contains("unknown variant") {
        "use one of the values listed in the message".into()
    } else if msg.contains("expected a boolean") {
        "write true or false, without quotes".into()
    } else if msg.contains("PRM") {
        "a PRM is exactly 14 digits, written as a quoted string".into()
    } else {
        "correct the value's type (number, string, list) as documented in site-configs/README.md"
            .into()
    }
}
