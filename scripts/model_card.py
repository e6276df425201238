"""A finished run's model, described and loadable: `model.json` and `MODEL_CARD.md` in the run folder.

The launcher writes both when a run ends (`write`); `scripts.predict` and `scripts.export_model` load the model
through `load` and nothing else. The card says what the model was trained on (the hospitals, their images per
class as they disclosed them when they joined, the rounds), its pooled validation metrics, and the privacy spent
with its units.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scripts.launcher import thin_validation
from services.common.runtime.atomic_files import read_json, read_json_lines, write_atomic

CARD = "model.json"


@dataclass(frozen=True)
class ModelCard:
    architecture: str
    num_classes: int
    class_names: list[str]
    image_size: int
    checkpoint: str  # relative to the run folder
    round: int
    init_weights: str | None  # the public weights the run started from (their frozen statistics, where any)
    data: str
    threshold: float | None  # the calibrated operating point for the positive class, where the run made one


def write(run_dir: Path, *, architecture: str, num_classes: int, image_size: int,
          init_weights: Path | None) -> ModelCard | None:
    """The card of the run's final model (the last evaluated row's), or None when no round produced one."""
    rows = read_json_lines(run_dir / "aggregator" / "rounds.jsonl")
    finals = [r for r in rows if isinstance(r.get("evaluation"), dict)]
    if not finals:
        return None
    row = finals[-1]
    counts = read_json(run_dir / "aggregator" / "class_counts.json") or {}
    names = list(counts.get("classes") or [str(i) for i in range(num_classes)])
    evaluation = row["evaluation"]
    calibrated = evaluation.get("calibrated") if isinstance(evaluation.get("calibrated"), dict) else None
    data = (read_json(run_dir / "run.json") or {}).get("data", "unknown")
    card = ModelCard(architecture, num_classes, names, image_size,
                     f"aggregator/checkpoints/round_{int(row['round']):04d}.npz", int(row["round"]),
                     str(init_weights) if init_weights else None, str(data),
                     float(calibrated["threshold"]) if calibrated else None)
    write_atomic(run_dir / CARD, json.dumps(asdict(card), indent=2).encode())
    write_atomic(run_dir / "MODEL_CARD.md", _markdown(card, row, counts, rows).encode())
    return card


def _markdown(card: ModelCard, row: dict[str, object], counts: dict[str, object],
              rows: list[dict[str, object]]) -> str:
    evaluation = row["evaluation"]
    assert isinstance(evaluation, dict)
    hospitals = counts.get("hospitals") or []
    table = "\n".join(f"| {name} | " + " | ".join(str(c) for c in per) + " |"
                      for name, per in zip(hospitals, counts.get("counts") or []))  # type: ignore[call-overload]
    trained = sum(1 for r in rows if int(str(r.get("round", 0))) > 0 and not r.get("failed"))
    unit = row.get("record_epsilon_unit") or "image"
    record = (f"{float(str(row['record_epsilon_max'])):.2f} per {unit} (the largest any hospital reported; "
              "record-level DP-SGD)" if row.get("record_epsilon_max") is not None else "none: no hospital trained "
              "under record-level DP-SGD")
    threshold = (f"{card.threshold:.3f} on the probability of {card.class_names[-1]} (chosen on the pooled "
                 "calibration splits)" if card.threshold is not None else "none: predictions are the most "
                 "probable class")
    return f"""# Model card

- **Model:** {card.architecture}, {card.num_classes} classes in label order {', '.join(card.class_names)}, images
  resized to {card.image_size} x {card.image_size} grey; weights: `{card.checkpoint}` (round {card.round}){
  f', started from `{card.init_weights}`' if card.init_weights else ''}.
- **Trained on:** {card.data}; {trained} rounds (a head refit counts as one).
- **Operating point:** {threshold}.

## Images per class, as each hospital disclosed them when it joined

| hospital | {' | '.join(card.class_names)} |
|---|{'---|' * len(card.class_names)}
{table or '| (no hospital shared its counts) |'}
{('Not shared by: ' + ', '.join(counts['not_shared']) + '.') if counts.get('not_shared') else ''}

## Pooled validation metrics of this model ({evaluation.get('examples')} images, {evaluation.get('nodes')} hospitals)
{thin_validation(evaluation).strip().capitalize()}

| accuracy | precision | recall | F1 | AUC |
|---|---|---|---|---|
| {_fmt(evaluation.get('accuracy'))} | {_fmt(evaluation.get('precision'))} | {_fmt(evaluation.get('recall'))} | {
    _fmt(evaluation.get('f1'))} | {_fmt(evaluation.get('auc'))} |

## Privacy spent

- **Hospital level** (the secure sums' Skellam noise; the unit is one hospital's whole update in a round):
  epsilon {_fmt(row.get('epsilon'), 4)}.
- **Record level:** {record}.
"""


def _fmt(value: object, digits: int = 3) -> str:
    return f"{float(str(value)):.{digits}f}" if isinstance(value, (int, float)) else "-"


def load(run_dir: Path):  # type: ignore[no-untyped-def]
    """The run's final model (eval mode, CPU) and its card; a ValueError naming what is missing."""
    from services.common.ml.initial_weights import load_initial_weights
    from services.common.ml.model_spec import parameter_spec, restore_state
    from services.common.ml.models import build_model

    document = read_json(run_dir / CARD)
    if not isinstance(document, dict):
        raise ValueError(f"{run_dir / CARD}: no model card; is {run_dir} a finished run's folder?")
    card = ModelCard(**document)
    model = build_model(card.architecture, card.num_classes, 0)
    if card.init_weights:
        load_initial_weights(model, Path(card.init_weights))
    spec = parameter_spec(model.state_dict())
    with np.load(run_dir / card.checkpoint) as archive:
        model.load_state_dict(restore_state(model.state_dict(), archive["weights"].astype(np.float32), spec))
    return model.eval(), card
