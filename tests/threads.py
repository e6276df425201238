"""One torch thread for a stretch of a test: the nodes train and evaluate with torch_threads=1, and a check that
recomputes what they did sums in the same order only on one thread (another count reassociates float32 sums)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
