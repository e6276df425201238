"""The span files (services/common/runtime/tracing.py) and their breakdown (benchmarks/trace_report.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import trace_report

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def test_spans_cross_processes_through_the_grpc_metadata(tmp_path: Path) -> None:
    """A caller's span travels as traceparent metadata; the callee's spans become its children, in two processes
    with their own files, as the aggregator's and the key authority's do."""
    caller = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from services.common.runtime.tracing import configure_tracing, outgoing_metadata, span
        configure_tracing("aggregator", Path({str(tmp_path / "a.jsonl")!r}))
        with span("aggregator.decrypt_rpc", round=3):
            print(json.dumps(outgoing_metadata()))
    """)
    metadata = json.loads(subprocess.run([sys.executable, "-c", caller], cwd=REPO, capture_output=True, text=True,
                                         check=True, timeout=60).stdout)
    assert [key for key, _ in metadata] == ["traceparent"]
    callee = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from services.common.runtime.tracing import configure_tracing, incoming_context, span
        configure_tracing("key_authority", Path({str(tmp_path / "k.jsonl")!r}))
        with incoming_context([tuple(pair) for pair in json.loads(sys.argv[1])]), span("ka.decrypt_rpc"):
            with span("ka.decrypt"):
                pass
    """)
    subprocess.run([sys.executable, "-c", callee, json.dumps(metadata)], cwd=REPO, check=True, timeout=60)
    (call,) = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    rpc, inner = sorted((json.loads(line) for line in (tmp_path / "k.jsonl").read_text().splitlines()),
                        key=lambda s: s["name"])[::-1]
    assert rpc["name"] == "ka.decrypt_rpc" and rpc["parent"] == call["span"] and rpc["trace"] == call["trace"]
    assert inner["parent"] == rpc["span"] and rpc["service"] == "key_authority"
    assert call["attributes"] == {"round": 3}


def test_without_a_file_nothing_is_traced(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        from services.common.runtime.tracing import configure_tracing, outgoing_metadata, span
        configure_tracing("aggregator", None)
        with span("aggregator.round"):
            assert outgoing_metadata() == (), outgoing_metadata()
    """)
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(REPO)}, check=True, timeout=60)
    assert list(tmp_path.iterdir()) == []


def _span(name: str, seconds: float, round_id: int | None, trace: str = "t1") -> dict[str, object]:
    return {"name": name, "trace": trace, "span": name, "seconds": seconds,
            "attributes": {} if round_id is None else {"round": round_id}}


def test_the_report_takes_the_slowest_node_and_sums_retried_calls(tmp_path: Path) -> None:
    spans = [_span("node.upload", 2.0, 1), _span("node.upload", 5.0, 1), _span("node.upload", 3.0, 2),
             _span("aggregator.release", 9.0, 1), _span("aggregator.decrypt_rpc", 1.0, 1),
             _span("aggregator.decrypt_rpc", 2.5, 1), _span("ka.decrypt", 0.5, None),  # round from its trace
             _span("aggregator.release", 7.0, 2, trace="t2"), _span("ka.decrypt", 0.25, None, trace="t2")]
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(s) + "\n" for s in spans))
    rounds = trace_report.per_round(trace_report.load_spans(tmp_path))
    assert rounds["node.upload"] == [5.0, 3.0]
    assert rounds["aggregator.decrypt_rpc"] == [3.5]
    assert rounds["ka.decrypt"] == [0.5, 0.25]
    text = trace_report.report({"secure": tmp_path})
    assert "node: update to last chunk sent (slowest)" in text and "4.000" in text  # median of 5 and 3
