"""The alert rules and the Grafana dashboard read metrics the services really export.

promtool (`check config`, `test rules`) and a real Prometheus run them in `make compose-test`;
these tests catch the drift promtool cannot: a rule or panel that names a metric, or a
refusal reason, no service exports.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from services.aggregator.round_metrics import record_presence
from services.common.runtime.grpc_status import REFUSAL_REASONS
from services.common.runtime.metrics import ServiceMetrics

pytestmark = pytest.mark.unit
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
sys.path.insert(0, str(DEPLOY))
import check_monitoring  # noqa: E402  (a standalone script of deploy/, standard library only)

PROMETHEUS_OWN = {"up", "ALERTS", "time"}
FUNCTIONS = {"increase", "rate", "sum", "histogram_quantile", "resets", "max", "min", "by", "on", "and", "or",
             "le", "avg", "count"}


def exported_names() -> set[str]:
    metrics = ServiceMetrics("aggregator")
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    # By family, not by sample: a labelled metric has no sample before its first label value.
    return {family.name + suffix for family in metrics.registry.collect() for suffix in suffixes[family.type]}


def metric_names(expression: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expression)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_strings)
    return {name for name in re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", without_ranges)
            if name.startswith("fedxray_") or name in PROMETHEUS_OWN}


def alert_expressions() -> dict[str, str]:
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    blocks = re.split(r"^\s*- alert:\s*", text, flags=re.MULTILINE)[1:]
    found = {}
    for block in blocks:
        name = block.split()[0]
        expression = re.search(r"expr:\s*(?:>-\s*)?(.*?)\n\s*(?:for|labels):", block, flags=re.DOTALL)
        assert expression, f"alert {name} has no expr"
        found[name] = " ".join(expression.group(1).split())
    return found


def test_every_alert_the_issue_asks_for_is_defined() -> None:
    assert {"FedXrayRoundStalled", "FedXrayDecryptionRefused", "FedXrayIntegrityRefusal",
            "FedXrayNodeMissing"} <= set(alert_expressions())
    assert set(alert_expressions()) == set(check_monitoring.alert_names())


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_a_rule_or_panel_reads_is_exported(source: str) -> None:
    expressions = (list(alert_expressions().values()) if source == "alerts"
                   else [expr for _, expr in check_monitoring.dashboard_queries()])
    assert expressions
    exported = exported_names() | PROMETHEUS_OWN
    for expression in expressions:
        names = metric_names(expression)
        assert names, expression
        assert names <= exported, f"{expression!r} reads {sorted(names - exported)}, which no service exports"


def test_every_refusal_reason_a_rule_matches_is_one_a_service_counts() -> None:
    for name, expression in alert_expressions().items():
        reasons = re.findall(r'reason=~?"([^"]*)"', expression)
        for pattern in reasons:
            for reason in pattern.split("|"):
                assert reason in REFUSAL_REASONS, f"{name} matches reason {reason!r}, which nothing counts"


def test_refusal_reasons_are_exported_at_zero_before_the_first_refusal() -> None:
    metrics = ServiceMetrics("aggregator")
    samples = {(s.name, s.labels.get("reason")): s.value
               for family in metrics.registry.collect() for s in family.samples}
    for reason in ("digest_mismatch", "key_authority_refused", "policy_violation", "server_limit"):
        assert samples[("fedxray_refused_requests_total", reason)] == 0
    metrics.record_refusal("digest_mismatch")
    assert metrics.refused.labels(reason="digest_mismatch")._value.get() == 1


def test_missed_rounds_count_consecutive_absences_and_reset_on_return() -> None:
    metrics = ServiceMetrics("aggregator")
    members = frozenset({"a", "b", "c"})
    missed: dict[str, int] = {}
    for contributors in (["a", "b", "c"], ["a", "b"], ["a"], ["a"], ["a", "b"]):
        record_presence(metrics, missed, members, contributors)
    assert missed == {"a": 0, "b": 0, "c": 4}
    assert metrics.rounds_missed.labels(node="c")._value.get() == 4
    assert metrics.rounds_missed.labels(node="b")._value.get() == 0


def test_pending_and_firing_alerts_are_described_from_prometheus_s_own_result_shape() -> None:
    """The shape of an instant query of ALERTS, as Prometheus 2.42 answers it (labels under `metric`)."""
    result = [{"metric": {"__name__": "ALERTS", "alertname": "FedXrayServiceDown", "alertstate": "pending",
                          "instance": "aggregator:9102", "job": "aggregator", "severity": "warning"},
               "value": [1796023896.6, "1"]}]
    assert check_monitoring.describe_alerts(result) == "FedXrayServiceDown (pending) on aggregator:9102"
    assert check_monitoring.describe_alerts([]) == ""
