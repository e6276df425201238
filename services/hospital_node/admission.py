"""The node's one admission gate: every plan, of every kind, passes here before anything of this hospital is used
for it or sent for it.

In order:
- the model the plan sent is the one its digest names, in this node's layout;
- evaluation: the plan's participant set names this hospital and holds at least its minimum of members
  (otherwise no report, logged: an empty or tiny set would make the pooled figures this hospital's own);
- training and statistics: membership in the participant set (outside it, the node waits), then the privacy
  floor (`privacy_floor.check_plan`: attempts, participant set, noise, clip, codec, and the training parameters),
  then record-level DP (what DP-SGD cannot cover is declined), then the node's own ledger of attempts joined,
  written before anything is trained or sent.

A refusal raises `PlanRefusedError` with a named reason, which the node sends back as its decline.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from enum import Enum

from torch import nn

from services.common.errors import PlanRefusedError
from services.common.ml.model_spec import ParameterSpec
from services.common.protocol.node_identity import NodeKeyRegistry
from services.common.protocol.public_key import PublicKeyInfo
from services.common.protocol.round_plan import LocalTrainingPlan, RoundKind, RoundPlan
from services.hospital_node.config import FloorSettings, TrainingSettings
from services.hospital_node.local_round import record_target
from services.hospital_node.privacy_floor import check_evaluation, check_plan
from services.hospital_node.private_training import PrivateTrainingError, require_private_model
from services.hospital_node.record_privacy import RecordBudget
from services.hospital_node.upload_ledger import UploadLedger

log = logging.getLogger(__name__)
NO_PROPOSAL = LocalTrainingPlan(1, 0.0, 1, "sgd", 0.0, False, 0.0)


class Admission(Enum):
    TAKE_PART = "take_part"  # train (or send statistics) and upload
    EVALUATE = "evaluate"  # report on the model
    WAIT = "wait"  # not in the participant set: nothing to do, nothing to decline


@dataclass
class RecordPrivacy:
    """This hospital's record-level DP: its budget, once it has one (its own target, a ledger it already keeps, or
    the aggregator's proposal)."""

    settings: TrainingSettings
    model: nn.Module
    train_images: int
    budget: RecordBudget | None = None

    def __post_init__(self) -> None:
        self.ledger_path = self.settings.state_dir / "record_privacy.json"
        self.budget = RecordBudget.open(self.ledger_path, record_target(NO_PROPOSAL, self.settings,
                                                                        self.train_images))
        if self.budget is not None:
            require_private_model(self.model, self.settings.architecture)  # refused at start: BatchNorm and the like

    def require(self, plan: RoundPlan) -> None:
        """Under record-level DP, refuse the rounds that would release something DP-SGD does not cover; and with
        adversarial training on, the rounds it cannot run in (under DP-SGD, or of the head alone)."""
        self._require_adversarial(plan)
        if self.budget is None:
            self.budget = RecordBudget.open(self.ledger_path, record_target(plan.training, self.settings,
                                                                            self.train_images))
        if self.budget is None:
            return
        try:
            require_private_model(self.model, self.settings.architecture, plan.training.trainable)
        except PrivateTrainingError as error:
            raise PlanRefusedError("record_privacy_unsupported", str(error)) from error
        unsupported = ("feature statistics for a head refit" if plan.kind is RoundKind.HEAD_STATISTICS
                       else "SCAFFOLD drift correction" if plan.training.drift_correction
                       else "a FedProx proximal term" if plan.training.proximal_mu > 0 else None)
        if unsupported is not None:
            raise PlanRefusedError("record_privacy_unsupported", f"round {plan.round_id} asks for {unsupported}, "
                                   "which this hospital's record-level DP-SGD does not cover")


    def _require_adversarial(self, plan: RoundPlan) -> None:
        if self.settings.adversarial_epsilon <= 0 or plan.kind is not RoundKind.TRAIN:
            return
        private = self.budget is not None or record_target(plan.training, self.settings, self.train_images) is not None
        if private or plan.training.trainable == "head":
            raise PlanRefusedError("adversarial_training_unsupported", f"round {plan.round_id} would train "
                                   + ("under DP-SGD" if private else "the head alone, on frozen features")
                                   + ", where this hospital's PGD adversarial training (adversarial_epsilon "
                                   f"{self.settings.adversarial_epsilon:g}) cannot run")


class AdmissionGate:
    def __init__(self, settings: FloorSettings, spec: ParameterSpec, peers: NodeKeyRegistry,
                 *, joined: UploadLedger, privacy: RecordPrivacy) -> None:
        self._settings = settings
        self._spec = spec
        self._peers = peers
        self._joined = joined
        self._privacy = privacy

    def admit(self, plan: RoundPlan, model_chunks: list[bytes], public: PublicKeyInfo | None,
              expected_values: int) -> Admission:
        """What this hospital does with `plan`; `PlanRefusedError` when it declines. `expected_values`: the upload
        length this node's model makes for the plan; `public`: the key authority's key (secure plans)."""
        self._require_model(plan, model_chunks)
        if plan.kind is RoundKind.EVALUATE:
            try:
                check_evaluation(plan, self._settings, self._peers.agreement_keys)
            except PlanRefusedError as refused:  # nothing to decline: the node just sends no report
                log.warning("no evaluation report (%s): %s", refused.reason, refused)
                return Admission.WAIT
            return Admission.EVALUATE
        if plan.secure and self._settings.node_id not in plan.participants:
            log.info("round %d attempt %d: not in the participant set; waiting", plan.round_id, plan.attempt)
            return Admission.WAIT
        joined = self._joined.attempts(plan.key_id, plan.round_id)
        check_plan(plan, self._settings, public if plan.secure else None, last_attempt=max(joined, default=0),
                   attempts_joined=len(joined), known_peers=self._peers.agreement_keys,
                   expected_values=expected_values)
        self._privacy.require(plan)
        self._joined.join(plan.key_id, plan.round_id, plan.attempt)  # on disk before anything is trained or sent
        return Admission.TAKE_PART

    def _require_model(self, plan: RoundPlan, model_chunks: list[bytes]) -> None:
        if hashlib.sha256(b"".join(model_chunks)).digest() != plan.model.sha256:
            raise PlanRefusedError("malformed_plan", f"global model of round {plan.round_id} does not match its "
                                   "digest")
        if plan.model.parameter_count != self._spec.count or plan.model.parameter_digest != self._spec.digest:
            raise PlanRefusedError("malformed_plan", f"round {plan.round_id}'s plan is for another model layout")
