//! The `ped` command line: `run`, `simulate`, `check`, `scan`, `plan`.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ped::clock::Clock;
use ped::config;
use ped::daemon::{Daemon, Options};
use ped::registers::ModelLibrary;
use ped::simulator::Simulator;
use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_SITE: &str = "site-configs/fontaine-douche.toml";

#[derive(Parser)]
#[command(name = "ped", version, about = "Positive-energy district controller")]
struct Cli {
    /// Log format: text or json.
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon against the devices of a site.
    Run {
        #[arg(long, default_value = DEFAULT_SITE)]
        site: PathBuf,
        /// Log the setpoints instead of writing them.
        #[arg(long)]
        dry_run: bool,
        /// The ledger file (default: the site's ledger.path, else <out>/ledger/ped.sqlite).
        #[arg(long)]
        ledger: Option<PathBuf>,
        /// Where keys, records and plans go (default: the site's output_dir).
        #[arg(long)]
        out: Option<PathBuf>,
        /// HTTP listen address (default: the site's http.listen).
        #[arg(long)]
        listen: Option<String>,
        /// Deliver finished key files into this spool folder (plus deliveries.log).
        /// Wins over the site's [delivery] section, which is used without it.
        #[arg(long)]
        deliver_dir: Option<PathBuf>,
        /// Run on a simulated clock shared with `simulate --devices-only`:
        /// sim time = --start + (now − origin) × --speed, origin in Unix seconds.
        #[arg(long, requires_all = ["start", "speed"])]
        clock_origin: Option<f64>,
        /// Simulated start (RFC 3339), with --clock-origin.
        #[arg(long)]
        start: Option<String>,
        /// Simulated seconds per real second, with --clock-origin.
        #[arg(long)]
        speed: Option<f64>,
    },
    /// Serve the site's devices from the built-in simulator and run the daemon against them.
    Simulate {
        #[arg(long, default_value = DEFAULT_SITE)]
        site: PathBuf,
        /// Simulated seconds per real second (300: a day in under 5 minutes).
        #[arg(long, default_value_t = 300.0)]
        speed: f64,
        /// Simulated start, RFC 3339, or "now".
        #[arg(long, default_value = "2025-06-21T05:00:00+02:00")]
        start: String,
        /// Stop after this much simulated time (e.g. 6h, 2d); runs until Ctrl-C if absent.
        #[arg(long)]
        duration: Option<String>,
        /// Listen on free ports instead of the ones in the site config.
        #[arg(long)]
        ephemeral_ports: bool,
        /// Where keys, records and plans go (default: the site's output_dir).
        #[arg(long)]
        out: Option<PathBuf>,
        /// HTTP listen address (default: the site's http.listen).
        #[arg(long)]
        listen: Option<String>,
        #[arg(long, default_value_t = 2025)]
        seed: u64,
        /// Serve the devices only, without the daemon (for other Modbus clients).
        #[arg(long)]
        devices_only: bool,
        /// Real-time poll interval; default: a tenth of a settlement step at this speed
        /// (at least 100 ms, at most the site's), so every period sees several samples.
        #[arg(long)]
        poll_ms: Option<u64>,
        /// Log the setpoints instead of writing them to the simulated devices.
        #[arg(long)]
        dry_run: bool,
        /// Share the simulated clock with other processes: --start is the simulated
        /// time at this Unix instant (seconds), not at this process's start.
        #[arg(long)]
        clock_origin: Option<f64>,
        /// With --devices-only: write the site config with the served addresses
        /// and the poll interval here, for `ped run --site`.
        #[arg(long)]
        write_site: Option<PathBuf>,
        /// Deliver finished key files into this spool folder (plus deliveries.log).
        /// Wins over the site's [delivery] section, which is used without it.
        #[arg(long)]
        deliver_dir: Option<PathBuf>,
    },
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
    Scan {
        /// host:port, or the path of a serial port
        target: String,
        #[arg(long, default_value_t = 1)]
        unit: u8,
        /// host:port is a transparent serial gateway: RTU frames over TCP.
        #[arg(long)]
        rtu_over_tcp: bool,
        /// Serial port only: baud rate.
        #[arg(long, default_value_t = 19_200)]
        baud: u32,
        /// Serial port only: none, even or odd.
        #[arg(long, default_value = "even")]
        parity: String,
        /// Serial port only: 1 or 2.
        #[arg(long, default_value_t = 1)]
        stop_bits: u8,
        /// Per-request timeout, ms.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Replay a data set (the layout of district-2025) through forecast, plan,
    /// simulated storage and keys; compare with baselines in the same run.
    Backtest {
        /// Data set directory: production.csv, consumption.csv, heat.csv, participants.csv, plants.csv.
        #[arg(long)]
        data: PathBuf,
        /// Batteries, heat units, tariffs, priorities, prices and key policy.
        #[arg(long, default_value = DEFAULT_SITE)]
        site: PathBuf,
        /// First local day replayed (default: a week after the data start).
        #[arg(long)]
        from: Option<chrono::NaiveDate>,
        /// Last local day replayed, inclusive (default: the data's last).
        #[arg(long)]
        to: Option<chrono::NaiveDate>,
        /// Settlement step in minutes: 30 (the data's) or 15.
        #[arg(long, default_value_t = 30)]
        step: u32,
        /// Re-solve the LP every N steps (and after a large PV miss).
        #[arg(long, default_value_t = 4)]
        replan_every: usize,
        /// Wall-clock budget of one solve, ms (default: the site's plan.budget_ms).
        #[arg(long)]
        budget_ms: Option<u64>,
        /// Output folder: summary.json, participants.csv, week-summer.svg, week-winter.svg, savings.svg, savings-ratio.svg.
        #[arg(long, default_value = "out/backtest")]
        out: PathBuf,
        /// No progress bar on stderr.
        #[arg(long)]
        quiet: bool,
        /// Apply the plan's battery and P2H powers as they stand, without
        /// moving them by the measured PV and load error (the dispatch before
        /// plan tracking, for comparison).
        #[arg(long)]
        no_tracking: bool,
        /// Refuse the run when the data holds a value that cannot be a
        /// reading (negative, above keys.max_load_curve_kw, not a number)
        /// instead of treating it as missing and estimating it.
        #[arg(long)]
        strict: bool,
    },
    /// Write a plan or allocation instance as JSON, or solve one and print a summary.
    /// Instances: a synthetic district (--synthetic), or a dump, e.g. the
    /// daemon's out/plans/latest-input.json (--replay).
    Plan {
        /// Synthetic district `PARTICIPANTSxSTEPS`, e.g. 1000x96.
        #[arg(long)]
        synthetic: Option<String>,
        /// With --synthetic: the allocation problem alone instead of the joint plan.
        #[arg(long)]
        allocation: bool,
        /// With --synthetic --allocation: `night` (off-peak 22:00–06:00, no
        /// PV then), `midday` (off-peak also 12:00–16:00, overlapping the
        /// PV), `flat` (each participant's mean tariff) or `dynamic` (±2 %
        /// every step).
        #[arg(long, default_value = "night")]
        tariffs: String,
        /// With --synthetic: batteries of the joint plan.
        #[arg(long, default_value_t = 2)]
        batteries: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write the instance here.
        #[arg(long)]
        dump: Option<PathBuf>,
        /// Solve this dumped instance and print a summary.
        #[arg(long)]
        replay: Option<PathBuf>,
        /// Wall-clock budget of the plan solve, ms.
        #[arg(long, default_value_t = 10_000)]
        budget_ms: u64,
        /// Allocation: also solve with the generic LP and compare.
        #[arg(long)]
        oracle: bool,
    },
    /// DSO allocation keys from the DSO's load curves; or validate key files.
    Keys(Box<KeysArgs>),
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Recompute the hash chain and check every period against it; exit 1 at the first broken link.
    Verify {
        #[arg(long)]
        ledger: PathBuf,
    },
}

fn parse_start(start: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    if start == "now" {
        return Ok(chrono::Utc::now());
    }
    Ok(chrono::DateTime::parse_from_rfc3339(start)
        .with_context(|| {
            format!(
                "--start `{start}`: expected RFC 3339 such as 2025-06-21T05:00:00+02:00, or now"
            )
        })?
        .with_timezone(&chrono::Utc))
}

#[derive(clap::Args)]
struct KeysArgs {
    #[arg(long, default_value = DEFAULT_SITE)]
    site: PathBuf,
    /// First local day (YYYY-MM-DD).
    #[arg(long)]
    from: Option<chrono::NaiveDate>,
    /// Last local day, inclusive (YYYY-MM-DD).
    #[arg(long)]
    to: Option<chrono::NaiveDate>,
    /// Directory of Enedis load-curve exports (one CSV per PRM and quantity).
    #[arg(long)]
    load_curves: Option<PathBuf>,
    /// prorata, static or optimised (default: the site's keys.policy).
    #[arg(long)]
    policy: Option<String>,
    /// simple (one key per consumer) or full (per producer x consumer).
    #[arg(long, default_value = "simple")]
    kind: String,
    /// enedis or spain.
    #[arg(long, default_value = "enedis")]
    format: String,
    /// Spain: `PRM;CUPS` per line for every participant.
    #[arg(long)]
    cups: Option<PathBuf>,
    /// Spain: the installation's CAU (default: the site id).
    #[arg(long)]
    cau: Option<String>,
    /// Output directory (must not exist, or hold the same files).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Validate key files instead (format from the content; ped's allocation
    /// and manifest beside the keys are skipped with a note).
    #[arg(long, num_args = 1..)]
    validate: Vec<PathBuf>,
    /// Reconcile the DSO's settlement series (CSV) against --intended.
    #[arg(long)]
    reconcile: Option<PathBuf>,
    /// A `ped keys` output directory (manifest.json + allocation.csv).
    #[arg(long)]
    intended: Option<PathBuf>,
    /// Reconciliation: write the report here too (it is always printed).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Reconciliation: tolerated difference per participant, kWh over the run.
    #[arg(long, default_value_t = 0.5)]
    tolerance_kwh: f64,
    /// Reconciliation: tolerated difference as a share of the allocation.
    #[arg(long, default_value_t = 0.005)]
    tolerance_ratio: f64,
    /// Write the metrics here (Prometheus textfile format): reconciliation
    /// differences, or a key run's fallback periods by reason.
    #[arg(long)]
    metrics_textfile: Option<PathBuf>,
    /// Write each participant's statement (CSV + HTML) for a `ped keys`
    /// output directory, into --out (default DIR/statements).
    #[arg(long)]
    statements: Option<PathBuf>,
    /// Refuse the run when a load curve holds a value that cannot be a
    /// reading (negative, above keys.max_load_curve_kw, not a number)
    /// instead of treating it as missing.
    #[arg(long)]
    strict: bool,
    /// Optimised keys: the month solver's wall-clock budget in ms (default:
    /// the site's keys.month_budget_ms; 0 computes the keys per step).
    #[arg(long)]
    month_budget_ms: Option<u64>,
    /// Archive the run's key files in this ledger as key-file versions (an
    /// unchanged month adds nothing; a changed month is a new version).
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// The operation to compute (its `ACC` id) when the site declares
    /// several; default: every one, each into its own directory of --out.
    #[arg(long)]
    operation: Option<String>,
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(log_colours(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

/// Colour codes only for a person at a terminal: files, pipes, journald and
/// Docker logs get plain text. A non-empty `NO_COLOR` turns colours off
/// everywhere (no-color.org).
fn log_colours(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.map_or(true, |v| v.is_empty())
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

fn parse_duration(s: &str) -> Result<chrono::Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .with_context(|| format!("duration `{s}`: expected e.g. 6h, 90m, 2d"))?;
    Ok(match unit {
        "s" => chrono::Duration::seconds(n),
        "m" => chrono::Duration::minutes(n),
        "h" | "" => chrono::Duration::hours(n),
        "d" => chrono::Duration::days(n),
        _ => bail!("duration `{s}`: unit must be s, m, h or d"),
    })
}

async fn wait_for_stop(clock: Clock, until: Option<chrono::DateTime<chrono::Utc>>) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    let end = async {
        match until {
            Some(t) => clock.sleep_until(t).await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("interrupted"),
        _ = term => tracing::info!("terminated"),
        _ = end => tracing::info!("simulated duration reached"),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logs(&cli.log_format);
    match cli.cmd {
        Cmd::Backtest {
            data,
            site,
            from,
            to,
            step,
            replan_every,
            budget_ms,
            out,
            quiet,
            no_tracking,
            strict,
        } => {
            // The backtest talks to no device: the site's register maps are not needed.
            let raw = config::load_unvalidated(&site)?;
            let budget = Duration::from_millis(budget_ms.unwrap_or(raw.plan.budget_ms));
            let opts = ped::backtest::Options {
                data_dir: data,
                from,
                to,
                step_minutes: step,
                replan_every,
                budget,
                out_dir: out.clone(),
                progress: !quiet,
                tracking: !no_tracking,
                strict,
            };
            let summary = tokio::task::spawn_blocking(move || ped::backtest::run(&raw, &opts))
                .await
                .context("backtest thread")??;
            print!("{}", ped::backtest::table(&summary));
            println!("written: {}", out.display());
            Ok(())
        }
        Cmd::Check { site } => {
            let raw = match config::load_unvalidated(&site) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            };
            let lib = library(raw.site.models_dir.as_deref())?;
            let known: BTreeSet<String> = lib.keys().map(str::to_string).collect();
            let problems = config::check(&raw, &known);
            for w in config::warnings(&raw, &lib) {
                println!(
                    "  warning: {}\n      {}\n      fix: {}",
                    w.key, w.message, w.fix
                );
            }
            if problems.is_empty() {
                println!(
                    "{}: ok ({} devices, {} participants, {}-minute settlement in {})",
                    site.display(),
                    raw.devices.len(),
                    raw.participants.len(),
                    raw.site.settlement_minutes,
                    raw.site.timezone
                );
                for o in &raw.operations {
                    println!(
                        "  operation {}{}: {} producer(s), {} participant(s)",
                        o.id,
                        o.name
                            .as_deref()
                            .map(|n| format!(" ({n})"))
                            .unwrap_or_default(),
                        o.producers.len(),
                        o.participants.len()
                    );
                }
                Ok(())
            } else {
                println!("{}: {} problem(s)", site.display(), problems.len());
                for p in &problems {
                    println!("  {}\n      {}\n      fix: {}", p.key, p.message, p.fix);
                }
                std::process::exit(1);
            }
        }
        Cmd::Run {
            site,
            dry_run,
            ledger,
            out,
            listen,
            deliver_dir,
            clock_origin,
            start,
            speed,
        } => {
            let (site, lib) = load_site(&site)?;
            let clock = match (clock_origin, start, speed) {
                (Some(origin), Some(start), Some(speed)) => {
                    if !(speed.is_finite() && speed > 0.0 && speed <= 10_000.0) {
                        bail!("--speed {speed}: must be in (0, 10000]");
                    }
                    Clock::simulated_shared(origin, parse_start(&start)?, speed)
                }
                (None, None, None) => Clock::System,
                _ => bail!("--start and --speed go with --clock-origin UNIX_TS (a simulated clock shared with `simulate --devices-only`)"),
            };
            let (deliver, backoff) = match deliver_dir {
                Some(dir) => (
                    Some(Arc::new(ped::ledger::outbox::SpoolDir { dir })
                        as Arc<dyn ped::dso::delivery::Deliver>),
                    None,
                ),
                None => site_delivery(&site)?,
            };
            let daemon = Daemon::start_with_ledger(
                site,
                lib,
                clock,
                Options {
                    dry_run,
                    output_dir: out,
                    http_listen: listen,
                },
                ped::daemon::LedgerOptions {
                    path: ledger,
                    deliver,
                    backoff,
                    ..Default::default()
                },
            )
            .await?;
            // A task that fails stops ped with an error (exit 1) once every
            // controlled device is released: systemd or Docker restarts it.
            daemon.run_until(wait_for_stop(clock, None)).await?;
            Ok(())
        }
        Cmd::Simulate {
            site,
            speed,
            start,
            duration,
            ephemeral_ports,
            out,
            listen,
            seed,
            devices_only,
            poll_ms,
            dry_run,
            clock_origin,
            write_site,
            deliver_dir,
        } => {
            let (mut site, lib) = load_site(&site)?;
            let origin = if start == "now" {
                chrono::Utc::now()
            } else {
                chrono::DateTime::parse_from_rfc3339(&start)
                    .with_context(|| format!("--start `{start}`: expected RFC 3339 such as 2025-06-21T05:00:00+02:00, or now"))?
                    .with_timezone(&chrono::Utc)
            };
            if !(speed.is_finite() && speed > 0.0 && speed <= 10_000.0) {
                bail!("--speed {speed}: must be in (0, 10000]");
            }
            let until = duration
                .as_deref()
                .map(parse_duration)
                .transpose()?
                .map(|d| origin + d);
            let step_real_ms = site.grid.step().num_milliseconds() as f64 / speed;
            let polling = &mut site.config.polling;
            polling.interval_ms = poll_ms.unwrap_or_else(|| {
                ((step_real_ms / 10.0) as u64).clamp(100, polling.interval_ms.max(100))
            });
            let clock = match clock_origin {
                Some(o) => Clock::simulated_shared(o, origin, speed),
                None => Clock::simulated(origin, speed),
            };
            let sim = Simulator::start(&site, lib.clone(), clock, seed, ephemeral_ports).await?;
            eprintln!(
                "ped simulate: {} devices of {} served on 127.0.0.1 ({} endpoints), clock x{speed} from {}",
                sim.site.config.devices.len(),
                sim.site.config.site.name,
                sim.endpoints.len(),
                origin.with_timezone(&sim.site.grid.tz()).to_rfc3339()
            );
            if devices_only {
                for (from, to) in &sim.endpoints {
                    eprintln!("  endpoint {from} -> {to}");
                }
                if let Some(path) = &write_site {
                    let text = toml::to_string(&sim.site.config)
                        .context("site config with the served addresses")?;
                    let tmp = path.with_extension("tmp");
                    std::fs::write(&tmp, text)
                        .and_then(|_| std::fs::rename(&tmp, path))
                        .with_context(|| format!("--write-site {}", path.display()))?;
                }
                wait_for_stop(clock, until).await;
                return Ok(());
            }
            // Delivered as `ped run` delivers: --deliver-dir, else [delivery].
            let (deliver, backoff) = match deliver_dir {
                Some(dir) => (
                    Some(Arc::new(ped::ledger::outbox::SpoolDir { dir })
                        as Arc<dyn ped::dso::delivery::Deliver>),
                    None,
                ),
                None => site_delivery(&sim.site)?,
            };
            let daemon = Daemon::start_with_ledger(
                sim.site.clone(),
                lib,
                clock,
                Options {
                    dry_run,
                    output_dir: out,
                    http_listen: listen,
                },
                ped::daemon::LedgerOptions {
                    deliver,
                    backoff,
                    ..Default::default()
                },
            )
            .await?;
            eprintln!(
                "  metrics  http://{0}/metrics\n  status   http://{0}/\n  keys     {1}/keys/<day>/  records {1}/ledger/periods.jsonl",
                daemon.http_addr,
                daemon.shared.output_dir.display()
            );
            let outcome = daemon.run_until(wait_for_stop(clock, until)).await;
            // Give the released setpoints a moment to land before the devices disappear.
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(sim);
            outcome?;
            Ok(())
        }
        Cmd::Audit {
            cmd: AuditCmd::Verify { ledger },
        } => {
            if !ledger.exists() {
                bail!("--ledger {}: no such file", ledger.display());
            }
            let l = ped::ledger::Ledger::open_read_only(&ledger)?;
            let r = l.verify()?;
            match &r.broken {
                None => {
                    println!(
                        "{}: ok, {} audit entries, {} periods, chain intact",
                        ledger.display(),
                        r.entries,
                        r.periods
                    );
                    Ok(())
                }
                Some((seq, why)) => {
                    println!(
                        "{}: BROKEN at audit entry {seq}: {why} ({} entries before it intact)",
                        ledger.display(),
                        r.entries
                    );
                    std::process::exit(1);
                }
            }
        }
        Cmd::Scan {
            target,
            unit,
            rtu_over_tcp,
            baud,
            parity,
            stop_bits,
            timeout_ms,
        } => {
            let lib = library(None)?;
            let link = scan_link(&target, rtu_over_tcp, baud, &parity, stop_bits).await?;
            scan(
                &target,
                &link,
                unit,
                Duration::from_millis(timeout_ms),
                &lib,
            )
            .await
        }
        Cmd::Plan {
            synthetic,
            allocation,
            tariffs,
            batteries,
            seed,
            dump,
            replay,
            budget_ms,
            oracle,
        } => {
            use ped::plan::instance::Instance;
            let inst = match (&synthetic, &replay) {
                (Some(size), None) => {
                    let (np, n) = size
                        .split_once('x')
                        .and_then(|(a, b)| {
                            Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
                        })
                        .filter(|(a, b)| *a > 0 && *b > 0)
                        .with_context(|| {
                            format!(
                                "--synthetic `{size}`: expected PARTICIPANTSxSTEPS such as 1000x96"
                            )
                        })?;
                    if allocation {
                        use ped::plan::synthetic;
                        let problem = synthetic::allocation_with_tariffs(&tariffs, np, n, seed)
                            .with_context(|| {
                                format!(
                                    "--tariffs {tariffs}: expected one of {}",
                                    synthetic::TARIFF_VARIANTS.join(", ")
                                )
                            })?;
                        Instance::Allocation { problem }
                    } else {
                        Instance::Plan {
                            input: ped::plan::synthetic::plan_input(np, n, batteries, seed),
                        }
                    }
                }
                (None, Some(path)) => Instance::read(path)?,
                _ => bail!("ped plan: give exactly one of --synthetic PxN or --replay FILE"),
            };
            if let Some(path) = &dump {
                inst.write(path)?;
                eprintln!("instance written to {}", path.display());
            }
            if replay.is_some() || dump.is_none() {
                print!("{}", inst.replay(Duration::from_millis(budget_ms), oracle)?);
            }
            Ok(())
        }
        Cmd::Keys(args) => keys_cmd(*args),
    }
}

/// A target that is a path (starts with `/` or `.`) is a serial port; any
/// other is host:port.
async fn scan_link(
    target: &str,
    rtu_over_tcp: bool,
    baud: u32,
    parity: &str,
    stop_bits: u8,
) -> Result<ped::modbus::Link> {
    use ped::config::{Parity, SerialConfig};
    use ped::modbus::{Framing, Link, SerialLine};
    if target.starts_with('/') || target.starts_with('.') {
        let parity = match parity {
            "none" => Parity::None,
            "even" => Parity::Even,
            "odd" => Parity::Odd,
            other => anyhow::bail!("--parity {other}: expected none, even or odd"),
        };
        anyhow::ensure!(
            matches!(stop_bits, 1 | 2),
            "--stop-bits {stop_bits}: expected 1 or 2"
        );
        anyhow::ensure!(baud > 0, "--baud 0: give the line's rate, e.g. 19200");
        let line = SerialConfig {
            baud,
            parity,
            stop_bits,
            ..SerialConfig::default()
        };
        return Ok(Link::Serial(SerialLine::from_config(target, &line)));
    }
    let addr = tokio::net::lookup_host(target)
        .await
        .with_context(|| format!("{target}: not host:port (nor a serial port path)"))?
        .next()
        .with_context(|| format!("{target} does not resolve"))?;
    let framing = if rtu_over_tcp {
        Framing::Rtu
    } else {
        Framing::Tcp
    };
    Ok(Link::Tcp { addr, framing })
}

async fn scan(
    target: &str,
    link: &ped::modbus::Link,
    unit: u8,
    timeout: Duration,
    lib: &ModelLibrary,
) -> Result<()> {
    use ped::modbus::{sunspec, ModbusClient};
    let mut c = ModbusClient::open(link, timeout).await?;
    let models = sunspec::discover(&mut c, unit).await?;
    println!("{target} unit {unit}: {} SunSpec model(s)", models.len());
    for m in models {
        let Some(map) = lib.sunspec(m.id) else {
            println!(
                "  model {:>4} at {} (len {}): no map in models/",
                m.id, m.addr, m.len
            );
            continue;
        };
        println!(
            "  model {:>4} {} at {} (len {})",
            m.id, map.name, m.addr, m.len
        );
        let len = map.block_len().min(m.len.saturating_add(2));
        // One model that cannot be read (or an older, shorter version of it)
        // must not hide the others.
        let words = match c.read(unit, map.table, m.addr, len).await {
            Ok(w) => w,
            Err(e) if !e.breaks_connection() => {
                println!("      cannot read: {e}");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for p in map.points.iter().filter(|p| {
            matches!(
                p.name.as_str(),
                "Mn" | "Md"
                    | "SN"
                    | "W"
                    | "WH"
                    | "SoC"
                    | "TotWhImp"
                    | "TotWhExp"
                    | "WRtg"
                    | "WSet"
                    | "WMaxLimPct"
                    | "ChaState"
                    | "Hz"
            )
        }) {
            let v = if matches!(p.ty, ped::registers::PointType::String) {
                match map.decode_string(&words, &p.name) {
                    Ok(v) => v.unwrap_or_else(|| "-".into()),
                    Err(e) => format!("cannot decode: {e}"),
                }
            } else {
                match map.decode_f64(&words, &p.name) {
                    Ok(v) => v
                        .map(|v| format!("{v} {}", p.unit.clone().unwrap_or_default()))
                        .unwrap_or_else(|| "not implemented".into()),
                    Err(e) => format!("cannot decode: {e}"),
                }
            };
            println!("      {:<12} {v}", p.name);
        }
    }
    Ok(())
}

fn keys_cmd(a: KeysArgs) -> Result<()> {
    use ped::keys;
    let (site, _) = load_site(&a.site)?;
    let precision = ped::allocation::Precision::new(site.config.keys.units_per_one)
        .context("keys.units_per_one")?;
    if !a.validate.is_empty() {
        let configured =
            ped::dso::enedis::Layout::of(site.config.keys.layout).with(&site.config.keys.file);
        let mut layouts = vec![configured];
        layouts.extend(ped::dso::enedis::Layout::ALL);
        let mut failed = 0;
        for f in &a.validate {
            match keys::validate_file_in(f, &site.grid, precision, &layouts) {
                Ok(keys::Checked::Valid(summary)) => println!("{}: ok ({summary})", f.display()),
                Ok(keys::Checked::Skipped(why)) => println!("{}: skipped ({why})", f.display()),
                Err(e) => {
                    failed += 1;
                    println!("{}: {e}", f.display());
                }
            }
        }
        if failed > 0 {
            eprintln!("{failed} of {} file(s) invalid", a.validate.len());
            std::process::exit(1);
        }
        return Ok(());
    }
    if let Some(dir) = &a.statements {
        let st = ped::keys::statement::build(dir, site.config.plan.local_price_eur_per_kwh)?;
        let out = a.out.clone().unwrap_or_else(|| dir.join("statements"));
        let files = ped::keys::statement::write_all(&out, &st)?;
        println!("{}: {} statement file(s)", out.display(), files.len());
        return Ok(());
    }
    if let Some(dso_file) = &a.reconcile {
        return reconcile_cmd(&site, &a, dso_file);
    }
    let (Some(from), Some(to), Some(dir), Some(out)) =
        (a.from, a.to, a.load_curves.clone(), a.out.clone())
    else {
        bail!("ped keys needs --from, --to, --load-curves and --out (or --validate FILE...)");
    };
    let operations = site.operations();
    let runs: Vec<(&config::Operation, PathBuf)> = match &a.operation {
        Some(id) => match operations.iter().find(|o| o.id.as_deref() == Some(id.as_str())) {
            Some(op) => vec![(op, out.clone())],
            None => bail!(
                "--operation {id}: {} declares {} (fix: name one of them, or leave --operation out for all)",
                site.source.display(),
                operations.iter().map(|o| o.label()).collect::<Vec<_>>().join(", ")
            ),
        },
        None if operations.len() == 1 => vec![(&operations[0], out.clone())],
        // One directory per operation, named after its id.
        None => operations
            .iter()
            .map(|o| (o, out.join(o.label())))
            .collect(),
    };
    let mut manifests = Vec::new();
    for (op, out) in &runs {
        if runs.len() > 1 {
            println!("operation {} ({}):", op.label(), op.name);
        }
        manifests.push(keys_run(&site, &a, op, from, to, &dir, out)?);
    }
    if let Some(p) = &a.metrics_textfile {
        let metrics = ped::metrics::Metrics::new(&site.config.site.id)?;
        for m in &manifests {
            metrics
                .period_fallbacks
                .with_label_values(&["missing_data"])
                .inc_by(m.fallback_steps.len() as u64);
            if m.month_solver
                .as_ref()
                .is_some_and(|s| s.fallback.is_some())
            {
                metrics
                    .period_fallbacks
                    .with_label_values(&["month_solver"])
                    .inc_by(m.periods as u64);
            }
        }
        std::fs::write(p, metrics.render()).with_context(|| format!("{}", p.display()))?;
    }
    Ok(())
}

/// One operation's keys from the load curves in `dir` into `out`.
fn keys_run(
    site: &config::Site,
    a: &KeysArgs,
    op: &config::Operation,
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
    dir: &Path,
    out: &Path,
) -> Result<ped::keys::Manifest> {
    use ped::keys::{self, Format, KeyKind, KeysError, Written};
    let mut job = keys::KeysJob::for_operation(site, op, from, to);
    job.strict = a.strict;
    if a.format == "enedis"
        && job.layout.naming == ped::dso::enedis::Naming::Operation
        && job.operation_id.is_none()
    {
        bail!(
            "{}: keys.operation_id is not set, and the enedis layout names its files after the operation (fix: add operation_id = \"ACC<8 digits>\" under [keys], or layout = \"enedis_iso\" for one file per producer)",
            site.source.display()
        );
    }
    if let Some(p) = &a.policy {
        job.policy = match p.as_str() {
            "prorata" => config::KeyPolicy::Prorata,
            "static" => config::KeyPolicy::Static,
            "optimised" => config::KeyPolicy::Optimised,
            _ => bail!("--policy {p}: expected prorata, static or optimised"),
        };
    }
    job.kind = match a.kind.as_str() {
        "simple" => KeyKind::Simple,
        "full" => KeyKind::Full,
        k => bail!("--kind {k}: expected simple or full"),
    };
    job.format = match a.format.as_str() {
        "enedis" => Format::Enedis,
        "spain" => Format::Spain,
        f => bail!("--format {f}: expected enedis or spain"),
    };
    if let Some(c) = &a.cups {
        job.cups = keys::read_cups_map(c)?;
    }
    if let Some(c) = a.cau.clone() {
        // The CAU names the output file: it must stay inside --out.
        if !ped::dso::is_plain_file_stem(&c) {
            bail!("--cau `{c}`: a CAU is letters and digits (e.g. ES0031405712345678JY1A000); it names the output file and cannot hold `/` or start with `.`");
        }
        job.cau = c;
    }
    let mut site = site.clone();
    if let Some(b) = a.month_budget_ms {
        site.config.keys.month_budget_ms = b;
    }
    let month = keys::month_solver(&site, &job);
    let run = match &month {
        Some(solver) => {
            // The archive of the month's earlier days, if --ledger holds it.
            let archive = match &a.ledger {
                Some(l) if l.exists() => Some(
                    ped::ledger::Ledger::open_read_only(l)
                        .with_context(|| format!("--ledger {}", l.display()))?,
                ),
                _ => None,
            };
            keys::run_in_month(&job, dir, out, solver, archive.as_ref())
        }
        None => keys::run(
            &job,
            dir,
            out,
            None,
            site.config.plan.local_price_eur_per_kwh,
        ),
    };
    match run {
        Ok(w) => {
            let (what, m) = match w {
                Written::New(m) => ("written", m),
                Written::Unchanged(m) => ("unchanged", m),
            };
            let estimated: usize = m.participants.iter().map(|p| p.estimated_steps).sum();
            println!(
                "{}: {} suspect value(s) treated as missing, {estimated} participant step(s) estimated in {} step(s) (manifest.json)",
                out.display(),
                m.suspect_values.count,
                m.estimated_steps.len()
            );
            println!(
                "{}: {what}: {} file(s), {} periods {} .. {}, policy {:?} ({}), {} fallback step(s), {} coarse step(s), self-consumed {:.3} of {:.3} kWh",
                out.display(),
                m.files.len(),
                m.periods,
                m.first_period,
                m.last_period,
                m.policy,
                m.allocator,
                m.fallback_steps.len(),
                m.coarse_steps,
                m.self_consumed_kwh,
                m.production_kwh
            );
            for f in &m.fallback_steps {
                tracing::warn!(period = %f.period, reasons = ?f.reasons, "step fell back to the default rule");
            }
            if let Some(st) = &m.month_start {
                println!(
                    "month to date ({}): {}; {:.3} kWh pooled before {}",
                    st.source, st.note, st.production_kwh, m.from
                );
            }
            if let Some(ms) = &m.month_solver {
                match &ms.fallback {
                    Some(why) => println!("month solver: not used ({why}); keys computed per step"),
                    None => println!(
                        "month solver: {} ({} fairness violation(s))",
                        ms.method,
                        ms.violations.len()
                    ),
                }
                for v in &ms.violations {
                    tracing::warn!(violation = %v, "month fairness rule not met");
                }
            }
            if let Some(l) = &a.ledger {
                let mut ledger = ped::ledger::Ledger::open(l)?;
                let mut files = Vec::new();
                // Only key files are archived; allocation.csv is the largest file.
                for f in m.files.iter().filter(|f| f.name != keys::ALLOCATION_FILE) {
                    let p = out.join(&f.name);
                    files.push((
                        f.name.clone(),
                        std::fs::read(&p).with_context(|| format!("{}", p.display()))?,
                    ));
                }
                let versions = ped::keys::archive::archive_run(&mut ledger, &m, &files)
                    .with_context(|| format!("--ledger {}", l.display()))?;
                let new = versions.iter().filter(|v| v.new).count();
                println!(
                    "{}: {new} new key-file version(s), {} unchanged",
                    l.display(),
                    versions.len() - new
                );
                for v in versions.iter().filter(|v| v.new) {
                    tracing::info!(file = %v.name, version = v.version, sha256 = %v.sha256, "key file archived");
                }
            }
            Ok(m)
        }
        Err(e @ KeysError::LoadCurves(_)) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
        Err(e) => Err(e.into()),
    }
}

fn reconcile_cmd(site: &config::Site, a: &KeysArgs, dso_file: &Path) -> Result<()> {
    use ped::keys;
    use ped::keys::reconcile;
    let Some(dir) = &a.intended else {
        bail!("--reconcile needs --intended DIR (a `ped keys` output directory)");
    };
    let manifest: keys::Manifest = serde_json::from_slice(
        &std::fs::read(dir.join(keys::MANIFEST_FILE))
            .with_context(|| format!("{}", dir.display()))?,
    )
    .with_context(|| format!("{}/{}", dir.display(), keys::MANIFEST_FILE))?;
    let grid = site.grid;
    let from = grid.local_midnight(manifest.from)?;
    let to = grid.local_midnight(
        manifest
            .to
            .succ_opt()
            .context("--intended: last day out of range")?,
    )?;
    let text =
        std::fs::read_to_string(dso_file).with_context(|| format!("{}", dso_file.display()))?;
    let dso = match reconcile::read_settlement(&text, dso_file, &grid, from, to) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let intended = reconcile::read_intended(dir)?;
    let participants: Vec<(String, String)> = manifest
        .participants
        .iter()
        .map(|p| (p.id.clone(), p.prm.clone()))
        .collect();
    let lines = reconcile::compare(
        &participants,
        &intended,
        &dso,
        reconcile::Tolerance {
            kwh: a.tolerance_kwh,
            ratio: a.tolerance_ratio,
        },
    );
    let report = reconcile::render_report(&lines);
    print!("{report}");
    if let Some(p) = &a.report {
        std::fs::write(p, &report).with_context(|| format!("{}", p.display()))?;
    }
    if let Some(p) = &a.metrics_textfile {
        let m = ped::metrics::Metrics::new(&site.config.site.id)?;
        reconcile::record(&m, &lines);
        std::fs::write(p, m.render()).with_context(|| format!("{}", p.display()))?;
    }
    let off: Vec<&reconcile::Line> = lines.iter().filter(|l| l.status != "ok").collect();
    if !off.is_empty() {
        for l in &off {
            tracing::warn!(participant = %l.participant, status = l.status, difference_kwh = format!("{:.3}", l.difference_kwh), "reconciliation");
        }
        eprintln!(
            "{} of {} line(s) differ from the DSO's settlement",
            off.len(),
            lines.len()
        );
        std::process::exit(1);
    }
    Ok(())
}

type SiteDelivery = (
    Option<Arc<dyn ped::dso::delivery::Deliver>>,
    Option<ped::ledger::outbox::Backoff>,
);

/// The outbox channel and backoff from the site's `[delivery]` section
/// (`ped run` without `--deliver-dir`). The token is read here, once.
fn site_delivery(site: &ped::config::Site) -> Result<SiteDelivery> {
    use ped::config::DeliveryKind;
    let Some(d) = &site.config.delivery else {
        return Ok((None, None));
    };
    let backoff = ped::ledger::outbox::Backoff::from_secs(d.backoff_base_s, d.backoff_cap_s);
    let deliver: Arc<dyn ped::dso::delivery::Deliver> = match d.kind {
        DeliveryKind::Folder => {
            let Some(dir) = d.dir.clone() else {
                bail!(
                    "{}: delivery.dir missing for kind = \"folder\"; add dir = \"out/spool\"",
                    site.source.display()
                );
            };
            Arc::new(ped::ledger::outbox::SpoolDir { dir })
        }
        DeliveryKind::Https => {
            let Some(url) = d.url.as_deref() else {
                bail!(
                    "{}: delivery.url missing for kind = \"https\"; add url = \"https://…\"",
                    site.source.display()
                );
            };
            let token = match &d.token_file {
                Some(f) => Some(ped::config::read_delivery_token(f).map_err(|p| {
                    anyhow::anyhow!(
                        "{}: {}: {} (fix: {})",
                        site.source.display(),
                        p.key,
                        p.message,
                        p.fix
                    )
                })?),
                None => None,
            };
            let t = std::time::Duration::try_from_secs_f64(d.timeout_s)
                .ok()
                .filter(|t| !t.is_zero())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: delivery.timeout_s = {} is not a usable duration (fix: e.g. timeout_s = 30)",
                        site.source.display(),
                        d.timeout_s
                    )
                })?;
            // timeout_s bounds a whole POST, and so each connect and read in it.
            Arc::new(
                ped::dso::channels::HttpPost::new(url, t, t, token)
                    .map_err(|e| anyhow::anyhow!("{}: delivery.url: {e}", site.source.display()))?,
            )
        }
    };
    tracing::info!(
        channel = deliver.channel(),
        "outbox delivers per the site's [delivery] section"
    );
    Ok((Some(deliver), Some(backoff)))
}

#[cfg(test)]
mod tests {
    use super::log_colours;
    use std::ffi::OsStr;

    #[test]
    fn colours_only_for_a_terminal_without_no_color() {
        assert!(log_colours(true, None));
        assert!(log_colours(true, Some(OsStr::new(""))));
        assert!(!log_colours(true, Some(OsStr::new("1"))));
        assert!(!log_colours(false, None));
        assert!(!log_colours(false, Some(OsStr::new("1"))));
    }
}
