#!/usr/bin/env python3
"""Wide district CSV (../shared/data/district-20xx: one column per participant or
plant, kWh per interval, `utc` = interval start) -> one Enedis load-curve export
per PRM and quantity, the layout `ped keys --load-curves` reads (DOMAIN.md 1):
UTF-8 with BOM, `;`, a two-line metadata header, a blank line, `Horodate;Valeur`,
then one row per point: local time with offset of the interval END, average
power in W; an empty value where the data set has none. Values are written as
they are, negative ones (a meter reset) included: what a PMO receives.

    district-curves.py --data DIR --from 2026-05-01 --to 2026-05-31 --out CURVES
        [--clean]              read truth/*_clean.csv.gz instead (what the DSO settles with)
        [--only ID,ID,...]     a subset of participants (plants are always written)
        [--production-scale X] production multiplied by X (a small slice of
                               participants keeps the operation's balance)
        [--site-out FILE --site SITE.toml]
                               also write SITE.toml cut down to the plants and
                               the participants written (for a small fixture)
"""
import argparse
import csv
import datetime as dt
import gzip
import os
import re
import sys
from zoneinfo import ZoneInfo

PARIS = ZoneInfo("Europe/Paris")
HEADER = ("Identifiant PRM;Type de donnees;Date de debut;Date de fin;Grandeur physique;"
          "Grandeur metier;Etape metier;Unite;Pas en minutes")


def rows(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        yield from csv.reader(f)


def prms(path, id_col, prm_col):
    with open(path, newline="") as f:
        return {r[id_col]: r[prm_col] for r in csv.DictReader(f)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--from", dest="first", required=True)
    ap.add_argument("--to", dest="last", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--clean", action="store_true")
    ap.add_argument("--only")
    ap.add_argument("--site")
    ap.add_argument("--site-out")
    ap.add_argument("--production-scale", type=float, default=1.0)
    a = ap.parse_args()

    first = dt.date.fromisoformat(a.first)
    last = dt.date.fromisoformat(a.last)
    lo = dt.datetime.combine(first, dt.time(), PARIS).astimezone(dt.timezone.utc)
    hi = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), PARIS).astimezone(dt.timezone.utc)
    who = prms(os.path.join(a.data, "participants.csv"), "id", "prm")
    who.update(prms(os.path.join(a.data, "plants.csv"), "id", "prm"))
    only = set(a.only.split(",")) if a.only else None
    os.makedirs(a.out, exist_ok=True)

    files = [("consumption", "Consommation"), ("production", "Production")]
    for name, grandeur in files:
        path = (os.path.join(a.data, "truth", f"{name}_clean.csv.gz") if a.clean
                else os.path.join(a.data, f"{name}.csv"))
        it = rows(path)
        head = next(it)
        cols = [k for k in range(2, len(head))
                if name == "production" or only is None or head[k] in only]
        points = {k: [] for k in cols}
        step = None
        for r in it:
            start = dt.datetime.fromisoformat(r[0].replace("Z", "+00:00"))
            if start < lo or start >= hi:
                continue
            if step is None:
                step = 30
            end = (start + dt.timedelta(minutes=step)).astimezone(PARIS)
            stamp = end.isoformat()
            for k in cols:
                v = r[k].strip()
                if v == "":
                    points[k].append(f"{stamp};")
                else:
                    scale = a.production_scale if name == "production" else 1.0
                    w = float(v) * scale * 60.0 / step * 1000.0
                    points[k].append(f"{stamp};{round(w)}" if abs(w - round(w)) < 1e-6
                                     else f"{stamp};{w:.3f}")
        for k in cols:
            pid = head[k]
            prm = who[pid]
            meta = (f"{prm};Courbe de charge;{first:%d/%m/%Y};{last + dt.timedelta(days=1):%d/%m/%Y};"
                    f"Energie active;{grandeur};Comptage Brut;W;{step}")
            text = "\ufeff" + HEADER + "\n" + meta + "\n\nHorodate;Valeur\n" + "\n".join(points[k]) + "\n"
            with open(os.path.join(a.out, f"{pid}-{name}.csv"), "w", encoding="utf-8", newline="") as f:
                f.write(text)

    if a.site_out:
        if not (a.site and only):
            sys.exit("--site-out needs --site and --only")
        text = open(a.site, encoding="utf-8").read()
        blocks = re.split(r"\n(?=\[\[)", text)
        kept = []
        for b in blocks:
            m = re.search(r'^(?:id|participant) = "([^"]+)"', b, re.M)
            if b.startswith("[[participants]]") or (b.startswith("[[devices]]") and 'kind = "meter"' in b):
                pid = re.search(r'^participant = "([^"]+)"', b, re.M) or re.search(r'^id = "([^"]+)"', b, re.M)
                if pid and pid.group(1) in only:
                    kept.append(b)
            elif b.startswith("[[devices]]") and 'kind = "pv_inverter"' not in b:
                continue
            else:
                kept.append(b)
        with open(a.site_out, "w", encoding="utf-8") as f:
            f.write("\n".join(kept).rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
