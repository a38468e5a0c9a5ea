"""Baseline for `cargo bench --bench plan`: the allocation instance dumped by
`ped plan --synthetic PxN --allocation --dump FILE`, built as the same LP with
PuLP and solved by CBC (EMHASS's former stack). Prints one JSON line:
build and solve seconds, status, score (same definition as ped's).

Usage: python pulp_allocation.py FILE
"""
import json
import sys
import time

import pulp


def main(path):
    with open(path) as f:
        inst = json.load(f)
    if inst.get("kind") != "allocation":
        sys.exit(f"{path}: not an allocation instance")
    p = inst["problem"]
    t0 = time.perf_counter()
    n = p["steps"]
    parts = p["participants"]
    local = p["local_price_eur_per_kwh"]
    export = p.get("export_price_eur_per_kwh") or [0.0] * n
    fair = p.get("fairness", {})
    tier_w = fair.get("tier_weight_eur_per_kwh", 1.0)
    floor_pen = fair.get("floor_penalty_eur_per_kwh", 1.0)
    pr_pen = fair.get("pro_rata_penalty_eur_per_eur", 10.0)
    floor_ratio = fair.get("floor_ratio")
    no_worse = fair.get("no_worse_than_pro_rata", True)
    last_tier = max((q.get("tier", 1) for q in parts), default=1)
    prod = p["production_kwh"]
    total = [sum(q["consumption_kwh"][t] for q in parts) for t in range(n)]
    pool = p.get("month_to_date_production_kwh", 0.0) + sum(prod)

    lp = pulp.LpProblem("allocation", pulp.LpMaximize)
    obj = []
    step_rows = [[] for _ in range(n)]
    const = sum(export[t] * prod[t] for t in range(n))
    for i, q in enumerate(parts):
        c = q["consumption_kwh"]
        v = [x - local for x in q["tariff_eur_per_kwh"]]
        bonus = tier_w * (last_tier - q.get("tier", 1))
        mtd = q.get("month_to_date", {})
        xs = []
        for t in range(n):
            if c[t] <= 0:
                xs.append(None)
                continue
            x = pulp.LpVariable(f"a_{i}_{t}", 0, c[t])
            xs.append(x)
            obj.append((v[t] - export[t] + bonus) * x)
            step_rows[t].append(x)
        share = q.get("subscription_share")
        if floor_ratio is not None and share is not None:
            target = min(floor_ratio * share * pool, mtd.get("allocated_kwh", 0.0) + sum(c)) - mtd.get("allocated_kwh", 0.0)
            if target > 0:
                u = pulp.LpVariable(f"u_{i}", 0)
                obj.append(-floor_pen * u)
                lp += pulp.lpSum(x for x in xs if x is not None) + u >= target
        if no_worse:
            pr = [c[t] * min(prod[t] / total[t], 1.0) if total[t] > 0 else 0.0 for t in range(n)]
            target = sum(v[t] * pr[t] for t in range(n)) - (mtd.get("value_eur", 0.0) - mtd.get("pro_rata_value_eur", 0.0))
            if target > 0 or any(x < 0 for x in v):
                w = pulp.LpVariable(f"w_{i}", 0)
                obj.append(-pr_pen * w)
                lp += pulp.lpSum(v[t] * xs[t] for t in range(n) if xs[t] is not None) + w >= target
    for t in range(n):
        if step_rows[t]:
            lp += pulp.lpSum(step_rows[t]) <= prod[t]
    lp += pulp.lpSum(obj) + const
    t1 = time.perf_counter()
    lp.solve(pulp.PULP_CBC_CMD(msg=False))
    t2 = time.perf_counter()
    print(json.dumps({
        "build_s": t1 - t0,
        "solve_s": t2 - t1,
        "total_s": t2 - t0,
        "status": pulp.LpStatus[lp.status],
        "score": pulp.value(lp.objective),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
