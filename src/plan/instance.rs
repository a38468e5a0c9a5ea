//! Problem instances as JSON, so that any plan or allocation can be written
//! down (`ped plan --dump`, and `out/plans/latest-input.json` beside every
//! plan the daemon publishes) and replayed (`ped plan --replay`), here or by
//! another solver (`benches/pulp_allocation.py` reads the allocation kind).

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{PlanError, PlanInput};
use crate::allocation::solver::{self, AllocationProblem};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Instance {
    /// The joint dispatch + allocation plan's input.
    Plan { input: PlanInput },
    /// An allocation problem alone.
    Allocation { problem: AllocationProblem },
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a ped plan instance: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Plan(#[from] PlanError),
}

impl Instance {
    pub fn read(path: &Path) -> Result<Instance, InstanceError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| InstanceError::Io {
            path: p.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| InstanceError::Json { path: p, source })
    }

    /// Written to a temporary file then renamed, so a reader never sees half.
    pub fn write(&self, path: &Path) -> Result<(), InstanceError> {
        let p = path.display().to_string();
        let io = |source| InstanceError::Io {
            path: p.clone(),
            source,
        };
        let text = serde_json::to_string(self).map_err(|source| InstanceError::Json {
            path: p.clone(),
            source,
        })?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Solves the instance and describes the result in a few lines; with
    /// `oracle`, an allocation is also solved by the generic LP and the two
    /// objectives compared.
    pub fn replay(&self, budget: Duration, oracle: bool) -> Result<String, InstanceError> {
        let mut out = String::new();
        match self {
            Instance::Plan { input } => {
                let began = Instant::now();
                let plan = super::solve(input, budget)?;
                let secs = began.elapsed().as_secs_f64();
                super::check(&plan, input)?;
                let sum = |rows: &[f64]| rows.iter().sum::<f64>();
                out.push_str(&format!(
                    "plan: {} participants × {} steps, {} batteries, {} heat units\nstatus {} (level {}), objective {:.6} €, solved in {:.3} s\nallocated {:.3} kWh, exported {:.3} kWh, imported {:.3} kWh, curtailed {:.3} kWh\n",
                    input.participants.len(),
                    input.pv_kw.len(),
                    input.batteries.len(),
                    input.heat.len(),
                    plan.status.label(),
                    plan.status.level(),
                    plan.objective_eur,
                    secs,
                    plan.allocation_kwh.iter().map(|r| sum(r)).sum::<f64>(),
                    sum(&plan.export_kwh),
                    sum(&plan.import_kwh),
                    sum(&plan.curtailment_kwh),
                ));
                for (d, row) in input
                    .device_participants
                    .iter()
                    .zip(&plan.device_allocation_kwh)
                {
                    out.push_str(&format!(
                        "device participant {} ({}): allocated {:.3} kWh, {:.3} kWh in the first step\n",
                        d.id,
                        d.device,
                        sum(row),
                        row.first().copied().unwrap_or(0.0)
                    ));
                }
                for v in &plan.violations {
                    out.push_str(&format!(
                        "violated: {} from step {} by up to {:.6} {}\n",
                        v.name, v.step, v.amount, v.unit
                    ));
                }
            }
            Instance::Allocation { problem } => {
                let began = Instant::now();
                let s = solver::solve_allocation(problem)?;
                let secs = began.elapsed().as_secs_f64();
                out.push_str(&format!(
                    "allocation: {} participants × {} steps\nfast solver ({}): objective {:.6} €, score {:.9}, violations: {} floor, {} pro_rata, {:.3} s\n",
                    problem.participants.len(),
                    problem.steps,
                    s.method,
                    s.objective_eur,
                    s.score,
                    s.violations.iter().filter(|v| v.rule == "floor").count(),
                    s.violations.iter().filter(|v| v.rule == "pro_rata").count(),
                    secs
                ));
                if oracle {
                    let began = Instant::now();
                    let o = solver::solve_allocation_lp(problem)?;
                    let secs_lp = began.elapsed().as_secs_f64();
                    let rel = (s.score - o.score).abs() / o.score.abs().max(1.0);
                    out.push_str(&format!(
                        "generic LP ({}): objective {:.6} €, score {:.9}, {:.3} s; relative score gap {rel:.2e}\n",
                        super::BACKEND, o.objective_eur, o.score, secs_lp
                    ));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::synthetic;

    #[test]
    fn dump_and_replay_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        for inst in [
            Instance::Plan {
                input: synthetic::plan_input(6, 16, 1, 3),
            },
            Instance::Allocation {
                problem: synthetic::allocation(6, 16, 3),
            },
        ] {
            let path = dir.path().join("i.json");
            inst.write(&path).unwrap();
            let back = Instance::read(&path).unwrap();
            assert_eq!(back, inst);
            let text = back.replay(Duration::from_secs(10), true).unwrap();
            assert!(text.contains("objective"), "{text}");
        }
        std::fs::write(dir.path().join("bad.json"), "{\"kind\":\"nope\"}").unwrap();
        assert!(matches!(
            Instance::read(&dir.path().join("bad.json")),
            Err(InstanceError::Json { .. })
        ));
    }
}
