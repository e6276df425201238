"""The image variants (deploy/Dockerfile, deploy/image_variant.py): what each installs and prunes, checked here; the
images themselves are built and run by `make compose-test`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from deploy import image_variant

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            out[name.lower().replace("_", "-")] = version
    return out


def test_the_images_pins_are_requirements_txt_pins() -> None:
    main = pins(REPO / "requirements.txt")
    key_authority = pins(REPO / "deploy" / "requirements-key-authority.txt")
    services = pins(REPO / "deploy" / "requirements-runtime.txt")
    assert {"tenseal", "grpcio", "cryptography", "opentelemetry-sdk"} <= key_authority.keys()
    assert not {"torch", "torchvision", "opacus"} & key_authority.keys()
    assert {"torch", "torchvision", "opacus", "dp-accounting", "pydicom"} <= services.keys()
    assert not {"pytest", "mypy", "kubernetes-validate", "onnxruntime", "matplotlib"} & services.keys()
    for image in (key_authority, services):
        assert {name: version for name, version in image.items() if main.get(name) != version} == {}


BLOCK_TORCH = textwrap.dedent("""
    import sys
    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision", "opacus"):
                raise ModuleNotFoundError(f"no {name} in the key-authority image")
    sys.meta_path.insert(0, NoTorch())
""")


def test_the_key_authority_runs_without_torch() -> None:
    """What the key-authority image holds: its service and its health check import no torch."""
    code = BLOCK_TORCH + textwrap.dedent("""
        import services.key_authority.service, services.key_authority.__main__
        import services.key_authority.config, services.common.runtime.settings_loader, services.common.runtime.tls
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
    # The same blocker stops a module that does import torch: the check can fail.
    result = subprocess.run([sys.executable, "-c", BLOCK_TORCH + "import services.aggregator.service"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "key-authority image" in result.stderr


def test_the_cpu_prune_removes_only_what_a_cpu_never_opens(tmp_path: Path) -> None:
    files = {
        "triton/_C/libtriton.so": False, "nvidia/cudnn/lib/libcudnn_engines_precompiled.so.9": False,
        "nvidia/cudnn/lib/libcudnn_adv.so.9": False, "nvidia/cu13/lib/libcusolverMg.so.12": False,
        "nvidia/cu13/lib/libnvrtc.alt.so.13": False, "nvidia/cu13/lib/libnvperf_host.so": False,
        "nvidia/cu13/include/cuda.h": False, "torch/include/torch/torch.h": False,
        "torch/lib/libtorch_cuda_linalg.so": False,
        # linked at load by libtorch.so and libtorch_python.so: they stay
        "nvidia/cudnn/lib/libcudnn.so.9": True, "nvidia/cu13/lib/libcublasLt.so.13": True,
        "nvidia/cu13/lib/libcusolver.so.12": True, "nvidia/cu13/lib/libnvrtc.so.13": True,
        "torch/lib/libtorch_cuda.so": True, "torch/lib/libtorch_cpu.so": True, "torch/__init__.py": True,
    }
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x" * 10)
    (tmp_path / "triton-3.6.0.dist-info").mkdir()
    removed = image_variant.prune("cpu", tmp_path)
    assert {name: (tmp_path / name).exists() for name in files} == files
    assert removed == 10 * sum(not keep for keep in files.values())
    assert not (tmp_path / "triton-3.6.0.dist-info").exists()


def test_the_gpu_prune_removes_triton_only(tmp_path: Path) -> None:
    for name in ("triton/_C/libtriton.so", "nvidia/cudnn/lib/libcudnn_adv.so.9", "torch/include/torch.h"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    image_variant.prune("gpu", tmp_path)
    assert not (tmp_path / "triton").exists()
    assert (tmp_path / "nvidia/cudnn/lib/libcudnn_adv.so.9").exists() and (tmp_path / "torch/include/torch.h").exists()


def test_compose_and_kubernetes_give_each_service_its_variant() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())["services"]
    assert compose["key-authority"]["build"]["args"]["VARIANT"] == "key-authority"
    assert compose["aggregator"]["build"]["args"]["VARIANT"] == "cpu"
    cpu_image = compose["aggregator"]["image"]
    assert "fedxray-cpu" in cpu_image and "fedxray-key-authority" in compose["key-authority"]["image"]
    assert all(compose[f"hospital-{i}"]["image"] == cpu_image for i in range(1, 6))
    gpu = yaml.safe_load((REPO / "deploy" / "docker-compose.gpu.yml").read_text())["services"]
    assert gpu["hospital-1"]["build"]["args"]["VARIANT"] == "gpu"
    assert all("fedxray-gpu" in gpu[f"hospital-{i}"]["image"] for i in range(1, 6))
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert "image_variant.py prune" in dockerfile and "image_variant.py check" in dockerfile
    from tests.deploy.test_k8s import render

    images = {overlay: {doc["metadata"]["name"]: doc["spec"]["template"]["spec"]["containers"][0]["image"]
                        for doc in render(overlay) if doc["kind"] == "StatefulSet"}
              for overlay in ("consortium", "hospital", "hospital-gpu")}
    assert images == {"consortium": {"key-authority": "fedxray-key-authority:local", "aggregator": "fedxray-cpu:local"},
                      "hospital": {"hospital-node": "fedxray-cpu:local"},
                      "hospital-gpu": {"hospital-node": "fedxray-gpu:local"}}
