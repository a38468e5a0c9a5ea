//! The command line: its arguments, and one module per command.

mod audit;
mod backtest;
mod check;
mod keys;
pub mod logs;
mod plan;
mod run;
mod scan;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ped::clock::Clock;
use ped::config;
use ped::daemon::{Daemon, Options};
use ped::registers::ModelLibrary;
use ped::simulator::Simulator;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_SITE: &str = "site-configs/fontaine-douche.toml";

#[derive(Parser)]
#[command(name = "ped", version, about = "Positive-energy district controller")]
pub struct Cli {
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text")]
    pub log_format: String,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the daemon against the devices of a site.
    Run(run::RunArgs),
    /// Serve the site's devices from the built-in simulator and run the daemon against them.
    Simulate(run::SimulateArgs),
    /// The ledger's audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Validate a site config: prints every problem with its key and a fix.
    Check {
        #[arg(long, default_value = DEFAULT_SITE)]
        site: PathBuf,
    },
    /// Scan a Modbus device for SunSpec models and print the main values:
    /// over TCP (host:port), RTU through a TCP gateway (--rtu-over-tcp), or
    /// RTU on a serial port (a path such as /dev/ttyUSB0).
    Scan(scan::ScanArgs),
    /// Replay a data set (the layout of district-2025) through forecast, plan,
    /// simulated storage and keys; compare with baselines in the same run.
    Backtest(backtest::BacktestArgs),
    /// Write a plan or allocation instance as JSON, or solve one and print a summary.
    /// Instances: a synthetic district (--synthetic), or a dump, e.g. the
    /// daemon's out/plans/latest-input.json (--replay).
    Plan(plan::PlanArgs),
    /// DSO allocation keys from the DSO's load curves; or validate key files.
    Keys(Box<keys::KeysArgs>),
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Recompute the hash chain and check every period against it; exit 1 at the first broken link.
    Verify {
        #[arg(long)]
        ledger: PathBuf,
    },
}

/// Runs one command.
pub async fn dispatch(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Backtest(a) => backtest::backtest(a).await,
        Cmd::Check { site } => check::check(site),
        Cmd::Run(a) => run::run(a).await,
        Cmd::Simulate(a) => run::simulate(a).await,
        Cmd::Audit {
            cmd: AuditCmd::Verify { ledger },
        } => audit::verify(ledger),
        Cmd::Scan(a) => scan::scan_cmd(a).await,
        Cmd::Plan(a) => plan::plan(a),
        Cmd::Keys(args) => keys::keys_cmd(*args),
    }
}

fn library(site_models: Option<&Path>) -> Result<ModelLibrary> {
    let mut lib = ModelLibrary::embedded().context("built-in register maps")?;
    if let Some(dir) = site_models {
        let extra = ModelLibrary::load_dir(dir).with_context(|| {
            format!(
                "site.models_dir: register maps in {} (fix: point site.models_dir at an existing folder of map .toml files, or remove the key)",
                dir.display()
            )
        })?;
        lib.extend(extra);
    }
    Ok(lib)
}

fn load_site(path: &Path) -> Result<(config::Site, Arc<ModelLibrary>)> {
    let raw = config::load_unvalidated(path)?;
    let lib = library(raw.site.models_dir.as_deref())?;
    let known: BTreeSet<String> = lib.keys().map(str::to_string).collect();
    let site = config::validate(raw, path, &known)?;
    Ok((site, Arc::new(lib)))
}
