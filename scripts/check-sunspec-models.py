#!/usr/bin/env python3
"""Cross-check models/sunspec/*.toml against the SunSpec Alliance JSON models.

Usage: scripts/check-sunspec-models.py [REFERENCE_DIR]
REFERENCE_DIR holds model_<id>.json (default: ../shared/reference/sunspec-models,
relative to the repository root). Python 3.11+ standard library only.

Checks, per model: L, and for every point of the fixed block (non-repeating
groups flattened as <group>_<point>) its offset, size, type, scale link and
access; points present on one side only are failures too. Exits non-zero on
any mismatch or when the reference directory is missing.
"""

import json
import sys
import tomllib
from pathlib import Path

from sunspec_points import fixed_points

ROOT = Path(__file__).resolve().parent.parent
# The models ped ships: every one must be present and match.
REQUIRED = {1, 101, 102, 103, 111, 112, 113, 120, 121, 122, 123, 124, 160,
            201, 202, 203, 204, 701, 702, 703, 704, 705, 713, 714, 802}


def main():
    default = ROOT.parent / "shared" / "reference" / "sunspec-models"
    ref_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    if not ref_dir.is_dir():
        print(f"reference directory not found: {ref_dir}", file=sys.stderr)
        return 2
    passed = failed = 0
    files = sorted((ROOT / "models" / "sunspec").glob("*.toml"))
    if not files:
        print("no models/sunspec/*.toml found", file=sys.stderr)
        return 2
    for path in files:
        ours = tomllib.loads(path.read_text())
        mid = ours.get("sunspec_id")
        ref_path = ref_dir / f"model_{mid}.json"
        problems = []
        if not ref_path.is_file():
            problems.append(f"no reference {ref_path.name}")
        else:
            group = json.loads(ref_path.read_text())["group"]
            ref, length = fixed_points(group)
            if ours.get("length") != length:
                problems.append(f"length {ours.get('length')} != L {length}")
            if ours.get("name") != group["name"]:
                problems.append(f"name {ours.get('name')!r} != {group['name']!r}")
            mine = {p["name"]: p for p in ours.get("points", [])}
            for name, offset, rp in ref:
                p = mine.pop(name, None)
                if p is None:
                    problems.append(f"{name}: missing")
                    continue
                size = p.get("size", rp["size"] if rp["type"] != "string" else None)
                checks = [
                    ("offset", p.get("offset"), offset),
                    ("type", p.get("type"), rp["type"]),
                    ("size", size, rp["size"]),
                    ("scale", p.get("scale"), rp.get("sf")),
                    ("access", p.get("access", "r"), rp.get("access", "R").lower()),
                ]
                for what, got, want in checks:
                    if got != want:
                        problems.append(f"{name}: {what} {got!r} != {want!r}")
            for name in mine:
                problems.append(f"{name}: not in the reference")
        if problems:
            failed += 1
            print(f"FAIL {path.relative_to(ROOT)}")
            for pr in problems:
                print(f"  {pr}")
        else:
            passed += 1
            print(f"ok   {path.relative_to(ROOT)}")
    have = {tomllib.loads(p.read_text()).get("sunspec_id") for p in files}
    missing = sorted(REQUIRED - have)
    if missing:
        failed += 1
        print(f"FAIL models ped needs but models/sunspec/ lacks: {missing}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
