use super::*;

/// Below this many key units per participant on average, rounding to whole
/// units costs small consumers their pro-rata month.
const COARSE_KEYS_UNITS_PER_PARTICIPANT: usize = 5;

/// What `check` lets pass but an installer should hear about: keys too
/// coarse for the operation's size, and a controlled device whose own revert
/// timer exists in its map but is not in `writes`.
/// ped then cannot arm it, and after a crash or `kill -9` the device keeps
/// ped's last setpoint until its own default watchdog, if it has one.
pub fn warnings(config: &SiteConfig, lib: &crate::registers::ModelLibrary) -> Vec<Problem> {
    let mut w = Vec::new();
    let units = config.keys.units_per_one;
    let participants = config.participants.len();
    if participants > 0 && (units as usize) < COARSE_KEYS_UNITS_PER_PARTICIPANT * participants {
        w.push(problem(
            "keys.units_per_one".to_string(),
            format!(
                "{units} key units for {participants} participants: an average participant's share of a step is under {COARSE_KEYS_UNITS_PER_PARTICIPANT} units, so a household's share is often below one; no rounding then keeps every participant's month at pro rata and places all the energy (600 participants at 1000: 553 short and 6.7 % of local use unallocated in a backtested month)"
            ),
            "set keys.units_per_one = 10000 (the DSO's key files carry two decimals)".to_string(),
        ));
    }
    let layout = crate::dso::enedis::Layout::of(config.keys.layout).with(&config.keys.file);
    if participants > 0
        && layout.naming == crate::dso::enedis::Naming::Operation
        && config.keys.operation_id.is_none()
        && config.operations.is_empty()
    {
        w.push(problem(
            "keys.operation_id".to_string(),
            format!(
                "the `{}` layout names the month's key file after the operation, and no operation id is set: the daemon keeps the daily working files but queues no month file for the DSO, and `ped keys --format enedis` stops",
                layout.label()
            ),
            "set keys.operation_id = \"ACC…\" (the operation's Enedis id, from its convention), or keys.file.naming = \"producer\"".to_string(),
        ));
    }
    for (i, d) in config.devices.iter().enumerate() {
        let controlled = matches!(
            d.kind,
            DeviceKind::Battery | DeviceKind::PowerToHeat | DeviceKind::PvInverter
        );
        if !controlled || d.writes.is_empty() {
            continue;
        }
        let writes = |p: &str| d.writes.iter().any(|x| x == p);
        let timer: Option<&str> = if d.map == "sunspec" {
            if writes("WSet") || writes("WSetEna") {
                Some("WSetRvrtTms")
            } else if writes("WMaxLim_Ena") {
                Some("WMaxLimPct_RvrtTms")
            } else if writes("WMaxLimPct") || writes("WMaxLimPctEna") {
                Some("WMaxLimPctRvrtTms")
            } else {
                None
            }
        } else {
            lib.get(&d.map)
                .and_then(|m| m.point("revert_seconds"))
                .map(|_| "revert_seconds")
        };
        if let Some(t) = timer.filter(|t| !writes(t)) {
            w.push(problem(
                format!("devices[{i}].writes (id `{}`)", d.id),
                format!("the device's own revert timer `{t}` is not in writes: ped cannot arm it, so after a crash the device keeps ped's last setpoint until its own default watchdog"),
                format!("add \"{t}\" to writes (ped writes revert_timeout_s there before the first setpoint)"),
            ));
        }
    }
    w
}
