//! Readings → metrics and status; energy counters → energy per settlement period;
//! closed periods → keys, DSO files and the period record.
//!
//! Period energies come from the devices' own energy counters, interpolated at
//! each period boundary between the two samples that straddle it. A counter
//! that went backwards (meter reset or rollover) contributes nothing for that
//! span and flags the period.

use super::{Event, PeriodRecord, Shared};
use crate::allocation::{self, Policy, Precision, StepInput};
use crate::config::{DeviceKind, KeyPolicy};
use crate::dso::{enedis, KeyRow};
use crate::ids::Prm;
use crate::units::JOULES_PER_KWH;
use chrono::{DateTime, NaiveDate, Utc};
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

#[derive(Default)]
struct CounterTrack {
    last: Option<(DateTime<Utc>, f64)>,
    boundaries: BTreeMap<DateTime<Utc>, f64>,
    reset_in: Vec<DateTime<Utc>>,
}

struct Counters {
    grid: crate::time::Grid,
    tracks: HashMap<(String, &'static str), CounterTrack>,
}

impl Counters {
    fn sample(
        &mut self,
        device: &str,
        reading: &'static str,
        t: DateTime<Utc>,
        v: f64,
    ) -> Option<f64> {
        let grid = self.grid;
        let tr = self
            .tracks
            .entry((device.to_string(), reading))
            .or_default();
        let mut delta = None;
        if let Some((t0, v0)) = tr.last {
            if t <= t0 {
                return None;
            }
            let reset = v < v0;
            let mut b = grid.next_period(grid.period_start(t0));
            while b <= t {
                let val = if reset {
                    tr.reset_in.push(grid.period_start(b - grid.step()));
                    v0
                } else {
                    let frac = (b - t0).num_microseconds().unwrap_or(0) as f64
                        / (t - t0).num_microseconds().unwrap_or(1).max(1) as f64;
                    v0 + (v - v0) * frac
                };
                tr.boundaries.insert(b, val);
                b = grid.next_period(b);
            }
            if reset {
                // The new counter starts its own history: later boundaries build on it.
                tr.boundaries.retain(|k, _| *k <= t);
            } else {
                delta = Some(v - v0);
            }
        }
        tr.last = Some((t, v));
        // Two days of boundaries are plenty for closing late periods.
        let cutoff = t - chrono::Duration::days(2);
        tr.boundaries.retain(|k, _| *k >= cutoff);
        delta
    }

    /// Energy of `[start, start + step)`, or why it is unknown.
    fn energy(
        &self,
        device: &str,
        reading: &'static str,
        start: DateTime<Utc>,
    ) -> Result<f64, String> {
        let end = self.grid.next_period(start);
        let tr = self
            .tracks
            .get(&(device.to_string(), reading))
            .ok_or_else(|| format!("{device}: no {reading} reading"))?;
        if tr.reset_in.contains(&start) {
            return Err(format!("{device}: {reading} counter reset"));
        }
        match (tr.boundaries.get(&start), tr.boundaries.get(&end)) {
            (Some(a), Some(b)) if b >= a => Ok(b - a),
            (Some(_), Some(_)) => Err(format!("{device}: {reading} went backwards")),
            _ => Err(format!("{device}: {reading} not sampled around the period")),
        }
    }
}

pub async fn run(
    shared: Arc<Shared>,
    mut events: mpsc::Receiver<Event>,
    periods: mpsc::Sender<PeriodRecord>,
    mut shutdown: watch::Receiver<bool>,
) {
    let site = &shared.site;
    let grid = site.grid;
    let clock = shared.clock;
    let mut counters = Counters {
        grid,
        tracks: HashMap::new(),
    };
    let kinds: HashMap<String, DeviceKind> = site
        .config
        .devices
        .iter()
        .map(|d| (d.id.clone(), d.kind))
        .collect();
    // The first whole period after start; the one running at start is incomplete.
    let mut next = grid.next_period(grid.period_start(clock.now()));
    let poll = &site.config.polling;
    let grace = clock.clock_duration(Duration::from_millis(
        3 * poll.interval_ms + 2 * poll.timeout_ms,
    ));
    let mut day_rows: BTreeMap<NaiveDate, Vec<KeyRow>> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                on_event(&shared, &kinds, &mut counters, ev);
            }
            _ = tick.tick() => {
                while clock.now() >= grid.next_period(next) + grace {
                    let rec = close_period(&shared, &counters, next, &mut day_rows);
                    let _ = periods.try_send(rec);
                    next = grid.next_period(next);
                }
                let now = clock.now();
                let mut st = shared.status();
                st.now = Some(now);
                if let Some(at) = st.plan.as_ref().and_then(|p| p.computed_at) {
                    shared.metrics.plan_age_seconds.set((now - at).num_milliseconds() as f64 / 1000.0);
                }
            }
            _ = shutdown.changed() => break,
        }
    }
}

fn on_event(
    shared: &Shared,
    kinds: &HashMap<String, DeviceKind>,
    counters: &mut Counters,
    ev: Event,
) {
    let m = &shared.metrics;
    match ev {
        Event::Down { device, kind } => {
            let mut st = shared.status();
            if let Some(d) = st.devices.get_mut(&device) {
                d.up = false;
                d.last_error = Some(kind.to_string());
            }
        }
        Event::Snapshot(s) => {
            let kind = kinds.get(&s.device).copied();
            let kind_s = kind.map(|k| k.as_str()).unwrap_or("unknown");
            for (name, v) in &s.readings {
                let dev = s.device.as_str();
                match *name {
                    "production_kw" => m
                        .device_power
                        .with_label_values(&[dev, kind_s])
                        .set(v * 1000.0),
                    "power_kw" => m
                        .device_power
                        .with_label_values(&[dev, kind_s])
                        .set(v * 1000.0),
                    "heat_kw" => m.heat_flow.with_label_values(&[dev]).set(v * 1000.0),
                    "soc_pct" => m.battery_soc.with_label_values(&[dev]).set(v / 100.0),
                    "store_kwh" => m
                        .heat_store_energy
                        .with_label_values(&[dev])
                        .set(v * JOULES_PER_KWH),
                    "valve_pct" => m.valve_ratio.with_label_values(&[dev]).set(v / 100.0),
                    "flow_m3h" => m.volume_flow.with_label_values(&[dev]).set(v / 3600.0),
                    n if n.ends_with("_c") => m
                        .temperature
                        .with_label_values(&[dev, n.trim_end_matches("_c")])
                        .set(*v),
                    _ => {}
                }
            }
            if let Some(k) = kind {
                for b in crate::devices::bindings(k).iter().filter(|b| b.counter) {
                    if let Some(v) = s.readings.get(b.reading) {
                        if let Some(delta) = counters.sample(&s.device, b.reading, s.at, *v) {
                            let dir = match b.reading {
                                "export_kwh" => "export",
                                "heat_kwh" => "heat",
                                "production_kwh" => "production",
                                _ => "import",
                            };
                            m.device_energy
                                .with_label_values(&[&s.device, dir])
                                .inc_by(delta.max(0.0) * JOULES_PER_KWH);
                        }
                    }
                }
            }
            let mut st = shared.status();
            st.polled_once = true;
            if let Some(d) = st.devices.get_mut(&s.device) {
                d.up = true;
                d.last_error = None;
                d.readings = s
                    .readings
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect();
            }
        }
    }
}

fn close_period(
    shared: &Shared,
    counters: &Counters,
    start: DateTime<Utc>,
    day_rows: &mut BTreeMap<NaiveDate, Vec<KeyRow>>,
) -> PeriodRecord {
    let site = &shared.site;
    let cfg = &site.config;
    let grid = site.grid;
    let m = &shared.metrics;
    let mut problems: Vec<String> = Vec::new();
    let mut production = BTreeMap::new();
    // Producers and participants whose energy is unknown this period (missing
    // samples, a counter reset): flagged in the record and left out of its
    // energy maps, so that no stand-in number is archived as if measured.
    let mut unknown: Vec<String> = Vec::new();
    let mut total_p = 0.0;
    for d in site.producers() {
        let reading = if d.kind == DeviceKind::Battery {
            "export_kwh"
        } else {
            "production_kwh"
        };
        let e = counters
            .energy(&d.id, reading, start)
            .unwrap_or_else(|why| {
                problems.push(why);
                unknown.push(d.id.clone());
                0.0
            });
        total_p += e;
        production.insert(d.id.clone(), e);
    }
    let mut consumption = Vec::with_capacity(cfg.participants.len());
    for p in &cfg.participants {
        let e = counters
            .energy(&p.meter, "import_kwh", start)
            .unwrap_or_else(|why| {
                problems.push(why);
                unknown.push(p.id.clone());
                0.0
            });
        consumption.push(e);
    }
    let precision = Precision {
        units_per_one: cfg.keys.units_per_one,
    };
    let policy = if !problems.is_empty() {
        Policy::ProRata
    } else {
        match cfg.keys.policy {
            KeyPolicy::Prorata => Policy::ProRata,
            KeyPolicy::Static => {
                Policy::Static(cfg.participants.iter().map(|p| p.static_share).collect())
            }
            KeyPolicy::Optimised => Policy::Optimised {
                tariffs_eur_per_kwh: cfg
                    .participants
                    .iter()
                    .map(|p| p.tariff_eur_per_kwh)
                    .collect(),
                priority: cfg.participants.iter().map(|p| p.priority).collect(),
            },
        }
    };
    let input = StepInput {
        production_kwh: total_p,
        consumption_kwh: consumption.clone(),
    };
    let keys = allocation::keys_for_step(&input, &policy, precision).or_else(|e| {
        problems.push(format!("keys: {e}"));
        allocation::keys_for_step(&input, &Policy::ProRata, precision)
    });
    let (units, allocated, self_consumed, surplus) = match keys {
        Ok(k) => (k.units, k.allocated_kwh, k.self_consumed_kwh, k.surplus_kwh),
        Err(e) => {
            // Nothing valid to send: all-zero keys leave everything to the DSO's default.
            problems.push(format!("pro-rata keys: {e}"));
            let n = cfg.participants.len();
            (vec![0; n], vec![0.0; n], 0.0, total_p)
        }
    };
    let quality = if problems.is_empty() {
        "measured".to_string()
    } else {
        m.period_fallbacks
            .with_label_values(&[if problems.iter().any(|p| p.contains("reset")) {
                "counter_reset"
            } else {
                "missing_data"
            }])
            .inc();
        tracing::warn!(period = %grid.format_local(start), problems = ?problems, "period flagged; keys fall back to pro-rata");
        format!("fallback: {}", problems.join("; "))
    };
    let total_c: f64 = consumption.iter().sum();

    // DSO key files for the period's local day, rewritten whole (atomic per file).
    let day = grid.local_day(start);
    let rows = day_rows.entry(day).or_default();
    rows.push(KeyRow {
        start,
        units: units.clone(),
    });
    day_rows.retain(|d, _| *d >= day - chrono::Duration::days(1));
    let producers: Vec<Prm> = site
        .producers()
        .iter()
        .filter_map(|d| d.prm.clone())
        .collect();
    let consumers: Vec<Prm> = cfg.participants.iter().map(|p| p.prm.clone()).collect();
    let dir = shared
        .output_dir
        .join("keys")
        .join(day.format("%Y-%m-%d").to_string());
    if let Some(rows) = day_rows.get(&day) {
        // The text is validated before any file is written: a layout error means no file.
        let written = std::fs::create_dir_all(&dir)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                enedis::write_simple_dynamic(&dir, &grid, &producers, &consumers, rows, precision)
                    .map_err(|e| {
                        if matches!(e, crate::dso::DsoError::Invalid { .. }) {
                            m.key_files_validated.with_label_values(&["invalid"]).inc();
                        }
                        e.to_string()
                    })
            });
        match written {
            Ok(files) => {
                m.key_files
                    .with_label_values(&["enedis"])
                    .inc_by(files.len() as u64);
                m.key_files_validated
                    .with_label_values(&["ok"])
                    .inc_by(files.len() as u64);
                m.key_files_last_written
                    .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
            }
            Err(e) => tracing::error!(dir = %dir.display(), error = %e, "key files not written"),
        }
    }

    let rec = PeriodRecord {
        start,
        start_local: grid.format_local(start),
        production_kwh: production
            .into_iter()
            .filter(|(id, _)| !unknown.contains(id))
            .collect(),
        consumption_kwh: cfg
            .participants
            .iter()
            .zip(&consumption)
            .filter(|(p, _)| !unknown.contains(&p.id))
            .map(|(p, e)| (p.id.clone(), *e))
            .collect(),
        allocated_kwh: cfg
            .participants
            .iter()
            .zip(&allocated)
            .map(|(p, e)| (p.id.clone(), *e))
            .collect(),
        key_units: units,
        total_production_kwh: total_p,
        total_consumption_kwh: total_c,
        self_consumed_kwh: self_consumed,
        surplus_kwh: surplus,
        quality,
        policy: format!("{:?}", cfg.keys.policy).to_lowercase(),
    };
    if let Err(e) = append_record(&shared.output_dir, &rec) {
        tracing::error!(error = %e, "period record not archived");
    }

    m.periods_closed.inc();
    m.period_start.set(start.timestamp() as f64);
    m.period_production.set(total_p * JOULES_PER_KWH);
    m.period_consumption.set(total_c * JOULES_PER_KWH);
    m.period_self_consumed.set(self_consumed * JOULES_PER_KWH);
    m.period_surplus.set(surplus * JOULES_PER_KWH);
    m.production_total.inc_by(total_p.max(0.0) * JOULES_PER_KWH);
    m.self_consumed_total
        .inc_by(self_consumed.max(0.0) * JOULES_PER_KWH);
    m.self_consumption_ratio.set(if total_p > 0.0 {
        self_consumed / total_p
    } else {
        0.0
    });
    m.self_sufficiency_ratio.set(if total_c > 0.0 {
        self_consumed / total_c
    } else {
        0.0
    });
    let key_sum: u32 = rec.key_units.iter().sum();
    m.key_sum_max_ratio
        .set(f64::from(key_sum) / f64::from(precision.units_per_one));
    for (p, u) in cfg.participants.iter().zip(&rec.key_units) {
        m.participant_key_ratio
            .with_label_values(&[&p.id])
            .set(f64::from(*u) / f64::from(precision.units_per_one));
    }
    for (p, (a, c)) in cfg
        .participants
        .iter()
        .zip(allocated.iter().zip(&consumption))
    {
        m.participant_allocated
            .with_label_values(&[&p.id])
            .inc_by(a.max(0.0) * JOULES_PER_KWH);
        m.participant_consumed
            .with_label_values(&[&p.id])
            .inc_by(c.max(0.0) * JOULES_PER_KWH);
    }
    tracing::info!(
        period = %rec.start_local,
        production_kwh = format!("{total_p:.1}"),
        consumption_kwh = format!("{total_c:.1}"),
        self_consumed_kwh = format!("{self_consumed:.1}"),
        surplus_kwh = format!("{surplus:.1}"),
        quality = %rec.quality,
        "period closed"
    );
    let mut st = shared.status();
    st.periods_closed += 1;
    st.last_period = Some(rec.clone());
    rec
}

fn append_record(dir: &std::path::Path, rec: &PeriodRecord) -> std::io::Result<()> {
    let ledger = dir.join("ledger");
    std::fs::create_dir_all(&ledger)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ledger.join("periods.jsonl"))?;
    let line = serde_json::to_string(rec).map_err(std::io::Error::other)?;
    writeln!(f, "{line}")?;
    f.sync_data()
}
