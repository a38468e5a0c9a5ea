//! `ped run` under a flood of idle HTTP connections, with few file
//! descriptors (`ulimit -n`) and a lowered `http.max_connections`. Devices run
//! in their own process on a shared simulated clock (×900: a settlement
//! period per real second). Checked: while hundreds of idle connections are
//! open, periods keep closing into `periods.jsonl`; `/health` waits rather
//! than failing, and answers once the idle connections go.

use crate::common;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const START: &str = "2025-06-21T10:00:00+02:00";
const SPEED: &str = "900";
/// File descriptors ped may open: enough for its devices, ledger and files,
/// far fewer than the idle connections below.
const NOFILE: usize = 160;
/// Below the listener's backlog (128) plus the slots: beyond it the kernel
/// drops new connection attempts, and the test would wait on them.
const IDLE: usize = 130;
const SLOTS: usize = 8;

fn health(port: u16, wait: Duration) -> Option<String> {
    common::http_get(("127.0.0.1", port), "/health", Some(wait))
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn idle_connections_beyond_the_limit_starve_neither_files_nor_health() {
    let _serial = common::serial_blocking();
    let (tmp, origin, _devices) = common::fontaine_devices(START, SPEED);
    let dir = tmp.path().to_path_buf();
    let text = std::fs::read_to_string(dir.join("site.toml")).unwrap();
    // The written site carries every [http] key: lower two of them.
    let text: String = text
        .lines()
        .map(|l| match l.split_once(" = ").map(|(k, _)| k) {
            Some("max_connections") => "max_connections = 8".to_string(),
            Some("header_timeout_s") => "header_timeout_s = 120".to_string(),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("max_connections = 8"), "{text}");
    std::fs::write(dir.join("site.toml"), text).unwrap();

    let port = common::free_port();
    let daemon = common::spawn(
        Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {NOFILE} && exec \"$0\" \"$@\""))
            .arg(common::BIN)
            .args(common::run_args(&origin, START, SPEED))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}")),
        &dir,
        "run.log",
    );
    let log = || std::fs::read_to_string(dir.join("run.log")).unwrap_or_default();
    let periods = dir.join("out/ledger/periods.jsonl");
    let t = Instant::now();
    while lines(&periods) < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "no period closed in 40 s:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", daemon.0.id()))
            .map(|d| d.count())
            .ok()
    };
    let base = fds();
    if let Some(base) = base {
        // Without the limit the flood below would use up ped's descriptors.
        assert!(
            base < NOFILE && base + IDLE > NOFILE,
            "{base} open at start"
        );
    }

    // The flood: more idle connections than ped has file descriptors left.
    let idle: Vec<TcpStream> = (0..IDLE)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let before = lines(&periods);
    let t = Instant::now();
    while lines(&periods) < before + 3 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "periods stopped being written under {IDLE} idle connections ({} then {}):\n{}",
            before,
            lines(&periods),
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every slot is held by an idle connection: a new request waits, and
    // ped holds no more sockets than its slots.
    assert_eq!(health(port, Duration::from_millis(500)), None);
    if let (Some(base), Some(now)) = (base, fds()) {
        assert!(
            now <= base + SLOTS + 4,
            "{now} descriptors open under the flood, {base} before"
        );
    }

    drop(idle);
    let t = Instant::now();
    let answer = loop {
        if let Some(a) = health(port, Duration::from_secs(5)) {
            break a;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "/health did not answer once the idle connections closed:\n{}",
            log()
        );
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok\n"), "{answer}");
}
