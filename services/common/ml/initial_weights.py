"""Start the consortium from a weights file: public pretraining, or ImageNet weights a user downloaded.

The file is a PyTorch state dict (`torch.save(model.state_dict(), path)`), loaded with
`weights_only=True` (tensors only, never code). Keys may be torchvision's own
(`conv1.weight`) or this project's (`1.conv1.weight`: the grey-to-RGB stem comes
first). Every parameter of the model must be there with its shape, except the
classifier head, which may be missing or sized for other classes (ImageNet's 1,000):
it then keeps its seeded initialisation. BatchNorm running statistics in the file are
ignored for a GroupNorm model, and become the frozen statistics of a frozen-BatchNorm one
(`resnet50-bn-frozen`: `running_mean` and `running_var` load as `mean` and `var`).
Anything else is refused with the keys named: a file
for another architecture must never half-load.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from services.common.errors import SpecMismatchError
from services.common.ml.trainable import classifier_head

log = logging.getLogger(__name__)

_NORM_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def _state_of(loaded: object, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in loaded.items()):
        raise SpecMismatchError(f"{path} is not a state dict (a mapping of parameter names to tensors)")
    return loaded


def load_initial_weights(model: nn.Module, path: Path) -> list[str]:
    """Load `path` into `model` in place, after checking it against the model; the keys left at their seeded values
    (the classifier head, when the file's is missing or sized for other classes)."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise SpecMismatchError(f"{path} is not a readable PyTorch weights file: {error}") from error
    state = _state_of(loaded, path)
    own = model.state_dict()
    # torchvision's names lack this project's stem position ("1."): add it when every model key has it.
    prefix = "1." if all(k.startswith("1.") for k in own) and not any(k.startswith("1.") for k in state) else ""
    renamed = _frozen_statistics_renamed({f"{prefix}{k}": v for k, v in state.items()}, own)
    head = {name for name in own if _is_head(model, name)}
    unknown = sorted(k for k in renamed if k not in own and not k.endswith(_NORM_STATISTICS))
    missing = sorted(k for k in own if k not in renamed and k not in head)
    wrong = sorted(f"{k} {tuple(renamed[k].shape)} (model {tuple(own[k].shape)})" for k in own
                   if k in renamed and k not in head and renamed[k].shape != own[k].shape)
    problems = [f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                for label, keys in (("unknown keys", unknown), ("missing keys", missing), ("wrong shapes", wrong))
                if keys]
    if problems:
        raise SpecMismatchError(f"{path} does not fit this model ({len(own)} tensors): " + "; ".join(problems))
    kept_seeded = sorted(k for k in head if k not in renamed or renamed[k].shape != own[k].shape)
    merged = {k: (renamed[k].to(own[k].dtype) if k in renamed and k not in kept_seeded else v)
              for k, v in own.items()}
    if not all(torch.isfinite(v).all() for v in merged.values() if v.is_floating_point()):
        raise SpecMismatchError(f"{path} holds values that are not finite")
    model.load_state_dict(merged)
    ignored = sorted(k for k in renamed if k not in own)
    if ignored:
        log.warning("%s: ignored %d BatchNorm statistics or batch counters this model has no use for", path,
                    len(ignored))
    if kept_seeded:
        log.warning("%s: the classifier head (%s) is missing or sized for other classes; it keeps its seeded "
                    "initialisation", path, ", ".join(kept_seeded))
    return kept_seeded


def _frozen_statistics_renamed(state: Mapping[str, torch.Tensor],
                               own: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`X.running_mean` as `X.mean` and `X.running_var` as `X.var` where the model has those (a FrozenBatchNorm2d)."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for running, frozen in (("running_mean", "mean"), ("running_var", "var")):
            if key.endswith(f".{running}") and f"{key[: -len(running)]}{frozen}" in own:
                key = f"{key[: -len(running)]}{frozen}"
        renamed[key] = value
    return renamed


def _is_head(model: nn.Module, key: str) -> bool:
    head = classifier_head(model)
    names = {name for name, module in model.named_modules() if module is head}
    return any(key.startswith(f"{name}.") for name in names)
