"""Spans of the secure round's critical path, with OpenTelemetry.

A service given a trace file (`FEDXRAY_KA_TRACE_FILE`, `FEDXRAY_AGG_TRACE_FILE`, `FEDXRAY_NODE_TRACE_FILE`) writes
each finished span to it as one JSON line: its name, the service, trace and span ids, its parent, start and
seconds, and its attributes (round, attempt, chunk). Without one, OpenTelemetry's API gives no-op spans and the
services pay nothing. The aggregator's call to the key authority carries the W3C `traceparent` in its gRPC
metadata, so the key authority's spans are children of the aggregator's: one trace per round's release.

`benchmarks.trace_report` reads the files back and prints the breakdown (`make bench-round` does).

Spans carry ids, counts and timings only, never a value of an update, a sum or a key.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

_TRACER_NAME = "fedxray"


class JsonLinesExporter(SpanExporter):
    """Each finished span as one JSON line, appended (a restarted service goes on writing the same file)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(span), separators=(",", ":")) + "\n" for span in spans)
        with self._lock:
            if self._file.closed:
                return SpanExportResult.FAILURE
            self._file.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


def span_record(span: ReadableSpan) -> dict[str, Any]:
    context, parent = span.get_span_context(), span.parent
    start, end = span.start_time or 0, span.end_time or 0
    return {"name": span.name, "service": str(span.resource.attributes.get("service.name", "")),
            "trace": f"{context.trace_id:032x}" if context else "",
            "span": f"{context.span_id:016x}" if context else "",
            "parent": f"{parent.span_id:016x}" if parent else None, "start": start / 1e9,
            "seconds": (end - start) / 1e9, "attributes": dict(span.attributes or {})}


_configured: TracerProvider | None = None


def configure_tracing(service: str, path: Path | None) -> None:
    """Write this process's spans to `path`; None leaves OpenTelemetry's no-op tracer in place."""
    global _configured
    if path is None or _configured is not None:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    # A few dozen spans a round: exported as they end, so a killed service loses none it finished.
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
    trace.set_tracer_provider(provider)
    _configured = provider


def span(name: str, **attributes: int | float | str | bool) -> contextlib.AbstractContextManager[trace.Span]:
    """A span named `name`, a child of the current one."""
    return trace.get_tracer(_TRACER_NAME).start_as_current_span(name, attributes=attributes)


def outgoing_metadata() -> tuple[tuple[str, str], ...]:
    """The current span's context as gRPC metadata (W3C traceparent); empty when nothing is traced."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())


@contextlib.contextmanager
def incoming_context(metadata: Sequence[tuple[str, str | bytes]] | None) -> Iterator[None]:
    """Make a caller's span (from its gRPC metadata) the parent of the spans opened inside."""
    carrier: Mapping[str, str] = {key: value for key, value in (metadata or ()) if isinstance(value, str)}
    token = otel_context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)


def record_span(name: str, start_ns: int, end_ns: int, **attributes: int | float | str | bool) -> None:
    """A finished child of the current span, timed by the caller (`time.time_ns()`): for a stretch that does not
    sit inside one block, such as a stream's chunks handed out by a generator."""
    tracer = trace.get_tracer(_TRACER_NAME)
    tracer.start_span(name, attributes=attributes, start_time=start_ns).end(end_time=end_ns)


def annotate(**attributes: int | float | str | bool) -> None:
    """Attributes on the current span (no-op when nothing is traced)."""
    trace.get_current_span().set_attributes(attributes)
