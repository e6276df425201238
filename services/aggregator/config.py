"""Aggregator settings: environment variables (FEDXRAY_AGG_*) or an env file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.aggregator.round_schedule import RoundSchedule
from services.common.ml.choices import FROZEN_NORM_ARCHITECTURES, Architecture, Trainable
from services.common.runtime.service_settings import Address, ClassNames, ServiceSettings, require_one_name_per_class
from services.common.secure_sum.noise import NoiseKind


class AggregatorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FEDXRAY_AGG_", extra="forbid")

    listen: Address = Field("127.0.0.1:50052", description="gRPC host:port to serve nodes on")
    metrics_host: str = Field("127.0.0.1", description="address /metrics listens on")
    metrics_port: int = Field(9102, description="Prometheus /metrics port; 0 disables")
    key_authority: Address = Field("127.0.0.1:50051", description="key authority host:port")
    state_dir: Path = Field(Path("runs/aggregator"), description="checkpoints, staging, round log")
    node_keys_dir: Path = Field(Path("runs/identities"), description="<node_id>.pub Ed25519 keys of the nodes")
    secure: bool = Field(True, description="false: plaintext mode (privacy off), for comparison only")
    rounds: int = Field(3, ge=1)
    expected_participants: int = Field(5, ge=1, description="nodes to wait for before round 1")
    min_participants: int = Field(3, ge=1, description="quorum below which a round is not sealed")
    join_timeout_seconds: float = Field(600.0, gt=0)
    max_attempts: int = Field(2, ge=1, description="attempts of one round: a participant that does not complete its "
                              "upload makes the next attempt go without it (fresh masks and noise for all)")
    round_deadline_seconds: float = Field(1800.0, gt=0, description="seal with the quorum present after this")
    decrypt_retry_seconds: float = Field(300.0, ge=0, description="how long to retry a decryption while the key "
                                         "authority is unreachable (restarting), with backoff up to 15 s; past it, "
                                         "that round fails")
    server_threads: int = Field(64, ge=8, description="gRPC worker threads; calls beyond server_threads - 4 at once "
                                "are refused with RESOURCE_EXHAUSTED (each subscription and upload holds one); the "
                                "other 4 serve health checks and GetStatus only, so that no flood starves them")
    max_upload_streams: int | None = Field(None, ge=1, description="upload streams open at once; more are refused "
                                           "with RESOURCE_EXHAUSTED (None: twice the registered members)")
    first_chunk_seconds: float = Field(30.0, gt=0, description="an upload stream must send its first chunk within "
                                       "this, or it is ended (DEADLINE_EXCEEDED, counted stream_deadline)")
    upload_stream_seconds: float = Field(1800.0, gt=0, description="an upload stream must finish within this")
    stream_close_grace_seconds: float = Field(
        2.0, gt=0, description="how long an upload that ends without its attestation waits to learn whether its "
        "node went away (a broken stream) or closed it on purpose (a truncated one)")
    architecture: Architecture = Field("resnet50", description="resnet50 | resnet18 | efficientnet-b0 (GroupNorm) | "
                              "resnet50-bn | resnet50-bn-frozen (ImageNet-style BatchNorm weights, frozen: from init_weights, "
                              "trainable head or last_block) | tiny | tiny-gn")
    num_classes: int = Field(2, ge=2, description="classes the model predicts")
    class_names: ClassNames = Field(
        None, description="the consortium's class names in label order, comma-separated (NORMAL,PNEUMONIA): a "
        "hospital joining with other names or another order is refused. Required when more than one hospital is "
        "registered; unset with one: that hospital's")
    model_seed: int = 0
    keep_checkpoints: int = Field(2, ge=0, description="round checkpoints kept in state_dir/checkpoints besides round "
                                  "0's (the initial model): the newest N, the final model among them (a ResNet-50 "
                                  "one is about 280 MB with server momentum); 0: every round's")
    # The defaults of local training, the server step and the clip norm are the recipe docs/RESULTS.md found to
    # learn on five hospitals' skewed data, so that a first run on a hospital's own images learns.
    local_epochs: int = Field(10, ge=1, description="hospitals' local epochs per round")
    learning_rate: float = Field(3e-4, gt=0, description="hospitals' local learning rate (round 1's, under a "
                                 "schedule)")
    round_schedule: RoundSchedule = Field("constant", description="cosine: lower the local learning rate from round "
                                          "to round, to round_floor x learning_rate in the last round")
    round_floor: float = Field(0.1, gt=0, le=1, description="the last round's share of learning_rate under cosine")
    batch_size: int = Field(16, ge=1)
    local_optimizer: Literal["sgd", "adamw"] = Field("adamw", description="hospitals' optimizer (sgd: momentum 0.9)")
    proximal_mu: float = Field(0.0, ge=0, description="FedProx proximal weight; 0: plain local steps")
    drift_correction: bool = Field(False, description="SCAFFOLD drift correction: each upload also carries the "
                                   "node's control variate change, clipped and encrypted with its update (twice the "
                                   "values per round)")
    trainable: Trainable = Field("all", description="what each round trains and uploads: all, last_block (the last "
                                 "stage and the head) or head (the classifier head on the frozen backbone's "
                                 "features; start from pretrained weights). Only those parameters travel, so the "
                                 "secure sum and its encryption shrink with them")
    head_refit: bool | None = Field(None, description="after the last round, refit the classifier head by linear "
                                    "discriminant analysis on the hospitals' summed feature statistics (one more "
                                    "secure sum, in the statistics layout, with its own line in the privacy "
                                    "accountant: an epsilon of about 3e18, so any finite epsilon_budget refuses "
                                    "it). Unset: on, unless record_epsilon proposes DP-SGD, which does not cover it")
    head_refit_shrinkage: float = Field(0.1, gt=0, le=1, description="the refit covariance's shrinkage towards its "
                                        "mean variance (above 0: with more features than images the unshrunk "
                                        "covariance is singular)")
    record_epsilon: float | None = Field(None, ge=0, description="propose record-level (per-patient) DP-SGD at this "
                                         "target epsilon to the hospitals (a hospital's own target wins, and "
                                         "hospitals on their own images train under it by default); unset or 0: "
                                         "no proposal")
    init_weights: Path | None = Field(None, description="start from this state dict (a torchvision-compatible .pt "
                                      "file, such as public pretraining), checked against the model; unset: the "
                                      "seeded initialisation")
    server_optimizer: Literal["fedavg", "fedadam"] = "fedavg"
    server_learning_rate: float = Field(1.0, gt=0)
    server_momentum: float = Field(0.5, ge=0, lt=1, description="FedAvgM momentum of the server step; 0: FedAvg")
    fedadam_beta1: float = 0.9
    fedadam_beta2: float = 0.99
    fedadam_tau: float = 1e-3
    clip_norm: float = Field(20.0, gt=0, description="L2 clip norm of one node's update")
    noise_kind: NoiseKind = NoiseKind.SKELLAM
    noise_variance: float = Field(16.0, ge=0, description="per-coordinate variance of any quorum's summed noise")
    delta: float = Field(1e-5, gt=0, lt=1)
    epsilon_budget: float = Field(float("inf"), gt=0, description="refuse a round that would exceed it")
    chunk_ciphertexts: int = Field(8, ge=1, description="ciphertexts per upload chunk")
    plaintext_chunk_values: int = Field(1 << 18, ge=1)
    linger_seconds: float = Field(0.0, ge=0, description="keep serving status and metrics this long after training")

    @model_validator(mode="after")
    def _one_name_per_class(self) -> AggregatorSettings:
        require_one_name_per_class(self.class_names, self.num_classes)
        return self

    @model_validator(mode="after")
    def _partial_training_sends_updates_only(self) -> AggregatorSettings:
        if self.trainable != "all" and self.drift_correction:
            raise ValueError(f"trainable={self.trainable} uploads part of the model; SCAFFOLD's control variate needs "
                             "every parameter: set trainable=all or drift_correction=false")
        return self

    @model_validator(mode="after")
    def _frozen_norm_trains_part_from_weights(self) -> AggregatorSettings:
        if self.architecture in FROZEN_NORM_ARCHITECTURES:
            if self.trainable == "all":
                raise ValueError(f"{self.architecture} keeps every BatchNorm layer frozen (statistics and affine "
                                 "parameters): set trainable to head or last_block")
            if self.init_weights is None:
                raise ValueError(f"{self.architecture} takes its BatchNorm statistics from pretrained weights: set "
                                 "init_weights to a torchvision ResNet-50 state dict (README, \"ImageNet weights\")")
        return self

    @model_validator(mode="after")
    def _record_privacy_covers_every_release(self) -> AggregatorSettings:
        if self.record_epsilon == 0:
            self.record_epsilon = None  # 0: no proposal, so that a file's proposal can be overridden from outside
        if self.head_refit is None:
            self.head_refit = self.record_epsilon is None
        if self.record_epsilon is not None and (self.head_refit or self.drift_correction or self.proximal_mu > 0):
            raise ValueError("record_epsilon proposes DP-SGD, which does not cover the head refit's feature "
                             "statistics, SCAFFOLD's control variates or FedProx: turn those off (hospitals under "
                             "DP-SGD decline such rounds)")
        return self
