use super::super::*;
use crate::ids::validate_id;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, ToSocketAddrs};

/// `[[devices]]`; also returns the PRMs seen, which participants must not reuse.
pub(super) fn check_devices<'a>(
    config: &'a SiteConfig,
    known_maps: &BTreeSet<String>,
) -> (Vec<Problem>, BTreeMap<&'a str, String>) {
    let mut p = Vec::new();
    let mut device_ids: BTreeMap<&str, usize> = BTreeMap::new();
    let mut endpoint_units: BTreeMap<(String, u8), usize> = BTreeMap::new();
    let mut endpoint_transport: BTreeMap<&str, (Transport, usize)> = BTreeMap::new();
    let mut serial_lines: BTreeMap<&str, (SerialConfig, usize)> = BTreeMap::new();
    let mut prms: BTreeMap<&str, String> = BTreeMap::new();
    for (i, d) in config.devices.iter().enumerate() {
        let key = |f: &str| format!("devices[{i}].{f} (id `{}`)", d.id);
        if let Err(e) = validate_id(&d.id) {
            p.push(problem(
                key("id"),
                e.to_string(),
                "use letters, digits, '-' or '_'",
            ));
        }
        if let Some(j) = device_ids.insert(&d.id, i) {
            p.push(problem(
                key("id"),
                format!("duplicate device id, also devices[{j}]"),
                "give every device its own id",
            ));
        }
        // A serial port is named by its path, checked in `check_serial`.
        let resolved = if d.transport == Transport::Rtu {
            Ok(())
        } else {
            resolve_address(&d.address).map(|_| ())
        };
        match resolved {
            Ok(()) => {
                if let Some(j) = endpoint_units.insert((d.address.clone(), d.unit), i) {
                    p.push(problem(
                        key("unit"),
                        format!("unit {} at {} is also devices[{j}]", d.unit, d.address),
                        "give each device behind one gateway its own unit id",
                    ));
                }
            }
            Err(m) => p.push(problem(
                key("address"),
                m,
                "write host:port with a port in 1..65535, e.g. \"192.168.10.21:502\"",
            )),
        }
        if d.map != "sunspec" && !known_maps.contains(&d.map) {
            let list: Vec<&str> = known_maps
                .iter()
                .filter(|k| k.starts_with("vendor/"))
                .map(|s| s.as_str())
                .collect();
            p.push(problem(
                key("map"),
                format!("unknown device model `{}`", d.map),
                format!(
                    "use \"sunspec\" or one of: {} (or add a file to models/)",
                    list.join(", ")
                ),
            ));
        }
        let need = |p: &mut Vec<Problem>, f: &str, v: Option<f64>, hint: &str| match v {
            None => p.push(problem(
                key(f),
                format!("a {} needs `{f}`", d.kind.as_str()),
                hint,
            )),
            Some(x) if !x.is_finite() || x < 0.0 => {
                p.push(problem(key(f), format!("{x} must be ≥ 0"), hint))
            }
            _ => {}
        };
        match d.kind {
            DeviceKind::PvInverter => {
                need(&mut p, "kwp", d.kwp, "give the plant's peak power in kWp");
                if d.prm.is_none() {
                    p.push(problem(
                        key("prm"),
                        "a PV plant needs its producer PRM",
                        "add prm = \"14 digits\"",
                    ));
                }
            }
            DeviceKind::Battery => {
                need(
                    &mut p,
                    "capacity_kwh",
                    d.capacity_kwh,
                    "give the usable capacity in kWh",
                );
                need(
                    &mut p,
                    "max_charge_kw",
                    d.max_charge_kw,
                    "give the charge limit in kW",
                );
                need(
                    &mut p,
                    "max_discharge_kw",
                    d.max_discharge_kw,
                    "give the discharge limit in kW",
                );
                if d.prm.is_none() {
                    p.push(problem(
                        key("prm"),
                        "a battery is a producer and needs its PRM",
                        "add prm = \"14 digits\"",
                    ));
                }
                if d.participant.is_none() {
                    p.push(problem(
                        key("participant"),
                        "a battery is a consumer while charging and needs its participant",
                        "add participant = \"<participant id>\"",
                    ));
                }
            }
            DeviceKind::PowerToHeat => {
                need(
                    &mut p,
                    "max_power_kw",
                    d.max_power_kw,
                    "give the electrical rating in kW",
                );
                need(
                    &mut p,
                    "capacity_kwh",
                    d.capacity_kwh,
                    "give the heat store's capacity in kWh_th",
                );
            }
            _ => {}
        }
        if let Some(t) = d.max_supply_temp_c {
            if d.kind != DeviceKind::PowerToHeat {
                p.push(problem(
                    key("max_supply_temp_c"),
                    format!("a {} has no heat store to limit", d.kind.as_str()),
                    "remove it, or set it on the power_to_heat unit whose store feeds the network",
                ));
            } else if !(t.is_finite() && (30.0..=130.0).contains(&t)) {
                p.push(problem(
                    key("max_supply_temp_c"),
                    format!("{t} °C is not a plausible supply temperature limit"),
                    "give the network's highest supply temperature in °C, within 30..=130 (e.g. 90)",
                ));
            }
        }
        if let Some(r) = d.min_soc_ratio {
            if !(0.0..1.0).contains(&r) {
                p.push(problem(
                    key("min_soc_ratio"),
                    format!("{r} is outside 0..1"),
                    "e.g. 0.1 for a 10 % reserve",
                ));
            }
        }
        match endpoint_transport.get(d.address.as_str()) {
            Some((t, j)) if *t != d.transport => p.push(problem(
                key("transport"),
                format!("{} shares {} with devices[{j}], which uses {t:?}", d.id, d.address),
                "one endpoint speaks one framing: give every device at this address the same transport",
            )),
            Some(_) => {}
            None => {
                endpoint_transport.insert(&d.address, (d.transport, i));
            }
        }
        check_serial(&mut p, &key, d, i, &mut serial_lines);
        if let Some(ms) = d.interval_ms {
            if ms < 50 {
                p.push(problem(
                    key("interval_ms"),
                    format!("{ms} ms is below 50 ms"),
                    "use interval_ms ≥ 50, or leave it out for polling.interval_ms",
                ));
            }
        }
        if let (Some(lo), Some(hi)) = (d.setpoint_min_kw, d.setpoint_max_kw) {
            if lo.is_nan() || hi.is_nan() || lo > hi {
                p.push(problem(
                    key("setpoint_min_kw"),
                    format!("setpoint_min_kw {lo} is above setpoint_max_kw {hi}"),
                    "give setpoint_min_kw ≤ setpoint_max_kw (kW, positive = charge/consume)",
                ));
            }
        }
        for (f, v) in [
            ("ramp_kw_per_s", d.ramp_kw_per_s),
            ("revert_timeout_s", d.revert_timeout_s),
        ] {
            if let Some(x) = v {
                if !(x.is_finite() && x > 0.0) {
                    p.push(problem(
                        key(f),
                        format!("{x} must be > 0"),
                        "give a positive number, or leave it out",
                    ));
                }
            }
        }
        if let Some(prm) = &d.prm {
            if let Some(other) = prms.insert(prm.as_str(), format!("devices[{i}]")) {
                p.push(problem(
                    key("prm"),
                    format!("duplicate PRM {prm}, also {other}"),
                    "every metering point has its own PRM",
                ));
            }
        }
    }
    (p, prms)
}

/// Serial-line keys of one device: only with `transport = "rtu"`, within what
/// Modbus RTU allows, and the same line for every device on one port.
fn check_serial<'a>(
    p: &mut Vec<Problem>,
    key: &dyn Fn(&str) -> String,
    d: &'a DeviceConfig,
    i: usize,
    lines: &mut BTreeMap<&'a str, (SerialConfig, usize)>,
) {
    if d.transport != Transport::Rtu {
        if d.serial.is_some() {
            p.push(problem(
                key("serial"),
                "serial line settings on a device that is not on a serial port",
                "remove [devices.serial], or set transport = \"rtu\" and address = the port's path",
            ));
        }
        return;
    }
    if !d.address.starts_with('/') {
        p.push(problem(
            key("address"),
            format!("`{}` is not a serial port path", d.address),
            "with transport = \"rtu\" give the port's absolute path, e.g. address = \"/dev/ttyUSB0\" (or /dev/serial/by-id/...)",
        ));
    }
    let line = d.serial.clone().unwrap_or_default();
    if !(300..=4_000_000).contains(&line.baud) {
        p.push(problem(
            key("serial.baud"),
            format!("{} baud is outside 300..4000000", line.baud),
            "give the bus speed set on the devices, e.g. baud = 9600 or 19200",
        ));
    }
    if line.data_bits != 8 {
        p.push(problem(
            key("serial.data_bits"),
            format!("{} data bits: Modbus RTU frames are 8-bit", line.data_bits),
            "use data_bits = 8 (7 bits is Modbus ASCII, which ped does not speak)",
        ));
    }
    if !(1..=2).contains(&line.stop_bits) {
        p.push(problem(
            key("serial.stop_bits"),
            format!("{} stop bits", line.stop_bits),
            "use stop_bits = 1, or 2 with parity = \"none\"",
        ));
    }
    if let Some(ms) = line.silence_ms {
        if !(ms.is_finite() && (0.0..=1000.0).contains(&ms)) {
            p.push(problem(
                key("serial.silence_ms"),
                format!("{ms} ms is outside 0..1000"),
                "leave it out for 3.5 characters at the line's speed, or give a few ms",
            ));
        }
    }
    match lines.get(d.address.as_str()) {
        Some((other, j)) if *other != line => p.push(problem(
            key("serial"),
            format!(
                "{} shares {} with devices[{j}], whose serial line differs",
                d.id, d.address
            ),
            "one port is one line: give every device on it the same [devices.serial] settings",
        )),
        Some(_) => {}
        None => {
            lines.insert(&d.address, (line, i));
        }
    }
}

fn resolve_address(a: &str) -> Result<SocketAddr, String> {
    let (host, port) = a
        .rsplit_once(':')
        .ok_or_else(|| format!("`{a}` has no :port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{port}` in `{a}` is not a port number"))?;
    if port == 0 {
        return Err(format!("port 0 in `{a}`"));
    }
    if host.is_empty() {
        return Err(format!("`{a}` has no host"));
    }
    // An IPv6 literal is written in brackets, as connecting to it needs.
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => {
            return v6
                .parse::<std::net::Ipv6Addr>()
                .map(|ip| SocketAddr::new(ip.into(), port))
                .map_err(|_| format!("`{v6}` in `{a}` is not an IPv6 address"));
        }
        None if host.contains(':') => {
            return Err(format!(
                "`{a}`: an IPv6 address goes in brackets, e.g. \"[{host}]:{port}\""
            ))
        }
        None => host,
    };
    // Only literal addresses and `localhost` are resolved here: validation must not
    // wait on DNS, and a name that does not resolve yet is a run-time fault, not a typo.
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return (host, port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut i| i.next())
            .ok_or_else(|| format!("host `{host}` does not resolve"))
            .or_else(|_| Ok(SocketAddr::from(([0, 0, 0, 0], port))));
    }
    Err(format!("`{host}` is not a host name or IP address"))
}
