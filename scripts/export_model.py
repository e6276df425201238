"""Export a finished consortium's model as TorchScript and ONNX, each checked against PyTorch.

    python -m scripts.export_model --run-dir runs/demo --out runs/demo/export

Writes model.ts (TorchScript, traced), model.onnx (ONNX, a variable batch of 1 x S x S grey images in [0, 1],
logits out; softmax them for probabilities) and model.json (the model card: class names in label order, image
size, operating point). Both exports are run on the same random batch as the PyTorch model. Their largest
difference in the logits, over the logits' scale (the largest logit's magnitude, at least 1), above 1e-3 is an
error, and nothing is called exported. 1e-3 is the relative tolerance of PyTorch's own ONNX export check: ONNX
Runtime sums in its own order with its own kernels, so its last digits differ by processor (1.2e-4 absolute was
measured on one CI machine), while a wrong export differs in the first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

TOLERANCE = 1e-3  # relative to the logits' scale; see the docstring


@dataclass(frozen=True)
class Exported:
    torchscript: Path
    onnx: Path
    torchscript_error: float  # largest difference of the logits against PyTorch's, over the logits' scale
    onnx_error: float


def export(run_dir: Path, out: Path) -> Exported:
    import numpy as np  # noqa: PLC0415 (torch: not for --help)
    import onnxruntime  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from scripts.model_card import CARD, load  # noqa: PLC0415

    model, card = load(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    batch = torch.rand(4, 1, card.image_size, card.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(batch).numpy()
        traced = torch.jit.trace(model, batch[:1])
    torchscript, onnx_path = out / "model.ts", out / "model.onnx"
    traced.save(str(torchscript))
    torch.onnx.export(model, (batch[:1],), str(onnx_path), dynamo=False, input_names=["images"],
                      output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    scale = max(1.0, float(np.abs(expected).max()))

    def error(logits: np.ndarray) -> float:
        return float(np.abs(logits - expected).max()) / scale

    with torch.no_grad():
        script_error = error(torch.jit.load(str(torchscript))(batch).numpy())
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_error = error(session.run(["logits"], {"images": batch.numpy()})[0])
    if max(script_error, onnx_error) > TOLERANCE:
        raise ValueError(f"the exports differ from PyTorch by up to {max(script_error, onnx_error):.2e} of the logits' "
                         f"scale {scale:.3g} (TorchScript {script_error:.2e}, ONNX {onnx_error:.2e}; "
                         f"tolerance {TOLERANCE:g})")
    shutil.copyfile(run_dir / CARD, out / CARD)
    return Exported(torchscript, onnx_path, script_error, onnx_error)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.export_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/demo"), help="a finished run's folder")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: RUN_DIR/export)")
    args = parser.parse_args(argv)
    try:
        done = export(args.run_dir, args.out or args.run_dir / "export")
    except ValueError as error:
        print(f"python -m scripts.export_model: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"torchscript": str(done.torchscript), "onnx": str(done.onnx),
                      "largest difference to PyTorch, over the logits' scale": {"torchscript": done.torchscript_error,
                                                        "onnx": done.onnx_error}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
