use super::*;

/// 0.1 %: these cases were worked out at one decimal of a percent.
const TENTH: Precision = Precision {
    units_per_one: 1000,
};

fn grid(step: u32) -> Grid {
    Grid::new(step, chrono_tz::Europe::Paris).unwrap()
}
fn prms(n: usize) -> Vec<Prm> {
    (0..n)
        .map(|k| {
            format!("{:014}", 12_345_678_900_000u64 + k as u64)
                .parse()
                .unwrap()
        })
        .collect()
}
fn day_rows(g: &Grid, day: &str, n: usize) -> Vec<KeyRow> {
    let day = NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
    g.periods_of_local_day(day)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(k, start)| KeyRow {
            start,
            units: (0..n).map(|j| ((k * 7 + j * 13) % 250) as u32).collect(),
        })
        .collect()
}

#[test]
fn formats_percent_with_decimal_comma() {
    assert_eq!(format_units(123, 1), "12,3");
    assert_eq!(format_units(0, 1), "0,0");
    assert_eq!(format_units(1000, 1), "100,0");
    assert_eq!(format_units(5, 2), "0,05");
    assert_eq!(format_units(42, 0), "42");
    assert_eq!(parse_units("12,3", 1), Some(123));
    assert_eq!(parse_units("100,0", 1), Some(1000));
    assert_eq!(parse_units("12,30", 1), None);
    assert_eq!(parse_units("12.3", 1), None);
    assert_eq!(parse_units("-1,0", 1), None);
    assert_eq!(parse_units(",5", 1), None);
    assert_eq!(parse_units("0,05", 2), Some(5));
}

#[test]
fn quarter_hour_dst_days_have_92_and_100_rows() {
    let g = grid(15);
    let prec = TENTH;
    for (day, n) in [("2025-03-30", 92), ("2025-10-26", 100), ("2025-06-21", 96)] {
        let rows = day_rows(&g, day, 4);
        let text = render(&g, &prms(4), &rows, prec).unwrap();
        assert_eq!(text.lines().count(), n + 1);
        let rep = validate(&text, &g, prec).unwrap();
        assert_eq!(rep.rows, rows);
        assert_eq!(rep.first_day, rep.last_day);
    }
}

#[test]
fn render_rejects_gaps_and_sums_over_100() {
    let g = grid(30);
    let prec = TENTH;
    let mut rows = day_rows(&g, "2025-06-21", 2);
    rows.remove(3);
    let e = render(&g, &prms(2), &rows, prec).unwrap_err();
    assert!(matches!(e, DsoError::Invalid { line: 5, .. }), "{e}");
    let mut rows = day_rows(&g, "2025-06-21", 2);
    rows[0].units = vec![600, 401];
    assert!(render(&g, &prms(2), &rows, prec).is_err());
    assert!(render(
        &g,
        &prms(2),
        &rows,
        Precision {
            units_per_one: 1500
        }
    )
    .is_err());
}

fn err_at(text: &str, g: &Grid) -> (usize, usize) {
    match validate(text, g, TENTH) {
        Err(DsoError::Invalid { line, column, .. }) => (line, column),
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

#[test]
fn validate_names_line_and_column() {
    let g = grid(30);
    let ok = "Horodate;12345678900000;12345678900001\n\
              2025-10-26T02:00:00+02:00;50,0;50,0\n\
              2025-10-26T02:30:00+02:00;10,0;0,0\n\
              2025-10-26T02:00:00+01:00;100,0;0,0\n";
    assert_eq!(validate(ok, &g, TENTH).unwrap().rows.len(), 3);
    assert_eq!(err_at(&ok.replace("10,0;0,0", "10,0;0,00"), &g), (3, 3));
    assert_eq!(err_at(&ok.replace("50,0;50,0", "50,0;50,1"), &g), (2, 1));
    assert_eq!(err_at(&ok.replace("10,0;0,0", "10,0;-0,0"), &g), (3, 3));
    // The repeated autumn hour with the wrong offset is not the next step.
    assert_eq!(
        err_at(&ok.replace("02:00:00+01:00", "02:00:00+02:00"), &g),
        (4, 1)
    );
    // An offset the zone does not have at that instant.
    assert_eq!(
        err_at(&ok.replace("02:30:00+02:00", "01:30:00+01:00"), &g),
        (3, 1)
    );
    assert_eq!(
        err_at(&ok.replace(";12345678900001", ";12345678900000"), &g),
        (1, 3)
    );
    assert_eq!(err_at(&ok.replace(";12345678900001", ";1234"), &g), (1, 3));
    assert_eq!(err_at(&ok.replace('\n', "\r\n"), &g).0, 1);
    assert_eq!(err_at(&format!("\u{feff}{ok}"), &g), (1, 1));
    assert_eq!(err_at(ok.trim_end(), &g).0, 4);
    assert_eq!(err_at(&ok.replace(";10,0;0,0", ";10,0"), &g), (3, 2));
    assert_eq!(
        err_at(&ok.replace("02:30:00+02:00", "02:40:00+02:00"), &g),
        (3, 1)
    );
}

/// Shaped like the DSO's public sample: local stamps without offset at
/// step starts, 2 decimals, no LF after the last row.
const SAMPLE_SHAPED: &str = "Horodate;12345678901234;23456789012345\n\
    01/11/2024 00:00;48,12;41,30\n\
    01/11/2024 00:15;48,12;41,30\n\
    01/11/2024 00:30;47,00;40,00\n\
    01/11/2024 00:45;0,00;100,00\n\
    01/11/2024 01:00;48,12;41,30";

#[test]
fn a_file_shaped_like_the_dso_sample_validates_and_breaks_where_it_should() {
    let g = grid(15);
    let (layout, precision, rep) = validate_any(SAMPLE_SHAPED, &g, &Layout::ALL).unwrap();
    assert_eq!(layout, Layout::ENEDIS);
    assert_eq!(precision.units_per_one, 10_000);
    assert_eq!(rep.rows.len(), 5);
    assert_eq!(rep.rows[0].units, [4812, 4130]);
    assert_eq!(rep.first_day, NaiveDate::from_ymd_opt(2024, 11, 1).unwrap());
    let err = |t: &str| match validate_with(&Layout::ENEDIS, t, &g, precision) {
        Err(DsoError::Invalid { line, column, .. }) => (line, column),
        other => panic!("expected an Invalid error, got {other:?}"),
    };
    assert_eq!(err(&format!("{SAMPLE_SHAPED}\n")), (6, 1));
    assert_eq!(
        err(&SAMPLE_SHAPED.replace("00:30;47,00", "00:40;47,00")),
        (4, 1)
    );
    assert_eq!(
        err(&SAMPLE_SHAPED.replace("47,00;40,00", "60,00;40,01")),
        (4, 1)
    );
    assert_eq!(
        err(&SAMPLE_SHAPED.replace("47,00;40,00", "47,0;40,00")),
        (4, 2)
    );
    assert_eq!(
        err(&SAMPLE_SHAPED.replace("01/11/2024 00:15", "2024-11-01 00:15")),
        (3, 1)
    );
    assert_eq!(err(&SAMPLE_SHAPED.replace('\n', "\r\n")).0, 1);
    // Rendering the rows back gives the same bytes.
    let text = render_with(&Layout::ENEDIS, &g, &rep.consumers, &rep.rows, precision).unwrap();
    assert_eq!(text, SAMPLE_SHAPED);
}

#[test]
fn each_assumed_choice_can_be_overridden() {
    let g = grid(15);
    let p = Precision {
        units_per_one: 10_000,
    };
    let (_, _, rep) = validate_any(SAMPLE_SHAPED, &g, &Layout::ALL).unwrap();
    let lf = Layout::ENEDIS.with(&LayoutOverrides {
        final_newline: Some(true),
        ..Default::default()
    });
    let text = render_with(&lf, &g, &rep.consumers, &rep.rows, p).unwrap();
    assert_eq!(text, format!("{SAMPLE_SHAPED}\n"));
    // The site's layout is tried first; the presets would refuse the LF.
    assert!(validate_with(&Layout::ENEDIS, &text, &g, p).is_err());
    assert_eq!(validate_any(&text, &g, &[lf]).unwrap().0, lf);
    let per_producer = Layout::ENEDIS.with(&LayoutOverrides {
        naming: Some(Naming::Producer),
        offset: Some(true),
        ..Default::default()
    });
    let prod: Prm = "30000000000001".parse().unwrap();
    assert_eq!(
        file_name_with(&per_producer, &g, None, Some(&prod), &rep.rows).unwrap(),
        "30000000000001_20241101_20241101.csv"
    );
    let text = render_with(&per_producer, &g, &rep.consumers, &rep.rows, p).unwrap();
    assert!(text.starts_with(
        "Horodate;12345678901234;23456789012345\n2024-11-01T00:00:00+01:00;48,12;41,30\n"
    ));
}

#[test]
fn without_offsets_the_repeated_hour_is_read_by_order() {
    let g = grid(30);
    let p = TENTH;
    let ok = "Horodate;12345678900000\n\
              26/10/2025 01:30;10,0\n\
              26/10/2025 02:00;20,0\n\
              26/10/2025 02:30;30,0\n\
              26/10/2025 02:00;40,0\n\
              26/10/2025 02:30;50,0\n\
              26/10/2025 03:00;60,0";
    let rep = validate_with(&Layout::ENEDIS, ok, &g, p).unwrap();
    let offsets: Vec<String> = rep.rows.iter().map(|r| g.format_local(r.start)).collect();
    assert_eq!(
        offsets,
        [
            "2025-10-26T01:30:00+02:00",
            "2025-10-26T02:00:00+02:00",
            "2025-10-26T02:30:00+02:00",
            "2025-10-26T02:00:00+01:00",
            "2025-10-26T02:30:00+01:00",
            "2025-10-26T03:00:00+01:00"
        ]
    );
    // The repeated hour written once is a gap of an hour.
    let once = ok.replace("26/10/2025 02:00;40,0\n26/10/2025 02:30;50,0\n", "");
    assert!(validate_with(&Layout::ENEDIS, &once, &g, p).is_err());
    // A spring time that does not exist.
    let spring = "Horodate;12345678900000\n30/03/2025 02:00;10,0";
    assert!(validate_with(&Layout::ENEDIS, spring, &g, p).is_err());
}

#[test]
fn file_names_per_layout() {
    let g = grid(15);
    let rows = day_rows(&g, "2025-10-26", 1);
    let mut all = rows.clone();
    all.extend(day_rows(&g, "2025-11-30", 1).into_iter().take(1));
    let prod: Prm = "30000000000001".parse().unwrap();
    let name = |l: &Layout, op: Option<&str>, p: Option<&Prm>, r: &[KeyRow]| {
        file_name_with(l, &g, op, p, r)
    };
    assert_eq!(
        name(&Layout::ENEDIS, Some("ACC00000001"), None, &all).unwrap(),
        "ACC00000001_15_26102025_30112025.txt"
    );
    assert_eq!(
        name(&Layout::ENEDIS, Some("ACC00000001"), Some(&prod), &rows).unwrap(),
        "ACC00000001_30000000000001_15_26102025_26102025.txt"
    );
    assert_eq!(
        name(&Layout::ENEDIS_ISO, None, Some(&prod), &rows).unwrap(),
        "30000000000001_20251026_20251026.csv"
    );
    assert!(name(&Layout::ENEDIS, None, None, &rows).is_err());
    assert!(name(&Layout::ENEDIS, Some("ACC1"), None, &rows).is_err());
}

#[test]
fn writes_one_file_per_producer_atomically() {
    let g = grid(30);
    let prec = TENTH;
    let dir = tempfile::tempdir().unwrap();
    let mut rows = day_rows(&g, "2025-10-26", 3);
    rows.extend(day_rows(&g, "2025-10-27", 3));
    let producers = vec![
        "30000000000001".parse().unwrap(),
        "30000000000002".parse().unwrap(),
    ];
    let paths = write_simple_dynamic(dir.path(), &g, &producers, &prms(3), &rows, prec).unwrap();
    let names: Vec<_> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "30000000000001_20251026_20251027.csv",
            "30000000000002_20251026_20251027.csv"
        ]
    );
    let a = fs::read(&paths[0]).unwrap();
    assert_eq!(a, fs::read(&paths[1]).unwrap());
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    let rep = validate(std::str::from_utf8(&a).unwrap(), &g, prec).unwrap();
    assert_eq!(rep.rows.len(), 50 + 48);

    // Invalid rows: nothing is written.
    let dir2 = tempfile::tempdir().unwrap();
    rows[10].units[0] = 999;
    assert!(write_simple_dynamic(dir2.path(), &g, &producers, &prms(3), &rows, prec).is_err());
    let twice = vec![producers[0].clone(), producers[0].clone()];
    assert!(matches!(
        write_simple_dynamic(dir2.path(), &g, &twice, &prms(3), &rows, prec),
        Err(DsoError::DuplicateProducer(_))
    ));
    assert_eq!(fs::read_dir(dir2.path()).unwrap().count(), 0);
}

#[test]
fn full_dynamic_files_differ_per_producer_and_validate() {
    let g = grid(15);
    let prec = TENTH;
    let dir = tempfile::tempdir().unwrap();
    let a = day_rows(&g, "2025-03-30", 3);
    let mut b = a.clone();
    for r in &mut b {
        r.units = vec![0, 0, 0];
    }
    let producers = vec![
        ("30000000000001".parse().unwrap(), a.clone()),
        ("30000000000002".parse().unwrap(), b.clone()),
    ];
    let paths = write_full_dynamic(dir.path(), &g, &producers, &prms(3), prec).unwrap();
    assert_eq!(paths.len(), 2);
    let ta = fs::read_to_string(&paths[0]).unwrap();
    let tb = fs::read_to_string(&paths[1]).unwrap();
    assert_ne!(ta, tb);
    assert_eq!(validate(&ta, &g, prec).unwrap().rows, a);
    assert_eq!(validate(&tb, &g, prec).unwrap().rows.len(), 92);
    // One producer's row over 100 %: nothing at all is written.
    let dir2 = tempfile::tempdir().unwrap();
    let mut bad = producers.clone();
    bad[1].1[5].units = vec![500, 500, 1];
    assert!(write_full_dynamic(dir2.path(), &g, &bad, &prms(3), prec).is_err());
    assert_eq!(fs::read_dir(dir2.path()).unwrap().count(), 0);
}
