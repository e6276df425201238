"""Membership inference on a trained model, and the check of its result against a DP guarantee.

An attack scores each record; a higher score says "member". Its ROC (torchmetrics) over the members and
non-members gives the attack's AUC and its TPR at low FPR (Carlini et al., "Membership Inference Attacks From
First Principles", S&P 2022, on why low-FPR is what counts).

(epsilon, delta)-DP bounds every such test: TPR <= e^eps * FPR + delta, and 1 - FPR <= e^eps * (1 - TPR) + delta
(Kairouz et al., ICML 2015). `bound_violations` checks each ROC point against both with the sampling error
taken into account: a violation needs the one-sided Clopper-Pearson lower bound of the one rate to exceed what
the upper bound of the other allows, at the stated confidence for the whole curve. A violation means the run's
accounting is wrong (or the attack saw more than the guarantee covers): a bug to chase, not a result to print.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import beta
from torch import nn
from torch.nn import functional as F
from torchmetrics.functional.classification import binary_auroc, binary_roc


def loss_scores(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """The loss-threshold attack's scores (Yeom et al., CSF 2018): minus each record's loss."""
    model.eval()
    with torch.no_grad():
        return logit_loss_scores(model(images), labels)


def logit_loss_scores(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """The same scores from the model's logits (in float64)."""
    return (-F.cross_entropy(logits.double(), labels, reduction="none")).numpy()


@dataclass(frozen=True)
class Roc:
    """An attack's ROC over `members` members and `nonmembers` non-members (rates at each threshold)."""

    fpr: np.ndarray
    tpr: np.ndarray
    auc: float
    members: int
    nonmembers: int

    def tpr_at(self, fpr: float) -> float:
        """The best TPR at a false-positive rate of at most `fpr`."""
        return float(self.tpr[self.fpr <= fpr].max(initial=0.0))


def roc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> Roc:
    scores = torch.from_numpy(np.concatenate([member_scores, nonmember_scores])).double()
    truth = torch.cat([torch.ones(len(member_scores)), torch.zeros(len(nonmember_scores))]).long()
    fpr, tpr, _ = binary_roc(scores, truth)
    return Roc(fpr.numpy(), tpr.numpy(), float(binary_auroc(scores, truth)), len(member_scores),
               len(nonmember_scores))


def _lower(successes: float, trials: int, confidence: float) -> float:
    k = round(successes)
    return 0.0 if k == 0 else float(beta.ppf(1 - confidence, k, trials - k + 1))


def _upper(successes: float, trials: int, confidence: float) -> float:
    k = round(successes)
    return 1.0 if k == trials else float(beta.ppf(confidence, k + 1, trials - k))


@dataclass(frozen=True)
class Violation:
    fpr: float
    tpr: float
    bound: str  # which of the two DP inequalities the point breaks


def bound_violations(curve: Roc, epsilon: float, delta: float, confidence: float = 0.95) -> list[Violation]:
    """The ROC points that (epsilon, delta)-DP rules out even after the sampling error: each point is tested at
    1 - (1 - `confidence`) / points (Bonferroni), so that a curve of many points raises no false alarm by
    chance."""
    factor = math.exp(epsilon)
    confidence = 1 - (1 - confidence) / len(curve.fpr)
    found = []
    for fpr, tpr in zip(curve.fpr, curve.tpr):
        tp, fp = tpr * curve.members, fpr * curve.nonmembers
        tpr_low, fpr_high = _lower(tp, curve.members, confidence), _upper(fp, curve.nonmembers, confidence)
        tnr_low = 1 - _upper(fp, curve.nonmembers, confidence)
        fnr_high = 1 - _lower(tp, curve.members, confidence)
        if tpr_low > factor * fpr_high + delta:
            found.append(Violation(float(fpr), float(tpr), "TPR <= e^eps FPR + delta"))
        elif tnr_low > factor * fnr_high + delta:
            found.append(Violation(float(fpr), float(tpr), "1 - FPR <= e^eps (1 - TPR) + delta"))
    return found
