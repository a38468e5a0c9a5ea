//! `ped keys`: DSO allocation keys from load curves; validation,
//! statements and reconciliation of key files.

use super::*;

#[derive(clap::Args)]
pub struct KeysArgs {
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

pub(super) fn keys_cmd(a: KeysArgs) -> Result<()> {
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
