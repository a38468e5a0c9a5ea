//! The device model: batteries and heat stores applying setpoints to the
//! actual energies, plan tracking's input, and the diagnosis of the `ped`
//! run's export against storage room.

use serde::Serialize;

use super::site::{HeatUnit, Site};
use super::{
    BATTERY_EFF, BATTERY_END_VALUE_RATIO, P2H_EFF, STORE_LOSS_PER_HOUR, STORE_SHARE_OF_DEMAND,
};
use crate::plan;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dispatch {
    Greedy,
    Idle,
}

/// State of the simulated storage.
#[derive(Debug, Clone)]
pub(super) struct DeviceState {
    pub(super) soc: Vec<f64>,
    pub(super) store: Vec<f64>,
}

/// What the devices did in one step (kW averages).
#[derive(Debug, Clone, Default)]
pub(super) struct StepFlows {
    pub(super) charge: Vec<f64>,
    pub(super) discharge: Vec<f64>,
    pub(super) p2h: Vec<f64>,
    pub(super) served: Vec<f64>,
}

/// Applies setpoints to the actual step: storage charges only from the
/// actual surplus and discharges only into the actual deficit.
#[allow(clippy::too_many_arguments)]
pub(super) fn device_step(
    site: &Site,
    st: &mut DeviceState,
    h: f64,
    pv: f64,
    load: f64,
    demand: &[f64],
    battery_set: &[f64],
    p2h_set: &[f64],
) -> StepFlows {
    let mut f = StepFlows {
        charge: vec![0.0; site.batteries.len()],
        discharge: vec![0.0; site.batteries.len()],
        p2h: vec![0.0; site.heat.len()],
        served: vec![0.0; site.heat.len()],
    };
    let mut surplus = pv - load;
    for (k, b) in site.batteries.iter().enumerate() {
        let set = battery_set.get(k).copied().unwrap_or(0.0);
        if set > 0.0 {
            let room = (b.capacity - st.soc[k]).max(0.0) / (BATTERY_EFF * h);
            let c = set
                .min(b.max_charge)
                .min(surplus.max(0.0))
                .min(room)
                .max(0.0);
            st.soc[k] = (st.soc[k] + BATTERY_EFF * c * h).min(b.capacity);
            surplus -= c;
            f.charge[k] = c;
        } else if set < 0.0 {
            let most = (st.soc[k] - b.floor).max(0.0) * BATTERY_EFF / h;
            let d = (-set)
                .min(b.max_discharge)
                .min((-surplus).max(0.0))
                .min(most)
                .max(0.0);
            st.soc[k] = (st.soc[k] - d * h / BATTERY_EFF).max(0.0);
            surplus += d;
            f.discharge[k] = d;
        }
    }
    for (k, u) in site.heat.iter().enumerate() {
        let (kept, s, room) = store_step(u, st.store[k], h, demand);
        let room = room / (P2H_EFF * h);
        let set = p2h_set.get(k).copied().unwrap_or(0.0);
        let p = set.min(u.max_kw).min(surplus.max(0.0)).min(room).max(0.0);
        surplus -= p;
        st.store[k] = (kept + (P2H_EFF * p - s) * h).clamp(0.0, u.capacity);
        f.p2h[k] = p;
        f.served[k] = s;
    }
    f
}

/// The tracking problem of one simulated step: the plan's setpoints, the
/// plan's and the measured surplus, and the devices' state and room.
#[allow(clippy::too_many_arguments)]
pub(super) fn tracking_input(
    site: &Site,
    st: &DeviceState,
    h: f64,
    planned_net_kw: f64,
    measured_net_kw: f64,
    demand: &[f64],
    bset: &[f64],
    hset: &[f64],
) -> TrackingOwned {
    let batteries = site
        .batteries
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let soc = st.soc[i];
            plan::track::TrackedBattery {
                setpoint_kw: bset.get(i).copied().unwrap_or(0.0),
                soc_kwh: soc,
                capacity_kwh: b.capacity,
                max_charge_kw: b.max_charge,
                charge_eff: BATTERY_EFF,
                stored_value_eur_per_kwh: site.local_price * BATTERY_END_VALUE_RATIO,
            }
        })
        .collect();
    let heat = site
        .heat
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let (_, _, room) = store_step(u, st.store[i], h, demand);
            plan::track::TrackedHeat {
                setpoint_kw: hset.get(i).copied().unwrap_or(0.0),
                max_kw: u.max_kw,
                room_kwh: room,
                efficiency: P2H_EFF,
                stored_value_eur_per_kwh: site.heat_price * plan::HEAT_END_VALUE_RATIO,
            }
        })
        .collect();
    TrackingOwned {
        step_hours: h,
        planned_net_kw,
        measured_net_kw,
        export_price_eur_per_kwh: site.export_price,
        batteries,
        heat,
    }
}

/// [`plan::track::Tracking`] with owned device lists.
pub(super) struct TrackingOwned {
    pub(super) step_hours: f64,
    pub(super) planned_net_kw: f64,
    pub(super) measured_net_kw: f64,
    pub(super) export_price_eur_per_kwh: f64,
    pub(super) batteries: Vec<plan::track::TrackedBattery>,
    pub(super) heat: Vec<plan::track::TrackedHeat>,
}

impl TrackingOwned {
    pub(super) fn view(&self) -> plan::track::Tracking<'_> {
        plan::track::Tracking {
            step_hours: self.step_hours,
            planned_net_kw: self.planned_net_kw,
            measured_net_kw: self.measured_net_kw,
            export_price_eur_per_kwh: self.export_price_eur_per_kwh,
            batteries: &self.batteries,
            heat: &self.heat,
        }
    }
}

/// Where the `ped` run's export came from: at steps where the actual surplus
/// exceeded the plan's, how much of that unplanned surplus was exported
/// while the batteries or heat stores had power and room left for it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrackingDiagnosis {
    /// Whether the run tracked the plan ([`Options::tracking`]).
    pub enabled: bool,
    /// Export of the device model (PV + discharge − load − charge − P2H).
    pub export_kwh: f64,
    /// Steps whose actual surplus (PV − load) exceeded the plan's.
    pub steps_unplanned_surplus: usize,
    /// Export at those steps, up to the unplanned surplus.
    pub export_of_unplanned_surplus_kwh: f64,
    /// …of which storage had power and room for (batteries and heat).
    pub export_storage_had_room_for_kwh: f64,
    /// …of which the batteries alone had power and room for.
    pub export_batteries_had_room_for_kwh: f64,
    /// Σ |tracked − planned setpoint| × step (kWh).
    pub setpoints_moved_kwh: f64,
}

impl TrackingDiagnosis {
    pub(super) fn add(
        &mut self,
        site: &Site,
        st: &DeviceState,
        h: f64,
        planned: f64,
        measured: f64,
        f: &StepFlows,
    ) {
        let used: f64 = f.charge.iter().sum::<f64>() + f.p2h.iter().sum::<f64>()
            - f.discharge.iter().sum::<f64>();
        let export = (measured - used).max(0.0);
        self.export_kwh += export * h;
        let unplanned = measured - planned;
        if unplanned <= 0.0 {
            return;
        }
        self.steps_unplanned_surplus += 1;
        let of_unplanned = export.min(unplanned);
        self.export_of_unplanned_surplus_kwh += of_unplanned * h;
        // Room after the step: power left and energy left over the step.
        let bat: f64 = site
            .batteries
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let power = b.max_charge - f.charge[i] + f.discharge[i];
                let energy = (b.capacity - st.soc[i]).max(0.0) / (BATTERY_EFF * h);
                power.min(energy).max(0.0)
            })
            .sum();
        let heat: f64 = site
            .heat
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let power = u.max_kw - f.p2h[i];
                let energy = (u.capacity - st.store[i]).max(0.0) / (P2H_EFF * h);
                power.min(energy).max(0.0)
            })
            .sum();
        self.export_storage_had_room_for_kwh += of_unplanned.min(bat + heat) * h;
        self.export_batteries_had_room_for_kwh += of_unplanned.min(bat) * h;
    }
}

/// A heat store over one step before power-to-heat: what it keeps after
/// losses, what it serves (kW thermal), and its room for heat (kWh thermal).
pub(super) fn store_step(u: &HeatUnit, store: f64, h: f64, demand: &[f64]) -> (f64, f64, f64) {
    let kept = store * (1.0 - STORE_LOSS_PER_HOUR * h);
    // Heat stored before this step serves this step's demand.
    let want = STORE_SHARE_OF_DEMAND * demand.get(u.substation).copied().unwrap_or(0.0);
    let s = want.min(kept / h).max(0.0);
    let room = (u.capacity - kept + s * h).max(0.0);
    (kept, s, room)
}
