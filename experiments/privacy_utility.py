"""Privacy against utility: non-private centralized, non-private secure federated, and secure federated under
record-level DP-SGD at each epsilon asked, all from the same public pretraining, on the same SYNTHETIC data.

    python -m experiments.privacy_utility --out runs/pu --init-weights runs/pretrain/model.pt \
        --epsilons 8 2 [service settings, as experiments.experiment takes them]

Runs `experiments.experiment` for the non-private pair (secure and centralized) and
once per epsilon (secure only, every hospital at that record-level target, delta
min(1e-5, 0.1 / n)), then writes `PRIVACY_UTILITY.md` with the final F1 and AUC of
each run, its record-level and hospital-level epsilons, and `privacy_utility.png`
(F1 and AUC against the record-level epsilon, the non-private runs as lines).
Progress: each run's rounds as they finish.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

from experiments import experiment
from experiments.report import read_rows
from services.common.runtime.atomic_files import write_atomic

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def final_row(run_dir: Path) -> dict[str, object]:
    rows = [r for r in read_rows(run_dir) if not r.get("failed")]
    return rows[-1]


def _figure(row: dict[str, object], key: str) -> float:
    evaluation = row.get("evaluation", row)
    value = evaluation.get(key) if isinstance(evaluation, dict) else None
    return float(value) if isinstance(value, (int, float)) else math.nan


def _epsilon_text(value: object) -> str:
    return "-" if value is None else f"{float(str(value)):.3g}"


def _run(out: Path, passthrough: list[str], extra: list[str]) -> None:
    code = experiment.main(["--out", str(out), *passthrough, *extra])
    if code != 0:
        raise SystemExit(f"run in {out} failed (exit {code})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[8.0, 2.0])
    parser.add_argument("--title", default="Privacy against utility (SYNTHETIC data)")
    args, passthrough = parser.parse_known_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print("[non-private] secure federated and centralized", flush=True)
    _run(args.out / "non_private", passthrough, ["--skip", "plaintext"])
    runs = {"centralized": args.out / "non_private" / "centralized",
            "secure federated": args.out / "non_private" / "secure"}
    for epsilon in args.epsilons:
        print(f"[epsilon {epsilon:g}] secure federated under record-level DP-SGD", flush=True)
        out = args.out / f"dp_eps{epsilon:g}"
        _run(out, passthrough, ["--skip", "plaintext", "--skip", "centralized", "--record-epsilon", str(epsilon)])
        runs[f"secure federated, DP-SGD epsilon {epsilon:g}"] = out / "secure"
    finals = {label: final_row(path) for label, path in runs.items()}
    lines = [f"# {args.title}", "", f"Command: `python -m experiments.privacy_utility {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
             "| run | round | F1 | AUC | record-level epsilon (largest) | hospital-level epsilon |",
             "|---|---|---|---|---|---|"]
    for label, row in finals.items():
        record = row.get("record_epsilon_max")
        lines.append(f"| {label} | {row.get('round')} | {_figure(row, 'f1'):.3f} | {_figure(row, 'auc'):.3f} | "
                     f"{'-' if record is None else f'{float(str(record)):.2f}'} | {_epsilon_text(row.get('epsilon'))} |")
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key in zip(axes, ("f1", "auc"), strict=True):
        points = sorted((float(str(finals[k].get("record_epsilon_max"))), _figure(finals[k], key))
                        for k in finals if finals[k].get("record_epsilon_max") is not None)
        if points:
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="secure federated, DP-SGD")
        for label, style in (("centralized", "--"), ("secure federated", ":")):
            axis.axhline(_figure(finals[label], key), linestyle=style, color="grey" if style == "--" else "black",
                         label=f"{label} (non-private)")
        axis.set_xlabel("record-level epsilon spent (largest over hospitals)")
        axis.set_ylabel(key.upper())
        axis.set_title(f"{key.upper()} against record-level epsilon")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out / "privacy_utility.png", dpi=120)
    plt.close(figure)
    lines += ["", "![F1 and AUC against record-level epsilon](privacy_utility.png)", ""]
    write_atomic(args.out / "PRIVACY_UTILITY.md", "\n".join(lines).encode())
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
