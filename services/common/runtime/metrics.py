"""The Prometheus metrics of one process, in one registry per process.

Names are documented in the README ("Metrics"). Each service builds one
`ServiceMetrics` in its entry point and passes it down; nothing registers globally.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from services.common.runtime.grpc_status import REFUSAL_REASONS

ROUND_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600, 1200)
PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 20, 60, 120, 300, 600)
# A round's phases. `precompute` (encryptions of zero, noise and masks) runs on the encryption workers during
# `train`; the others follow each other. A row's `critical_path` is its own sum: see round_metrics.phase_row.
PHASES = ("train", "precompute", "encode", "encrypt", "upload", "aggregate", "decrypt", "apply")
SEQUENTIAL_PHASES = tuple(phase for phase in PHASES if phase != "precompute")


def peak_rss_bytes() -> float:
    """Peak resident set size of this process (VmHWM), 0 where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(int(line.split()[1]) * 1024)
    except OSError:
        pass
    return 0.0


class ServiceMetrics:
    def __init__(self, service: str, holds_secret_key: bool = False) -> None:
        self.registry = CollectorRegistry()
        # process_start_time_seconds and friends: a restart shows as a new start time (compose-test reads it).
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.round_latency = Histogram("fedxray_round_latency_seconds", "Wall seconds of one round, plan to model",
                                       registry=r, buckets=ROUND_BUCKETS)
        self.phase_seconds = Histogram("fedxray_phase_seconds", "Seconds per phase of a round", ["phase"],
                                       registry=r, buckets=PHASE_BUCKETS)
        self.last_phase_seconds = Gauge("fedxray_last_round_phase_seconds", "Phase seconds of the last round",
                                        ["phase"], registry=r)
        self.bytes_received = Counter("fedxray_bytes_received_total", "Payload bytes received", registry=r)
        self.bytes_sent = Counter("fedxray_bytes_sent_total", "Payload bytes sent", registry=r)
        self.participants = Gauge("fedxray_round_participants", "Nodes counted in the last sealed round", registry=r)
        self.current_round = Gauge("fedxray_current_round", "Round in progress or last finished", registry=r)
        self.epsilon = Gauge("fedxray_epsilon", "Cumulative epsilon spent (inf: unaccounted)", registry=r)
        self.round_epsilon = Gauge("fedxray_round_epsilon", "Epsilon of the last round alone", registry=r)
        self.record_epsilon = Gauge("fedxray_record_epsilon", "Record-level DP-SGD epsilon spent (per patient where the hospital knows its patients, else per image), by "
                                    "hospital (a node reports its own; the aggregator, what each node reported)",
                                    ["node"], registry=r)
        self.validation = Gauge("fedxray_validation_metric", "Pooled validation metric of the global model",
                                ["metric"], registry=r)
        self.plan_declined = Counter("fedxray_plan_declined_total", "Round attempts nodes declined, by reason",
                                     ["reason"], registry=r)
        self.upload_streams = Gauge("fedxray_upload_streams_open", "Upload streams being received now", registry=r)
        self.refused = Counter("fedxray_refused_requests_total", "Refused requests by reason", ["reason"],
                               registry=r)
        # Every reason is exported from the start at 0: a series that first appears at 1 has no increase() in
        # Prometheus, so an alert on the first refusal would never fire.
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason=reason)
        self.rounds_completed = Gauge("fedxray_rounds_completed", "Rounds of this run applied to the model (restored "
                                      "from the checkpoint when the aggregator resumes)", registry=r)
        self.round_open = Gauge("fedxray_round_open", "1 while a round is in progress: planned, not yet "
                                "applied or failed", registry=r)
        self.round_opened = Gauge("fedxray_round_opened_timestamp_seconds", "Unix time the open round (its latest "
                                  "attempt) was planned", registry=r)
        self.rounds_missed = Gauge("fedxray_node_rounds_missed", "Consecutive sealed rounds a member hospital did "
                                   "not contribute to (0 when it contributed to the last)", ["node"], registry=r)
        self.secret_key = Gauge("fedxray_holds_secret_key", "1 if this process holds a CKKS secret key",
                                registry=r)
        self.peak_rss = Gauge("fedxray_peak_rss_bytes", "Peak resident memory of this process", registry=r)
        self.peak_rss.set_function(peak_rss_bytes)
        self.info = Gauge("fedxray_service_info", "Service identity", ["service"], registry=r)
        self.info.labels(service=service).set(1)
        self.secret_key.set(1 if holds_secret_key else 0)

    def observe_phase(self, phase: str, seconds: float) -> None:
        self.phase_seconds.labels(phase=phase).observe(seconds)
        self.last_phase_seconds.labels(phase=phase).set(seconds)

    def record_refusal(self, reason: str) -> None:
        self.refused.labels(reason=reason).inc()
