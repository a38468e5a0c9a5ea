//! The daemon under injected faults (rows of the README's fault matrix), in
//! one test binary: faulty devices, the control envelope, idle HTTP
//! connections beyond the limit, ped dying while it drives a battery, a stuck
//! ledger writer, `kill -9` and restart. Test names carry their module
//! (`faults_devices::…`): `scripts/fault-matrix.sh` names a row's suite after
//! it. Each test holds `common::serial()`: they time real seconds, so they run
//! one at a time.

#[path = "../common/mod.rs"]
mod common;

mod control_envelope;
mod crash_kill9;
mod faults_devices;
mod http_limits;
mod revert_timer;
mod slow_writer;
