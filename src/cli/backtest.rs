//! `ped backtest`: a data set replayed through forecast, plan, storage and keys.

use super::*;

#[derive(clap::Args)]
pub struct BacktestArgs {
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
}

pub(super) async fn backtest(a: BacktestArgs) -> Result<()> {
    let BacktestArgs {
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
    } = a;
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
