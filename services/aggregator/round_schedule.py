"""The local learning rate each round's plan carries.

"constant" keeps the configured rate. "cosine" lowers it from round to round along
half a cosine, from the configured rate in round 1 to `floor` times it in the last
round. FedAvg on skewed data needs a decaying rate to converge (Li et al., "On the
Convergence of FedAvg on Non-IID Data", ICLR 2020): with a fixed rate every round
carries the same client drift, so the averaged model keeps swinging.

Each hospital also runs its own cosine within the round (the trainer's `schedule`);
this one sets where that round starts.
"""

from __future__ import annotations

import math
from typing import Literal

RoundSchedule = Literal["constant", "cosine"]


def round_learning_rate(base: float, round_id: int, rounds: int, *, schedule: RoundSchedule, floor: float) -> float:
    """The local learning rate of `round_id` (1-based) of `rounds`."""
    if schedule == "constant" or rounds <= 1:
        return base
    if schedule != "cosine":
        raise ValueError(f"unknown round schedule {schedule!r}; known: constant, cosine")
    progress = min(max((round_id - 1) / (rounds - 1), 0.0), 1.0)
    return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
