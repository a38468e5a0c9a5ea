#!/usr/bin/env python3
"""Writes the small Enedis load-curve fixtures of tests/keys_cli.rs.

Deterministic (no randomness): run it again and the files are identical.
Layout of DOMAIN.md §1: UTF-8 with BOM, LF, two header lines, a blank line,
`Horodate;Valeur`, W average power, local time with offset, end-of-interval.
"""
import math
import os
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

PARIS = ZoneInfo("Europe/Paris")
HERE = os.path.dirname(os.path.abspath(__file__))
HEAD = ("Identifiant PRM;Type de donnees;Date de debut;Date de fin;Grandeur physique;"
        "Grandeur metier;Etape metier;Unite;Pas en minutes\n")


def stamp(t_utc):
    return t_utc.astimezone(PARIS).isoformat()


def day_bounds(day):
    start = datetime(day.year, day.month, day.day, tzinfo=PARIS).astimezone(timezone.utc)
    nxt = day + timedelta(days=1)
    end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=PARIS).astimezone(timezone.utc)
    return start, end


def local_hour(t_utc):
    lt = t_utc.astimezone(PARIS)
    return lt.hour + lt.minute / 60


def pv(kwp, h):
    return 0.0 if h < 7 or h > 19 else kwp * 1000 * 0.7 * math.sin(math.pi * (h - 7) / 12) ** 2


def load(base_kw, h):
    return 1000 * base_kw * (0.6 + 0.5 * math.exp(-((h - 8) ** 2) / 2) + 0.7 * math.exp(-((h - 19.5) ** 2) / 3))


def write(path, prm, quantity, day, plan, missing=()):
    """plan: list of (until_local_hour, step_minutes, fn(h) -> W)."""
    start, end = day_bounds(day)
    lines = []
    t = start
    while t < end:
        h = local_hour(t)
        for until, step, fn in plan:
            if h < until:
                break
        t_end = t + timedelta(minutes=step)
        mid = local_hour(t + timedelta(minutes=step / 2))
        s = stamp(t_end)
        value = "" if s in missing else str(int(round(fn(mid))))
        lines.append(f"{s};{value}\n")
        t = t_end
    d0 = day.strftime("%d/%m/%Y")
    d1 = (day + timedelta(days=1)).strftime("%d/%m/%Y")
    text = ("\ufeff" + HEAD
            + f"{prm};Courbe de charge;{d0};{d1};Energie active;{quantity};Comptage Brut;W;\n"
            + "\n" + "Horodate;Valeur\n" + "".join(lines))
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def scenario(name, day, missing_flat2=()):
    d = os.path.join(HERE, name)
    os.makedirs(d, exist_ok=True)
    w = lambda f, *a, **k: write(os.path.join(d, f), *a, **k)
    w("PV-1.csv", "30000000000001", "Production", day, [(99, 15, lambda h: pv(100, h))])
    # Hourly points in the night, then 15 minutes: a step change inside one file.
    w("PV-2.csv", "30000000000002", "Production", day,
      [(6, 60, lambda h: pv(60, h)), (99, 15, lambda h: pv(60, h))])
    w("BAT-1-prod.csv", "30000000000009", "Production", day,
      [(99, 15, lambda h: 30000 if 18 <= h < 21 else 0)])
    w("BAT-1-cons.csv", "30000000000009", "Consommation", day,
      [(99, 15, lambda h: 25000 if 11 <= h < 14 else 0)])
    w("SCHOOL.csv", "20000000000001", "Consommation", day, [(99, 10, lambda h: load(40, h))])
    w("FLAT-1.csv", "20000000000002", "Consommation", day, [(99, 5, lambda h: load(3, h))])
    w("FLAT-2.csv", "20000000000003", "Consommation", day, [(99, 15, lambda h: load(4, h))],
      missing=missing_flat2)


if __name__ == "__main__":
    from datetime import date
    scenario("curves-2025-10-26", date(2025, 10, 26), missing_flat2=("2025-10-26T12:15:00+01:00",))
    scenario("curves-2025-03-30", date(2025, 3, 30))
    bad = os.path.join(HERE, "curves-bad")
    scenario("curves-bad", date(2025, 6, 21))
    p = os.path.join(bad, "FLAT-1.csv")
    with open(p, encoding="utf-8") as f:
        lines = f.readlines()
    lines[10] = "2025-06-21T00:30:00+01:00;100\n"   # wrong offset for June
    lines[20] = lines[20].split(";")[0] + ";-12\n"   # negative power
    lines[30] = "21/06/2025 02:00;100\n"              # not ISO 8601
    with open(p, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(lines)
    p = os.path.join(bad, "SCHOOL.csv")
    with open(p, encoding="utf-8") as f:
        text = f.read()
    with open(p, "w", encoding="utf-8", newline="\n") as f:
        f.write(text.replace(";W;\n", ";kWh;\n", 1))
