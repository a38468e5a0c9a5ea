#!/usr/bin/env python3
"""Writes ped's Grafana dashboards (deploy/grafana/dashboards/*.json).

The JSON is generated so that every panel follows the same conventions (the
`site` variable on every selector, base units converted once, one datasource
uid matching provisioning/datasources/prometheus.yml). Edit this file, run it,
commit both. `--check` fails if the committed JSON differs from what this file
writes (scripts/prometheus-suite.sh runs it), so the two cannot drift apart.

Every expression uses only metrics that ped exports; scripts/prometheus-suite.sh
runs each of them against a real Prometheus scraping `ped simulate`.
"""
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "ped-prometheus"}
S = 'site=~"$site"'
KWH = "3.6e6"  # joules per kWh


def target(expr, legend="", ref="A", instant=False):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}
    if instant:
        t["instant"] = True
        t["range"] = False
    return t


class Board:
    def __init__(self, uid, title, description, extra_vars=()):
        self.uid, self.title, self.description = uid, title, description
        self.panels = []
        self.x = self.y = 0
        self.row_h = 0
        self.vars = [self._query_var("site", "label_values(ped_build_info, site)", multi=False)]
        for name, query in extra_vars:
            self.vars.append(self._query_var(name, query, multi=True))

    @staticmethod
    def _query_var(name, query, multi):
        return {
            "name": name,
            "label": name,
            "type": "query",
            "datasource": DS,
            "query": {"query": query, "refId": f"{name}-var"},
            "definition": query,
            "refresh": 2,
            "includeAll": multi,
            "multi": multi,
            "allValue": ".*" if multi else None,
            "current": {},
            "sort": 1,
        }

    def row(self, title):
        self._newline()
        self.panels.append({
            "type": "row", "title": title, "collapsed": False, "panels": [],
            "id": len(self.panels) + 1, "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1},
        })
        self.y += 1

    def _newline(self):
        if self.x:
            self.y += self.row_h
            self.x = self.row_h = 0

    def panel(self, kind, title, targets, unit="short", w=8, h=8, description="", **opts):
        if self.x + w > 24:
            self._newline()
        refs = "ABCDEFGH"
        tg = [dict(t, refId=refs[i]) for i, t in enumerate(targets)]
        p = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"x": self.x, "y": self.y, "w": w, "h": h},
            "targets": tg,
            "fieldConfig": {"defaults": {"unit": unit, **opts.pop("defaults", {})}, "overrides": []},
            "options": opts.pop("options", {}),
        }
        p.update(opts)
        self.panels.append(p)
        self.x += w
        self.row_h = max(self.row_h, h)

    def ts(self, title, targets, unit="short", **kw):
        self.panel("timeseries", title, targets, unit, **kw)

    def stat(self, title, targets, unit="short", w=4, h=4, **kw):
        self.panel("stat", title, targets, unit, w=w, h=h, **kw)

    def json(self):
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["ped"],
            "timezone": "browser",
            "schemaVersion": 39,
            "version": 1,
            "editable": True,
            "refresh": "30s",
            "time": {"from": "now-24h", "to": "now"},
            "templating": {"list": self.vars},
            "annotations": {"list": []},
            "links": [{"type": "dashboards", "tags": ["ped"], "title": "ped", "asDropdown": True}],
            "panels": self.panels,
        }


def overview():
    b = Board("ped-overview", "ped / District overview",
              "Flows now, last settlement period, self-consumption and heat made from PV.")
    b.row("Now")
    b.stat("PV production", [target(f'sum(ped_device_power_watts{{{S},kind="pv_inverter"}})', instant=True)], "watt")
    b.stat("Participants' consumption", [target(f'sum(ped_device_power_watts{{{S},kind="meter"}})', instant=True)], "watt")
    b.stat("Batteries (+ charge)", [target(f'sum(ped_device_power_watts{{{S},kind="battery"}})', instant=True)], "watt")
    b.stat("Power-to-heat", [target(f'sum(ped_device_power_watts{{{S},kind="power_to_heat"}})', instant=True)], "watt")
    b.stat("Battery state of charge", [target(f'avg(ped_battery_state_of_charge_ratio{{{S}}})', instant=True)], "percentunit")
    b.stat("Heat delivered", [target(f'sum(ped_heat_power_watts{{{S}}})', instant=True)], "watt")
    b.row("Flows")
    b.ts("Electric flows", [
        target(f'sum(ped_device_power_watts{{{S},kind="pv_inverter"}})', "PV"),
        target(f'sum(ped_device_power_watts{{{S},kind="meter"}})', "consumption"),
        target(f'sum(ped_device_power_watts{{{S},kind="battery"}})', "batteries (+ charge)"),
        target(f'sum(ped_device_power_watts{{{S},kind="power_to_heat"}})', "power-to-heat"),
    ], "watt", w=16, h=9)
    b.ts("PV by inverter", [target(f'ped_device_power_watts{{{S},kind="pv_inverter"}}', "{{device}}")],
         "watt", w=8, h=9)
    b.row("Settlement (last closed period)")
    b.ts("Self-consumption and self-sufficiency", [
        target(f'ped_self_consumption_ratio{{{S}}}', "self-consumption"),
        target(f'ped_self_sufficiency_ratio{{{S}}}', "self-sufficiency"),
    ], "percentunit", w=8, defaults={"min": 0, "max": 1})
    b.ts("Period energies", [
        target(f'ped_period_production_joules{{{S}}} / {KWH}', "production"),
        target(f'ped_period_consumption_joules{{{S}}} / {KWH}', "consumption"),
        target(f'ped_period_self_consumed_joules{{{S}}} / {KWH}', "self-consumed"),
        target(f'ped_period_surplus_joules{{{S}}} / {KWH}', "surplus"),
    ], "kwatth", w=10)
    b.stat("Self-consumption, last 24 h", [target(
        f'sum(increase(ped_self_consumed_energy_joules_total{{{S}}}[1d]))'
        f' / sum(increase(ped_production_energy_joules_total{{{S}}}[1d]))', instant=True)],
        "percentunit", w=6, h=4)
    b.stat("Surplus, last 24 h", [target(
        f'(sum(increase(ped_production_energy_joules_total{{{S}}}[1d]))'
        f' - sum(increase(ped_self_consumed_energy_joules_total{{{S}}}[1d]))) / {KWH}', instant=True)],
        "kwatth", w=6, h=4)
    b.row("Heat from PV")
    b.ts("Power-to-heat electric power and heat delivered", [
        target(f'sum(ped_device_power_watts{{{S},kind="power_to_heat"}})', "power-to-heat (electric)"),
        target(f'sum(ped_heat_power_watts{{{S}}})', "substations' heat"),
    ], "watt", w=8)
    b.ts("Heat made from PV per hour", [target(
        f'sum(increase(ped_device_energy_joules_total{{{S},direction="heat"}}[1h])'
        f' and on (site, device) ped_device_up{{{S},kind="power_to_heat"}}) / {KWH}', "heat from PV")],
        "kwatth", w=8)
    b.ts("Heat stores", [target(f'ped_heat_store_energy_joules{{{S}}} / {KWH}', "{{device}}")], "kwatth", w=8)
    return b


def devices():
    b = Board("ped-devices", "ped / Devices and data quality",
              "Is every device answering, how fast, what fails; the raw readings.",
              [("device", 'label_values(ped_device_up{site=~"$site"}, device)')])
    D = f'{S},device=~"$device"'
    b.row("Health")
    b.stat("Devices up", [target(f'sum(ped_device_up{{{S}}})', instant=True)], w=4)
    b.stat("Devices down", [target(f'count(ped_device_up{{{S}}} == 0) or vector(0)', instant=True)], w=4,
           defaults={"thresholds": {"mode": "absolute", "steps": [
               {"color": "green", "value": None}, {"color": "red", "value": 1}]}})
    b.stat("Oldest last good poll", [target(
        f'max(time() - ped_device_last_success_timestamp_seconds{{{S}}})', instant=True)], "s", w=4)
    b.stat("Ready", [target(f'ped_ready{{{S}}}', instant=True)], w=4)
    b.stat("Failed polls, last hour", [target(
        f'sum(increase(ped_device_errors_total{{{S}}}[1h]))', instant=True)], w=4)
    b.stat("Periods on fallback keys, 24 h", [target(
        f'sum(increase(ped_period_fallbacks_total{{{S}}}[1d]))', instant=True)], w=4)
    b.panel("table", "Device state", [
        target(f'ped_device_up{{{D}}}', instant=True),
        target(f'time() - ped_device_last_success_timestamp_seconds{{{D}}}', instant=True),
        target(f'ped_device_backoff_seconds{{{D}}}', instant=True),
    ], w=12, h=10, transformations=[
        {"id": "merge"},
        {"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True, "site": True},
                                        "renameByName": {"Value #A": "up", "Value #B": "last good poll (s ago)",
                                                         "Value #C": "backoff (s)"}}},
    ])
    b.ts("Failed polls by kind", [target(
        f'sum by (kind) (rate(ped_device_errors_total{{{D}}}[$__rate_interval]))', "{{kind}}")], "reqps", w=12, h=10)
    b.row("Latency and backoff")
    b.ts("Poll duration (all selected devices)", [
        target(f'histogram_quantile(0.5, sum by (le) (rate(ped_device_read_duration_seconds_bucket{{{D}}}[$__rate_interval])))', "p50"),
        target(f'histogram_quantile(0.99, sum by (le) (rate(ped_device_read_duration_seconds_bucket{{{D}}}[$__rate_interval])))', "p99"),
    ], "s", w=8)
    b.ts("Successful polls per second", [target(
        f'sum(rate(ped_device_reads_total{{{D}}}[$__rate_interval]))', "polls/s")], "reqps", w=8)
    b.ts("Reconnect backoff", [target(f'ped_device_backoff_seconds{{{D}}} > 0 or on() vector(0)', "{{device}}")],
         "s", w=8)
    b.row("Readings")
    b.ts("Temperatures", [target(f'ped_temperature_celsius{{{D}}}', "{{device}} {{point}}")], "celsius", w=8)
    b.ts("Control valves", [target(f'ped_valve_position_ratio{{{D}}}', "{{device}}")], "percentunit", w=8)
    b.ts("Battery state of charge", [target(f'ped_battery_state_of_charge_ratio{{{D}}}', "{{device}}")],
         "percentunit", w=8)
    b.ts("Heat-network water flow", [target(
        f'ped_heat_meter_flow_cubic_meters_per_second{{{D}}} * 3600', "{{device}}")], "suffix: m³/h", w=8)
    b.ts("Heat meters' thermal power", [target(f'ped_heat_power_watts{{{D}}}', "{{device}}")], "watt", w=8)
    b.ts("Heat stores", [target(f'ped_heat_store_energy_joules{{{D}}} / {KWH}', "{{device}}")], "kwatth", w=8)
    b.ts("Device power", [target(f'ped_device_power_watts{{{D}}}', "{{device}}")], "watt", w=12)
    b.ts("Energy counted per hour", [target(
        f'sum by (device, direction) (increase(ped_device_energy_joules_total{{{D}}}[1h])) / {KWH}',
        "{{device}} {{direction}}")], "kwatth", w=12)
    b.row("From counters to the ledger")
    warn = {"thresholds": {"mode": "absolute", "steps": [
        {"color": "green", "value": None}, {"color": "orange", "value": 1}]}}
    b.stat("Ledger write errors, 24 h", [target(
        f'increase(ped_ledger_write_errors_total{{{S}}}[1d])', instant=True)], w=6, defaults=warn,
        description="Read-only file or full disk: periods wait in memory and are written when the ledger accepts writes.")
    b.stat("Periods waiting for the ledger", [target(f'ped_ledger_pending_periods{{{S}}}', instant=True)], w=6,
           defaults=warn)
    b.stat("Periods estimated, 24 h", [target(
        f'increase(ped_periods_estimated_total{{{S}}}[1d])', instant=True)], w=6, defaults=warn,
        description="Energies interpolated across a gap (ped down, clock jump) instead of measured.")
    b.stat("Counter samples dropped, 24 h", [target(
        f'increase(ped_handoff_samples_dropped_total{{{S}}}[1d])', instant=True)], w=6, defaults=warn,
        description="The aggregator fell days behind the pollers; the oldest samples were thinned.")
    return b


def optimiser():
    b = Board("ped-optimiser", "ped / Optimiser",
              "The rolling LP: how long it takes, what it decided, whether it fell back.")
    b.row("Current plan")
    b.stat("Plan status", [target(f'ped_plan_status{{{S}}} == 1', "{{status}}", instant=True)], w=6,
           options={"textMode": "name"})
    b.stat("Objective", [target(f'ped_plan_objective_euros{{{S}}}', instant=True)], "currencyEUR", w=6)
    b.stat("Plan age (site clock)", [target(f'ped_plan_age_seconds{{{S}}}', instant=True)], "s", w=6)
    b.stat("Rule-based plans, 24 h", [target(
        f'sum(increase(ped_plans_total{{{S},status="rule_based"}}[1d]))', instant=True)], w=6)
    b.row("Solver")
    b.ts("Solve time", [
        target(f'histogram_quantile(0.5, sum by (le) (rate(ped_plan_solve_duration_seconds_bucket{{{S}}}[1h])))', "p50"),
        target(f'histogram_quantile(0.95, sum by (le) (rate(ped_plan_solve_duration_seconds_bucket{{{S}}}[1h])))', "p95"),
        target(f'rate(ped_plan_solve_duration_seconds_sum{{{S}}}[1h]) / rate(ped_plan_solve_duration_seconds_count{{{S}}}[1h])', "mean"),
    ], "s", w=8)
    b.ts("Plans per hour by status", [target(
        f'sum by (status) (increase(ped_plans_total{{{S}}}[1h]))', "{{status}}")], w=8)
    b.ts("Objective", [target(f'ped_plan_objective_euros{{{S}}}', "objective")], "currencyEUR", w=8)
    b.row("Setpoints")
    b.ts("Next planned setpoints", [target(f'ped_plan_next_setpoint_watts{{{S}}}', "{{device}}")], "watt", w=8)
    b.ts("Setpoints written", [target(f'ped_setpoint_watts{{{S}}}', "{{device}}")], "watt", w=8)
    b.ts("Setpoint writes by result", [target(
        f'sum by (result) (increase(ped_setpoint_writes_total{{{S}}}[1h]))', "{{result}}")], w=8)
    b.row("Safety envelope")
    b.ts("Setpoints clamped per hour", [target(
        f'sum by (device, limit) (increase(ped_setpoint_clamped_total{{{S}}}[1h]))', "{{device}} {{limit}}")], w=8,
        description="The plan asked for more than a device's bounds or ramp allow; ped wrote the limit.")
    b.ts("Read-back mismatches per hour", [target(
        f'sum by (device) (increase(ped_setpoint_readback_mismatch_total{{{S}}}[1h]))', "{{device}}")], w=8,
        description="The device holds another value than ped wrote: a local override, a lapsed limit or a faulty map.")
    b.ts("Devices handed back to their safe mode", [target(
        f'sum by (device, reason) (increase(ped_device_releases_total{{{S}}}[1h]))', "{{device}} {{reason}}")], w=8,
        description="stop: ped stopped; plan_loss: no valid plan; contact_lost: the device stopped answering.")
    b.row("Fallbacks and re-solves")
    b.ts("Fallback ladder rung", [target(f'ped_plan_fallback_level{{{S}}}', "rung")], w=8,
         description="0 optimal, 1 relaxed, 2 last plan shifted by one step, 3 rule-based.",
         defaults={"min": 0, "max": 3, "decimals": 0})
    b.ts("Soft limits violated by the plan", [target(f'ped_plan_soft_violations{{{S}}}', "violations")], w=8,
         description="Limits the plan could only meet by paying their penalty; the plan lists which and by how much.")
    b.ts("Re-solves per hour by trigger", [target(
        f'sum by (reason) (increase(ped_plan_resolves_total{{{S}}}[1h]))', "{{reason}}")], w=8,
        description="step: the next settlement step; forecast_miss: measured PV far from the plan's forecast.")
    b.row("Export price")
    b.ts("Export price of the current step", [target(f'ped_export_price_eur_per_kwh{{{S}}}', "€/kWh")], w=12,
         description="From plan.export_prices_file (e.g. day-ahead prices), else the flat plan.export_price_eur_per_kwh. Below 0 the plan curtails PV.")
    b.ts("Export price file: failed reads per hour", [target(
        f'increase(ped_export_prices_errors_total{{{S}}}[1h])', "failed reads")], w=12,
        description="The file was unreadable or invalid (the log names line and fix); the plan kept the last good prices.")
    return b


def participants():
    b = Board("ped-participants", "ped / Participants and keys",
              "Local energy allocated to each participant, the keys sent to the DSO, the key files.",
              [("participant", 'label_values(ped_participant_allocated_energy_joules_total{site=~"$site"}, participant)')])
    P = f'{S},participant=~"$participant"'
    b.row("Participants")
    b.panel("bargauge", "Allocated local energy, last 24 h", [target(
        f'sort_desc(increase(ped_participant_allocated_energy_joules_total{{{P}}}[1d]) / {KWH})',
        "{{participant}}", instant=True)], "kwatth", w=12, h=12,
        options={"orientation": "horizontal", "displayMode": "basic"})
    b.panel("bargauge", "Share of consumption covered locally, last 24 h", [target(
        f'sort_desc(increase(ped_participant_allocated_energy_joules_total{{{P}}}[1d])'
        f' / increase(ped_participant_consumed_energy_joules_total{{{P}}}[1d]))',
        "{{participant}}", instant=True)], "percentunit", w=12, h=12,
        options={"orientation": "horizontal", "displayMode": "basic"}, defaults={"min": 0, "max": 1})
    b.ts("Allocated per hour", [target(
        f'increase(ped_participant_allocated_energy_joules_total{{{P}}}[1h]) / {KWH}', "{{participant}}")],
        "kwatth", w=12)
    b.ts("Keys, last step of the last period", [target(f'ped_participant_key_ratio{{{P}}}', "{{participant}}")],
         "percentunit", w=12)
    b.row("Keys and files")
    b.stat("Largest key sum", [target(f'ped_key_sum_max_ratio{{{S}}}', instant=True)], "percentunit", w=4,
           defaults={"max": 1})
    b.stat("Periods closed, 24 h", [target(f'increase(ped_periods_closed_total{{{S}}}[1d])', instant=True)], w=4)
    b.stat("Key files written, 24 h", [target(
        f'sum(increase(ped_key_files_written_total{{{S}}}[1d]))', instant=True)], w=4)
    b.stat("Key files failing validation, 24 h", [target(
        f'sum(increase(ped_key_files_validated_total{{{S},result="invalid"}}[1d]))', instant=True)], w=4,
        defaults={"thresholds": {"mode": "absolute", "steps": [
            {"color": "green", "value": None}, {"color": "red", "value": 1}]}})
    b.stat("Last key file written", [target(
        f'time() - ped_key_files_last_written_timestamp_seconds{{{S}}}', instant=True)], "s", w=4)
    b.stat("Last closed period", [target(f'ped_period_start_timestamp_seconds{{{S}}} * 1000', instant=True)],
           "dateTimeAsIso", w=4)
    b.ts("Key files validated by result", [target(
        f'sum by (result) (increase(ped_key_files_validated_total{{{S}}}[1h]))', "{{result}}")], w=24)
    b.row("Delivery to the DSO")
    b.ts("Outbox by state", [target(f'ped_outbox_files{{{S}}}', "{{state}}")], w=12,
         description="pending: waiting for a (re)try; sent: delivered; failed: refused for good, needs a person.")
    b.ts("Delivery attempts per hour", [target(
        f'sum by (channel, result) (increase(ped_deliveries_total{{{S}}}[1h])) or on() vector(0)',
        "{{channel}} {{result}}")], w=12,
        description="0 when the site has no [delivery] section: files then wait in the outbox.")
    return b


BOARDS = {"overview": overview, "devices": devices, "optimiser": optimiser, "participants": participants}


def layout_problems(name, board):
    """What Grafana would render badly or not at all: duplicate panel ids,
    panels outside the 24-column grid or overlapping, a datasource other than
    the provisioned one."""
    problems, cells, ids = [], {}, set()
    provisioned = (OUT.parent / "provisioning/datasources/prometheus.yml").read_text()
    if f"uid: {DS['uid']}" not in provisioned:
        problems.append(f"datasource uid {DS['uid']} not provisioned")
    for p in board["panels"]:
        if p["id"] in ids:
            problems.append(f"{name}: duplicate panel id {p['id']}")
        ids.add(p["id"])
        g = p["gridPos"]
        if g["x"] < 0 or g["w"] < 1 or g["x"] + g["w"] > 24:
            problems.append(f"{name}: panel {p['title']!r} outside the grid")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    problems.append(f"{name}: {p['title']!r} overlaps {cells[(x, y)]!r}")
                    break
                cells[(x, y)] = p["title"]
            else:
                continue
            break
        for t in p.get("targets", []):
            if t["datasource"] != DS:
                problems.append(f"{name}: {p['title']!r} queries another datasource")
    return problems


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, make in BOARDS.items():
        board = make().json()
        stale += layout_problems(name, board)
        text = json.dumps(board, indent=2, ensure_ascii=False) + "\n"
        path = OUT / f"{name}.json"
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        sys.exit(f"dashboards out of date or broken (edit and run {sys.argv[0]}): {'; '.join(stale)}")


if __name__ == "__main__":
    main()
