//! `ped run` delivering through the site's `[delivery]` section (no
//! `--deliver-dir`) to a local HTTP server that fails on purpose: two 503s
//! and a dropped connection, then 201 for everything. Devices run in their own
//! process on a shared simulated clock (as in `crash_kill9`), so days close
//! and key files enter the outbox within seconds. Checked: every outbox file
//! reaches the server with an `Idempotency-Key`, is accepted exactly once,
//! and `ped_deliveries_total` counts the failures and the successes.

use crate::common;
use ped::ledger::{outbox, Ledger};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const START: &str = "2025-06-21T22:30:00+02:00";
const SPEED: &str = "900";

/// (idempotency key, file name, status answered; None = dropped)
type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>, Option<u16>)>>>;

/// Answers 503, drop, 503, then 201 forever (until `stop`).
fn server(stop: Arc<AtomicBool>) -> (String, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let url = format!("http://{}/keys", l.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let log = seen.clone();
    std::thread::spawn(move || {
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let stream = match l.accept() {
                Ok((s, _)) => s,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            };
            let mut stream = stream;
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let req = common::read_request(&mut stream);
            let key = req.header("idempotency-key").map(String::from);
            let name = req.header("content-disposition").map(String::from);
            let reply = match n {
                0 | 2 => Some(503),
                1 => None,
                _ => Some(201),
            };
            n += 1;
            if let Some(code) = reply {
                let _ = write!(
                    stream,
                    "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                );
            }
            log.lock().unwrap().push((key, name, reply));
        }
    });
    (url, seen)
}

fn metrics(port: u16) -> String {
    common::http_get(("127.0.0.1", port), "/metrics", None).unwrap_or_default()
}

fn counter(text: &str, result: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with("ped_deliveries_total{")
                && l.contains("channel=\"http\"")
                && l.contains(&format!("result=\"{result}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn ped_run_delivers_over_http_from_the_site_section_despite_failures() {
    let _serial = common::serial_blocking();
    let (tmp, origin, _devices) = common::fontaine_devices(START, SPEED);
    let dir = tmp.path().to_path_buf();
    let stop = Arc::new(AtomicBool::new(false));
    let (url, seen) = server(stop.clone());
    std::fs::write(dir.join("token"), "test-token\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("token"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }
    let text = std::fs::read_to_string(dir.join("site.toml")).unwrap();
    // Backoff in site-clock seconds: at ×900, 60 s is 67 ms of real time.
    let text = text.replace("timeout_ms = 500", "timeout_ms = 200")
        + &format!(
            "\n[delivery]\nkind = \"https\"\nurl = \"{url}\"\ntoken_file = \"token\"\ntimeout_s = 2\nbackoff_base_s = 60\nbackoff_cap_s = 600\n"
        );
    std::fs::write(dir.join("site.toml"), text).unwrap();
    common::output_ok(
        common::ped()
            .current_dir(&dir)
            .args(["check", "--site", "site.toml"]),
        "",
    );

    let port = common::free_port();
    let _daemon = common::spawn(
        common::ped()
            .args(common::run_args(&origin, START, SPEED))
            .args(["--ledger", "ledger.sqlite", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info"),
        &dir,
        "run.log",
    );
    let ledger = dir.join("ledger.sqlite");
    let t = Instant::now();
    let entries = loop {
        std::thread::sleep(Duration::from_millis(500));
        let e = Ledger::open_read_only(&ledger)
            .ok()
            .and_then(|mut l| outbox::entries(&mut l).ok())
            .unwrap_or_default();
        if e.len() >= 2 && e.iter().all(|e| e.state == "sent") {
            break e;
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "outbox not delivered in 40 s: {e:?}\n{}",
            std::fs::read_to_string(dir.join("run.log")).unwrap_or_default()
        );
    };
    let m = metrics(port);
    stop.store(true, Ordering::Relaxed);
    let seen = seen.lock().unwrap().clone();

    assert!(
        seen.iter().all(|(k, _, _)| k.is_some()),
        "a POST without Idempotency-Key"
    );
    assert!(
        seen.iter().all(|(_, n, _)| n.is_some()),
        "a POST without Content-Disposition"
    );
    let mut accepted: BTreeMap<String, usize> = BTreeMap::new();
    for (k, _, status) in &seen {
        if *status == Some(201) {
            *accepted.entry(k.clone().unwrap_or_default()).or_default() += 1;
        }
    }
    let failures = seen.iter().filter(|(_, _, s)| *s != Some(201)).count();
    assert_eq!(failures, 3, "{seen:?}");
    // Each outbox file was accepted once; nothing else was accepted.
    let want: BTreeMap<String, usize> = entries
        .iter()
        .map(|e| (e.idempotency_key.clone(), 1))
        .collect();
    assert_eq!(accepted, want, "{seen:?}");
    // The first failed POST is retried with the same key (the same file version).
    let first = seen[0].0.clone();
    assert!(accepted.contains_key(first.as_deref().unwrap_or("")));

    assert_eq!(counter(&m, "transient_error"), 3.0, "{m}");
    assert_eq!(counter(&m, "ok"), entries.len() as f64, "{m}");
    let log = std::fs::read_to_string(dir.join("run.log")).unwrap_or_default();
    assert!(!log.contains("test-token"), "the token reached the log");
}
