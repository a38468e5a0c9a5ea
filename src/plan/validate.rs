//! Validation of a [`PlanInput`] before anything reads it: series lengths,
//! finiteness and the range of every scalar, and device participants that
//! name a device of the input.

use super::{PlanError, PlanInput};

fn invalid(msg: impl Into<String>) -> PlanError {
    PlanError::Invalid(msg.into())
}

fn check_series(name: &str, v: &[f64], len: usize, nonneg: bool) -> Result<(), PlanError> {
    if v.len() != len {
        return Err(invalid(format!(
            "{name} has {} steps, expected {len}",
            v.len()
        )));
    }
    if let Some(k) = v
        .iter()
        .position(|x| !x.is_finite() || (nonneg && *x < 0.0))
    {
        let what = if nonneg { "finite and >= 0" } else { "finite" };
        return Err(invalid(format!("{name}[{k}] = {} must be {what}", v[k])));
    }
    Ok(())
}

fn check_scalar(name: &str, x: f64, lo: f64, hi: f64) -> Result<(), PlanError> {
    if !(x.is_finite() && x >= lo && x <= hi) {
        return Err(invalid(format!("{name} = {x} must be within {lo}..={hi}")));
    }
    Ok(())
}

/// Lengths, finiteness and ranges of everything the LP reads.
pub fn validate(input: &PlanInput) -> Result<(), PlanError> {
    let n = input.pv_kw.len();
    if n == 0 {
        return Err(invalid("empty horizon (pv_kw has no step)"));
    }
    check_scalar("step_hours", input.step_hours, 1e-6, 24.0)?;
    check_series("pv_kw", &input.pv_kw, n, true)?;
    check_series(
        "export_price_eur_per_kwh",
        &input.export_price_eur_per_kwh,
        n,
        false,
    )?;
    check_series(
        "import_price_eur_per_kwh",
        &input.import_price_eur_per_kwh,
        n,
        false,
    )?;
    check_scalar(
        "local_price_eur_per_kwh",
        input.local_price_eur_per_kwh,
        f64::MIN,
        f64::MAX,
    )?;
    for p in &input.participants {
        check_series(
            &format!("participant {} load_kw", p.id),
            &p.load_kw,
            n,
            true,
        )?;
        check_scalar(
            &format!("participant {} tariff", p.id),
            p.tariff_eur_per_kwh,
            f64::MIN,
            f64::MAX,
        )?;
        if !p.tariff_steps_eur_per_kwh.is_empty() {
            check_series(
                &format!("participant {} tariff_steps_eur_per_kwh", p.id),
                &p.tariff_steps_eur_per_kwh,
                n,
                false,
            )?;
        }
    }
    for b in &input.batteries {
        let name = |f: &str| format!("battery {} {f}", b.id);
        check_scalar(&name("capacity_kwh"), b.capacity_kwh, 0.0, f64::MAX)?;
        check_scalar(&name("min_soc_kwh"), b.min_soc_kwh, 0.0, b.capacity_kwh)?;
        check_scalar(&name("soc_kwh"), b.soc_kwh, 0.0, b.capacity_kwh)?;
        check_scalar(&name("max_charge_kw"), b.max_charge_kw, 0.0, f64::MAX)?;
        check_scalar(&name("max_discharge_kw"), b.max_discharge_kw, 0.0, f64::MAX)?;
        check_scalar(&name("charge_eff"), b.charge_eff, 1e-3, 1.0)?;
        check_scalar(&name("discharge_eff"), b.discharge_eff, 1e-3, 1.0)?;
        check_scalar(
            &name("end_value_eur_per_kwh"),
            b.end_value_eur_per_kwh,
            f64::MIN,
            f64::MAX,
        )?;
    }
    let mut attached = std::collections::HashSet::new();
    for d in &input.device_participants {
        let name = |f: &str| format!("device participant {} {f}", d.id);
        if input.device_ref(d).is_none() {
            return Err(invalid(format!(
                "device participant {} names device {}, which is neither a battery nor a heat unit of the plan",
                d.id, d.device
            )));
        }
        if !attached.insert(d.device.as_str()) {
            return Err(invalid(format!(
                "device {} has more than one participant ({} is the second)",
                d.device, d.id
            )));
        }
        if input.participants.iter().any(|p| p.id == d.id) {
            return Err(invalid(format!(
                "device participant {} is also an ordinary participant",
                d.id
            )));
        }
        check_scalar(&name("tariff"), d.tariff_eur_per_kwh, f64::MIN, f64::MAX)?;
        if !d.tariff_steps_eur_per_kwh.is_empty() {
            check_series(
                &name("tariff_steps_eur_per_kwh"),
                &d.tariff_steps_eur_per_kwh,
                n,
                false,
            )?;
        }
    }
    for h in &input.heat {
        let name = |f: &str| format!("heat unit {} {f}", h.id);
        check_scalar(&name("p2h_max_kw"), h.p2h_max_kw, 0.0, f64::MAX)?;
        check_scalar(&name("efficiency"), h.efficiency, 0.0, 10.0)?;
        check_scalar(
            &name("store_capacity_kwh"),
            h.store_capacity_kwh,
            0.0,
            f64::MAX,
        )?;
        check_scalar(&name("store_kwh"), h.store_kwh, 0.0, h.store_capacity_kwh)?;
        // The loss over one step must stay below the whole store.
        check_scalar(
            &name("loss_ratio_per_hour"),
            h.loss_ratio_per_hour,
            0.0,
            0.999 / input.step_hours,
        )?;
        check_series(&name("heat_demand_kw"), &h.heat_demand_kw, n, true)?;
        if !h.max_heat_kw.is_empty() {
            check_series(&name("max_heat_kw"), &h.max_heat_kw, n, true)?;
        }
        check_scalar(
            &name("heat_price_eur_per_kwh"),
            h.heat_price_eur_per_kwh,
            f64::MIN,
            f64::MAX,
        )?;
    }
    Ok(())
}
