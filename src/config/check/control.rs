use super::super::*;

/// What keeps ped's writes and timers sane: setpoint ranges inside the
/// ratings, every duration and count bounded, no broadcast unit id.
pub(super) fn check_control_safety(config: &SiteConfig, p: &mut Vec<Problem>) {
    let poll = &config.polling;
    for (k, v, max, fix) in [
        (
            "polling.interval_ms",
            poll.interval_ms,
            limits::INTERVAL_MS,
            "use e.g. interval_ms = 1000 (at most 3600000, one hour)",
        ),
        (
            "polling.timeout_ms",
            poll.timeout_ms,
            limits::TIMEOUT_MS,
            "use e.g. timeout_ms = 1000 (at most 60000)",
        ),
        (
            "polling.max_backoff_ms",
            poll.max_backoff_ms,
            limits::INTERVAL_MS,
            "use e.g. max_backoff_ms = 60000 (at most 3600000, one hour)",
        ),
        (
            "plan.budget_ms",
            config.plan.budget_ms,
            limits::PLAN_BUDGET_MS,
            "use e.g. budget_ms = 5000 (at most 600000, ten minutes)",
        ),
    ] {
        if v > max {
            p.push(problem(k, format!("{v} ms is more than {max} ms"), fix));
        }
    }
    // plan.budget_ms = 0 is allowed: no LP, every plan from the fallback ladder.
    if let Some(n) = config.control.plan_loss_steps {
        if !(1..=limits::PLAN_LOSS_STEPS).contains(&n) {
            p.push(problem(
                "control.plan_loss_steps",
                format!("{n} is outside 1..={}: 0 would release every device at every control tick, and more than a day of steps is no plan-loss guard", limits::PLAN_LOSS_STEPS),
                "use 2 (default: release after two settlement steps without a fresh plan)",
            ));
        }
    }
    if config.ledger.snapshot_retention_days > limits::RETENTION_DAYS {
        p.push(problem(
            "ledger.snapshot_retention_days",
            format!(
                "{} days is more than {}",
                config.ledger.snapshot_retention_days,
                limits::RETENTION_DAYS
            ),
            "use e.g. 400 (a year and some, for reconciliation with the DSO)",
        ));
    }
    if let Some(d) = &config.delivery {
        for (k, v) in [
            ("delivery.backoff_base_s", d.backoff_base_s),
            ("delivery.backoff_cap_s", d.backoff_cap_s),
        ] {
            if v > limits::DELIVERY_BACKOFF_S {
                p.push(problem(
                    k,
                    format!(
                        "{v} s is more than a day: a file would wait that long between attempts"
                    ),
                    "use e.g. backoff_base_s = 60, backoff_cap_s = 3600 (at most 86400)",
                ));
            }
        }
    }
    for (i, d) in config.devices.iter().enumerate() {
        let key = |f: &str| format!("devices[{i}].{f} (id `{}`)", d.id);
        if let Some(ms) = d.interval_ms {
            if ms > limits::INTERVAL_MS {
                p.push(problem(
                    key("interval_ms"),
                    format!("{ms} ms is more than an hour"),
                    "use e.g. interval_ms = 1000 (at most 3600000), or leave it out for polling.interval_ms",
                ));
            }
        }
        if let Some(s) = d.revert_timeout_s {
            if s.is_finite() && s > limits::REVERT_TIMEOUT_S {
                p.push(problem(
                    key("revert_timeout_s"),
                    format!("{s} s is more than an hour: the device would hold ped's last setpoint that long after ped stops"),
                    "use the device's watchdog in seconds, e.g. revert_timeout_s = 60 (at most 3600)",
                ));
            }
        }
        // Unit 0 is the broadcast address on a serial line: every device on
        // it would obey, none would answer.
        if d.unit == 0 && d.transport != Transport::Tcp {
            p.push(problem(
                key("unit"),
                "unit 0 is the Modbus broadcast address: every device on the line would take ped's writes and none answers",
                "give the device's own unit id, 1..=247",
            ));
        } else if d.unit > 247 && d.transport == Transport::Rtu {
            p.push(problem(
                key("unit"),
                format!("unit {} is reserved on a serial line", d.unit),
                "give the device's own unit id, 1..=247",
            ));
        }
        if d.unit == 0 && d.transport == Transport::Tcp {
            p.push(problem(
                key("unit"),
                "unit 0 is the broadcast address to a Modbus gateway: every device behind it would take ped's writes",
                "give the unit id of the device (1..=247), or 255 or 1 for a device reached directly over TCP",
            ));
        }
        for (f, v) in [("tilt_deg", d.tilt_deg), ("azimuth_deg", d.azimuth_deg)] {
            if let Some(x) = v {
                let ok = match f {
                    "tilt_deg" => (0.0..=90.0).contains(&x),
                    _ => (0.0..=360.0).contains(&x),
                };
                if !ok {
                    p.push(problem(
                        key(f),
                        format!("{x} is not an angle in {}", if f == "tilt_deg" { "0..=90" } else { "0..=360" }),
                        "give degrees: tilt 0 (flat) to 90 (vertical), azimuth 0..360 with 180 = south",
                    ));
                }
            }
        }
        if let Some(x) = d.annual_heat_kwh {
            if !(x.is_finite() && x >= 0.0) {
                p.push(problem(
                    key("annual_heat_kwh"),
                    format!("{x} is not an energy"),
                    "give kWh per year, e.g. 120000",
                ));
            }
        }
        check_setpoint_range(d, &key, p);
    }
    for (i, q) in config.participants.iter().enumerate() {
        if !(q.annual_kwh.is_finite() && q.annual_kwh >= 0.0) {
            p.push(problem(
                format!("participants[{i}].annual_kwh (id `{}`)", q.id),
                format!("{} is not an energy", q.annual_kwh),
                "give the expected consumption in kWh per year, e.g. 3500, or leave it out",
            ));
        }
    }
}

/// The setpoint range must lie within the ratings: a minimum above the charge
/// rating (or a maximum below the discharge rating) leaves no safe setpoint.
fn check_setpoint_range(d: &DeviceConfig, key: &dyn Fn(&str) -> String, p: &mut Vec<Problem>) {
    let (lo, hi, rating) = match d.kind {
        DeviceKind::Battery => (
            -d.max_discharge_kw.unwrap_or(0.0),
            d.max_charge_kw.unwrap_or(0.0),
            "-max_discharge_kw..=max_charge_kw",
        ),
        DeviceKind::PowerToHeat => (0.0, d.max_power_kw.unwrap_or(0.0), "0..=max_power_kw"),
        _ => {
            for (f, v) in [
                ("setpoint_min_kw", d.setpoint_min_kw),
                ("setpoint_max_kw", d.setpoint_max_kw),
            ] {
                if v.is_some() {
                    p.push(problem(
                        key(f),
                        format!("a {} takes no power setpoint", d.kind.as_str()),
                        "remove it (only batteries and power-to-heat units take power setpoints)",
                    ));
                }
            }
            return;
        }
    };
    for (f, v) in [
        ("setpoint_min_kw", d.setpoint_min_kw),
        ("setpoint_max_kw", d.setpoint_max_kw),
    ] {
        let Some(x) = v else { continue };
        if !(x >= lo && x <= hi) {
            p.push(problem(
                key(f),
                format!("{x} kW is outside the device's ratings {rating} = {lo}..={hi} kW"),
                format!("give a value within {lo}..={hi} kW (ped's convention: positive = charge/consume), or leave it out for the rating"),
            ));
        }
    }
}
