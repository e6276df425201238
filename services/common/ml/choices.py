"""Names the settings and the round plan read without importing torch: what a round may train, the
architectures, and which of them freeze their BatchNorm."""

from __future__ import annotations

from typing import Literal, get_args

# What a round trains and uploads (`services.common.ml.trainable`).
Trainable = Literal["all", "last_block", "head"]
TRAINABLE: tuple[str, ...] = get_args(Trainable)
# The architectures `services.common.ml.models` builds.
Architecture = Literal["resnet50", "resnet18", "efficientnet-b0", "resnet50-bn", "resnet50-bn-frozen", "tiny",
                       "tiny-gn"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
# Architectures whose BatchNorm is frozen (`services.common.ml.models`): they train `head` or `last_block` only, from a
# weights file.
FROZEN_NORM_ARCHITECTURES: tuple[str, ...] = ("resnet50-bn-frozen",)
