//! `ped plan`: write, or solve and summarise, a plan or allocation instance.

use super::*;

#[derive(clap::Args)]
pub struct PlanArgs {
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
}

pub(super) fn plan(a: PlanArgs) -> Result<()> {
    let PlanArgs {
        synthetic,
        allocation,
        tariffs,
        batteries,
        seed,
        dump,
        replay,
        budget_ms,
        oracle,
    } = a;
    use ped::plan::instance::Instance;
    let inst = match (&synthetic, &replay) {
        (Some(size), None) => {
            let (np, n) = size
                .split_once('x')
                .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
                .filter(|(a, b)| *a > 0 && *b > 0)
                .with_context(|| {
                    format!("--synthetic `{size}`: expected PARTICIPANTSxSTEPS such as 1000x96")
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
