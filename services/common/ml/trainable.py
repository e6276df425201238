"""What a round trains, and so what it uploads: `all`, `last_block` or `head`.

With public pretraining, training few parameters is the standard route under DP-SGD
(Tramer & Boneh, ICLR 2021; De et al., 2022): the noise norm grows with the square root
of the trained dimension while the signal does not. The round plan names the part, and
only that part travels: a node uploads `w_local - w_global` at the part's positions of the
flat weight vector, the secure sum carries only those values, and the aggregator puts the
mean back at the same positions. Both ends derive the positions from the model alone.

- `all`: every aggregated tensor;
- `last_block`: the classifier head and the last stage (a ResNet's `layer4`; EfficientNet's
  last MBConv stage and its 1x1 head convolution, `features.7` and `features.8`); for a
  model with neither, the head and the last layer with parameters before it;
- `head`: the classifier head only (the backbone frozen in eval mode: its features are a
  per-example map, computed once per local round).
"""

from __future__ import annotations

import numpy as np
from torch import nn
from torchvision.models import EfficientNet

from services.common.ml.choices import TRAINABLE, Trainable
from services.common.ml.model_spec import ParameterSpec

__all__ = ["TRAINABLE", "Trainable", "classifier_head", "head_parameters", "last_block_parameters", "scatter",
           "trained_parameters", "trained_positions"]


def classifier_head(model: nn.Module) -> nn.Linear:
    """The model's last linear layer: the classifier head."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear classifier head")
    return linears[-1]


def head_parameters(model: nn.Module) -> set[str]:
    head = classifier_head(model)
    return {name for name, p in model.named_parameters() if any(p is q for q in head.parameters())}


def last_block_parameters(model: nn.Module) -> set[str]:
    """Names of the parameters `last_block` trains (the module docstring says which)."""
    names = [name for name, _ in model.named_parameters()]
    efficientnet = any(isinstance(module, EfficientNet) for module in model.modules())
    stages = (".features.7.", ".features.8.") if efficientnet else (".layer4.",)
    stage = [name for name in names if any(part in f".{name}" for part in stages)]
    head = classifier_head(model)
    head_names = head_parameters(model)
    if stage:
        return set(stage) | head_names
    with_parameters = [module for module in model.modules()
                       if any(True for _ in module.parameters(recurse=False)) and module is not head]
    before = {id(p) for p in with_parameters[-1].parameters(recurse=False)} if with_parameters else set()
    return head_names | {name for name, p in model.named_parameters() if id(p) in before}


def trained_parameters(model: nn.Module, trainable: Trainable) -> set[str]:
    """The names of the parameters a round of this kind trains."""
    if trainable == "head":
        return head_parameters(model)
    if trainable == "last_block":
        return last_block_parameters(model)
    if trainable == "all":
        return {name for name, _ in model.named_parameters()}
    raise ValueError(f"trainable must be one of {TRAINABLE}, not {trainable!r}")


def trained_positions(model: nn.Module, spec: ParameterSpec, trainable: Trainable) -> np.ndarray:
    """Where the trained parameters lie in the flat weight vector, in ascending order (int64): the upload's order.
    `all` is every position, buffers that are aggregated included."""
    if trainable == "all":
        return np.arange(spec.count, dtype=np.int64)
    names = trained_parameters(model, trainable)
    pieces = [np.arange(spec.positions(name).start, spec.positions(name).stop, dtype=np.int64)
              for name in spec.names if name in names]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def scatter(values: np.ndarray, positions: np.ndarray, count: int) -> np.ndarray:
    """A full-length vector holding `values` at `positions` and zero elsewhere."""
    full = np.zeros(count, dtype=np.float64)
    full[positions] = values
    return full
