"""A sealed round's timings: the row's phase breakdown and the Prometheus metrics."""

from __future__ import annotations

from services.aggregator.round_state import RoundState
from services.aggregator.submission_staging import VerifiedSubmission
from services.common.runtime.metrics import ServiceMetrics

NODE_PHASES = ("train", "precompute", "encode", "encrypt", "upload")


def phase_row(state: RoundState, contributors: list[VerifiedSubmission], decrypt_seconds: float,
              apply_seconds: float) -> dict[str, float]:
    """Per phase, the slowest contributor's node-side seconds, then the aggregator's own, then the critical path:
    the slowest contributor's seconds from its trained update to its last chunk sent (its chunks are folded as they
    arrive), plus the decryption and the new model's application after the seal."""
    row = {phase: max((getattr(c.phase_seconds, phase) for c in contributors), default=0.0) for phase in NODE_PHASES}
    after_training = max((c.phase_seconds.after_training for c in contributors), default=0.0)
    return {**row, "aggregate": state.fold_seconds, "decrypt": decrypt_seconds, "apply": apply_seconds,
            "critical_path": after_training + decrypt_seconds + apply_seconds}


def record_round(metrics: ServiceMetrics, state: RoundState, contributors: list[VerifiedSubmission],
                 *, seconds: float, decrypt_seconds: float, apply_seconds: float, epsilon: float,
                 round_epsilon: float) -> dict[str, float]:
    """Publish a sealed round's metrics; the phase row."""
    metrics.round_latency.observe(seconds)
    for submission in contributors:
        for phase in NODE_PHASES:
            metrics.phase_seconds.labels(phase=phase).observe(getattr(submission.phase_seconds, phase))
    phases = phase_row(state, contributors, decrypt_seconds, apply_seconds)
    for phase, value in phases.items():  # critical_path too: a sum of phases, not one
        metrics.last_phase_seconds.labels(phase=phase).set(value)
    for phase in ("aggregate", "decrypt", "apply"):
        metrics.phase_seconds.labels(phase=phase).observe(phases[phase])
    metrics.participants.set(len(contributors))
    metrics.epsilon.set(epsilon)
    metrics.round_epsilon.set(round_epsilon)
    return phases


def record_presence(metrics: ServiceMetrics, missed: dict[str, int], members: frozenset[str],
                    contributors: list[str]) -> None:
    """After a sealed round: each member's run of consecutive rounds without it (kept in `missed`), published."""
    for node in sorted(members):
        missed[node] = 0 if node in contributors else missed.get(node, 0) + 1
        metrics.rounds_missed.labels(node=node).set(missed[node])
