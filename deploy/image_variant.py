"""The image variants' build step (deploy/Dockerfile): what a variant installs, prunes and must run.

    python deploy/image_variant.py requirements VARIANT   # the requirements file the variant installs
    python deploy/image_variant.py prune VARIANT SITE     # remove what the variant never loads
    python deploy/image_variant.py check VARIANT          # run the variant's services' code paths, or fail

Variants:
- `gpu`: deploy/requirements-runtime.txt, what the services import, pinned as in requirements.txt (torch 2.14.1
  is PyPI's CUDA build). For hospital nodes on NVIDIA GPUs.
- `cpu`: the same pins, less the CUDA files that a process on a CPU never opens. PyPI serves torch 2.14.1 for
  x86_64 only as the CUDA build, and its libtorch.so and libtorch_python.so link libtorch_cuda.so, cuDNN, cuBLAS,
  NCCL and the other CUDA libraries at load (`readelf -d`), so those stay even on a CPU; what goes is what no
  CPU process opens: triton (it compiles GPU kernels for torch.compile, which FedXray never calls), cuDNN's
  engine libraries (cuDNN loads them when it runs a kernel), the multi-GPU solver, the alternative NVRTC
  builds, the profilers' libraries, the CUDA-only linear algebra, and the C++ headers. The list was measured
  with `strace -f -e trace=openat` over importing torch, torchvision, opacus and TenSEAL and training a
  ResNet-50 step on the CPU (docs/DEPLOYMENT.md, "The images"), and `check` re-runs those paths in the
  image, so a torch upgrade that starts needing a pruned file fails the build, not a round. A CPU-only
  wheel of the same version (torch-2.14.1+cpu from download.pytorch.org), placed in deploy/wheelhouse,
  satisfies the same pins and makes every pruned path absent already.
- `key-authority`: deploy/requirements-key-authority.txt, without torch, torchvision or Opacus: the key
  authority decrypts sums and never touches a model.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

VARIANTS = ("gpu", "cpu", "key-authority")

# Relative to site-packages; glob patterns. Each is a file or folder that no CPU process opens (see above).
CPU_PRUNE = (
    "triton",
    "nvidia/cudnn/lib/libcudnn_*.so*",  # cuDNN's engines; libcudnn.so.9 itself is linked by libtorch_python
    "nvidia/cu13/lib/libcusolverMg.so*",
    "nvidia/cu13/lib/libnvrtc.alt.so*",
    "nvidia/cu13/lib/libnvrtc-builtins.alt.so*",
    "nvidia/cu13/lib/libnvperf_*.so",
    "nvidia/*/include",
    "torch/lib/libtorch_cuda_linalg.so",
    "torch/include",
)
# The GPU variant drops only triton, as the image always did.
GPU_PRUNE = ("triton",)


def requirements(variant: str, root: Path) -> Path:
    return root / ("deploy/requirements-key-authority.txt" if variant == "key-authority"
                   else "deploy/requirements-runtime.txt")


def prune(variant: str, site: Path) -> int:
    """Remove the variant's pruned paths under `site`; the bytes removed."""
    patterns = {"cpu": CPU_PRUNE, "gpu": GPU_PRUNE}.get(variant, ())
    removed = 0
    for pattern in patterns:
        for path in sorted(site.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                removed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
                shutil.rmtree(path)
            else:
                removed += path.lstat().st_size
                path.unlink()
    for info in site.glob("triton-*.dist-info"):  # pip would otherwise list a package whose files are gone
        if variant in ("cpu", "gpu"):
            shutil.rmtree(info)
    return removed


def check(variant: str) -> None:
    """Run what the variant's services run, on the CPU; raise on the first failure."""
    import importlib.util

    if variant == "key-authority":
        for absent in ("torch", "torchvision", "opacus"):
            if importlib.util.find_spec(absent) is not None:
                raise SystemExit(f"the key-authority image must not hold {absent}")
        import tenseal as ts

        import services.key_authority.service  # noqa: F401  (imports everything it serves with)

        context = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
        context.global_scale = 2**40
        total = ts.ckks_vector(context, [1.0, 2.0]) + ts.ckks_vector(context, [3.0, 4.0])
        if [round(v) for v in total.decrypt()] != [4, 6]:
            raise SystemExit("TenSEAL's CKKS sum came out wrong")
        print("key-authority image: TenSEAL sums, no torch")
        return
    import io

    import torch

    import services.aggregator.service  # noqa: F401
    import services.hospital_node.service  # noqa: F401
    from services.common.ml.model_spec import flatten_state, parameter_spec
    from services.common.ml.models import build_model

    model = build_model("resnet50", 2, 0)
    model(torch.randn(2, 3, 64, 64)).logsumexp(1).sum().backward()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    if flatten_state(state).size != parameter_spec(state).count:
        raise SystemExit("the saved state does not flatten to its spec")
    torch.linalg.solve(torch.eye(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    print(f"{variant} image: torch {torch.__version__} trains a ResNet-50 step on the CPU")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("requirements", "prune", "check") or argv[1] not in VARIANTS:
        print(__doc__, file=sys.stderr)
        return 2
    command, variant = argv[0], argv[1]
    if command == "requirements":
        print(requirements(variant, Path(argv[2]) if len(argv) > 2 else Path(__file__).resolve().parents[1]))
    elif command == "prune":
        removed = prune(variant, Path(argv[2]))
        print(f"{variant} image: pruned {removed / 1e9:.2f} GB that this variant never loads")
    else:
        check(variant)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
