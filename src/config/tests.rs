use super::*;

fn maps() -> BTreeSet<String> {
    ["vendor/trovis5576".to_string()].into_iter().collect()
}

const MINIMAL: &str = r#"
[site]
id = "t"
name = "test"
latitude = 47.3
longitude = 5.0

[[devices]]
id = "PV-1"
kind = "pv_inverter"
address = "127.0.0.1:1502"
kwp = 10.0
prm = "99990000000001"

[[devices]]
id = "M-1"
kind = "meter"
address = "127.0.0.1:1503"
participant = "H-1"

[[participants]]
id = "H-1"
kind = "household"
prm = "99990000000002"
meter = "M-1"
"#;

fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn minimal_config_loads_with_defaults() {
    let (_d, path) = write(MINIMAL);
    let site = load(&path, &maps()).unwrap();
    assert_eq!(site.grid.step_minutes(), 15);
    assert_eq!(site.config.http.listen, "127.0.0.1:9464");
    assert_eq!(site.producers().len(), 1);
}

/// Why `text`, written as a site file, does not load.
fn load_err(text: &str) -> String {
    let (_d, path) = write(text);
    load(&path, &maps()).unwrap_err().to_string()
}

fn embedded_maps() -> BTreeSet<String> {
    let lib = crate::registers::ModelLibrary::embedded().unwrap();
    lib.keys().map(str::to_string).collect()
}

/// Fontaine d'Ouche as its three operations: the city's buildings and
/// two social landlords.
fn three_operations() -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("site-configs/fontaine-douche.toml"),
    )
    .unwrap()
    .replace("operation_id = \"ACC00000001\"\n", "");
    let ids = |prefix: &str, r: std::ops::RangeInclusive<u32>, w: usize| -> Vec<String> {
        r.map(|i| format!("\"{prefix}{i:0w$}\"")).collect()
    };
    let mut city = ids("T-", 1..=14, 2);
    city.extend(ids("SST-", 1..=3, 2));
    city.extend(["\"BAT-01\"".to_string(), "\"P2H-01\"".to_string()]);
    let mut a = ids("H-", 1..=40, 3);
    a.push("\"BAT-02\"".to_string());
    let b = ids("H-", 41..=100, 3);
    format!(
        "{text}\n[[operations]]\nid = \"ACC00000011\"\nname = \"Ville de Dijon\"\nproducers = [\"PV-01\", \"PV-02\", \"PV-03\", \"PV-06\", \"PV-07\", \"PV-08\", \"BAT-01\"]\nparticipants = [{}]\n\n[[operations]]\nid = \"ACC00000012\"\nproducers = [\"PV-04\", \"BAT-02\"]\nparticipants = [{}]\n\n[[operations]]\nid = \"ACC00000013\"\nproducers = [\"PV-05\"]\nparticipants = [{}]\n",
        city.join(", "),
        a.join(", "),
        b.join(", ")
    )
}

#[test]
fn operations_resolve_to_their_producers_and_members() {
    let (_d, path) = write(&three_operations());
    let site = load(&path, &embedded_maps()).unwrap();
    let ops = site.operations();
    assert_eq!(ops.len(), 3);
    assert_eq!(ops[0].label(), "ACC00000011");
    assert_eq!(ops[0].name, "Ville de Dijon");
    assert_eq!(ops[1].name, "ACC00000012");
    let producers = site.producers();
    let names = |o: &Operation| -> Vec<&str> {
        o.producers
            .iter()
            .map(|&i| producers[i].id.as_str())
            .collect()
    };
    assert_eq!(
        names(&ops[0]),
        ["PV-01", "PV-02", "PV-03", "PV-06", "PV-07", "PV-08", "BAT-01"]
    );
    assert_eq!(names(&ops[1]), ["PV-04", "BAT-02"]);
    assert_eq!(names(&ops[2]), ["PV-05"]);
    assert_eq!(
        ops.iter().map(|o| o.participants.len()).collect::<Vec<_>>(),
        [19, 41, 60]
    );
    let mut all: Vec<usize> = ops.iter().flat_map(|o| o.participants.clone()).collect();
    all.sort_unstable();
    assert_eq!(all, (0..120).collect::<Vec<_>>());

    // Without [[operations]]: one operation of everything.
    let mut one = site.config.clone();
    one.operations.clear();
    let implicit = Site {
        config: one,
        ..site.clone()
    }
    .operations();
    assert_eq!(implicit.len(), 1);
    assert_eq!(implicit[0].producers.len(), producers.len());
    assert_eq!(implicit[0].participants.len(), 120);
}

#[test]
fn operations_are_checked_with_key_and_fix() {
    let good = three_operations();
    for (bad, key, says) in [
        (
            good.replace("ACC00000012", "ACC12"),
            "operations[1].id",
            "not an Enedis operation id",
        ),
        (
            good.replace("ACC00000013", "ACC00000012"),
            "operations[2].id",
            "duplicate operation id",
        ),
        (
            good.replace("producers = [\"PV-05\"]", "producers = [\"PV-04\"]"),
            "operations[2].producers",
            "already a producer of ACC00000012",
        ),
        (
            good.replace("producers = [\"PV-05\"]", "producers = [\"MTR-H-041\"]"),
            "operations[2].producers",
            "not a producer",
        ),
        (
            good.replace("\"H-041\", ", "\"H-040\", "),
            "operations[2].participants",
            "already a member of ACC00000012",
        ),
        (
            good.replace("\"H-041\", ", ""),
            "participants[40]",
            "in no operation",
        ),
        (
            good.replace("\"H-041\", ", "\"H-999\", \"H-041\", "),
            "operations[2].participants",
            "no participant `H-999`",
        ),
        (
            good.replace("[keys]\n", "[keys]\noperation_id = \"ACC00000001\"\n"),
            "keys.operation_id",
            "[[operations]] are declared",
        ),
    ] {
        assert_ne!(bad, good, "{key}: the replacement did not apply");
        let (_d, path) = write(&bad);
        let err = load(&path, &embedded_maps()).unwrap_err().to_string();
        assert!(
            err.contains(key) && err.contains(says) && err.contains("fix:"),
            "{key}: {err}"
        );
    }
}

#[test]
fn membership_dates_and_operation_id_are_checked_with_key_and_fix() {
    let with = |entry: &str, exit: &str, op: &str| {
        format!(
            "{}entry = \"{entry}\"\nexit = \"{exit}\"\n",
            MINIMAL.replace(
                "[[devices]]\nid = \"PV-1\"",
                &format!("[keys]\noperation_id = \"{op}\"\n\n[[devices]]\nid = \"PV-1\"")
            )
        )
    };
    let (_d, path) = write(&with("2026-03-16", "2026-07-10", "ACC00002026").replace(
        "[keys]\n",
        "[keys]\nlayout = \"enedis\"\nfile = { final_newline = true, naming = \"producer\" }\n",
    ));
    let site = load(&path, &maps()).unwrap();
    assert_eq!(site.config.keys.file.final_newline, Some(true));
    assert_eq!(
        site.config.keys.file.naming,
        Some(crate::dso::enedis::Naming::Producer)
    );
    let p = &site.config.participants[0];
    assert_eq!(
        p.membership(),
        (parse_day("2026-03-16"), parse_day("2026-07-10"))
    );
    assert_eq!(
        site.config.keys.operation_id.as_deref(),
        Some("ACC00002026")
    );
    for (entry, exit, op, key, says) in [
        (
            "16/03/2026",
            "2026-07-10",
            "ACC00002026",
            "participants[0].entry",
            "YYYY-MM-DD",
        ),
        (
            "2026-03-16",
            "2026-7-1",
            "ACC00002026",
            "participants[0].exit",
            "YYYY-MM-DD",
        ),
        (
            "2026-07-11",
            "2026-07-10",
            "ACC00002026",
            "participants[0].exit",
            "before entry",
        ),
        (
            "2026-03-16",
            "2026-07-10",
            "ACC2026",
            "keys.operation_id",
            "not an Enedis operation id",
        ),
        (
            "2026-03-16",
            "2026-07-10",
            "ACC0000202X",
            "keys.operation_id",
            "not an Enedis operation id",
        ),
    ] {
        let err = load_err(&with(entry, exit, op));
        assert!(
            err.contains(key) && err.contains(says) && err.contains("fix:"),
            "{err}"
        );
    }
}

#[test]
fn an_export_prices_file_is_checked_for_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.csv");
    let with = |file: &Path| {
        format!(
            "{MINIMAL}\n[plan]\nexport_prices_file = {:?}\n",
            file.to_string_lossy()
        )
    };
    std::fs::write(&prices, "2026-06-21T13:00:00+02:00;-0.02\n").unwrap();
    let (_d, path) = write(&with(&prices));
    assert!(load(&path, &maps()).is_ok());
    for (text, says) in [
        ("2026-06-21T13:00:00+02:00;-20\n", "line 1"),
        ("", "no price row"),
    ] {
        std::fs::write(&prices, text).unwrap();
        let err = load(&path, &maps()).unwrap_err().to_string();
        assert!(
            err.contains("plan.export_prices_file") && err.contains(says),
            "{err}"
        );
    }
    let err = load_err(&with(&dir.path().join("missing.csv")));
    assert!(
        err.contains("missing.csv") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn every_problem_is_named() {
    let bad = MINIMAL
        .replace("address = \"127.0.0.1:1503\"", "address = \"127.0.0.1:99999\"")
        .replace("prm = \"99990000000002\"", "prm = \"99990000000001\"")
        + "\n[[devices]]\nid = \"X\"\nkind = \"heat_substation\"\naddress = \"127.0.0.1:1504\"\nmap = \"vendor/nope\"\n";
    let (_d, path) = write(&bad);
    let err = load(&path, &maps()).unwrap_err();
    let ConfigError::Invalid { problems, .. } = err else {
        panic!("expected Invalid, got {err}")
    };
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert!(
        keys.iter().any(|k| k.starts_with("devices[1].address")),
        "{keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.starts_with("participants[0].prm")),
        "{keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.starts_with("devices[2].map")),
        "{keys:?}"
    );
    assert!(problems.iter().all(|p| !p.fix.is_empty()));
}

#[test]
fn a_serial_line_is_accepted_and_its_bad_keys_are_named() {
    let rtu = MINIMAL
        .replace(
            "address = \"127.0.0.1:1502\"",
            "address = \"/dev/ttyUSB0\"\ntransport = \"rtu\"\nunit = 2\nserial = { baud = 9600, parity = \"none\", stop_bits = 2 }",
        )
        .replace(
            "address = \"127.0.0.1:1503\"",
            "address = \"/dev/ttyUSB0\"\ntransport = \"rtu\"\nunit = 3\nserial = { baud = 9600, parity = \"none\", stop_bits = 2 }",
        );
    let (_d, path) = write(&rtu);
    let site = load(&path, &maps()).unwrap();
    let line = site.config.devices[0].serial.clone().unwrap();
    assert_eq!(
        (line.baud, line.parity, line.data_bits),
        (9600, Parity::None, 8)
    );
    // 3.5 characters of 11 bits at 9600 baud.
    assert_eq!(line.silence().as_micros(), 4010);
    assert_eq!(SerialConfig::default().silence().as_micros(), 2005);

    let bad = rtu
        .replacen("baud = 9600, parity = \"none\", stop_bits = 2", "baud = 9600, data_bits = 7, stop_bits = 3, silence_ms = -1", 1)
        .replacen("address = \"/dev/ttyUSB0\"", "address = \"ttyUSB0\"", 1)
        + "\n[[devices]]\nid = \"M-2\"\nkind = \"meter\"\naddress = \"127.0.0.1:1504\"\nserial = { baud = 9600 }\n";
    let (_d, path) = write(&bad);
    let ConfigError::Invalid { problems, .. } = load(&path, &maps()).unwrap_err() else {
        panic!("expected Invalid")
    };
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    for k in [
        "devices[0].address",
        "devices[0].serial.data_bits",
        "devices[0].serial.stop_bits",
        "devices[0].serial.silence_ms",
        "devices[2].serial",
    ] {
        assert!(
            keys.iter().any(|x| x.starts_with(k)),
            "{k} missing: {keys:?}"
        );
    }
    assert!(problems.iter().all(|p| !p.fix.is_empty()));
    // Two devices on one port with different lines.
    let split = rtu.replacen("baud = 9600", "baud = 19200", 1);
    let (_d, path) = write(&split);
    let ConfigError::Invalid { problems, .. } = load(&path, &maps()).unwrap_err() else {
        panic!("expected Invalid")
    };
    assert!(
        problems
            .iter()
            .any(|p| p.key.starts_with("devices[1].serial") && p.message.contains("differs")),
        "{problems:?}"
    );
}

#[test]
fn unknown_key_is_a_parse_error_naming_it() {
    let err = load_err(&MINIMAL.replace("latitude = 47.3", "latitude = 47.3\nlattitude = 1"));
    assert!(err.contains("lattitude"), "{err}");
}

#[test]
fn environment_overrides_the_file() {
    let (_d, path) = write(MINIMAL);
    // Only this test sets this variable, so parallel tests are unaffected.
    std::env::set_var("PED__HTTP__LISTEN", "127.0.0.1:19999");
    let site = load(&path, &maps());
    std::env::remove_var("PED__HTTP__LISTEN");
    assert_eq!(site.unwrap().config.http.listen, "127.0.0.1:19999");
}

#[test]
fn http_is_local_by_default_and_a_missing_token_file_is_named() {
    let (_d, path) = write(MINIMAL);
    let site = load(&path, &maps()).unwrap();
    assert!(site.config.http.listen.starts_with("127.0.0.1:"));
    assert_eq!(site.config.http.token_file, None);
    let (_d, path) = write(&MINIMAL.replace(
        "[site]",
        "[http]\ntoken_file = \"/nonexistent/ped-token\"\n\n[site]",
    ));
    let err = load(&path, &maps()).unwrap_err();
    let ConfigError::Invalid { problems, .. } = err else {
        panic!("expected Invalid, got {err}")
    };
    assert!(
        problems
            .iter()
            .any(|p| p.key == "http.token_file" && p.fix.contains("chmod 600")),
        "{problems:?}"
    );
}

#[test]
fn a_ledger_path_that_cannot_be_a_file_is_named() {
    let (d, path) = write(MINIMAL);
    let as_folder = format!("\n[ledger]\npath = \"{}\"\n", d.path().display());
    let err = load_err(&(MINIMAL.to_string() + &as_folder));
    assert!(
        err.contains("ledger.path") && err.contains("is a folder"),
        "{err}"
    );
    let under_file = format!("\n[ledger]\npath = \"{}/ped.sqlite\"\n", path.display());
    let err = load_err(&(MINIMAL.to_string() + &under_file));
    assert!(
        err.contains("ledger.path") && err.contains("is a file"),
        "{err}"
    );
}

#[test]
fn tou_windows_price_local_time_and_bad_ones_are_named() {
    let tou = "\ntariff_eur_per_kwh = 0.2700\ntou = [{ from = \"22:00\", to = \"06:00\", eur_kwh = 0.2068 }]\n";
    let (_d, path) = write(&(MINIMAL.to_string() + tou));
    let site = load(&path, &maps()).unwrap();
    let p = &site.config.participants[0];
    assert_eq!(p.tariff_at_minute(23 * 60), 0.2068);
    assert_eq!(p.tariff_at_minute(5 * 60 + 59), 0.2068);
    assert_eq!(p.tariff_at_minute(6 * 60), 0.27);
    assert_eq!(p.tariff_at_minute(12 * 60), 0.27);
    // 21:30 UTC is 22:30 in Paris in winter (HC), 23:30 in summer; 04:30 UTC is 06:30 in summer (HP).
    let tz: chrono_tz::Tz = "Europe/Paris".parse().unwrap();
    let at = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    assert_eq!(p.tariff_at(at("2025-12-01T21:30:00Z"), tz), 0.2068);
    assert_eq!(p.tariff_at(at("2025-06-01T04:30:00Z"), tz), 0.27);
    assert_eq!(p.tariff_at(at("2025-12-01T04:30:00Z"), tz), 0.2068);

    let bad = "\ntou = [{ from = \"25:00\", to = \"06:00\", eur_kwh = 0.2 }, { from = \"08:00\", to = \"08:00\", eur_kwh = -1.0 }]\n";
    let (_d, path) = write(&(MINIMAL.to_string() + bad));
    let ConfigError::Invalid { problems, .. } = load(&path, &maps()).unwrap_err() else {
        panic!("expected Invalid")
    };
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert!(
        keys.iter()
            .any(|k| k.starts_with("participants[0].tou[0].from")),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.starts_with("participants[0].tou[1] ")),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.starts_with("participants[0].tou[1].eur_kwh")),
        "{keys:?}"
    );
    assert!(problems.iter().all(|p| !p.fix.is_empty()));
}

#[test]
fn delivery_section_names_key_and_fix() {
    let (d, _path) = write(MINIMAL);
    let ok = "\n[delivery]\nkind = \"https\"\nurl = \"http://127.0.0.1:9/keys\"\n";
    let (_d1, good) = write(&(MINIMAL.to_string() + ok));
    let site = load(&good, &maps()).expect("local http is allowed");
    let del = site.config.delivery.expect("section kept");
    assert_eq!(del.kind, DeliveryKind::Https);
    assert_eq!(del.backoff_base_s, 60);

    let remote =
        "\n[delivery]\nkind = \"https\"\nurl = \"http://ped:s3cr3t-pw@dso.example/keys\"\n";
    let err = load_err(&(MINIMAL.to_string() + remote));
    assert!(
        err.contains("delivery.url") && err.contains("in clear"),
        "{err}"
    );
    assert!(
        err.contains("`http://***@dso.example/keys`") && !err.contains("s3cr3t"),
        "{err}"
    );

    let missing = format!(
        "\n[delivery]\nkind = \"https\"\nurl = \"https://dso.example/keys\"\ntoken_file = \"{}/absent\"\n",
        d.path().display()
    );
    let err = load_err(&(MINIMAL.to_string() + &missing));
    assert!(
        err.contains("delivery.token_file")
            && err.contains("absent")
            && err.contains("create the file"),
        "{err}"
    );

    let secret = d.path().join("token");
    std::fs::write(&secret, "s3cr3t-token\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let p = read_delivery_token(&secret).unwrap_err();
        assert_eq!(p.key, "delivery.token_file");
        assert_eq!(p.fix, format!("chmod 600 {}", secret.display()));
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let with = format!(
        "\n[delivery]\nkind = \"https\"\nurl = \"https://dso.example/keys\"\ntoken_file = \"{}\"\n",
        secret.display()
    );
    let (_d4, good) = write(&(MINIMAL.to_string() + &with));
    assert!(load(&good, &maps()).is_ok());
    assert_eq!(read_delivery_token(&secret).unwrap(), "s3cr3t-token");

    let folder = "\n[delivery]\nkind = \"folder\"\n";
    let err = load_err(&(MINIMAL.to_string() + folder));
    assert!(err.contains("delivery.dir"), "{err}");

    let backoff = "\n[delivery]\nkind = \"folder\"\ndir = \"spool\"\nbackoff_base_s = 0\n";
    let err = load_err(&(MINIMAL.to_string() + backoff));
    assert!(err.contains("delivery.backoff_base_s"), "{err}");
}

#[test]
fn supply_temperature_limit_is_checked_and_named() {
    let p2h = |limit: &str| {
        MINIMAL.to_string()
            + "\n[[devices]]\nid = \"P2H\"\nkind = \"power_to_heat\"\naddress = \"127.0.0.1:1505\"\nmap = \"vendor/trovis5576\"\nmax_power_kw = 50.0\ncapacity_kwh = 400.0\n"
            + limit
    };
    let (_d, path) = write(&p2h("max_supply_temp_c = 90.0\n"));
    let site = load(&path, &maps()).unwrap();
    assert_eq!(site.config.devices[2].max_supply_temp_c, Some(90.0));
    let problems = |text: &str| {
        let (_d, path) = write(text);
        match load(&path, &maps()) {
            Err(ConfigError::Invalid { problems, file }) => {
                assert_eq!(file, path);
                problems
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    };
    let bad = problems(&p2h("max_supply_temp_c = 200.0\n"));
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].key.starts_with("devices[2].max_supply_temp_c"),
        "{bad:?}"
    );
    assert!(
        bad[0].message.contains("200") && bad[0].fix.contains("30..=130"),
        "{bad:?}"
    );
    let on_pv = problems(&MINIMAL.replace("kwp = 10.0", "kwp = 10.0\nmax_supply_temp_c = 80.0"));
    assert!(
        on_pv[0].key.starts_with("devices[0].max_supply_temp_c"),
        "{on_pv:?}"
    );
    assert!(on_pv[0].fix.contains("power_to_heat"), "{on_pv:?}");
}

/// The minimal site with a battery: a device that takes setpoints.
fn with_battery(extra: &str) -> SiteConfig {
    let text = format!(
        r#"{MINIMAL}
[[devices]]
id = "BAT"
kind = "battery"
address = "127.0.0.1:1504"
prm = "99990000000003"
participant = "B-1"
capacity_kwh = 100.0
max_charge_kw = 50.0
max_discharge_kw = 40.0
{extra}

[[participants]]
id = "B-1"
kind = "battery"
prm = "99990000000003"
meter = "BAT"
"#
    );
    let mut c: SiteConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    c.keys.operation_id = Some("ACC00000001".into());
    c
}

/// The problems `check` finds, as (key, fix).
fn problems_of(c: &SiteConfig) -> Vec<(String, String)> {
    check(c, &maps())
        .into_iter()
        .map(|p| (p.key, p.fix))
        .collect()
}

#[test]
fn the_minimal_site_with_a_battery_passes() {
    assert_eq!(problems_of(&with_battery("")), vec![]);
}

/// Each value passed `check` and panicked ped at run time (a `Duration`
/// from an unchecked float or an overflowing product).
#[test]
fn every_duration_and_count_is_bounded_with_its_key_and_a_fix() {
    type Edit = fn(&mut SiteConfig);
    let cases: [(&str, Edit); 11] = [
        ("devices[2].revert_timeout_s", |c| {
            c.devices[2].revert_timeout_s = Some(1e20)
        }),
        ("devices[2].interval_ms", |c| {
            c.devices[2].interval_ms = Some(u64::MAX)
        }),
        ("polling.interval_ms", |c| {
            c.polling.interval_ms = u64::MAX / 2
        }),
        ("polling.timeout_ms", |c| c.polling.timeout_ms = u64::MAX),
        ("polling.max_backoff_ms", |c| {
            c.polling.max_backoff_ms = u64::MAX
        }),
        ("plan.budget_ms", |c| c.plan.budget_ms = u64::MAX),
        ("control.plan_loss_steps", |c| {
            c.control.plan_loss_steps = Some(0)
        }),
        ("control.plan_loss_steps", |c| {
            c.control.plan_loss_steps = Some(u32::MAX)
        }),
        ("ledger.snapshot_retention_days", |c| {
            c.ledger.snapshot_retention_days = u32::MAX
        }),
        ("delivery.backoff_cap_s", |c| {
            let mut d: DeliverySection = toml::from_str("kind = \"folder\"\ndir = \"spool\"")
                .unwrap_or_else(|e| panic!("{e}"));
            d.backoff_cap_s = 100_000_000_000_000_000;
            c.delivery = Some(d);
        }),
        ("delivery.backoff_base_s", |c| {
            let mut d: DeliverySection = toml::from_str("kind = \"folder\"\ndir = \"spool\"")
                .unwrap_or_else(|e| panic!("{e}"));
            d.backoff_base_s = 10_000_000_000_000;
            d.backoff_cap_s = 10_000_000_000_000;
            c.delivery = Some(d);
        }),
    ];
    for (key, edit) in cases {
        let mut c = with_battery("");
        edit(&mut c);
        let found = problems_of(&c);
        assert!(
            found
                .iter()
                .any(|(k, fix)| k.starts_with(key) && !fix.is_empty()),
            "{key}: {found:?}"
        );
    }
    // The largest values allowed still make durations.
    let mut c = with_battery("revert_timeout_s = 3600.0\ninterval_ms = 3600000");
    c.polling.interval_ms = limits::INTERVAL_MS;
    c.polling.max_backoff_ms = limits::INTERVAL_MS;
    c.control.plan_loss_steps = Some(limits::PLAN_LOSS_STEPS);
    assert_eq!(problems_of(&c), vec![]);
    assert!(duration_s(limits::REVERT_TIMEOUT_S).is_some());
    assert_eq!(duration_s(1e20), None);
    assert_eq!(duration_s(f64::NAN), None);
    assert_eq!(duration_s(-1.0), None);
}

#[test]
fn setpoint_ranges_outside_the_ratings_are_refused() {
    for (extra, key) in [
        ("setpoint_min_kw = 80.0", "devices[2].setpoint_min_kw"),
        ("setpoint_max_kw = -60.0", "devices[2].setpoint_max_kw"),
        ("setpoint_max_kw = 51.0", "devices[2].setpoint_max_kw"),
        ("setpoint_min_kw = -41.0", "devices[2].setpoint_min_kw"),
        ("setpoint_min_kw = nan", "devices[2].setpoint_min_kw"),
    ] {
        let found = problems_of(&with_battery(extra));
        assert!(
            found
                .iter()
                .any(|(k, fix)| k.starts_with(key) && fix.contains("-40..=50")),
            "{extra}: {found:?}"
        );
    }
    let inside = with_battery("setpoint_min_kw = -10.0\nsetpoint_max_kw = 20.0");
    assert_eq!(problems_of(&inside), vec![]);
    let mut meter = with_battery("");
    meter.devices[1].setpoint_max_kw = Some(1.0);
    assert!(problems_of(&meter)
        .iter()
        .any(|(k, _)| k.starts_with("devices[1].setpoint_max_kw")));
}

#[test]
fn broadcast_units_nan_ratings_and_ipv6_addresses_are_checked() {
    let mut c = with_battery("unit = 0");
    c.participants[0].annual_kwh = f64::NAN;
    c.devices[0].tilt_deg = Some(f64::NAN);
    let keys: Vec<String> = problems_of(&c).into_iter().map(|(k, _)| k).collect();
    for key in [
        "devices[2].unit",
        "participants[0].annual_kwh",
        "devices[0].tilt_deg",
    ] {
        assert!(keys.iter().any(|k| k.starts_with(key)), "{key}: {keys:?}");
    }
    assert_eq!(keys.len(), 3, "{keys:?}");
    let mut v6 = with_battery("");
    v6.devices[2].address = "[::1]:502".into();
    assert_eq!(problems_of(&v6), vec![]);
    v6.devices[2].address = "::1:502".into();
    let found = problems_of(&v6);
    assert!(
        found
            .iter()
            .any(|(k, _)| k.starts_with("devices[2].address")),
        "{found:?}"
    );
}

#[test]
fn keys_too_coarse_for_the_operation_are_warned_about() {
    let lib = crate::registers::ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}"));
    let mut c = with_battery("writes = [\"WSetEna\", \"WSet\", \"WSetRvrtTms\"]");
    let one = c.participants[0].clone();
    c.participants = (0..600)
        .map(|i| ParticipantConfig {
            id: format!("H-{i:04}"),
            ..one.clone()
        })
        .collect();
    c.keys.units_per_one = 1000;
    let w = warnings(&c, &lib);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].key, "keys.units_per_one");
    assert!(w[0].fix.contains("10000"), "{w:?}");
    c.keys.units_per_one = 10000;
    assert_eq!(warnings(&c, &lib), vec![]);
    c.keys.units_per_one = 1000;
    c.participants.truncate(200);
    assert_eq!(warnings(&c, &lib), vec![]);
}

#[test]
fn a_controlled_device_without_its_revert_timer_in_writes_is_warned_about() {
    let lib = crate::registers::ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}"));
    let c = with_battery("writes = [\"WSetEna\", \"WSet\"]");
    assert_eq!(problems_of(&c), vec![], "a warning, not a problem");
    let w = warnings(&c, &lib);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].key.starts_with("devices[2].writes"), "{w:?}");
    assert!(w[0].fix.contains("\"WSetRvrtTms\""), "{w:?}");
    let armed = with_battery("writes = [\"WSetEna\", \"WSet\", \"WSetRvrtTms\"]");
    assert_eq!(warnings(&armed, &lib), vec![]);
    // A vendor map with a `revert_seconds` point, and one without writes.
    let mut vendor =
        with_battery("map = \"vendor/sma_battery\"\nwrites = [\"mode\", \"power_setpoint_kw\"]");
    let has_timer = lib
        .get("vendor/sma_battery")
        .and_then(|m| m.point("revert_seconds"))
        .is_some();
    assert_eq!(warnings(&vendor, &lib).len(), usize::from(has_timer));
    vendor.devices[2].writes.clear();
    assert_eq!(warnings(&vendor, &lib), vec![]);
}

#[test]
fn an_operation_layout_without_an_operation_id_is_warned_about() {
    let lib = crate::registers::ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}"));
    let mut c = with_battery("writes = [\"WSetEna\", \"WSet\", \"WSetRvrtTms\"]");
    assert_eq!(warnings(&c, &lib), vec![]);
    c.keys.operation_id = None;
    let w = warnings(&c, &lib);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].key, "keys.operation_id");
    assert!(w[0].fix.contains("ACC"), "{w:?}");
    c.keys.file.naming = Some(crate::dso::enedis::Naming::Producer);
    assert_eq!(warnings(&c, &lib), vec![]);
    c.keys.file.naming = None;
    c.keys.layout = crate::dso::enedis::LayoutName::EnedisIso;
    assert_eq!(warnings(&c, &lib), vec![]);
}
