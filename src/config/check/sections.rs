use super::super::*;
use crate::ids::validate_id;
use std::net::SocketAddr;

/// The site-wide sections: site, http, polling, plan and keys.
pub(super) fn check_sections(config: &SiteConfig) -> Vec<Problem> {
    let mut p = Vec::new();
    let s = &config.site;
    if let Err(e) = validate_id(&s.id) {
        p.push(problem(
            "site.id",
            e.to_string(),
            "use letters, digits, '-' or '_'",
        ));
    }
    let tz: Option<chrono_tz::Tz> = s.timezone.parse().ok();
    if tz.is_none() {
        p.push(problem(
            "site.timezone",
            format!("`{}` is not an IANA time zone", s.timezone),
            "use e.g. \"Europe/Paris\"",
        ));
    }
    if ![15, 30].contains(&s.settlement_minutes) {
        p.push(problem(
            "site.settlement_minutes",
            format!(
                "{} is not a settlement step the DSO uses",
                s.settlement_minutes
            ),
            "use 15 (default since 2025) or 30",
        ));
    }
    if !(-90.0..=90.0).contains(&s.latitude) {
        p.push(problem(
            "site.latitude",
            format!("{} is outside -90..90", s.latitude),
            "give the site's latitude in decimal degrees, e.g. 47.32",
        ));
    }
    if !(-180.0..=180.0).contains(&s.longitude) {
        p.push(problem(
            "site.longitude",
            format!("{} is outside -180..180", s.longitude),
            "give the site's longitude in decimal degrees, e.g. 5.00",
        ));
    }
    if config.http.listen.parse::<SocketAddr>().is_err() {
        p.push(problem(
            "http.listen",
            format!("`{}` is not an ip:port", config.http.listen),
            "use e.g. \"127.0.0.1:9464\"",
        ));
    }
    if let Some(f) = &config.http.token_file {
        // Only that it is there: its content and mode are checked by `http::auth::Token::load`
        // (a higher room) where an endpoint needs it.
        if let Err(e) = std::fs::metadata(f) {
            p.push(problem(
                "http.token_file",
                format!("{}: {e}", f.display()),
                "create it with one line of at least 16 characters (e.g. `openssl rand -hex 32`), chmod 600",
            ));
        }
    }
    if config.polling.interval_ms < 50 || config.polling.timeout_ms < 10 {
        p.push(problem(
            "polling",
            "interval_ms below 50 or timeout_ms below 10",
            "use interval_ms ≥ 50 and timeout_ms ≥ 10",
        ));
    }
    let pl = &config.plan;
    if !(1..=72).contains(&pl.horizon_hours) {
        p.push(problem(
            "plan.horizon_hours",
            format!("{} is outside 1..72", pl.horizon_hours),
            "use 24 to 48",
        ));
    }
    for (k, v) in [
        ("plan.local_price_eur_per_kwh", pl.local_price_eur_per_kwh),
        ("plan.export_price_eur_per_kwh", pl.export_price_eur_per_kwh),
        ("plan.import_price_eur_per_kwh", pl.import_price_eur_per_kwh),
        ("plan.heat_price_eur_per_kwh", pl.heat_price_eur_per_kwh),
    ] {
        if !v.is_finite() || v.abs() > 10.0 {
            p.push(problem(
                k,
                format!("{v} is not a plausible price"),
                "give €/kWh, e.g. 0.10",
            ));
        }
    }
    if let Some(file) = &pl.export_prices_file {
        if let Err(e) = crate::prices::Schedule::load(file) {
            p.push(problem(
                "plan.export_prices_file",
                e.to_string(),
                "see the error's own fix",
            ));
        }
    }
    if ![100, 1000, 10000].contains(&config.keys.units_per_one) {
        p.push(problem(
            "keys.units_per_one",
            format!("{} is not a supported precision", config.keys.units_per_one),
            "use 1000 (0.1 %, default), 100 (1 %) or 10000 (0.01 %)",
        ));
    }
    if let Some(r) = config.keys.floor_ratio {
        if !r.is_finite() || !(0.0..=1.0).contains(&r) {
            p.push(problem(
                "keys.floor_ratio",
                format!("{r} is outside 0..1"),
                "use e.g. 0.5 (half the subscribed share), or remove the key for no floor",
            ));
        }
    }
    if let Some(id) = &config.keys.operation_id {
        if !valid_operation_id(id) {
            p.push(problem(
                "keys.operation_id",
                format!("`{id}` is not an Enedis operation id"),
                "write `ACC` and the operation's 8 digits, e.g. \"ACC00000001\" (see the operation's convention)",
            ));
        }
    }
    if !config.keys.max_load_curve_kw.is_finite() || config.keys.max_load_curve_kw <= 0.0 {
        p.push(problem(
            "keys.max_load_curve_kw",
            format!("{} is not a positive power", config.keys.max_load_curve_kw),
            "give a ceiling in kW above any meter of the operation, e.g. 10000 (default)",
        ));
    }
    if config.keys.month_budget_ms > 3_600_000 {
        p.push(problem(
            "keys.month_budget_ms",
            format!("{} ms is more than an hour", config.keys.month_budget_ms),
            "use 60000 (default) or 0 to turn the month solver off",
        ));
    }
    p
}
