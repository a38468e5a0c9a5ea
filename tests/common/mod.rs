//! Scaffolding shared by the integration tests that run the daemon against
//! the simulated district over real sockets. Each test binary compiles this
//! module on its own and uses a part of it.
#![allow(dead_code)]

use ped::clock::Clock;
use ped::config::{self, Site};
use ped::daemon::{Daemon, Options};
use ped::registers::ModelLibrary;
use ped::simulator::Simulator;
use std::collections::BTreeSet;
use std::sync::Arc;

/// A site config loaded from TOML text and its simulated devices, serving
/// on 127.0.0.1 from `origin` (RFC 3339) at `speed` × real time.
pub struct Simulated {
    pub dir: tempfile::TempDir,
    pub lib: Arc<ModelLibrary>,
    pub clock: Clock,
    pub origin: chrono::DateTime<chrono::Utc>,
    pub sim: Simulator,
}

pub fn at(rfc3339: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339}: {e}"))
        .with_timezone(&chrono::Utc)
}

/// Loads `toml` (written as `site.toml` in a fresh temporary folder) and
/// starts its simulated devices.
pub async fn simulated(toml: &str, origin: &str, speed: f64) -> Simulated {
    let lib = Arc::new(ModelLibrary::embedded().unwrap_or_else(|e| panic!("{e}")));
    let known: BTreeSet<String> = lib.keys().map(str::to_string).collect();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("site.toml");
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("{e}"));
    let site = config::load(&path, &known).unwrap_or_else(|e| panic!("{e}"));
    let origin = at(origin);
    let clock = Clock::simulated(origin, speed);
    let sim = Simulator::start(&site, lib.clone(), clock, 3, true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Simulated {
        dir,
        lib,
        clock,
        origin,
        sim,
    }
}

impl Simulated {
    /// ped on `site` (usually `self.sim.site`, maybe edited), writing under
    /// the temporary folder, its HTTP endpoint on an ephemeral port.
    pub async fn daemon(&self, site: Site) -> Daemon {
        Daemon::start(
            site,
            self.lib.clone(),
            self.clock,
            Options {
                dry_run: false,
                output_dir: Some(self.dir.path().join("out")),
                http_listen: Some("127.0.0.1:0".into()),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The sum of a metric's samples in the text exposition whose line
/// contains every one of `with` (label fragments).
pub fn metric_sum(text: &str, name: &str, with: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether every one of `devices` has a reading in the daemon taken no more
/// than `lead` of clock time ago: the condition on which a paced clock may
/// move on.
pub fn read_within(
    shared: &ped::daemon::Shared,
    clock: Clock,
    devices: &[String],
    lead: chrono::Duration,
) -> bool {
    let now = clock.now();
    let st = shared.status();
    devices.iter().all(|id| {
        st.devices
            .get(id)
            .and_then(|d| d.read_at)
            .is_some_and(|at| now - at <= lead)
    })
}

/// Drives a [`Clock::paced`] clock until the returned handle is aborted:
/// every `tick` of real time it moves the clock by `tick × speed`, as long as
/// each of `devices` has a reading at most `lead` old; otherwise it waits for
/// the daemon. A stalled machine stops simulated time instead of skipping
/// polls, so samples are never further apart than `lead + tick × speed`
/// whatever the load.
pub fn pace(
    clock: Clock,
    shared: Arc<ped::daemon::Shared>,
    devices: Vec<String>,
    tick: std::time::Duration,
    lead: chrono::Duration,
) -> tokio::task::JoinHandle<()> {
    let step = clock.clock_duration(tick);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(tick).await;
            if read_within(&shared, clock, &devices, lead) {
                clock.step(step);
            }
        }
    })
}
