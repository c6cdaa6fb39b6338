#!/usr/bin/env python3
"""Writes every PromQL expression of the Grafana dashboard as a Prometheus recording rule,
so that `promtool check rules` parses them (run by ci/checks/promtool.sh).

    python3 ci/checks/dashboard_rules.py [helm/flagrelay/dashboards/flagrelay.json] > rules.yml
    python3 ci/checks/dashboard_rules.py --query http://127.0.0.1:9090 [dashboard.json]

With --query it instead runs every expression against a Prometheus server that scrapes a relay
(ci/checks/promtool.sh starts both) and fails unless each one succeeds and returns at least one
series: a panel that would stay empty on a fresh relay reads something the relay does not export
(or joins labels that do not match).

Grafana's variables are replaced by what a query would see: `$env`, `$job`, `$instance`
(regex matchers, "All" = `.*`) by `.*`, `$__rate_interval` and `$__interval` by `1m`,
`$__range` by `1h`. Variable queries (`label_values(metric, label)`) are Grafana syntax, not
PromQL, so their selector is checked instead. Which metrics the expressions read is checked by
tests/dashboard.rs against docs/metrics.md and a live scrape.
"""

import argparse
import json
import re
import sys
import time
import urllib.parse
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("path", nargs="?", default="helm/flagrelay/dashboards/flagrelay.json")
ap.add_argument("--query", metavar="PROMETHEUS_URL")
args = ap.parse_args()
path = args.path
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



def query(base: str, expr: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body.get("status") == "success", body
    return body["data"]["result"]


if args.query:
    base = args.query.rstrip("/")
    # Wait for the first scrapes: `rate` over 1m needs two samples of each series.
    deadline = time.time() + 60
    while True:
        try:
            up = query(base, 'count_over_time(up{job="flagrelay"}[1m]) >= 3')
        except Exception:  # noqa: BLE001 - not up yet
            up = []
        if up:
            break
        if time.time() > deadline:
            sys.exit("Prometheus has not scraped the relay three times within 60 s")
        time.sleep(0.5)
    failed = 0
    for what, expr in rules:
        try:
            n = len(query(base, expr))
        except Exception as e:  # noqa: BLE001
            n, why = 0, f"error: {e}"
        else:
            why = "no series"
        if n == 0:
            failed += 1
            print(f"FAIL {what}: {why}: {expr}")
    print(f"{len(rules) - failed} of {len(rules)} dashboard expressions return series from a live relay")
    sys.exit(1 if failed else 0)

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
