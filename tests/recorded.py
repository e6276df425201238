"""Comparing what a run produces with what one machine recorded.

Kernels differ from one processor to the next (BLAS and oneDNN pick other code paths, and
OPENBLAS_CORETYPE differs between machines), so a float a training run produced is equal
to a recorded one only up to reassociation: within a relative 1e-5 (a loss, 1e-4). Counts are not
floats: integers, booleans, strings and the shape of the rows must match exactly.
"""

from __future__ import annotations

import math

# Float reassociation moves a score in its 7th digit; a changed step of the arithmetic moves it far more.
RELATIVE = 1e-5
# A float32 loss drifts further from round to round: 1.2e-6 on the recording machine by round 3, 1.7e-6 with
# AVX2's kernels (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2) on the same rows. A wrong step moves it by far
# more than 1e-4.
RELATIVE_FOR = {"loss": 1e-4}
# Some rows round their figures (update norms to 3 digits, errors to 6): a value on a rounding edge may land
# on either side, which is at most one unit of the last recorded digit.
ABSOLUTE = {"update_norms": 1e-3, "contrast_error": 1e-6, "covariance_error": 1e-6, "trace_ratio": 1e-6}


def differences(actual: object, recorded: object, path: str = "", absolute: float = 0.0,
                relative: float = RELATIVE) -> list[str]:
    """Every place where `actual` departs from `recorded`: floats beyond the tolerance, anything else at all."""
    if isinstance(recorded, bool) or isinstance(actual, bool) or isinstance(recorded, int) and isinstance(actual, int):
        return [] if type(actual) is type(recorded) and actual == recorded else [f"{path}: {actual!r} != {recorded!r}"]
    if isinstance(recorded, float) or isinstance(actual, float):
        if not (isinstance(actual, (int, float)) and isinstance(recorded, (int, float))):
            return [f"{path}: {actual!r} is not a number like {recorded!r}"]
        if math.isnan(recorded):
            return [] if math.isnan(actual) else [f"{path}: {actual!r} != nan"]
        if math.isclose(actual, recorded, rel_tol=relative, abs_tol=absolute):
            return []
        return [f"{path}: {actual!r} != {recorded!r} (relative {abs(actual - recorded) / max(abs(recorded), 1e-300):.2g})"]
    if isinstance(recorded, dict) and isinstance(actual, dict):
        if actual.keys() != recorded.keys():
            return [f"{path}: keys {sorted(actual)} != {sorted(recorded)}"]
        return [d for key in recorded for d in differences(actual[key], recorded[key], f"{path}.{key}",
                                                           ABSOLUTE.get(key, absolute), RELATIVE_FOR.get(key, relative))]
    if isinstance(recorded, list) and isinstance(actual, list):
        if len(actual) != len(recorded):
            return [f"{path}: {len(actual)} items != {len(recorded)}"]
        return [d for i, (a, r) in enumerate(zip(actual, recorded, strict=True))
                for d in differences(a, r, f"{path}[{i}]", absolute, relative)]
    return [] if actual == recorded else [f"{path}: {actual!r} != {recorded!r}"]


def assert_matches_recorded(actual: object, recorded: object) -> None:
    found = differences(actual, recorded)
    assert not found, "departs from the recorded rows:\n  " + "\n  ".join(found[:20])
