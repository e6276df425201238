r"""Run a key authority, an aggregator and N hospital nodes as separate local processes.

`make demo` runs `python -m scripts.consortium` with its defaults: five hospitals on
a SYNTHETIC chest-X-ray-like data set, ResNet-50, three secure rounds, each hospital
training under record-level DP-SGD at the epsilon the aggregator proposes (8; every
hospital's own budget, its ledger in RUN_DIR/hospitals/<node>). Each service
is a separate OS process talking gRPC over 127.0.0.1; logs go to RUN_DIR/logs.
The processes are started by `scripts/launcher.py`, the library tests, benchmarks and
experiments use.

Your own images: one `--hospital NAME=SOURCE:PATH` per hospital, where SOURCE is
`folder` (PATH/train/<CLASS>/*.png|jpg, the Kaggle layout; val/ or test/ validate when
present), `medmnist` (a MedMNIST .npz file) or `dicom` (PATH/<CLASS>/**/*.dcm), e.g.

    python -m scripts.consortium --class-names NORMAL,PNEUMONIA \
        --hospital st-anna=folder:/data/st-anna --hospital city=folder:/data/city \
        --hospital north=folder:/data/north
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from scripts import model_card
from scripts.launcher import (
    QUICK_TRAINING,
    REPO,
    TABLE_HEADER,
    Consortium,
    ConsortiumConfig,
    ServiceFailed,
    SettingValues,
    format_row,
)
from services.aggregator.config import AggregatorSettings
from services.common.ml.choices import ARCHITECTURES, TRAINABLE
from services.common.runtime.settings_loader import validation_lines
from services.hospital_node.config import HospitalNodeSettings

# The demo's own choices, beside the settings models' defaults: small images, so that the five hospitals'
# ResNet-50 rounds finish in minutes on a laptop's CPU; Dirichlet label skew, as hospitals have; one process per
# hospital with one training thread, so five share two cores without thrashing; 200 SYNTHETIC images per hospital,
# a fifth of them for validation, so that the pooled metrics rest on 200 images.
DEMO_SETTINGS: SettingValues = {
    "architecture": "resnet50", "image_size": 32, "partition_scheme": "dirichlet", "partition_alpha": 0.5,
    "round_deadline_seconds": 900.0, "encryption_workers": 0, "torch_threads": 1}
DEMO_IMAGES_PER_NODE = 200
# The SYNTHETIC demo's recipe under record-level DP-SGD (docs/RESULTS.md, "Learning under DP"): start from the public
# stand-in (experiments.pretrain, built and cached on first use) and train the classifier head only, on the frozen
# backbone's features, per patient; so only the head's 4,098 values travel through the secure sum.
DEMO_DP_HEAD: SettingValues = {
    "trainable": "head", "local_optimizer": "sgd", "learning_rate": 0.003, "local_epochs": 5, "batch_size": 32,
    "dp_clip_norm": 1.0, "clip_norm": 0.5, "server_momentum": 0.0, "head_refit": False, "imbalance": "none"}
# Own images: the services' defaults, the recipe that learns; logs in RUN_DIR/logs are plain text, for a person.
OWN_IMAGES_SETTINGS: SettingValues = {"log_format": "text"}
SOURCES = ("folder", "medmnist", "dicom")


def parse_hospital(text: str) -> tuple[str, str, Path]:
    """`NAME=SOURCE:PATH` as (name, source, absolute path); a ValueError saying what is wrong."""
    name, _, rest = text.partition("=")
    source, _, path = rest.partition(":")
    if not name or not source or not path:
        raise ValueError(f"--hospital {text!r}: expected NAME=SOURCE:PATH, e.g. st-anna=folder:/data/st-anna")
    if source not in SOURCES:
        raise ValueError(f"--hospital {text!r}: SOURCE must be one of {', '.join(SOURCES)}, not {source!r}")
    location = Path(path).expanduser().resolve()
    if not location.exists():
        raise ValueError(f"--hospital {text!r}: {location} does not exist")
    return name, source, location


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module's description as written, and every option's default after its help."""


def check_arguments(args: argparse.Namespace) -> list[str]:
    """The settings the options become, checked by the services' own settings models before anything starts (the
    stand-in's pretraining included): one line per problem."""
    problems = []
    checks: list[tuple[type[BaseSettings], dict[str, object]]] = [
        (AggregatorSettings, {"rounds": args.rounds}), (HospitalNodeSettings, {"image_size": args.image_size})]
    for model, values in checks:
        try:
            model(insecure=True, **values)
        except ValidationError as error:
            for line in validation_lines(error, ""):
                name = line.split("=", 1)[0].split(":", 1)[0]
                problems.append(f"--{name.lower().replace('_', '-')}{line[len(name):]}")
    if args.images_per_node < 1 or args.nodes < 1 or args.timeout <= 0:
        problems.append("--images-per-node and --nodes must be at least 1, --timeout above 0")
    return problems


def folder_classes(source: str, path: Path) -> tuple[str, ...] | None:
    """The class folders a hospital's images are in, sorted (folder: PATH/train/<CLASS>, dicom: PATH/<CLASS>); None
    where the source names no classes (medmnist)."""
    root = path / "train" if source == "folder" else path if source == "dicom" else None
    if root is None or not root.is_dir():
        return None
    return tuple(sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")))


def agree_class_names(own: list[tuple[str, str, Path]]) -> str:
    """The class names every hospital's folders give, when they agree; a ValueError naming each hospital's names
    side by side when they do not (the first hospital to join must not decide them for the others)."""
    found = {name: folder_classes(source, path) for name, source, path in own}
    distinct = set(found.values())
    if len(distinct) == 1 and None not in distinct:
        return ",".join(next(iter(distinct)))  # type: ignore[arg-type]
    table = "; ".join(f"{name}: {', '.join(classes) if classes else '(no class folders)'}"
                      for name, classes in found.items())
    raise ValueError(f"the hospitals' class folders differ ({table}): agree on the names, pass them in label order "
                     "with --class-names (for example --class-names NORMAL,PNEUMONIA), and rename the folders "
                     "that differ")


def joined_class_counts(path: Path) -> str:
    """The class table from the counts the hospitals sent when they joined (the aggregator's class_counts.json)."""
    from services.hospital_node.data.partition import format_class_counts

    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return f"(no class counts in {path})"
    lines = ["class counts the hospitals sent when they joined:"]
    if document["hospitals"]:
        lines.append(format_class_counts(document["counts"], document["classes"], document["hospitals"]))
    if document["not_shared"]:
        lines.append(f"not shared by: {', '.join(document['not_shared'])}")
    return "\n".join(lines)
# The demo's record-level (per-patient) target, which the aggregator proposes and every hospital adopts.
DEMO_RECORD_EPSILON = 8.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.consortium", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=REPO / "runs" / "demo",
                        help="where logs, checkpoints, ledgers and the report go (emptied first)")
    parser.add_argument("--nodes", type=int, default=5, help="SYNTHETIC hospitals (without --hospital)")
    parser.add_argument("--rounds", type=int, default=AggregatorSettings.model_fields["rounds"].default,
                        help="training rounds")
    parser.add_argument("--architecture", default=DEMO_SETTINGS["architecture"], choices=ARCHITECTURES,
                        help="the model every service builds")
    parser.add_argument("--image-size", type=int, default=DEMO_SETTINGS["image_size"],
                        help="pixels per side every image is resized to")
    parser.add_argument("--images-per-node", type=int, default=None,
                        help=f"SYNTHETIC images per hospital (default {DEMO_IMAGES_PER_NODE}); not with --hospital, "
                             "whose folder decides its count")
    parser.add_argument("--plaintext", action="store_true", help="privacy off, for comparison")
    parser.add_argument("--record-epsilon", type=float, default=None,
                        help="record-level DP-SGD target the aggregator proposes to every hospital; 0: no "
                             "record-level DP (then the closing head refit runs; with --hospital, every hospital "
                             f"turns it off explicitly, record_dp=off). Default: {DEMO_RECORD_EPSILON:g}, for the "
                             "SYNTHETIC demo and a hospital's own images alike")
    parser.add_argument("--init-weights", type=Path, default=None,
                        help="start from this state dict (e.g. ImageNet or public chest X-ray weights). Default for "
                             "the SYNTHETIC demo: the public stand-in of experiments.pretrain, built on first use "
                             "(minutes, with progress) and cached under runs/pretrain")
    parser.add_argument("--from-scratch", action="store_true",
                        help="the SYNTHETIC demo without the public stand-in: seeded weights (learns nothing under DP)")
    parser.add_argument("--trainable", choices=TRAINABLE, default=None,
                        help="what each round trains and uploads: all, last_block (last stage and head) or head "
                             "(the head on frozen features). Default: head for the SYNTHETIC demo (which starts from "
                             "the public stand-in), and with --hospital head when --init-weights is given under "
                             "record-level DP, else the services' default (all)")
    parser.add_argument("--no-head-refit", dest="head_refit", action="store_false",
                        help="without record-level DP: skip the closing refit of the classifier head from the "
                             "hospitals' summed feature statistics (DP-SGD does not cover them, so it is always "
                             "off under record-level DP)")
    parser.add_argument("--hospital", action="append", default=[], metavar="NAME=SOURCE:PATH",
                        help="a hospital on its own images (repeat, one per hospital; at least 3): SOURCE is folder, "
                             "medmnist or dicom. Without it: the SYNTHETIC demo")
    parser.add_argument("--class-names", default=None, metavar="A,B",
                        help="the consortium's class names in label order (NORMAL,PNEUMONIA): every hospital's "
                             "folders must use them; unset: the first hospital's sorted class folders")
    parser.add_argument("--timeout", type=float, default=1200.0,
                        help="seconds before the launcher gives up and stops every service")
    args = parser.parse_args(argv)
    if args.hospital and args.images_per_node is not None:
        parser.error("--images-per-node sets the SYNTHETIC demo's size; with --hospital each folder decides its own")
    args.images_per_node = DEMO_IMAGES_PER_NODE if args.images_per_node is None else args.images_per_node
    problems = check_arguments(args)
    if problems:
        for problem in problems:
            print(f"python -m scripts.consortium: {problem}", file=sys.stderr)
        return 2
    try:
        own = [parse_hospital(text) for text in args.hospital]
    except ValueError as bad:
        parser.error(str(bad))
    if own and len(own) < 3:
        parser.error(f"{len(own)} --hospital given; a consortium needs at least 3 (the secure sum's quorum)")
    if own and args.class_names is None:
        try:
            args.class_names = agree_class_names(own)
        except ValueError as differ:
            parser.error(str(differ))
        print(f"class names from every hospital's folders: {args.class_names} (--class-names sets them)", flush=True)
    if args.run_dir.exists():
        import shutil

        shutil.rmtree(args.run_dir)
    if args.record_epsilon is None:
        args.record_epsilon = DEMO_RECORD_EPSILON
    record_dp = args.record_epsilon > 0
    classes = {"class_names": args.class_names} if args.class_names else {}
    # Own images under DP-SGD learn from pretrained weights, training the head on their frozen features (the demo's
    # recipe); from seeded weights DP-SGD has little to learn with, which the run says before it starts.
    own_recipe = {**OWN_IMAGES_SETTINGS, **DEMO_DP_HEAD} if record_dp and args.init_weights else OWN_IMAGES_SETTINGS
    recipe = own_recipe if own else DEMO_DP_HEAD if not args.from_scratch else QUICK_TRAINING
    if args.trainable is not None:
        recipe = {**recipe, "trainable": args.trainable}
    if not own and not args.from_scratch and args.init_weights is None:
        from experiments.pretrain import StandIn, stand_in_weights  # noqa: PLC0415 (torch: not for --help)

        args.init_weights = stand_in_weights(StandIn(args.architecture, args.image_size))
    config = ConsortiumConfig(
        run_dir=args.run_dir, nodes=len(own) or args.nodes, images_per_node=None if own else args.images_per_node,
        node_names=[name for name, _, _ in own] or None,
        settings={**DEMO_SETTINGS, **recipe, **classes, "rounds": args.rounds,
                  "secure": not args.plaintext, "allow_plaintext": args.plaintext, "architecture": args.architecture,
                  "image_size": args.image_size, "head_refit": args.head_refit and not record_dp},
        aggregator={**({"record_epsilon": args.record_epsilon} if record_dp else {}),
                    **({"init_weights": args.init_weights.resolve()} if args.init_weights else {})},
        node={"record_rounds": args.rounds, **({"record_dp": "off"} if own and not record_dp else {})},
        per_node={i: {"data_source": source, "data_path": path} for i, (_, source, path) in enumerate(own)})
    try:
        demo = Consortium(config)
    except ValidationError as error:
        for line in validation_lines(error, ""):
            print(f"settings: {line.lower().split(':', 1)[0]}:{line.split(':', 1)[1]}", file=sys.stderr)
        return 2
    aggregator, node = demo.aggregator_settings, demo.node_settings[0]
    data = (f"their own images ({', '.join(sorted({source for _, source, _ in own}))})" if own
            else "SYNTHETIC radiographs")
    print(f"FedXray consortium: {config.nodes} hospitals on {data} ({node.image_size}px, "
          f"{aggregator.architecture}), {aggregator.rounds} {'secure' if aggregator.secure else 'PLAINTEXT'} rounds"
          f"{', then a head refit' if aggregator.head_refit else ''}"
          f"{f', record-level DP-SGD at epsilon {aggregator.record_epsilon:g}' if aggregator.record_epsilon else ''}; "
          f"logs in {args.run_dir / 'logs'}, one row per round in {args.run_dir / 'aggregator' / 'rounds.jsonl'}",
          flush=True)
    if own and not record_dp:
        print("record-level DP-SGD is OFF in this trial run (--record-epsilon 0: each hospital sets record_dp=off); "
              f"without that flag it runs at epsilon {DEMO_RECORD_EPSILON:g}", flush=True)
    elif own and not args.init_weights:
        print("record-level DP-SGD from seeded weights learns little: pass --init-weights (pretrained weights, such "
              "as ImageNet's in torchvision's format), or --record-epsilon 0 for a trial run without it", flush=True)
    if not own:
        print("class counts per hospital (Dirichlet label skew):", flush=True)
        print(demo.write_class_counts(), flush=True)
    heading = ("row 0 is the initial model; metrics are pooled over the hospitals' validation splits\n"
               + TABLE_HEADER)
    if not own:
        print(heading, flush=True)
    started = time.monotonic()
    shown = [not own]  # own images: the class table the hospitals sent when they joined, before the first row

    def show(row: dict[str, object]) -> None:
        if not shown[0]:
            shown[0] = True
            print(joined_class_counts(args.run_dir / "aggregator" / "class_counts.json"), flush=True)
            print(heading, flush=True)
        print(format_row(row), flush=True)

    with demo as consortium:
        try:
            code = consortium.wait(args.timeout, on_row=show, fail_fast=True,
                                   on_notice=lambda name, message: print(f"{name}: {message}", flush=True))
        except ServiceFailed as failed:
            who = f"hospital {failed.name}" if failed.name in consortium.node_ids else f"the {failed.name}"
            print(f"{who} stopped (exit code {failed.code}): {failed.reason}", flush=True)
            print(f"stopping the consortium; the full log: {args.run_dir / 'logs' / (failed.name + '.log')}",
                  flush=True)
            code = 1
        rows = consortium.rows()
    if code == 124:
        print(f"no result within --timeout {args.timeout:g} s; the services' logs are in {args.run_dir / 'logs'}",
              flush=True)
    print(f"finished in {time.monotonic() - started:.0f} s with exit code {code}", flush=True)
    card = model_card.write(args.run_dir, architecture=aggregator.architecture, num_classes=aggregator.num_classes,
                            image_size=node.image_size, init_weights=aggregator.init_weights)
    if card is not None:
        print(f"the final model (round {card.round}) is described in {args.run_dir / 'MODEL_CARD.md'}; use it with "
              f"`python -m scripts.predict --run-dir {args.run_dir} IMAGES...` or export it with "
              f"`python -m scripts.export_model --run-dir {args.run_dir}`", flush=True)
    completed = [r for r in rows if not r.get("failed") and int(str(r.get("round", 0))) > 0]
    refits = sum(1 for r in completed if r.get("head_refit"))
    expected = (aggregator.rounds, 1 if aggregator.head_refit else 0)
    return 0 if code == 0 and (len(completed) - refits, refits) == expected else 1


if __name__ == "__main__":
    sys.exit(main())
