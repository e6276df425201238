"""Files another process reads are replaced whole: a reader never parses a partial file."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from services.aggregator.run_outcome import RunOutcome
from services.common.runtime.atomic_files import (
    append_line_atomic,
    atomic_writer,
    read_json,
    read_json_lines,
    write_atomic,
)

WRITES = 1500


def _write_markers(state_dir: str, writes: int) -> None:
    for index in range(writes):
        RunOutcome(failed=index % 2 == 1, completed_rounds=index).write(Path(state_dir))


def _append_rows(path: str, rows: int) -> None:
    for index in range(rows):
        append_line_atomic(Path(path), f'{{"round": {index}, "padding": "{"x" * 200}"}}')


def _poll_while(process: multiprocessing.process.BaseProcess, read: object) -> int:
    """Call `read` until `process` ends (bounded); the number of reads that found something."""
    found = 0
    deadline = time.monotonic() + 120
    while process.is_alive() and time.monotonic() < deadline:
        found += read() is not None  # type: ignore[operator]
    process.join(10)
    assert process.exitcode == 0
    return found


def test_reader_polling_the_finished_marker_never_sees_a_partial_file(tmp_path: Path) -> None:
    writer = multiprocessing.get_context("spawn").Process(target=_write_markers, args=(str(tmp_path), WRITES))
    writer.start()
    # RunOutcome.read raises on an empty or half-written file; every read must parse.
    found = _poll_while(writer, lambda: RunOutcome.read(tmp_path))
    assert found > 100, "the reader should have overlapped the writer many times"
    assert RunOutcome.read(tmp_path) == RunOutcome(failed=True, completed_rounds=WRITES - 1)
    assert [p.name for p in tmp_path.iterdir()] == ["finished.json"], "no temporary file is left behind"


def test_rows_appended_while_read_are_always_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "rounds.jsonl"
    writer = multiprocessing.get_context("spawn").Process(target=_append_rows, args=(str(path), 400))
    writer.start()
    counts: list[int] = []

    def read() -> int:
        rows = read_json_lines(path)  # raises on a half-written line
        assert [row["round"] for row in rows] == list(range(len(rows)))
        counts.append(len(rows))
        return len(rows)

    _poll_while(writer, read)
    assert counts == sorted(counts), "rows never disappear"
    assert len(read_json_lines(path)) == 400


def test_a_write_that_fails_leaves_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    write_atomic(path, b"[1, 2]")
    with pytest.raises(RuntimeError):
        with atomic_writer(path) as handle:
            handle.write(b"[1, 2, 3")
            raise RuntimeError("disk full, say")
    assert read_json(path) == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]


def test_a_private_file_is_never_readable_by_others_even_while_written(tmp_path: Path) -> None:
    path = tmp_path / "secret.bin"
    with atomic_writer(path, mode=0o600) as handle:
        assert os.fstat(handle.fileno()).st_mode & 0o777 == 0o600
        handle.write(b"secret")
    assert path.stat().st_mode & 0o777 == 0o600
    write_atomic(path, b"public", mode=0o644)
    assert path.stat().st_mode & 0o777 == 0o644


def test_readers_report_a_missing_file_as_not_there_yet(tmp_path: Path) -> None:
    assert read_json(tmp_path / "absent.json") is None
    assert read_json_lines(tmp_path / "absent.jsonl") == []
    assert RunOutcome.read(tmp_path) is None


def test_a_line_to_append_cannot_smuggle_a_second_row(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="newline"):
        append_line_atomic(tmp_path / "rows.jsonl", '{"a": 1}\n{"b": 2}')
