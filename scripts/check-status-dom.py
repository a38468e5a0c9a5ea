#!/usr/bin/env python3
"""Checks the status page as Chromium rendered it against /status.json.

usage: check-status-dom.py DOM.html BEFORE.json AFTER.json SCREENSHOT.png

BEFORE and AFTER are /status.json fetched just before and just after the DOM
dump: a value on the page must match one of them (the simulation moves on
between the fetches). Fails with the list of mismatches.
"""
import json
import struct
import sys
import zlib
from html.parser import HTMLParser


class Page(HTMLParser):
    """Text by element id, table rows by table id, SVG polylines."""

    def __init__(self):
        super().__init__()
        self.text = {}
        self.rows = {}
        self.polylines = []
        self.stack = []  # ids of the open elements that have one
        self.table = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "id" in a:
            self.table = a["id"]
            self.rows[self.table] = []
        if tag == "tr" and self.table:
            self.rows[self.table].append([])
        if tag in ("td", "th") and self.table and self.rows[self.table]:
            self.rows[self.table][-1].append("")
        if tag == "polyline":
            self.polylines.append((a.get("stroke"), a.get("points", "").split()))
        if tag in ("br", "img", "meta", "link", "input", "line", "polyline"):
            return
        self.stack.append(a.get("id"))
        if a.get("id"):
            self.text[a["id"]] = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self.table = None
        if tag in ("line", "polyline", "br", "img", "meta", "link", "input"):
            return
        if self.stack:
            self.stack.pop()

    def handle_data(self, data):
        for i in self.stack:
            if i:
                self.text[i] += data
        if self.table and self.rows[self.table] and self.rows[self.table][-1]:
            self.rows[self.table][-1][-1] += data


def kw(x):
    return f"{x:.1f} kW"


def kwh(x):
    return f"{x:.1f} kWh"


def pct(x):
    return f"{100 * x:.1f} %"


def png_is_not_blank(path):
    """Decompresses the PNG's image data: a page with text, cards and a chart
    has many distinct byte values; an empty white page has a handful."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return False, "not a PNG"
    pos, idat, size = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        if kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    distinct = len(set(raw))
    return distinct > 64, f"{size[0]}x{size[1]}, {distinct} distinct byte values"


def main():
    dom_path, before_path, after_path, png = sys.argv[1:5]
    page = Page()
    page.feed(open(dom_path, encoding="utf-8").read())
    snaps = [json.load(open(before_path)), json.load(open(after_path))]
    t = {k: v.strip() for k, v in page.text.items()}
    problems = []

    def expect(what, shown, allowed):
        if shown not in allowed:
            problems.append(f"{what}: page shows {shown!r}, /status.json gives {sorted(set(allowed))!r}")

    site = snaps[0]["site"]
    expect("title", t.get("title"), [f"ped: {site}"])
    expect("devices up", t.get("up"), [f"{s['devices_up']} / {s['devices_total']}" for s in snaps])
    expect("ready badge", t.get("ready"), ["ready" if not s["ready"] else f"not ready: {s['ready']}" for s in snaps])

    # Power moves between the fetches, and the participants' sum is noisy (118
    # meters): the page's value must lie between them, give or take 10 % or 3 kW.
    for key in ("pv", "load"):
        shown = t.get(key, "")
        try:
            v = float(shown.removesuffix(" kW"))
        except ValueError:
            problems.append(f"{key}: page shows {shown!r}, not a power")
            continue
        lo = min(s[f"{key}_kw"] for s in snaps)
        hi = max(s[f"{key}_kw"] for s in snaps)
        if not min(lo * 0.9, lo - 3) <= v <= max(hi * 1.1, hi + 3):
            problems.append(f"{key}: page shows {v} kW, /status.json between {lo:.1f} and {hi:.1f}")
    if snaps[0]["pv_kw"] <= 0:
        problems.append("the simulated PV is 0 kW: the check would compare nothing")

    # The last period: all its numbers from the same snapshot.
    matching = [s for s in snaps if s["last_period"] == t.get("period")]
    if not matching:
        problems.append(f"last period: page shows {t.get('period')!r}, /status.json "
                        f"{[s['last_period'] for s in snaps]}")
    else:
        s = matching[-1]
        e = s["last_period_kwh"]
        expect("self-consumption", t.get("scr"), [pct(s["self_consumption_ratio"])])
        expect("self-sufficiency", t.get("ssr"), [pct(s["self_sufficiency_ratio"])])
        expect("production", t.get("e-prod"), [kwh(e["production"])])
        expect("consumption", t.get("e-cons"), [kwh(e["consumption"])])
        expect("self-consumed", t.get("e-self"), [kwh(e["self_consumed"])])
        expect("surplus", t.get("e-surplus"), [kwh(e["surplus"])])
        keys = s["last_keys_by_participant"]
        rows = page.rows.get("keys", [])[1:]
        if len(rows) != len(keys):
            problems.append(f"keys table: {len(rows)} rows for {len(keys)} participants")
        by_id = {k["participant"]: k for k in keys}
        for r in rows:
            k = by_id.get(r[0])
            if k is None or r[1] != k["prm"] or r[2] != pct(k["key_ratio"]):
                problems.append(f"keys table row {r} does not match {k}")
                break
        shares = [float(r[2].removesuffix(" %")) for r in rows]
        if shares != sorted(shares, reverse=True):
            problems.append("keys table not sorted by key")

    devices = page.rows.get("devices", [])[1:]
    if len(devices) != snaps[-1]["devices_total"]:
        problems.append(f"devices table: {len(devices)} rows for {snaps[-1]['devices_total']} devices")

    # The plan chart: one line per series, one point per plan step.
    steps = len(snaps[-1]["plan"]["pv_kw"])
    strokes = {stroke: len(points) for stroke, points in page.polylines}
    for color in ("orange", "steelblue", "crimson"):
        if strokes.get(color) != steps:
            problems.append(f"plan chart: {color} line has {strokes.get(color)} points, plan has {steps} steps")

    ok, why = png_is_not_blank(png)
    if not ok:
        problems.append(f"screenshot looks blank: {why}")

    print(f"page: PV {t.get('pv')}, load {t.get('load')}, devices up {t.get('up')}, period {t.get('period')}, "
          f"self-consumption {t.get('scr')}, self-sufficiency {t.get('ssr')}, {len(page.rows.get('keys', [])) - 1} "
          f"key rows, {len(devices)} device rows, chart {strokes}; screenshot {why}")
    if problems:
        print("STATUS PAGE MISMATCHES:", *problems, sep="\n  ", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
