"""Flatten a model's floating-point state to one vector, and restore it, in a fixed order.

Only trainable weights are aggregated. BatchNorm running statistics stay with each
hospital (as in FedBN, Li et al., ICLR 2021): they describe the hospital's own
images, are not gradients, and would otherwise dominate the clipped update; a
node evaluates the global weights with its own statistics.

Both ends of a round must agree on the layout; `ParameterSpec` names it by the count
of values and a hash of every tensor's name, shape and dtype, so a node running a
different architecture is refused before any arithmetic happens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from services.common.errors import SpecMismatchError

if TYPE_CHECKING:  # torch loads where tensors are flattened: the key authority, which only reads specs, has no torch
    import torch


@dataclass(frozen=True)
class ParameterSpec:
    count: int
    digest: str
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    def positions(self, name: str) -> slice:
        """Where the tensor `name` lies in the flat vector."""
        offset = 0
        for candidate, shape in zip(self.names, self.shapes):
            size = int(np.prod(shape, dtype=np.int64))
            if candidate == name:
                return slice(offset, offset + size)
            offset += size
        raise KeyError(f"{name!r} is not an aggregated tensor of this model")

    def require_equal(self, other: ParameterSpec) -> None:
        if self.count != other.count or self.digest != other.digest:
            raise SpecMismatchError(
                f"model spec mismatch: expected {self.count} values with layout "
                f"{self.digest[:16]}, got {other.count} values with layout {other.digest[:16]}"
            )


LOCAL_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _is_aggregated(name: str, tensor: torch.Tensor) -> bool:
    return bool(tensor.is_floating_point()) and not name.endswith(LOCAL_BUFFER_SUFFIXES)


def parameter_spec(state: Mapping[str, torch.Tensor]) -> ParameterSpec:
    names: list[str] = []
    shapes: list[tuple[int, ...]] = []
    hasher = hashlib.sha256()
    count = 0
    for name, tensor in state.items():
        if not _is_aggregated(name, tensor):
            continue
        shape = tuple(int(s) for s in tensor.shape)
        names.append(name)
        shapes.append(shape)
        hasher.update(f"{name}:{shape}:{tensor.dtype};".encode())
        count += int(tensor.numel())
    return ParameterSpec(count=count, digest=hasher.hexdigest(), names=tuple(names), shapes=tuple(shapes))


def flatten_state(state: Mapping[str, torch.Tensor]) -> np.ndarray:
    """All aggregated tensors of `state`, in `state`'s order, as one float64 vector."""
    import torch

    parts = [
        tensor.detach().to("cpu", torch.float64).reshape(-1).numpy()
        for name, tensor in state.items()
        if _is_aggregated(name, tensor)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


def restore_state(
    template: Mapping[str, torch.Tensor], flat: np.ndarray, spec: ParameterSpec
) -> dict[str, torch.Tensor]:
    """A copy of `template` with its aggregated tensors replaced by `flat`, checked against `spec`.

    Local tensors (BatchNorm statistics) keep `template`'s values.
    """
    import torch

    parameter_spec(template).require_equal(spec)
    if flat.shape != (spec.count,):
        raise SpecMismatchError(f"flat vector has shape {flat.shape}, spec expects ({spec.count},)")
    restored: dict[str, torch.Tensor] = {}
    offset = 0
    for name, tensor in template.items():
        if not _is_aggregated(name, tensor):
            restored[name] = tensor.clone()
            continue
        size = int(tensor.numel())
        values = torch.from_numpy(np.ascontiguousarray(flat[offset : offset + size]))
        restored[name] = values.reshape(tensor.shape).to(tensor.dtype)
        offset += size
    return restored


def upload_value_count(parameter_count: int, drift_correction: bool) -> int:
    """Values in one node's upload: its update, then under drift correction its control variate's change."""
    return parameter_count * (2 if drift_correction else 1)


def flatten_named(named: Mapping[str, torch.Tensor], spec: ParameterSpec) -> np.ndarray:
    """Tensors keyed by state name (a gradient per parameter, say) in `spec`'s order; 0 for a missing one."""
    import torch

    parts = [named[name].detach().to("cpu", torch.float64).reshape(-1).numpy() if name in named
             else np.zeros(int(np.prod(shape, dtype=np.int64)), dtype=np.float64)
             for name, shape in zip(spec.names, spec.shapes)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)
