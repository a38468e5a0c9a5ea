//! Everything serde cannot check, each problem with its key and its fix.

mod control;
pub(super) mod delivery;
mod devices;
mod participants;
mod sections;

use super::*;

/// Checks everything that serde cannot: returns every problem at once.
pub fn check(config: &SiteConfig, known_maps: &BTreeSet<String>) -> Vec<Problem> {
    let mut p = Vec::new();
    p.extend(sections::check_sections(config));
    let (devices, prms) = devices::check_devices(config, known_maps);
    p.extend(devices);
    let (participants, part_ids, static_sum) = participants::check_participants(config, prms);
    p.extend(participants);
    participants::check_operations(config, &mut p);
    if config.keys.policy == KeyPolicy::Static
        && config.operations.is_empty()
        && static_sum > 1.0 + 1e-9
    {
        p.push(problem(
            "participants[*].static_share",
            format!("static shares add up to {static_sum:.6} > 1"),
            "scale the shares so that they add up to at most 1",
        ));
    }
    for (i, d) in config.devices.iter().enumerate() {
        if let Some(pid) = &d.participant {
            if !part_ids.contains_key(pid.as_str()) {
                p.push(problem(
                    format!("devices[{i}].participant (id `{}`)", d.id),
                    format!("no participant `{pid}`"),
                    "name an id from [[participants]]",
                ));
            }
        }
    }
    if config.participants.is_empty() {
        p.push(problem(
            "participants",
            "no participant",
            "add [[participants]] entries",
        ));
    }
    if !config
        .devices
        .iter()
        .any(|d| d.kind == DeviceKind::PvInverter)
    {
        p.push(problem(
            "devices",
            "no PV plant: nothing to share",
            "add a device of kind \"pv_inverter\"",
        ));
    }
    if let Some(path) = &config.ledger.path {
        if path.is_dir() {
            p.push(problem(
                "ledger.path",
                format!("{} is a folder", path.display()),
                "give a file name, e.g. out/ledger/ped.sqlite",
            ));
        } else if let Some(parent) = path.parent().filter(|d| d.is_file()) {
            p.push(problem(
                "ledger.path",
                format!(
                    "{} cannot be created: {} is a file",
                    path.display(),
                    parent.display()
                ),
                "put the ledger in a folder, e.g. out/ledger/ped.sqlite",
            ));
        }
    }
    if let Some(d) = &config.delivery {
        delivery::check_delivery(d, &mut p);
    }
    control::check_control_safety(config, &mut p);
    p
}
