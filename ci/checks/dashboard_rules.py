#!/usr/bin/env python3
"""Writes every PromQL expression of the Grafana dashboard as a Prometheus recording rule,
so that `promtool check rules` parses them (run by ci/checks/promtool.sh).

    python3 ci/checks/dashboard_rules.py [helm/flagrelay/dashboards/flagrelay.json] > rules.yml

Grafana's variables are replaced by what a query would see: `$env`, `$job`, `$instance`
(regex matchers, "All" = `.*`) by `.*`, `$__rate_interval` and `$__interval` by `1m`,
`$__range` by `1h`. Variable queries (`label_values(metric, label)`) are Grafana syntax, not
PromQL, so their selector is checked instead. Which metrics the expressions read is checked by
tests/dashboard.rs against docs/metrics.md and a live scrape.
"""

import json
import re
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "helm/flagrelay/dashboards/flagrelay.json"
dash = json.load(open(path))
SUBST = [("$__rate_interval", "1m"), ("$__interval", "1m"), ("$__range", "1h")]


def promql(expr: str) -> str:
    for k, v in SUBST:
        expr = expr.replace(k, v)
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def panels(d):
    for p in d.get("panels", []):
        yield p
        yield from p.get("panels", [])


rules = []
for p in panels(dash):
    for t in p.get("targets", []):
        rules.append((f"panel {p['id']} {t['refId']}: {p['title']}", promql(t["expr"])))
for v in dash["templating"]["list"]:
    if v.get("type") != "query":
        continue
    q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
    m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q.strip())
    assert m, f"variable {v['name']}: not label_values(selector, label): {q}"
    rules.append((f"variable {v['name']}", promql(m.group(1))))

print("# generated from", path, "by ci/checks/dashboard_rules.py")
print("groups:")
print("  - name: flagrelay-dashboard")
print("    rules:")
for i, (what, expr) in enumerate(rules):
    # JSON strings are YAML strings.
    print(f"      # {what}")
    print(f"      - record: flagrelay_dashboard:expr_{i}")
    print(f"        expr: {json.dumps(expr)}")
print(f"{len(rules)} expressions", file=sys.stderr)
