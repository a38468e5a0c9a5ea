//! `cargo bench --bench modbus`: ped's Modbus acquisition against pymodbus.
//!
//! (a) sequential 125-register reads with [`ModbusClient`] from one served
//!     [`Bank`] on loopback, for a fixed time; (b) full-site poll cycles against
//!     the simulator (every endpoint polled concurrently, one task per endpoint,
//!     each sending its devices' poll-plan reads as `daemon::endpoint` does), p50/p99/max;
//! (c) the same reads as (a) from pymodbus's async client against the same
//!     server, run by `benches/pymodbus_baseline.py` in the venv at
//!     `$PED_PEER_VENV` (default `${TMPDIR:-/tmp}/ped-sunspec-venv`). Without
//!     that venv the bench fails: it never reports a ratio it did not measure.
//!
//! `PED_BENCH_SECONDS` (default 3) and `PED_BENCH_CYCLES` (default 100) change
//! the run length.

use ped::clock::Clock;
use ped::config::{self, DeviceConfig};
use ped::devices::{self, PollPlan};
use ped::modbus::server::{serve, Bank};
use ped::modbus::{sunspec, ModbusClient};
use ped::registers::{ModelLibrary, Table};
use ped::simulator::Simulator;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BLOCK_ADDR: u16 = 40000;
const BLOCK_LEN: u16 = 125;
const UNIT: u8 = 1;
const TIMEOUT: Duration = Duration::from_secs(2);

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn venv_python() -> PathBuf {
    let venv = std::env::var_os("PED_PEER_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("TMPDIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/tmp"))
                .join("ped-sunspec-venv")
        });
    venv.join("bin/python")
}

/// One bank, one 125-register mapped block, served on 127.0.0.1:0.
async fn serve_block() -> SocketAddr {
    let mut bank = Bank::new();
    bank.map_range(Table::Holding, BLOCK_ADDR, BLOCK_LEN, false);
    let words: Vec<u16> = (0..BLOCK_LEN).map(|i| 1000 + i).collect();
    bank.set(Table::Holding, BLOCK_ADDR, &words);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let units = HashMap::from([(UNIT, Arc::new(Mutex::new(bank)))]);
    tokio::spawn(async move {
        serve(listener, units, std::future::pending::<()>())
            .await
            .expect("bench Modbus server");
    });
    addr
}

/// (a) Sequential 125-register reads for `secs`: (reads, elapsed).
async fn ped_reads(addr: SocketAddr, secs: f64) -> (u64, Duration) {
    let mut client = ModbusClient::connect(addr, TIMEOUT).await.unwrap();
    let first = client
        .read(UNIT, Table::Holding, BLOCK_ADDR, BLOCK_LEN)
        .await
        .unwrap();
    assert_eq!(first.len(), usize::from(BLOCK_LEN));
    assert_eq!(first[0], 1000, "read the wrong block");
    let limit = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        let words = client
            .read(UNIT, Table::Holding, BLOCK_ADDR, BLOCK_LEN)
            .await
            .expect("ped read");
        assert_eq!(words.len(), usize::from(BLOCK_LEN));
        n += 1;
        if start.elapsed() >= limit {
            break;
        }
    }
    (n, start.elapsed())
}

struct Dev {
    cfg: DeviceConfig,
    /// (block, table) as the daemon reads them.
    plan: PollPlan,
}

struct Endpoint {
    client: ModbusClient,
    devs: Vec<Dev>,
}

/// Connects to an endpoint and discovers each of its devices once, as the daemon's first poll does.
async fn prepare(addr: SocketAddr, cfgs: Vec<DeviceConfig>, lib: &ModelLibrary) -> Endpoint {
    let mut client = ModbusClient::connect(addr, TIMEOUT).await.unwrap();
    let mut devs = Vec::new();
    for cfg in cfgs {
        let discovered: Vec<(u16, u16)> = if cfg.map == "sunspec" {
            sunspec::discover(&mut client, cfg.unit)
                .await
                .unwrap_or_else(|e| panic!("discover {}: {e}", cfg.id))
                .into_iter()
                .map(|m| (m.id, m.addr))
                .collect()
        } else {
            Vec::new()
        };
        let blocks = devices::blocks_for(&cfg, lib, &discovered);
        assert!(!blocks.is_empty(), "device {} has no blocks", cfg.id);
        // The daemon's poll plan: coalesced reads, scale factors with their values.
        let plan = devices::poll_plan(&cfg, lib, blocks)
            .unwrap_or_else(|e| panic!("poll plan {}: {e}", cfg.id));
        devs.push(Dev { cfg, plan });
    }
    Endpoint { client, devs }
}

/// One poll of every device behind an endpoint: its poll plan's reads, decode (as `poll_device`).
async fn poll_endpoint(ep: &mut Endpoint, lib: &ModelLibrary) -> usize {
    let mut reads = 0;
    for d in &ep.devs {
        let mut answers = Vec::with_capacity(d.plan.reads.len());
        for r in &d.plan.reads {
            let words = ep
                .client
                .read(d.cfg.unit, r.table, r.addr, r.len)
                .await
                .unwrap_or_else(|e| panic!("poll {}: {e}", d.cfg.id));
            reads += 1;
            answers.push(words);
        }
        let read = devices::assemble(&d.plan, lib, &answers);
        devices::decode_readings(&d.cfg, lib, &read)
            .unwrap_or_else(|e| panic!("decode {}: {e}", d.cfg.id));
    }
    reads
}

struct CycleStats {
    endpoints: usize,
    devices: usize,
    blocks: usize,
    cycles: Vec<Duration>,
}

/// (b) Full-site poll cycles against the simulator.
async fn site_cycles(n: usize) -> CycleStats {
    let lib = Arc::new(ModelLibrary::embedded().unwrap());
    let known: BTreeSet<String> = lib.keys().map(str::to_string).collect();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("site-configs/fontaine-douche.toml");
    let site = config::load(&path, &known).unwrap();
    let clock = Clock::simulated(chrono::Utc::now(), 1.0);
    let sim = Simulator::start(&site, lib.clone(), clock, 2025, true)
        .await
        .unwrap();
    let mut by_ep: BTreeMap<String, Vec<DeviceConfig>> = BTreeMap::new();
    for d in &sim.site.config.devices {
        by_ep.entry(d.address.clone()).or_default().push(d.clone());
    }
    let devices = sim.site.config.devices.len();
    let mut eps = Vec::new();
    for (addr, cfgs) in by_ep {
        eps.push(prepare(addr.parse().unwrap(), cfgs, &lib).await);
    }
    let endpoints = eps.len();
    let blocks = eps
        .iter()
        .flat_map(|e| &e.devs)
        .map(|d| d.plan.reads.len())
        .sum();
    let mut cycles = Vec::with_capacity(n);
    // A few warm-up cycles, then the timed ones.
    for i in 0..n + 5 {
        let start = Instant::now();
        let tasks: Vec<_> = eps
            .drain(..)
            .map(|mut ep| {
                let lib = lib.clone();
                tokio::spawn(async move {
                    let r = poll_endpoint(&mut ep, &lib).await;
                    (ep, r)
                })
            })
            .collect();
        let mut reads = 0;
        for t in tasks {
            let (ep, r) = t.await.unwrap();
            reads += r;
            eps.push(ep);
        }
        let took = start.elapsed();
        assert_eq!(reads, blocks);
        if i >= 5 {
            cycles.push(took);
        }
    }
    drop(sim);
    CycleStats {
        endpoints,
        devices,
        blocks,
        cycles,
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

/// (c) pymodbus against the same server: reads per second.
fn pymodbus_reads(python: &Path, addr: SocketAddr, secs: f64) -> Result<(f64, String), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/pymodbus_baseline.py");
    let out = Command::new(python)
        .arg(&script)
        .args(["--host", &addr.ip().to_string()])
        .args(["--port", &addr.port().to_string()])
        .args(["--unit", &UNIT.to_string()])
        .args(["--addr", &BLOCK_ADDR.to_string()])
        .args(["--count", &BLOCK_LEN.to_string()])
        .args(["--seconds", &secs.to_string()])
        .args(["--expect-first", "1000"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {} failed ({}): {}",
            python.display(),
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("pymodbus baseline printed `{}`: {e}", stdout.trim()))?;
    let rps = v["reads_per_s"]
        .as_f64()
        .ok_or_else(|| format!("no reads_per_s in `{}`", stdout.trim()))?;
    let version = v["pymodbus"].as_str().unwrap_or("?").to_string();
    Ok((rps, version))
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; a name filter that is not ours skips the run.
    if let Some(filter) = std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        if !"modbus".contains(&filter) {
            return ExitCode::SUCCESS;
        }
    }
    let secs: f64 = env_num("PED_BENCH_SECONDS", 3.0);
    let n_cycles: usize = env_num("PED_BENCH_CYCLES", 100).max(1);
    let python = venv_python();
    let has_pymodbus = Command::new(&python)
        .args(["-c", "import pymodbus"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_pymodbus {
        eprintln!(
            "modbus bench: no Python with pymodbus at {} (set PED_PEER_VENV, or create it as \
             scripts/sunspec-peer.sh does: python3 -m venv $VENV && $VENV/bin/pip install \
             pymodbus==3.16.1); refusing to report a ratio without the baseline",
            python.display()
        );
        return ExitCode::FAILURE;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(serve_block());
    let (n, took) = rt.block_on(ped_reads(addr, secs));
    let ped_rps = n as f64 / took.as_secs_f64();
    // The server keeps running on `rt`'s workers while pymodbus reads from it.
    let (py_rps, py_version) = match pymodbus_reads(&python, addr, secs) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("modbus bench: pymodbus baseline failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stats = rt.block_on(site_cycles(n_cycles));
    let mut sorted = stats.cycles.clone();
    sorted.sort();
    let p50 = pct(&sorted, 50.0);
    let p99 = pct(&sorted, 99.0);
    let max = sorted.last().unwrap().as_secs_f64() * 1e3;
    let ratio = ped_rps / py_rps;

    println!("ped Modbus acquisition benchmark (loopback)");
    println!("  {:<58} {:>12}", "measure", "value");
    println!(
        "  {:<58} {:>12.0}",
        format!("ped ModbusClient, 125-reg reads/s ({secs} s)"),
        ped_rps
    );
    println!(
        "  {:<58} {:>12.0}",
        format!("pymodbus {py_version} async, 125-reg reads/s"),
        py_rps
    );
    println!(
        "  {:<58} {:>12.2}",
        "ratio ped / pymodbus (goal >= 5)", ratio
    );
    println!(
        "  {:<58} {:>12}",
        format!(
            "full-site cycles ({} endpoints, {} devices, {} read requests)",
            stats.endpoints, stats.devices, stats.blocks
        ),
        stats.cycles.len()
    );
    println!("  {:<58} {:>12.2}", "full-site cycle p50 ms", p50);
    println!(
        "  {:<58} {:>12.2}",
        "full-site cycle p99 ms (goal < 20)", p99
    );
    println!("  {:<58} {:>12.2}", "full-site cycle max ms", max);
    println!(
        "modbus bench: ped {ped_rps:.0} reads/s, pymodbus {py_rps:.0} reads/s, ratio {ratio:.2}; \
         full-site cycle p50 {p50:.2} ms p99 {p99:.2} ms"
    );
    rt.shutdown_timeout(Duration::from_secs(1));
    ExitCode::SUCCESS
}
