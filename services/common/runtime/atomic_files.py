"""Files another process reads are replaced whole, never written in place.

A writer fills a temporary file in the same folder, flushes and fsyncs it, renames
it over the target and fsyncs the folder. rename(2) within one file system is
atomic, so a reader sees either the old file or the new one, never a half-written
one; the fsyncs make the new file survive a crash of the machine once the call
returns. Readers therefore parse whatever exists without retrying.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """A binary handle whose content replaces `path` when the block ends without an exception.

    `mode` applies from the first byte (the temporary file is created 0600 and changed before anything is
    written), so a secret never lies on disk readable by others, even for a moment.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_folder(path.parent)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    with atomic_writer(path, mode) as handle:
        handle.write(data)


def write_json_atomic(path: Path, value: Any, mode: int = 0o644, **dump_options: Any) -> None:
    write_atomic(path, json.dumps(value, **dump_options).encode(), mode)


def append_line_atomic(path: Path, line: str) -> None:
    """Append one line by replacing the file: a reader never sees a line half-written. The files this serves
    (a run's rows) stay small, so rewriting them costs nothing that matters."""
    if "\n" in line:
        raise ValueError("a line to append must not contain a newline")
    existing = path.read_bytes() if path.exists() else b""
    write_atomic(path, existing + line.encode() + b"\n")


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it does not exist (yet)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return json.loads(text)


def read_json_lines(path: Path) -> list[Any]:
    """Every line of a JSON-lines file, parsed; an empty list when it does not exist (yet)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
