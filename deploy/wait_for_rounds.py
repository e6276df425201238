"""Poll a Prometheus server until the aggregator has completed N rounds.

    python3 deploy/wait_for_rounds.py --prometheus http://127.0.0.1:9090 --rounds 2 [--timeout 900]
        [--no-check] [--expect-restart | --restarted-after-end] [--aggregator-down-seconds 15]

Asks Prometheus's HTTP API (/api/v1/query), never the services: the first scrape comes
5 to 10 s after Prometheus starts, so this polls. Exit 0 when
fedxray_rounds_completed{job="aggregator"} (restored from the checkpoint when the aggregator
resumes) reaches the round count and every check below holds (none with --no-check);
with --expect-restart, the aggregator's process start time must have changed (a restart)
and its round latency histogram must hold the restarted process's own rounds. 1 otherwise, naming each target that is down with Prometheus's last
scrape error. Fails early when no FedXray target is up after --startup-grace seconds
(the containers cannot reach each other: see docs/DEPLOYMENT.md). Standard library only: runs with any Python 3.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

COUNT = 'fedxray_rounds_completed{job="aggregator"}'
LATENCY_COUNT = 'fedxray_round_latency_seconds_count{job="aggregator"}'
POLL_SECONDS = 3


def query(prometheus: str, expression: str) -> list[dict[str, object]]:
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
    with urllib.request.urlopen(url, timeout=10) as reply:
        body = json.loads(reply.read().decode())
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expression!r}: {body}")
    return list(body["data"]["result"])


def scalar(prometheus: str, expression: str) -> float | None:
    result = query(prometheus, expression)
    return float(result[0]["value"][1]) if result else None  # type: ignore[index]


def targets_up(prometheus: str) -> str:
    return ", ".join(f"{r['metric'].get('instance')}={r['value'][1]}"  # type: ignore[index,union-attr]
                     for r in query(prometheus, "up"))


def target_errors(prometheus: str) -> str:
    """Each FedXray scrape target that is not up, with Prometheus's last scrape error."""
    with urllib.request.urlopen(f"{prometheus}/api/v1/targets?state=active", timeout=10) as reply:
        body = json.loads(reply.read().decode())
    return "; ".join(f"{t['labels'].get('instance')}: {t.get('health')} ({t.get('lastError') or 'no error'})"
                     for t in body["data"]["activeTargets"]
                     if t["labels"].get("job") != "prometheus" and t.get("health") != "up")


def wait(prometheus: str, rounds: int, timeout: float, startup_grace: float, down_seconds: float,
         final_check: bool, expect_restart: bool) -> int:
    started = time.monotonic()
    last_report = ""
    aggregator_seen, aggregator_down_polls = False, 0
    service_seen = False  # has any FedXray target (not Prometheus itself) been up yet?
    while time.monotonic() - started < timeout:
        try:
            service_seen = service_seen or (scalar(prometheus, 'max(up{job!="prometheus"})') or 0) == 1
            count = scalar(prometheus, COUNT)
            current = scalar(prometheus, 'fedxray_current_round{job="aggregator"}')
            report = f"rounds completed {count}, current round {current}; targets up: {targets_up(prometheus)}"
            aggregator_up = scalar(prometheus, 'up{job="aggregator"}')
            aggregator_seen = aggregator_seen or aggregator_up == 1
            aggregator_down_polls = aggregator_down_polls + 1 if aggregator_seen and aggregator_up == 0 else 0
        except (OSError, urllib.error.URLError, RuntimeError, ValueError) as error:
            count, report = None, f"Prometheus not answering yet ({error})"
        if report != last_report:
            print(f"[wait_for_rounds {time.monotonic() - started:5.0f}s] {report}", flush=True)
            last_report = report
        if count is not None and count >= rounds:
            return check(prometheus, rounds, expect_restart) if final_check else 0
        if aggregator_down_polls * POLL_SECONDS >= down_seconds:
            print(f"FAIL: the aggregator's /metrics went away for {down_seconds:.0f} s before the rounds "
                  "completed", flush=True)
            return 1
        if not service_seen and time.monotonic() - started > startup_grace:
            if count is None and report.startswith("Prometheus not answering"):
                print(f"FAIL: Prometheus did not answer within {startup_grace:.0f} s ({report})", flush=True)
            else:
                print(f"FAIL: Prometheus has scraped no FedXray service within {startup_grace:.0f} s: the "
                      f"containers may not reach each other. Targets: {describe_targets(prometheus)}", flush=True)
            return 1
        time.sleep(POLL_SECONDS)
    print(f"FAIL: {COUNT} did not reach {rounds} within {timeout:.0f} s. "
          f"Targets down: {describe_targets(prometheus)}", flush=True)
    return 1


def describe_targets(prometheus: str) -> str:
    try:
        return target_errors(prometheus) or "none"
    except (OSError, urllib.error.URLError, KeyError, ValueError) as error:
        return f"unknown ({error})"


RESTARTED = 'changes(process_start_time_seconds{job="aggregator"}[1h])'


def check_restart_after_end(prometheus: str, rounds: int, timeout: float) -> int:
    """A restart after the run ended: wait until Prometheus has scraped the restarted aggregator, then check that it
    reports every round and sealed none of its own (the first process's rounds stay in Prometheus's history)."""
    deadline = time.monotonic() + timeout
    while (scalar(prometheus, RESTARTED) or 0.0) < 1.0:
        if time.monotonic() > deadline:
            print(f"FAIL no restarted aggregator scraped within {timeout:.0f} s", flush=True)
            return 1
        time.sleep(POLL_SECONDS)
    time.sleep(6)  # one more scrape interval: the restarted process's own values, not the killed one's last
    checks = {COUNT: float(rounds), LATENCY_COUNT: 0.0, f"max_over_time({LATENCY_COUNT}[1h])": float(rounds),
              'fedxray_holds_secret_key{job="aggregator"}': 0.0}
    failed = 0
    for expression, expected in checks.items():
        value = scalar(prometheus, expression)
        ok = value == expected
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {expression} = {value} (expected == {expected})", flush=True)
    return 1 if failed else 0


def check(prometheus: str, rounds: int, expect_restart: bool) -> int:
    checks: dict[str, tuple[str, float]] = {
        COUNT: ("==", float(rounds)),
        'fedxray_holds_secret_key{job="aggregator"}': ("==", 0.0),
        'fedxray_holds_secret_key{job="key-authority"}': ("==", 1.0),
    }
    if expect_restart:
        # The restarted process resumed and sealed rounds of its own; Prometheus scraped two processes (a counter
        # reset would show only if a scrape fell between the restart and the new process's first round).
        checks[LATENCY_COUNT] = (">=", 1.0)
        checks[RESTARTED] = (">=", 1.0)
    else:
        checks[LATENCY_COUNT] = ("==", float(rounds))
        checks['fedxray_round_latency_seconds_bucket{job="aggregator", le="+Inf"}'] = ("==", float(rounds))
    failed = 0
    for expression, (relation, expected) in checks.items():
        value = scalar(prometheus, expression)
        ok = value is not None and (value == expected if relation == "==" else value >= expected)
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {expression} = {value} (expected {relation} {expected})", flush=True)
    latency = scalar(prometheus, 'fedxray_round_latency_seconds_sum{job="aggregator"}')
    participants = scalar(prometheus, 'fedxray_round_participants{job="aggregator"}')
    accuracy = scalar(prometheus, 'fedxray_validation_metric{job="aggregator", metric="accuracy"}')
    epsilon = scalar(prometheus, 'fedxray_epsilon{job="aggregator"}')
    print(f"     round seconds total {latency}, participants {participants}, accuracy {accuracy}, "
          f"epsilon {epsilon}", flush=True)
    if not latency or latency <= 0:
        print("FAIL fedxray_round_latency_seconds_sum is not positive", flush=True)
        failed += 1
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--startup-grace", type=float, default=180.0,
                        help="fail when no FedXray scrape target has been up after this many seconds")
    parser.add_argument("--aggregator-down-seconds", type=float, default=15.0,
                        help="fail when the aggregator, once up, stays unscraped this long")
    parser.add_argument("--no-check", action="store_true", help="return once the rounds are reached, no checks")
    parser.add_argument("--expect-restart", action="store_true",
                        help="the aggregator was restarted during the run: check the resume, not one process's count")
    parser.add_argument("--restarted-after-end", action="store_true",
                        help="the aggregator was restarted after the run ended: wait for the restarted process, then "
                             "check that it reports every round and sealed none")
    args = parser.parse_args()
    if args.restarted_after_end:
        return check_restart_after_end(args.prometheus.rstrip("/"), args.rounds, args.timeout)
    return wait(args.prometheus.rstrip("/"), args.rounds, args.timeout, args.startup_grace,
                args.aggregator_down_seconds, not args.no_check, args.expect_restart)


if __name__ == "__main__":
    sys.exit(main())
