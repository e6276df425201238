"""Image files for the loader tests: flat grey pictures, and DICOM files that ship inside the pydicom wheel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.data import get_testdata_file

CT_SMALL = "CT_small.dcm"  # CT, rescale intercept -1024, 179 private elements, no window
MR_SMALL = "MR_small.dcm"  # MR, window centre 600 / width 1600
RT_PLAN = "rtplan.dcm"  # radiotherapy plan: a real DICOM file without pixel data
DICOMDIR = "DICOMDIR"


def pydicom_file(name: str) -> Path:
    """One of pydicom's own test files; only those inside the wheel, since get_testdata_file would try to download
    anything else."""
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing"
    return Path(str(path))


def write_grey_png(path: Path, value: int, size: tuple[int, int] = (30, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8)).save(path)
