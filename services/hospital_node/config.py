"""Hospital node settings: environment variables (FEDXRAY_NODE_*) or an env file."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.ml.choices import Architecture
from services.common.runtime.service_settings import Address, ClassNames, ServiceSettings, require_one_name_per_class

# The record-level target a hospital's own images get unless it sets another (or turns DP-SGD off, explicitly).
DEFAULT_RECORD_EPSILON = 8.0


# Validation images per class below which metrics mean little: the node, the console and the model card say so.
MEANINGFUL_VALIDATION = 20

class HospitalNodeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FEDXRAY_NODE_", extra="forbid")

    node_id: str = Field("hospital-1", description="consortium member name (matches its identity key)")
    aggregator: Address = Field("127.0.0.1:50052", description="aggregator host:port")
    key_authority: Address = Field("127.0.0.1:50051", description="key authority host:port (public context only)")
    connect_seconds: float = Field(300.0, gt=0, description="at start, how long to keep trying to reach the "
                                   "aggregator and the key authority (retries logged, backoff 1 s doubling to 30 s); "
                                   "past it, the node exits 1 saying which address it could not reach")
    reconnect_seconds: float = Field(900.0, ge=0, description="how long to keep reconnecting (backoff 1 s doubling "
                                     "to 30 s) after the aggregator's stream breaks, e.g. while it restarts; past "
                                     "it, the node exits 1")
    identity_key: Path = Field(Path("runs/identities/hospital-1.key"), description="Ed25519 key signing uploads; "
                               "its X25519 key for the pairwise masks lies beside it (<node>.x25519.key)")
    peer_keys_dir: Path | None = Field(None, description="the members' public keys (<node>.pub, <node>.x25519.pub); "
                                       "unset: the identity key's folder")
    consortium: str = Field("fedxray", description="the consortium's name, the same at every hospital: pairwise "
                            "masks are bound to it")
    # This hospital's privacy floor: it declines a round whose plan falls below it, whatever the aggregator says.
    allow_plaintext: bool = Field(False, description="take part in plaintext rounds (privacy off; comparison runs "
                                  "only)")
    min_noise_variance: float = Field(8.0, ge=0, description="the least noise variance per quorum a secure round "
                                      "may carry (the aggregator's default is 16)")
    max_clip_norm: float = Field(50.0, gt=0, description="the largest L2 clip norm a secure round may use")
    min_participants: int = Field(3, ge=1, description="the smallest participant set this hospital masks for")
    max_attempts: int = Field(2, ge=1, description="attempts of one round this hospital takes part in (each with "
                              "fresh noise and masks)")
    max_learning_rate: float = Field(1.0, gt=0, description="the largest local learning rate a plan may ask for; "
                                     "above it the round is declined (learning_rate_out_of_bounds)")
    max_local_epochs: int = Field(100, ge=1, description="the most local epochs a plan may ask for")
    max_batch_size: int = Field(4096, ge=1, description="the largest batch a plan may ask for")
    min_validation_images: int = Field(20, ge=0, description="below this many validation images the hospital "
                                       "reports no evaluation counts (an empty report instead): with a handful of "
                                       "images, counts and score bins would tell each image's score")
    # Record-level (per-patient) DP-SGD: this hospital's own budget, which wins over any target the aggregator proposes.
    # On by default wherever a hospital's own images are used; off only by an explicit setting.
    record_dp: Literal["auto", "off"] = Field(
        "auto", description="auto: record-level DP-SGD on a hospital's own images (folder, medmnist, dicom) at "
        "record_epsilon, 8 unless set; on SYNTHETIC data only at record_epsilon or the aggregator's proposal. off: "
        "never, whatever the aggregator proposes (the node logs a warning, and the round rows list the hospitals "
        "training without it)")
    record_epsilon: float | None = Field(None, gt=0, description="target epsilon of record-level DP-SGD over the "
                                         "whole run; unset: 8 on a hospital's own images, and on SYNTHETIC data "
                                         "off unless the aggregator proposes a target")
    record_delta: float | None = Field(None, gt=0, lt=1, description="its delta; unset: min(1e-5, 0.1 / training "
                                       "images), below 1 / the number of training images")
    record_rounds: int = Field(3, ge=1, description="training rounds this hospital plans to join: the noise is "
                               "planned for all of them, and a round past the budget is refused")
    dp_clip_norm: float = Field(1.0, gt=0, description="DP-SGD's per-example gradient L2 clip norm C")
    dp_grad_sample_mode: Literal["hooks", "ghost"] = Field(
        "ghost", description="Opacus's per-example gradient mode: ghost clipping (fastest measured on ResNet-50) "
        "or hooks")
    dp_physical_batch: int = Field(32, ge=1, description="largest physical batch; a larger logical (Poisson) batch "
                                   "runs as several (virtual steps)")
    state_dir: Path = Field(Path("runs/hospital"), description="this hospital's own state: its record-level "
                            "privacy ledger (record_privacy.json), which must survive restarts")
    metrics_host: str = Field("127.0.0.1", description="address /metrics listens on")
    metrics_port: int = Field(0, description="Prometheus /metrics port; 0 disables")
    architecture: Architecture = Field("resnet50", description="resnet50 | resnet18 | efficientnet-b0 (GroupNorm) | resnet50-bn | resnet50-bn-frozen | tiny | tiny-gn (must match the aggregator)")
    num_classes: int = Field(2, ge=2, description="classes the model predicts (must match the aggregator)")
    image_size: int = Field(64, ge=16, description="images are resized to image_size x image_size pixels, grey")
    model_seed: int = Field(0, description="seed of the initial weights (the aggregator's own wins: it sends them)")
    data_source: Literal["synthetic", "folder", "medmnist", "dicom"] = Field(
        "synthetic", description="where this hospital's images come from: synthetic (built-in SYNTHETIC radiographs, "
        "for demos and tests), folder (DATA_PATH/train/<CLASS>/*.png|jpg, Kaggle layout; val/ and test/ used when "
        "present), medmnist (a MedMNIST .npz file), dicom (DATA_PATH/<CLASS>/*.dcm)")
    data_path: Path | None = Field(None, description="folder root, .npz file or DICOM folder (not for synthetic)")
    class_names: ClassNames = Field(
        None, description="the consortium's class names in label order, comma-separated (NORMAL,PNEUMONIA), for "
        "folder and DICOM sources; the same at every hospital, whichever class folders it holds. Unset: this "
        "hospital's class folders, sorted, which must then number num_classes")
    synthetic_images: int = Field(1000, ge=10, description="size of the synthetic set all nodes share out")
    allow_extra_folders: bool = Field(False, description="with class_names set, skip (with a warning) a folder that "
                                      "is not one of them; unset: such a folder is an error naming the closest class")
    share_evaluation: bool = Field(False, description="in secure runs, also send this hospital's own evaluation "
                                   "counts in the clear, for per-hospital metrics in the round rows; off: they go only "
                                   "masked, and the aggregator reads the consortium's sum")
    share_class_counts: bool = Field(True, description="send this hospital's per-class image counts when it joins "
                                     "(the aggregator logs them and the report plots them); false: names only")
    synthetic_seed: int = Field(0, description="seed of the SYNTHETIC set every node regenerates (synthetic only)")
    partition_scheme: Literal["iid", "dirichlet", "label_mix", "quantity"] = Field(
        "iid", description="how the synthetic set is shared out among the hospitals (synthetic only)")
    partition_alpha: float = Field(0.5, gt=0, description="Dirichlet concentration of the dirichlet and quantity "
                                   "schemes: smaller is more skewed (synthetic only)")
    partition_parties: int = Field(5, ge=1, description="hospitals the synthetic set is shared out among")
    partition_index: int = Field(0, ge=0, description="this hospital's part of the synthetic set")
    validation_fraction: float = Field(0.2, gt=0, lt=1, description="share of the training images held out for "
                                       "validation when the source has no val/ split")
    calibration_fraction: float = Field(
        0.0, ge=0, lt=1, description="share of the validation split kept apart for choosing the operating "
        "point (threshold); 0: none, metrics at argmax only")
    imbalance: Literal["none", "class_weights", "sampler", "logit_adjust"] = Field(
        "logit_adjust", description="class-weighted loss, weighted sampling, or logit adjustment by the local prior "
        "(the default: the recipe docs/RESULTS.md found to learn)")
    lr_schedule: Literal["constant", "cosine"] = Field("cosine", description="learning rate within a round")
    augment: bool = Field(True, description="small rotations, shifts, zoom, brightness/contrast (no flips)")
    freeze_head: bool = Field(False, description="local training leaves the classifier head as it arrived and "
                              "trains the body only (FedBABU, Oh et al., ICLR 2022)")
    adversarial_epsilon: float = Field(
        0.0, ge=0, le=0.1, description="PGD adversarial training (Madry et al., ICLR 2018): each local step trains "
        "on PGD examples within this L-infinity radius of its images (in [0, 1]; 4/255 is about 0.016); 0: off. "
        "Each step costs adversarial_steps more forward and backward passes. Plain local training only: a round "
        "under DP-SGD or of the head alone declines")
    adversarial_steps: int = Field(3, ge=1, le=20, description="PGD steps per adversarial training batch")
    encryption_workers: int = Field(1, ge=0, description="processes encrypting uploads; 0: in-process")
    precompute_encryption: Literal["off", "on", "auto"] = Field(
        "auto", description="while training, the encryption workers draw the round's noise and masks and make its "
        "fresh encryptions of zero ahead, so that after training each chunk is only round, add, pack, encode, add "
        "and serialize (needs encryption_workers >= 1). auto: on when training runs on CUDA, where the CPU cores are "
        "otherwise idle, or when this node's CPU cores (cpu_cores) cover its training threads and its encryption "
        "workers, so that neither waits for the other (docs/BENCHMARKS.md measured the crossover); off otherwise")
    cpu_cores: float | None = Field(None, gt=0, description="the CPU cores this node can count on, for "
                                    "precompute_encryption=auto; unset: the cores it may run on (its CPU affinity, "
                                    "cut to its container's CPU limit). "
                                    "The local launcher gives each of the hospitals it runs on one machine its share")
    torch_threads: int = Field(0, ge=0, description="CPU threads for training; 0: torch default")
    seed: int | None = Field(None, description="fixes training randomness (tests); the noise and masks of a secure "
                             "upload always come from the OS's entropy")

    @model_validator(mode="after")
    def _private_by_default(self) -> HospitalNodeSettings:
        if self.record_dp == "off" and self.record_epsilon is not None:
            raise ValueError(f"record_dp=off turns record-level DP-SGD off, but record_epsilon={self.record_epsilon:g} "
                             "sets its target: unset one of them")
        if self.record_dp == "auto" and self.record_epsilon is None and self.data_source != "synthetic":
            self.record_epsilon = DEFAULT_RECORD_EPSILON
        return self

    @field_validator("class_names")
    @classmethod
    def _one_name_per_class(cls, value: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...] | None:
        require_one_name_per_class(value, info.data.get("num_classes"))
        return value


class SettingsSlice:
    """A part's frozen slice of the node's settings: the fields the part reads, copied once by `of`."""

    @classmethod
    def of(cls, settings: HospitalNodeSettings) -> Self:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class FloorSettings(SettingsSlice):
    """The privacy floor's slice of the settings: all `privacy_floor` reads (built once, in `service.py`)."""

    node_id: str
    allow_plaintext: bool
    min_participants: int
    min_noise_variance: float
    max_clip_norm: float
    max_attempts: int
    max_learning_rate: float
    max_local_epochs: int
    max_batch_size: int


@dataclass(frozen=True)
class DataSettings(SettingsSlice):
    """The data's slice of the settings: all `data.local_data` reads (built once, in `service.py`)."""

    node_id: str
    num_classes: int
    image_size: int
    data_source: str
    data_path: Path | None
    class_names: tuple[str, ...] | None
    allow_extra_folders: bool
    validation_fraction: float
    calibration_fraction: float
    synthetic_images: int
    synthetic_seed: int
    partition_scheme: str
    partition_alpha: float
    partition_parties: int
    partition_index: int


@dataclass(frozen=True)
class TrainingSettings(SettingsSlice):
    """The hospital's own part of local training and of its record-level DP-SGD: all `local_round` and
    `admission.RecordPrivacy` read, and the DP-SGD settings the node's training step uses (built once, in
    `node_loop`)."""

    architecture: str
    imbalance: Literal["none", "class_weights", "sampler", "logit_adjust"]
    lr_schedule: Literal["constant", "cosine"]
    augment: bool
    freeze_head: bool
    adversarial_epsilon: float
    adversarial_steps: int
    record_dp: Literal["auto", "off"]
    record_epsilon: float | None
    record_delta: float | None
    record_rounds: int
    dp_clip_norm: float
    dp_grad_sample_mode: Literal["hooks", "ghost"]
    dp_physical_batch: int
    state_dir: Path  # where the record-level DP ledger lives
