//! `ped run` and `ped simulate`: the daemon, against real or simulated devices.

use super::*;

#[derive(clap::Args)]
pub struct RunArgs {
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
}

#[derive(clap::Args)]
pub struct SimulateArgs {
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
}

pub(super) async fn run(a: RunArgs) -> Result<()> {
    let RunArgs {
        site,
        dry_run,
        ledger,
        out,
        listen,
        deliver_dir,
        clock_origin,
        start,
        speed,
    } = a;
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
    let ledger = ledger_options(&site, ledger, deliver_dir)?;
    let options = Options {
        dry_run,
        output_dir: out,
        http_listen: listen,
    };
    let daemon = Daemon::start_with_ledger(site, lib, clock, options, ledger).await?;
    // A task that fails stops ped with an error (exit 1) once every
    // controlled device is released: systemd or Docker restarts it.
    daemon.run_until(wait_for_stop(clock, None)).await?;
    Ok(())
}

pub(super) async fn simulate(a: SimulateArgs) -> Result<()> {
    let SimulateArgs {
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
    } = a;
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
    polling.interval_ms = poll_ms
        .unwrap_or_else(|| ((step_real_ms / 10.0) as u64).clamp(100, polling.interval_ms.max(100)));
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
    let ledger = ledger_options(&sim.site, None, deliver_dir)?;
    let options = Options {
        dry_run,
        output_dir: out,
        http_listen: listen,
    };
    let daemon = Daemon::start_with_ledger(sim.site.clone(), lib, clock, options, ledger).await?;
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

/// The ledger of `ped run` and `ped simulate` at `path` (`None`: the
/// default), delivering to `--deliver-dir` if given, else as the site's
/// `[delivery]` says.
fn ledger_options(
    site: &ped::config::Site,
    path: Option<PathBuf>,
    deliver_dir: Option<PathBuf>,
) -> Result<ped::daemon::LedgerOptions> {
    let (deliver, backoff) = match deliver_dir {
        Some(dir) => (
            Some(Arc::new(ped::ledger::outbox::SpoolDir { dir })
                as Arc<dyn ped::dso::delivery::Deliver>),
            None,
        ),
        None => site_delivery(site)?,
    };
    Ok(ped::daemon::LedgerOptions {
        path,
        deliver,
        backoff,
        ..Default::default()
    })
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
