"""The secure round's critical path from the services' span files (services/common/runtime/tracing.py).

    python -m benchmarks.trace_report RUN_DIR/traces [...]     # one column per folder

For each folder: the median seconds over the traced rounds of each span of the release (the aggregator's call to
the key authority and the key authority's phases inside it), and of the nodes' training and upload stretches
(the slowest node of each round). `make bench-round` prints it for its secure runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

# The release's spans, in order, indented by depth: (name, label).
RELEASE = (
    ("node.train", "node: train (slowest)"),
    ("node.upload", "node: update to last chunk sent (slowest)"),
    ("aggregator.collect", "aggregator: collect"),
    ("aggregator.charge_privacy", "aggregator: charge privacy (fsync)"),
    ("aggregator.release", "aggregator: release"),
    ("aggregator.decrypt_rpc", "  call to the key authority"),
    ("aggregator.send_chunks", "    chunks handed to gRPC"),
    ("ka.decrypt_rpc", "    key authority: Decrypt"),
    ("ka.policy_check", "      policy check"),
    ("ka.mask_agreement", "      mask agreement"),
    ("ka.receive_and_check", "      receive and check chunks (before: all, then decrypt)"),
    ("ka.ledger_claim", "      ledger claim (fsync)"),
    ("ka.decrypt", "      decrypt"),
    ("ka.decrypt_slots", "        TenSEAL decrypt, round slots"),
    ("ka.unmask", "        unpack, remove masks"),
    ("ka.receive_and_decrypt", "      receive, check and decrypt, pipelined"),
    ("ka.receive_and_decrypt@decrypt_seconds", "        decrypting here, or handing to workers"),
    ("ka.receive_and_decrypt@unmask_seconds", "        unpack, remove masks"),
    ("ka.receive_and_decrypt@tail_seconds", "        after the last chunk arrived"),
    ("ka.answer", "      answer stream"),
    ("aggregator.await_answer", "    last chunk sent to first answer"),
    ("aggregator.receive_answers", "    first to last answer"),
    ("aggregator.decode", "  decode the mean"),
    ("aggregator.apply", "aggregator: apply"),
)


def load_spans(folder: Path) -> list[dict[str, Any]]:
    spans = []
    for path in sorted(folder.glob("*.jsonl")):
        spans.extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return spans


def per_round(spans: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each span name's seconds per round: the sum over a round's spans of that name (a retried call counts
    whole), and for nodes the slowest."""
    rounds: dict[tuple[str, int], list[float]] = defaultdict(list)
    trace_round = {s["trace"]: s["attributes"]["round"] for s in spans
                   if s["name"] in ("aggregator.release", "aggregator.decrypt_rpc") and "round" in s["attributes"]}
    for s in spans:
        round_id = s["attributes"].get("round", trace_round.get(s["trace"]))
        if round_id is not None:
            rounds[(s["name"], int(round_id))].append(float(s["seconds"]))
            for key, value in s["attributes"].items():  # seconds an attribute holds: name@attribute
                if key.endswith("_seconds"):
                    rounds[(f"{s['name']}@{key}", int(round_id))].append(float(value))
    out: dict[str, list[float]] = defaultdict(list)
    for (name, _), seconds in sorted(rounds.items()):
        out[name].append(max(seconds) if name.startswith("node.") else sum(seconds))
    return out


def report(folders: dict[str, Path]) -> str:
    columns = {label: per_round(load_spans(folder)) for label, folder in folders.items()}
    lines = [f"{'median seconds per round':46}" + "".join(f"{label:>14}" for label in columns)]
    for name, label in RELEASE:
        values = [statistics.median(col[name]) if col.get(name) else None for col in columns.values()]
        if all(v is None for v in values):
            continue
        lines.append(f"{label:46}" + "".join(f"{v:14.3f}" if v is not None else f"{'-':>14}" for v in values))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="folders of span files (*.jsonl)")
    args = parser.parse_args(argv)
    print(report({folder.parent.name or str(folder): folder for folder in args.folders}))


if __name__ == "__main__":
    main()
