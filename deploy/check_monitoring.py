"""Check the monitoring against a running Prometheus: the dashboard's queries and the alert rules.

    python3 deploy/check_monitoring.py --prometheus http://127.0.0.1:9090 [--timeout 180]

1. Every query of the Grafana dashboard (deploy/grafana/dashboards/fedxray.json) runs through
   Prometheus's HTTP API and returns at least one series. This tests the dashboard without
   Grafana. A query that returns nothing is asked again every few seconds (rates need two
   scrapes; the validation metrics come with the final evaluation) until --timeout.
2. Every alert rule of deploy/prometheus/alerts.yml is loaded by that Prometheus and was
   evaluated without error (/api/v1/rules, health "ok"). Alerts firing now are printed.

Exit 0 when both hold; 1 naming each query or rule that does not. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from wait_for_rounds import query

DEPLOY = Path(__file__).resolve().parent
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "fedxray.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"


def dashboard_queries(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, rows' nested panels included."""
    def panels(items: list[dict[str, object]]) -> list[dict[str, object]]:
        found = []
        for panel in items:
            found.append(panel)
            found.extend(panels(list(panel.get("panels", []))))  # type: ignore[arg-type]
        return found

    dashboard = json.loads(path.read_text())
    return [(str(panel.get("title")), str(target["expr"]))
            for panel in panels(dashboard["panels"])
            for target in panel.get("targets", [])  # type: ignore[attr-defined]
            if target.get("expr")]


def alert_names(path: Path = ALERTS) -> list[str]:
    return re.findall(r"^\s*- alert:\s*(\S+)", path.read_text(), flags=re.MULTILINE)


def check_dashboard(prometheus: str, timeout: float) -> int:
    queries = dashboard_queries()
    if not queries:
        print(f"FAIL {DASHBOARD.name} has no queries", flush=True)
        return 1
    pending = dict.fromkeys(expr for _, expr in queries)
    found: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while True:
        for expr in list(pending):
            if "$" in expr:
                raise SystemExit(f"FAIL {expr!r} uses a Grafana variable: substitute it before querying")
            try:
                series = len(query(prometheus, expr))
            except (OSError, urllib.error.URLError, RuntimeError, ValueError) as error:
                print(f"FAIL {expr!r}: {error}", flush=True)
                return 1
            if series:
                found[expr] = series
                del pending[expr]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(5)
    for title, expr in queries:
        print(f"{'ok  ' if expr in found else 'FAIL'} dashboard {title!r}: {expr} -> {found.get(expr, 0)} series",
              flush=True)
    return 1 if pending else 0


def describe_alerts(series: list[dict[str, object]]) -> str:
    """The ALERTS series (instant query result: each with its `metric` labels) as `Name (state) on instance`."""
    described = []
    for item in series:
        labels = item.get("metric")
        assert isinstance(labels, dict)
        described.append(f"{labels.get('alertname')} ({labels.get('alertstate')}) on {labels.get('instance', '-')}")
    return "; ".join(described)


def check_rules(prometheus: str) -> int:
    with urllib.request.urlopen(f"{prometheus}/api/v1/rules?type=alert", timeout=10) as reply:
        body = json.loads(reply.read().decode())
    loaded = {rule["name"]: rule for group in body["data"]["groups"] for rule in group["rules"]}
    failed = 0
    for name in alert_names():
        rule = loaded.get(name)
        ok = rule is not None and rule.get("health") == "ok"
        failed += not ok
        state = "not loaded" if rule is None else f"health {rule.get('health')}, {rule.get('state')}" + (
            f", error {rule['lastError']}" if rule.get("lastError") else "")
        print(f"{'ok  ' if ok else 'FAIL'} alert rule {name}: {state}", flush=True)
    print(f"     alerts pending or firing now: {describe_alerts(query(prometheus, 'ALERTS')) or 'none'}", flush=True)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds to keep asking a dashboard query that returns no series yet")
    args = parser.parse_args()
    prometheus = args.prometheus.rstrip("/")
    failed = check_dashboard(prometheus, args.timeout)
    failed += check_rules(prometheus)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
