//! ped end to end over real sockets, in one test binary: the daemon against
//! the simulated district, a battery type added as data only, and key files
//! delivered by `ped run` and `ped simulate` per the site's `[delivery]`
//! section. Test names carry their module (`e2e_simulated::…`). Each test
//! holds `common::serial()`: they time real seconds, so they run one at a time.

#[path = "../common/mod.rs"]
mod common;

mod delivery_daemon;
mod delivery_simulate;
mod e2e_simulated;
mod vendor_battery;
