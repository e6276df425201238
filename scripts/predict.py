"""Run a finished consortium's model on new images: one CSV row per image with each class's probability.

    python -m scripts.predict --run-dir runs/demo --out predictions.csv PATH [PATH ...]

PATH is an image file (.png, .jpg, .jpeg, or DICOM .dcm) or a folder, searched recursively. Each image is read and
resized exactly as the hospitals' loaders do for training (`image_loaders.load_for_prediction`). The CSV has the
file, one probability column per class (the model card's names, in label order), and the predicted class: at the
run's calibrated operating point where it made one (binary), else the most probable class. A file that cannot be
read is reported on the console and left out.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")


def files(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


def predict(run_dir: Path, paths: list[Path], out: Path, *, batch_size: int = 64) -> int:
    """Write the CSV; the number of images predicted."""
    import numpy as np  # noqa: PLC0415 (torch: not for --help)
    import torch  # noqa: PLC0415

    from scripts.model_card import load  # noqa: PLC0415
    from services.hospital_node.data.image_loaders import DatasetFormatError, load_for_prediction  # noqa: PLC0415

    model, card = load(run_dir)
    readable, pictures = [], []
    for path in files(paths):
        try:
            pictures.append(load_for_prediction(path, card.image_size))
            readable.append(path)
        except DatasetFormatError as error:
            print(f"skipped {path}: {error}", file=sys.stderr)
    probabilities = np.zeros((0, card.num_classes))
    with torch.no_grad():
        for start in range(0, len(pictures), batch_size):
            batch = torch.from_numpy(np.stack(pictures[start:start + batch_size]))
            probabilities = np.concatenate([probabilities, torch.softmax(model(batch), dim=1).numpy()])
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", *(f"p_{name}" for name in card.class_names), "predicted"])
        for path, row in zip(readable, probabilities):
            chosen = (int(row[-1] >= card.threshold) if card.threshold is not None and card.num_classes == 2
                      else int(row.argmax()))
            writer.writerow([str(path), *(f"{p:.6f}" for p in row), card.class_names[chosen]])
    return len(readable)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", type=Path, nargs="+", help="image files or folders")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"), help="a finished run's folder")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"), help="the CSV to write")
    args = parser.parse_args(argv)
    try:
        count = predict(args.run_dir, args.paths, args.out)
    except (FileNotFoundError, ValueError) as error:
        print(f"python -m scripts.predict: {error}", file=sys.stderr)
        return 2
    print(f"{count} images predicted: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
