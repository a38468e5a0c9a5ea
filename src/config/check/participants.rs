use super::super::*;
use crate::ids::validate_id;
use std::collections::BTreeMap;

/// `[[participants]]`; also returns their ids and the sum of their static shares.
pub(super) fn check_participants<'a>(
    config: &'a SiteConfig,
    mut prms: BTreeMap<&'a str, String>,
) -> (Vec<Problem>, BTreeMap<&'a str, usize>, f64) {
    let mut p = Vec::new();
    let mut part_ids: BTreeMap<&str, usize> = BTreeMap::new();
    let mut static_sum = 0.0;
    for (i, q) in config.participants.iter().enumerate() {
        let key = |f: &str| format!("participants[{i}].{f} (id `{}`)", q.id);
        if let Err(e) = validate_id(&q.id) {
            p.push(problem(
                key("id"),
                e.to_string(),
                "use letters, digits, '-' or '_'",
            ));
        }
        if let Some(j) = part_ids.insert(&q.id, i) {
            p.push(problem(
                key("id"),
                format!("duplicate participant id, also participants[{j}]"),
                "give every participant its own id",
            ));
        }
        if let Some(other) = prms.insert(q.prm.as_str(), format!("participants[{i}]")) {
            // A battery legitimately shares one PRM between its producer and consumer roles.
            let is_battery_pair = q.kind == ParticipantKind::Battery
                && config.devices.iter().any(|d| {
                    d.kind == DeviceKind::Battery
                        && d.prm.as_ref() == Some(&q.prm)
                        && d.participant.as_deref() == Some(q.id.as_str())
                });
            if !is_battery_pair {
                p.push(problem(
                    key("prm"),
                    format!("duplicate PRM {}, also {other}", q.prm),
                    "every metering point has its own PRM",
                ));
            }
        }
        match config.devices.iter().find(|d| d.id == q.meter) {
            None => p.push(problem(key("meter"), format!("no device `{}`", q.meter), "name the id of the meter device that measures this participant")),
            Some(d) if !matches!(d.kind, DeviceKind::Meter | DeviceKind::Battery) => p.push(problem(
                key("meter"),
                format!("device `{}` is a {}, not a meter", q.meter, d.kind.as_str()),
                "point at a device of kind \"meter\" (or the battery itself for a battery participant)",
            )),
            _ => {}
        }
        if !q.tariff_eur_per_kwh.is_finite() || !(0.0..=5.0).contains(&q.tariff_eur_per_kwh) {
            p.push(problem(
                key("tariff_eur_per_kwh"),
                format!("{} is not a plausible retail price", q.tariff_eur_per_kwh),
                "give €/kWh, e.g. 0.2516",
            ));
        }
        for (j, w) in q.tou.iter().enumerate() {
            for (name, v) in [("from", &w.from), ("to", &w.to)] {
                if parse_hhmm(v).is_none() {
                    p.push(problem(
                        key(&format!("tou[{j}].{name}")),
                        format!("`{v}` is not a local time HH:MM"),
                        "write e.g. \"22:00\" (00:00 to 24:00, site time zone)",
                    ));
                }
            }
            if w.from == w.to {
                p.push(problem(
                    key(&format!("tou[{j}]")),
                    format!("window {}–{} is empty", w.from, w.to),
                    "give different from and to (a window over midnight has from after to)",
                ));
            }
            if !w.eur_kwh.is_finite() || !(0.0..=5.0).contains(&w.eur_kwh) {
                p.push(problem(
                    key(&format!("tou[{j}].eur_kwh")),
                    format!("{} is not a plausible retail price", w.eur_kwh),
                    "give €/kWh, e.g. 0.2068 for French off-peak (HC)",
                ));
            }
        }
        if let Some(kva) = q.subscribed_kva {
            if !kva.is_finite() || kva <= 0.0 || kva > 100_000.0 {
                p.push(problem(
                    key("subscribed_kva"),
                    format!("{kva} is not a subscribed power"),
                    "give the supply contract's power in kVA, e.g. 9 (or remove the key)",
                ));
            }
        }
        let mut days = [None, None];
        for (slot, (name, v)) in days
            .iter_mut()
            .zip([("entry", &q.entry), ("exit", &q.exit)])
        {
            if let Some(v) = v {
                *slot = parse_day(v);
                if slot.is_none() {
                    p.push(problem(
                        key(name),
                        format!("`{v}` is not a local date YYYY-MM-DD"),
                        if name == "entry" {
                            "write the first day in the operation, e.g. \"2026-03-16\""
                        } else {
                            "write the last day in the operation, e.g. \"2026-07-10\""
                        },
                    ));
                }
            }
        }
        if let [Some(entry), Some(exit)] = days {
            if entry > exit {
                p.push(problem(
                    key("exit"),
                    format!("exit {exit} is before entry {entry}"),
                    "exit is the last day in the operation, on or after entry; swap them if reversed",
                ));
            }
        }
        if !(0.0..=1.0).contains(&q.static_share) {
            p.push(problem(
                key("static_share"),
                format!("{} is outside 0..1", q.static_share),
                "give a share such as 0.0123",
            ));
        }
        static_sum += q.static_share;
    }
    (p, part_ids, static_sum)
}

/// `[[operations]]`: valid and unique ids, producers and participants that
/// exist, each in one operation, every participant in one.
pub(super) fn check_operations(config: &SiteConfig, p: &mut Vec<Problem>) {
    if config.operations.is_empty() {
        return;
    }
    if let Some(id) = &config.keys.operation_id {
        p.push(problem(
            "keys.operation_id",
            format!("`{id}` is set and [[operations]] are declared: which operation is it?"),
            "remove keys.operation_id; each [[operations]] has its own id",
        ));
    }
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    let mut producer_of: BTreeMap<&str, &str> = BTreeMap::new();
    let mut member_of: BTreeMap<&str, &str> = BTreeMap::new();
    for (i, o) in config.operations.iter().enumerate() {
        let key = |f: &str| format!("operations[{i}].{f} (id `{}`)", o.id);
        if !valid_operation_id(&o.id) {
            p.push(problem(
                key("id"),
                format!("`{}` is not an Enedis operation id", o.id),
                "write `ACC` and the operation's 8 digits, e.g. \"ACC00000001\" (see the operation's convention)",
            ));
        }
        if let Some(j) = ids.insert(&o.id, i) {
            p.push(problem(
                key("id"),
                format!("duplicate operation id, also operations[{j}]"),
                "give every operation its own Enedis id",
            ));
        }
        if o.producers.is_empty() {
            p.push(problem(
                key("producers"),
                "no producer: the operation has nothing to share",
                "list the device ids of its PV plants (and batteries)",
            ));
        }
        for d in &o.producers {
            match config.devices.iter().find(|x| &x.id == d) {
                None => p.push(problem(
                    key("producers"),
                    format!("no device `{d}`"),
                    "name the id of a PV inverter or battery from [[devices]]",
                )),
                Some(x) if !matches!(x.kind, DeviceKind::PvInverter | DeviceKind::Battery) => p
                    .push(problem(
                        key("producers"),
                        format!("device `{d}` is a {}, not a producer", x.kind.as_str()),
                        "name a PV inverter or battery",
                    )),
                Some(_) => {
                    if let Some(other) = producer_of.insert(d, &o.id) {
                        p.push(problem(
                            key("producers"),
                            format!("`{d}` is already a producer of {other}"),
                            "a production installation takes part in one operation: keep it in one list",
                        ));
                    }
                }
            }
        }
        if o.participants.is_empty() {
            p.push(problem(
                key("participants"),
                "no participant: nobody to share with",
                "list the ids of its participants from [[participants]]",
            ));
        }
        for q in &o.participants {
            if !config.participants.iter().any(|x| &x.id == q) {
                p.push(problem(
                    key("participants"),
                    format!("no participant `{q}`"),
                    "name an id from [[participants]]",
                ));
            } else if let Some(other) = member_of.insert(q, &o.id) {
                p.push(problem(
                    key("participants"),
                    format!("`{q}` is already a member of {other}"),
                    "a consumer takes part in one operation: keep it in one list",
                ));
            }
        }
        if config.keys.policy == KeyPolicy::Static {
            let sum: f64 = config
                .participants
                .iter()
                .filter(|x| o.participants.contains(&x.id))
                .map(|x| x.static_share)
                .sum();
            if sum > 1.0 + 1e-9 {
                p.push(problem(
                    key("participants"),
                    format!("its members' static shares add up to {sum:.6} > 1"),
                    "scale the shares of the operation's members so that they add up to at most 1",
                ));
            }
        }
    }
    for (i, q) in config.participants.iter().enumerate() {
        if !member_of.contains_key(q.id.as_str()) {
            p.push(problem(
                format!("participants[{i}] (id `{}`)", q.id),
                "is in no operation: its consumption would be shared with nobody",
                "add its id to the participants of one [[operations]], or remove it",
            ));
        }
    }
}
