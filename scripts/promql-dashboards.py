#!/usr/bin/env python3
"""Runs every PromQL expression of ped's Grafana dashboards against a real
Prometheus and fails unless each one returns data.

usage: promql-dashboards.py PROMETHEUS_URL SITE DASHBOARD.json...

Expressions come from every panel target (rows' nested panels too) and from
the query variables (`label_values(metric, label)` becomes
`count by (label) (metric)`). Grafana's variables are replaced the way Grafana
would for a user who picked the site and "All" for everything else.
"""
import json
import re
import sys
import urllib.parse
import urllib.request


def substitute(expr, site):
    values = {
        "site": site,
        "__rate_interval": "15s",
        "__interval": "5s",
        "__range": "5m",
    }
    def one(m):
        name = m.group(1) or m.group(2)
        # Any other dashboard variable is multi-value with "All" = ".*".
        return values.get(name, ".*")
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def label_values_to_promql(query):
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query)
    if not m:
        return query
    return f"count by ({m.group(2)}) ({m.group(1)})"


def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def expressions(path):
    board = json.load(open(path))
    title = board.get("title", path)
    for v in board.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and q:
            yield title, f"variable ${v['name']}", label_values_to_promql(q)
    for p in panels(board.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                yield title, p.get("title", "?"), t["expr"]


def query(base, expr):
    url = base.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        return None, f"HTTP {e.code}: {e.read().decode(errors='replace')[:200]}"
    except OSError as e:
        return None, str(e)
    if body.get("status") != "success":
        return None, body.get("error", "query failed")
    data = body["data"]
    result = data["result"]
    n = len(result) if data["resultType"] in ("vector", "matrix") else 1
    return n, None


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    base, site, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    rows, empty = [], []
    for f in files:
        for board, panel, raw in expressions(f):
            expr = substitute(raw, site)
            n, err = query(base, expr)
            ok = err is None and n > 0
            rows.append((board, panel, n if err is None else "ERR", expr))
            if not ok:
                empty.append((board, panel, expr, err or "empty result"))
    width = max(len(f"{b} / {p}") for b, p, _, _ in rows)
    for b, p, n, expr in rows:
        print(f"{f'{b} / {p}':<{width}}  {n!s:>4}  {expr}")
    print(f"\n{len(rows)} expressions from {len(files)} dashboards, {len(rows) - len(empty)} with data")
    if not rows:
        sys.exit("no expression found in the dashboards")
    if empty:
        print("\nEXPRESSIONS WITHOUT DATA:", file=sys.stderr)
        for b, p, expr, why in empty:
            print(f"  {b} / {p}: {expr}\n    -> {why}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
