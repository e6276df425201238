"""Choose federated training settings by in-process simulation on SYNTHETIC data.

    python -m experiments.sweep --out runs/sweep --base rounds=15,partition_scheme=label_mix \\
        "sgd=local_optimizer=sgd,learning_rate=0.02" "prox=proximal_mu=0.01" "central=mode=centralized"

Each named setting runs in its own process (side by side, so a GPU is shared) and
simulates the consortium without its services (`experiments.simulator`): the nodes'
local rounds and the aggregator's strategy, in one process. A key is a service
setting (`python -m services.aggregator --help`, `python -m services.hospital_node
--help`: rounds, clip_norm, drift_correction, partition_scheme, ...) or a
simulation choice (`Simulation`: mode, nodes, images_per_node, secure_clamp,
secure_codec, head_refit_each_round, refit_noise_variances, seed). Prints a row per
round per setting and a closing table ranked by the mean F1 of the last rounds;
writes `<out>/<name>.jsonl`, `<out>/ranking.json` and `<out>/curves.png`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np

from experiments.simulator import Simulation, consortium_config, simulate
from scripts.launcher import SettingValues
from services.common.runtime.atomic_files import read_json_lines, write_json_atomic

SCORED_LAST_ROUNDS = 3


def _simulation_value(name: str, text: str) -> object:
    default = getattr(Simulation(), name)
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes")
    if isinstance(default, tuple):
        return tuple(float(v) for v in text.split(":") if v)
    if name == "images_per_node":
        return int(text) if text else None
    return type(default)(text)


def parse_setting(text: str, base: tuple[SettingValues, Simulation]) -> tuple[str, tuple[SettingValues, Simulation]]:
    """`name=key=value,key=value` over `base`: a key is a `Simulation` field or a service setting, whose models
    check the value when the simulation builds them."""
    name, _, assignments = text.partition("=")
    values, simulation = dict(base[0]), base[1]
    own = {f.name for f in fields(Simulation)}
    for assignment in filter(None, assignments.split(",")):
        key, _, value = assignment.partition("=")
        if key in own:
            simulation = replace(simulation, **{key: _simulation_value(key, value)})
        else:
            values[key] = value
    try:  # refuse an unknown key or a bad value now, not in a worker
        config = consortium_config(values, simulation)
        config.aggregator_settings(), config.node_settings(0), config.key_authority_settings()
    except ValueError as error:
        raise SystemExit(f"{text!r}: {error}") from error
    return name, (values, simulation)


def rank(out: Path, names: list[str]) -> list[dict[str, object]]:
    table = []
    for name in names:
        rows = read_json_lines(out / f"{name}.jsonl")
        last = rows[-SCORED_LAST_ROUNDS:]
        table.append({"name": name, "rounds": len(rows),
                      "f1_last": float(np.mean([r.get("f1", 0.0) for r in last])) if last else 0.0,
                      "auc_last": float(np.mean([r.get("auc", 0.5) for r in last])) if last else 0.5})
    return sorted(table, key=lambda row: -float(row["f1_last"]))  # type: ignore[arg-type]


def plot_curves(rows: list[dict[str, object]], path: Path) -> Path:
    """F1 and AUC per round for each setting in `rows`, with dashed lines for the scores of its refit head
    (head_refit=eval) where the rows carry them."""
    from experiments.report import _save, plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = list(dict.fromkeys(str(r["name"]) for r in rows))
    for index, name in enumerate(names):
        mine = [r for r in rows if r["name"] == name]
        color = f"C{index % 10}"
        for axis, metric in zip(axes, ("f1", "auc")):
            rounds = [r["round"] for r in mine]
            axis.plot(rounds, [r.get(metric, float("nan")) for r in mine], marker="o", color=color, label=name)
            refits = [r["refit"] for r in mine if isinstance(r.get("refit"), dict)]
            if len(refits) == len(mine):
                axis.plot(rounds, [refit.get(metric, float("nan")) for refit in refits],  # type: ignore[attr-defined]
                          linestyle="--", marker="x", color=color, label=f"{name}, head refit")
    for axis, metric in zip(axes, ("F1 at argmax", "ROC AUC")):
        axis.set_title(f"{metric}, held-out images (SYNTHETIC data, simulation)", fontsize=10)
        axis.set_xlabel("round")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="*", help="name=key=value,key=value (service settings, Simulation)")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"))
    parser.add_argument("--base", default="", help="key=value,... applied to every setting first")
    parser.add_argument("--timeout", type=float, default=3600, help="stop unfinished settings after this")
    parser.add_argument("--plot-rows", type=Path, nargs="+", help="only plot these rows files into <out>/curves.png")
    args = parser.parse_args(argv)
    if args.plot_rows:
        args.out.mkdir(parents=True, exist_ok=True)
        rows = [row for path in args.plot_rows for row in read_json_lines(path)]
        print(f"wrote {plot_curves(rows, args.out / 'curves.png')}")
        return 0
    if not args.settings:
        parser.error("name at least one setting (or --plot-rows)")
    _, base = parse_setting(f"base={args.base}", ({}, Simulation()))
    named = dict(parse_setting(text, base) for text in args.settings)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "settings.json", {n: {"settings": v, "simulation": asdict(s)}
                                                   for n, (v, s) in named.items()}, indent=1)
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=simulate, args=(n, v, s, args.out), name=n) for n, (v, s) in named.items()]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + args.timeout
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            print(f"[{worker.name}] stopped at the sweep's timeout", flush=True)
            worker.terminate()
    table = rank(args.out, list(named))
    write_json_atomic(args.out / "ranking.json", table, indent=1)
    print(f"{'setting':<16} {'rounds':>6} {'F1 (last 3)':>11} {'AUC (last 3)':>12}")
    for row in table:
        print(f"{row['name']:<16} {row['rounds']:>6} {row['f1_last']:>11.3f} {row['auc_last']:>12.3f}")
    rows = [row for name in named for row in read_json_lines(args.out / f"{name}.jsonl")]
    if rows:
        print(f"wrote {plot_curves(rows, args.out / 'curves.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
