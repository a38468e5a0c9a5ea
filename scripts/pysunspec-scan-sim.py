#!/usr/bin/env python3
"""Scan every SunSpec device of ped's simulator with pysunspec2 (the SunSpec Alliance's client).

Starts `ped simulate --devices-only --ephemeral-ports` for site-configs/fontaine-douche.toml,
reads the endpoint lines it prints, and for every device with `map = "sunspec"` (the default)
scans its chain at 40000 with pysunspec2 1.3.7 and checks what it reads against the site
config and what the simulator is documented to write (src/simulator/mod.rs). For a few devices
it also runs `ped scan` and checks that ped's own decoding agrees with pysunspec2's.

Time is frozen (--speed 0.001 by default) so both readings see the same values.

Usage: pysunspec-scan-sim.py PED_BINARY [--config FILE] [--speed X]
Prints one line per failed check and ends with `N passed, N failed`; exit 1 on any failure
or when nothing was checked.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib

import sunspec2.modbus.client as ss_client
import sunspec2.modbus.modbus as ss_modbus

EXPECTED_MODELS = {
    "pv_inverter": [1, 103, 120, 123, 160],
    "battery": [1, 802, 704, 203],
    "meter": [1, 203],
}
ENDPOINT_RE = re.compile(r"^\s*endpoint (\S+) -> (\S+):(\d+)\s*$")
# Points the simulator does not drive: a conformant device marks them "not implemented"
# (SunSpec sentinel), which pysunspec2 reads as None rather than as a measured 0.
UNIMPLEMENTED = {
    103: ["PPVphAB", "VAr", "TmpSnk", "TmpTrns", "TmpOt"],
    120: ["WHRtg", "AhrRtg", "MaxChaRte", "MaxDisChaRte"],
    802: ["NCyc", "CellVMax", "WarrDt", "ReqW"],
    203: ["VAR", "PFphA", "TotVAhExp"],
}
# Points compared with `ped scan`, per model.
PED_SCAN_POINTS = {103: ["W", "WH"], 802: ["W", "SoC"], 203: ["W", "TotWhImp"]}


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def ok(self, cond: bool, what: str) -> bool:
        if cond:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL {what}", flush=True)
        return cond

    def near(self, got, want, tol: float, what: str) -> bool:
        good = got is not None and want is not None and abs(got - want) <= tol + 1e-9
        return self.ok(good, f"{what}: got {got!r}, want {want!r} (±{tol:g})")


def start_sim(ped: str, config: str, speed: str, start: str):
    cmd = [ped, "simulate", "--site", config, "--devices-only", "--ephemeral-ports",
           "--speed", speed, "--start", start, "--duration", "10m"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    return proc


def read_endpoints(proc, want: set[str], timeout: float) -> dict[str, tuple[str, int]]:
    """Reads stderr until every endpoint in `want` is announced; keeps draining afterwards."""
    found: dict[str, tuple[str, int]] = {}
    done = threading.Event()
    tail: list[str] = []

    def drain():
        for line in proc.stderr:
            m = ENDPOINT_RE.match(line)
            if m:
                found[m.group(1)] = (m.group(2), int(m.group(3)))
                if want <= found.keys():
                    done.set()
            elif not done.is_set():
                tail.append(line.rstrip())
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    done.wait(timeout)
    if not want <= found.keys():
        raise RuntimeError(
            f"simulator announced {len(found)} of {len(want)} endpoints "
            f"(exit code {proc.poll()}); its stderr:\n" + "\n".join(tail[-20:]))
    return found


def one_step(model, point_name: str) -> float:
    """The value of one raw step of a point: 10**SF (1 when unscaled or unknown)."""
    p = model.points[point_name]
    sf = p.pdef.get("sf")
    if isinstance(sf, str):
        sfv = model.points[sf].value
        return 10.0 ** sfv if isinstance(sfv, int) else 1.0
    if isinstance(sf, int):
        return 10.0 ** sf
    return 1.0


def cval(model, name):
    p = model.points.get(name)
    return None if p is None else p.cvalue


def check_device(c: Checks, dev_cfg: dict, d, readings: dict) -> None:
    did, kind, unit = dev_cfg["id"], dev_cfg["kind"], dev_cfg.get("unit", 1)
    tag = f"{did} (unit {unit})"
    ids = [m.model_id for m in d.model_list]
    c.ok(d.base_addr == 40000, f"{tag}: SunSpec base address {d.base_addr}, want 40000")
    c.ok(ids == EXPECTED_MODELS[kind], f"{tag}: models {ids}, want {EXPECTED_MODELS[kind]}")
    addr = 40002
    for m in d.model_list:
        c.ok(not m.error_info, f"{tag}: model {m.model_id} error: {m.error_info!r}")
        c.ok(m.model_addr == addr, f"{tag}: model {m.model_id} at {m.model_addr}, want {addr}")
        addr = m.model_addr + 2 + m.model_len
    if ids != EXPECTED_MODELS[kind]:
        return
    m1 = d.models[1][0]
    c.ok(m1.Mn.cvalue == "ped-sim", f"{tag}: 1 Mn {m1.Mn.cvalue!r}, want 'ped-sim'")
    c.ok(m1.SN.cvalue == did, f"{tag}: 1 SN {m1.SN.cvalue!r}, want {did!r}")
    c.ok(m1.DA.cvalue == unit, f"{tag}: 1 DA {m1.DA.cvalue!r}, want {unit}")

    def mandatory(group, path: str):
        for name, pt in group.points.items():
            # An accumulator at 0 is also the "not implemented" value (a meter that never exported).
            acc_zero = pt.pdef.get("type", "").startswith("acc") and pt.value is None
            if pt.pdef.get("mandatory") == "M" and pt.value is None and not acc_zero:
                c.ok(False, f"{tag}: {path}.{name} is mandatory but reads 'not implemented'")
            else:
                c.passed += 1
        for gname, g in group.groups.items():
            for i, sub in enumerate(g if isinstance(g, list) else [g]):
                mandatory(sub, f"{path}.{gname}[{i}]")

    for m in d.model_list:
        mandatory(m, str(m.model_id))

    def unimplemented(mid: int):
        m = d.models[mid][0]
        for name in UNIMPLEMENTED.get(mid, []):
            v = m.points[name].value
            c.ok(v is None, f"{tag}: {mid} {name} reads {v!r}; a point the simulator does not "
                 "drive must hold the SunSpec 'not implemented' value")

    if kind == "pv_inverter":
        inv, nam, ctl = d.models[103][0], d.models[120][0], d.models[123][0]
        wrtg = cval(nam, "WRtg")
        c.near(wrtg, dev_cfg["kwp"] * 850.0, one_step(nam, "WRtg"), f"{tag}: 120 WRtg")
        c.ok(nam.DERTyp.cvalue == 4, f"{tag}: 120 DERTyp {nam.DERTyp.cvalue!r}, want 4 (PV)")
        c.near(cval(inv, "Hz"), 50.0, one_step(inv, "Hz"), f"{tag}: 103 Hz")
        c.near(cval(inv, "PhVphA"), 230.0, one_step(inv, "PhVphA"), f"{tag}: 103 PhVphA")
        w = cval(inv, "W")
        c.ok(w is not None and wrtg is not None and 0 <= w <= wrtg + one_step(inv, "W"),
             f"{tag}: 103 W {w!r} outside [0, WRtg {wrtg!r}]")
        wh = cval(inv, "WH")
        c.ok(wh is not None and wh > 0, f"{tag}: 103 WH {wh!r}, want > 0")
        c.near(cval(ctl, "WMaxLimPct"), 100.0, one_step(ctl, "WMaxLimPct"), f"{tag}: 123 WMaxLimPct")
        n = d.models[160][0].N.cvalue
        mods = d.models[160][0].groups.get("module", [])
        c.ok(len(mods) == (n or 0), f"{tag}: 160 N={n!r} but {len(mods)} module group(s)")
        unimplemented(103)
        unimplemented(120)
        readings[did] = {103: {p: cval(inv, p) for p in PED_SCAN_POINTS[103]},
                         "steps": {p: one_step(inv, p) for p in PED_SCAN_POINTS[103]}}
    elif kind == "battery":
        bat, mtr = d.models[802][0], d.models[203][0]
        c.near(cval(bat, "WHRtg"), dev_cfg["capacity_kwh"] * 1000.0, one_step(bat, "WHRtg"),
               f"{tag}: 802 WHRtg")
        soc = cval(bat, "SoC")
        c.ok(soc is not None and 0 <= soc <= 100, f"{tag}: 802 SoC {soc!r} outside [0, 100]")
        for p, kw in (("WChaRteMax", "max_charge_kw"), ("WDisChaRteMax", "max_discharge_kw")):
            if kw in dev_cfg:
                c.near(cval(bat, p), dev_cfg[kw] * 1000.0, one_step(bat, p), f"{tag}: 802 {p}")
        imp = cval(mtr, "TotWhImp")
        c.ok(imp is not None and imp > 0, f"{tag}: 203 TotWhImp {imp!r}, want > 0")
        unimplemented(802)
        unimplemented(203)
        readings[did] = {802: {p: cval(bat, p) for p in PED_SCAN_POINTS[802]},
                         "steps": {p: one_step(bat, p) for p in PED_SCAN_POINTS[802]}}
    elif kind == "meter":
        mtr = d.models[203][0]
        imp = cval(mtr, "TotWhImp")
        c.ok(imp is not None and imp > 0, f"{tag}: 203 TotWhImp {imp!r}, want > 0")
        w = cval(mtr, "W")
        c.ok(w is not None and w >= 0, f"{tag}: 203 W {w!r}, want >= 0")
        c.near(cval(mtr, "Hz"), 50.0, one_step(mtr, "Hz"), f"{tag}: 203 Hz")
        unimplemented(203)
        readings[did] = {203: {p: cval(mtr, p) for p in PED_SCAN_POINTS[203]},
                         "steps": {p: one_step(mtr, p) for p in PED_SCAN_POINTS[203]}}


def ped_scan(ped: str, host: str, port: int, unit: int) -> dict[int, dict[str, float]]:
    """Runs `ped scan` and returns {model id: {point: value}} from its text output."""
    out = subprocess.run([ped, "scan", f"{host}:{port}", "--unit", str(unit)],
                         capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        raise RuntimeError(f"ped scan exit {out.returncode}: {out.stderr.strip()}")
    models: dict[int, dict[str, float]] = {}
    cur = None
    for line in out.stdout.splitlines():
        m = re.match(r"^\s+model\s+(\d+)\s", line)
        if m:
            cur = models.setdefault(int(m.group(1)), {})
            continue
        m = re.match(r"^\s{6}(\S+)\s+(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(\s|$)", line)
        if m and cur is not None:
            cur[m.group(1)] = float(m.group(2))
    return models


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ped", help="path to the ped binary")
    ap.add_argument("--config", default="site-configs/fontaine-douche.toml")
    ap.add_argument("--speed", default="0.001", help="simulated clock speed (default: frozen)")
    ap.add_argument("--start", default="2025-06-21T12:00:00+02:00")
    ap.add_argument("--ped-scan", type=int, default=2, help="devices per kind compared with `ped scan`")
    args = ap.parse_args()

    with open(args.config, "rb") as f:
        cfg = tomllib.load(f)
    devices = [d for d in cfg.get("devices", []) if d.get("map", "sunspec") == "sunspec"]
    c = Checks()
    if not devices:
        print("FAIL no SunSpec devices in", args.config)
        print("0 passed, 1 failed")
        return 1

    t0 = time.monotonic()
    proc = start_sim(args.ped, args.config, args.speed, args.start)

    def stop(*_):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    signal.signal(signal.SIGTERM, lambda *_: (stop(), sys.exit(143)))
    try:
        eps = read_endpoints(proc, {d["address"] for d in devices}, timeout=30)
        by_ep: dict[str, list[dict]] = {}
        for d in devices:
            by_ep.setdefault(d["address"], []).append(d)
        readings: dict[str, dict] = {}
        for ep, devs in by_ep.items():
            host, port = eps[ep]
            # One TCP connection per endpoint; the unit id is switched per device on it.
            conn = ss_modbus.ModbusClientTCP(slave_id=1, ipaddr=host, ipport=port, timeout=5)
            conn.connect()
            try:
                for dc in devs:
                    unit = dc.get("unit", 1)
                    dev = ss_client.SunSpecModbusClientDeviceTCP(slave_id=unit, ipaddr=host, ipport=port,
                                                                 timeout=5)
                    dev.client = conn
                    conn.slave_id = unit
                    try:
                        dev.scan()
                    except Exception as e:  # noqa: BLE001 — every device is reported, not just the first
                        c.ok(False, f"{dc['id']} (unit {unit}) at {ep}: pysunspec2 scan failed: {e}")
                        continue
                    check_device(c, dc, dev, readings)
            finally:
                conn.disconnect()

        # ped's own decoding against pysunspec2's, a few devices of each kind.
        per_kind: dict[str, int] = {}
        for dc in devices:
            if dc["id"] not in readings or per_kind.get(dc["kind"], 0) >= args.ped_scan:
                continue
            per_kind[dc["kind"]] = per_kind.get(dc["kind"], 0) + 1
            host, port = eps[dc["address"]]
            tag = f"{dc['id']} (unit {dc.get('unit', 1)})"
            try:
                ped = ped_scan(args.ped, host, port, dc.get("unit", 1))
            except Exception as e:  # noqa: BLE001
                c.ok(False, f"{tag}: {e}")
                continue
            r = readings[dc["id"]]
            for mid, points in r.items():
                if mid == "steps":
                    continue
                for p, v in points.items():
                    # One scale step, plus the drift a frozen clock still allows.
                    tol = r["steps"][p] + (abs(v) * 1e-4 if v is not None else 0)
                    c.near(ped.get(mid, {}).get(p), v, tol, f"{tag}: ped scan {mid} {p} vs pysunspec2")
    except Exception as e:  # noqa: BLE001
        c.ok(False, f"harness: {type(e).__name__}: {e}")
    finally:
        stop()
    print(f"# {len(devices)} SunSpec devices, {time.monotonic() - t0:.1f} s", file=sys.stderr)
    if c.passed + c.failed == 0:
        c.ok(False, "nothing was checked")
    print(f"{c.passed} passed, {c.failed} failed")
    return 0 if c.failed == 0 and c.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
