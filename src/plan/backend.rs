//! The LP backends: which solver a build carries ([`BACKEND`], [`Backend`]),
//! and handing a built model to one of them under a time limit, accepting
//! nothing but a proven optimum.

use std::collections::HashMap;
use std::time::Duration;

use good_lp::{Constraint, Expression, ProblemVariables, Solution, SolverModel, Variable};

/// The LP backend this build uses by default: clarabel (pure Rust, the
/// default), or HiGHS with the `highs` cargo feature.
pub const BACKEND: &str = if cfg!(feature = "highs") {
    "highs"
} else {
    "clarabel"
};

/// An LP backend, chosen at run time among those compiled in: clarabel
/// always, microlp with the `microlp` feature, HiGHS with `highs`. Several
/// in one build let the benchmarks compare them in the same run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Clarabel,
    Microlp,
    Highs,
}

impl Backend {
    /// The build's default ([`BACKEND`]).
    pub fn default_for_build() -> Backend {
        if cfg!(feature = "highs") {
            Backend::Highs
        } else {
            Backend::Clarabel
        }
    }

    /// Backends compiled into this build.
    pub fn available() -> Vec<Backend> {
        let mut v = vec![Backend::Clarabel];
        if cfg!(feature = "microlp") {
            v.push(Backend::Microlp);
        }
        if cfg!(feature = "highs") {
            v.push(Backend::Highs);
        }
        v
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Clarabel => "clarabel",
            Backend::Microlp => "microlp",
            Backend::Highs => "highs",
        }
    }
}

/// Adds the rows, solves, and reads every variable; anything but a proven
/// optimum is an error (HiGHS and microlp hand back their last point when
/// they hit the time limit: that is no optimum).
fn finish<M: SolverModel>(
    mut model: M,
    constraints: Vec<Constraint>,
    all: &[Variable],
) -> Result<HashMap<Variable, f64>, String> {
    for c in constraints {
        model.add_constraint(c);
    }
    let sol = model.solve().map_err(|e| e.to_string())?;
    if !matches!(sol.status(), good_lp::solvers::SolutionStatus::Optimal) {
        return Err(format!("solver stopped early: {:?}", sol.status()));
    }
    Ok(all.iter().map(|&v| (v, sol.value(v))).collect())
}

pub(super) fn run_backend(
    vars: ProblemVariables,
    obj: Expression,
    constraints: Vec<Constraint>,
    budget: Duration,
    backend: Backend,
) -> Result<HashMap<Variable, f64>, String> {
    let all: Vec<Variable> = vars.iter_variables_with_def().map(|(v, _)| v).collect();
    let secs = budget.as_secs_f64().max(1e-3);
    match backend {
        Backend::Clarabel => {
            let mut m = vars.maximise(obj).using(good_lp::clarabel);
            m.settings().time_limit(secs);
            finish(m, constraints, &all)
        }
        #[cfg(feature = "microlp")]
        Backend::Microlp => {
            use good_lp::solvers::WithTimeLimit;
            let m = vars
                .maximise(obj)
                .using(good_lp::microlp)
                .with_time_limit(secs);
            finish(m, constraints, &all)
        }
        // HiGHS refuses a model without columns (`ModelEmpty`), which happens
        // when every column is dropped as never positive (no participant, no
        // storage). clarabel answers such a model, constant rows included.
        #[cfg(feature = "highs")]
        Backend::Highs if all.is_empty() => {
            run_backend(vars, obj, constraints, budget, Backend::Clarabel)
        }
        #[cfg(feature = "highs")]
        Backend::Highs => {
            let m = vars
                .maximise(obj)
                .using(good_lp::highs)
                .set_time_limit(secs);
            finish(m, constraints, &all)
        }
        #[allow(unreachable_patterns)]
        other => Err(format!(
            "backend {} is not compiled into this build (cargo feature `{}`)",
            other.name(),
            other.name()
        )),
    }
}
