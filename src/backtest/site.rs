//! The simulated site: batteries, heat units, tariffs, priorities, prices and
//! key policy from the site config matched to the data set, and the replayed
//! range of local days.

use std::collections::BTreeMap;

use chrono::NaiveDate;

use super::{BacktestError, Dataset, Options};
use crate::allocation::{Policy, Precision};
use crate::config::{DeviceKind, KeyPolicy, SiteConfig};

/// A battery or heat unit of the site config, as the device model sees it.
#[derive(Debug, Clone)]
pub(super) struct Battery {
    pub(super) id: String,
    pub(super) capacity: f64,
    pub(super) floor: f64,
    pub(super) max_charge: f64,
    pub(super) max_discharge: f64,
}

#[derive(Debug, Clone)]
pub(super) struct HeatUnit {
    pub(super) id: String,
    pub(super) max_kw: f64,
    pub(super) capacity: f64,
    /// Index of its substation in the data set's heat series.
    pub(super) substation: usize,
}

/// Everything the replay needs from the site config and the data set.
pub(super) struct Site {
    pub(super) lat: f64,
    pub(super) lon: f64,
    pub(super) tariff: Vec<f64>,
    pub(super) priority: Vec<u8>,
    pub(super) static_share: Vec<f64>,
    pub(super) batteries: Vec<Battery>,
    pub(super) heat: Vec<HeatUnit>,
    pub(super) local_price: f64,
    pub(super) export_price: f64,
    pub(super) import_price: f64,
    pub(super) heat_price: f64,
    pub(super) horizon_hours: u32,
    pub(super) policy: KeyPolicy,
    pub(super) precision: Precision,
    /// `[keys]` fairness, when the site's optimised keys are solved as the
    /// month's next step (`keys.month_budget_ms` > 0), as the daemon does.
    pub(super) month_fairness: Option<crate::allocation::solver::Fairness>,
}

pub(super) fn build_site(cfg: &SiteConfig, ds: &Dataset) -> Result<Site, BacktestError> {
    let by_id: BTreeMap<&str, &crate::config::ParticipantConfig> = cfg
        .participants
        .iter()
        .map(|p| (p.id.as_str(), p))
        .collect();
    // Participants the site config does not list get the generator's defaults
    // (scripts/gen-site-config.py): households 0.2516 €/kWh and priority 1,
    // substation auxiliaries 0.18, everything else 0.20 and priority 2.
    let (tariff, priority): (Vec<f64>, Vec<u8>) = ds
        .participants
        .iter()
        .map(|p| match by_id.get(p.id.as_str()) {
            Some(c) => (c.tariff_eur_per_kwh, c.priority),
            None => match p.kind.as_str() {
                "household" => (0.2516, 1),
                "heat_substation" => (0.18, 2),
                _ => (0.20, 2),
            },
        })
        .unzip();
    let batteries = cfg
        .devices
        .iter()
        .filter(|d| d.kind == DeviceKind::Battery)
        .map(|d| {
            let cap = d.capacity_kwh.unwrap_or(0.0).max(0.0);
            Battery {
                id: d.id.clone(),
                capacity: cap,
                floor: cap * d.min_soc_ratio.unwrap_or(0.1).clamp(0.0, 1.0),
                max_charge: d.max_charge_kw.unwrap_or(0.0).max(0.0),
                max_discharge: d.max_discharge_kw.unwrap_or(0.0).max(0.0),
            }
        })
        .collect();
    let heat = cfg
        .devices
        .iter()
        .filter(|d| d.kind == DeviceKind::PowerToHeat)
        .map(|d| {
            let sst = d.substation.clone().unwrap_or_default();
            let substation = ds.substations.iter().position(|s| *s == sst).ok_or_else(|| {
                BacktestError::Options(format!(
                    "device {}: substation `{sst}` is not a column of heat.csv (fix: set devices.substation to one of {:?})",
                    d.id, ds.substations
                ))
            })?;
            Ok(HeatUnit {
                id: d.id.clone(),
                max_kw: d.max_power_kw.unwrap_or(0.0).max(0.0),
                capacity: d.capacity_kwh.unwrap_or(0.0).max(0.0),
                substation,
            })
        })
        .collect::<Result<Vec<_>, BacktestError>>()?;
    Ok(Site {
        lat: cfg.site.latitude,
        lon: cfg.site.longitude,
        tariff,
        priority,
        static_share: ds
            .participants
            .iter()
            .map(|p| p.subscription_share)
            .collect(),
        batteries,
        heat,
        local_price: cfg.plan.local_price_eur_per_kwh,
        export_price: cfg.plan.export_price_eur_per_kwh,
        import_price: cfg.plan.import_price_eur_per_kwh,
        heat_price: cfg.plan.heat_price_eur_per_kwh,
        horizon_hours: cfg.plan.horizon_hours.max(1),
        policy: cfg.keys.policy,
        precision: Precision::new(cfg.keys.units_per_one).unwrap_or_default(),
        month_fairness: (cfg.keys.policy == KeyPolicy::Optimised && cfg.keys.month_budget_ms > 0)
            .then(|| crate::allocation::solver::Fairness {
                floor_ratio: cfg.keys.floor_ratio,
                no_worse_than_pro_rata: cfg.keys.no_worse_than_pro_rata,
                ..Default::default()
            }),
    })
}

/// The replay range: local days `from..=to`, default from a week after the
/// data set starts (forecast warm-up) to its end.
pub(super) fn range(ds: &Dataset, opts: &Options) -> Result<(usize, usize), BacktestError> {
    let g = ds.cal.grid;
    let first_day = g.local_day(ds.cal.start);
    let last_day = g.local_day(ds.cal.time(ds.cal.len - 1));
    let from = opts.from.unwrap_or_else(|| {
        first_day
            .checked_add_days(chrono::Days::new(7))
            .filter(|d| *d <= last_day)
            .unwrap_or(first_day)
    });
    let to = opts.to.unwrap_or(last_day);
    if from < first_day || to > last_day || from > to {
        return Err(BacktestError::Options(format!(
            "--from {from} --to {to}: the data set covers {first_day} to {last_day}"
        )));
    }
    let at = |d: NaiveDate| -> usize {
        g.local_midnight(d)
            .ok()
            .and_then(|t| ds.cal.index(t))
            .unwrap_or(0)
    };
    let begin = at(from);
    let end = match to.succ_opt() {
        Some(n) if n <= last_day => at(n),
        _ => ds.cal.len,
    };
    Ok((begin, end))
}

pub(super) fn static_policy(site: &Site, storage: usize) -> Policy {
    Policy::Static(
        site.static_share
            .iter()
            .copied()
            .chain(std::iter::repeat(0.0).take(storage))
            .collect(),
    )
}
