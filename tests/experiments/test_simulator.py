"""The simulator and the sweep that runs it: the services' parts in one process, on a tiny model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import simulator, sweep
from experiments.simulator import Codec, Simulation, consortium_config, secure_sum, sent, simulate
from services.common.ml.head_refit import FeatureMoments, lda_head, moments_of, scaled_to
from services.common.runtime.atomic_files import read_json_lines
from services.common.secure_sum.noise import NoiseKind
from services.common.secure_sum.quantize import scale_and_clamp
from services.common.secure_sum.update_codec import plan_quantization, received_update
from services.hospital_node import local_round
from services.hospital_node.data.local_data import LocalData

TINY = {"architecture": "tiny", "image_size": "32", "torch_threads": "1"}


@pytest.mark.slow  # one process per setting
def test_sweep_ranks_every_setting_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    base = "architecture=tiny,image_size=32,images_per_node=20,rounds=2,learning_rate=0.02"
    assert sweep.main(["--out", str(tmp_path), "--base", base, "fed=imbalance=logit_adjust,proximal_mu=0.1",
                       "central=mode=centralized,round_schedule=cosine,round_floor=0.5"]) == 0
    # Each round trains at the rate of the aggregator's round schedule (the base rate is 0.02).
    for name, rates in (("fed", [0.02, 0.02]), ("central", [0.02, 0.01])):
        rows = read_json_lines(tmp_path / f"{name}.jsonl")
        assert [row["learning_rate"] for row in rows] == pytest.approx(rates), name
    ranking = json.loads((tmp_path / "ranking.json").read_text())
    assert sorted(row["name"] for row in ranking) == ["central", "fed"]
    assert all(row["rounds"] == 2 for row in ranking)
    assert [row["f1_last"] for row in ranking] == sorted((row["f1_last"] for row in ranking), reverse=True)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "curves.png").unlink()
    assert sweep.main(["--out", str(tmp_path), "--plot-rows", str(tmp_path / "fed.jsonl")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="no service setting is called 'lr'"):
        sweep.main(["--out", str(tmp_path), "bad=lr=0.1"])
    with pytest.raises(SystemExit, match="clip_norm"):
        sweep.main(["--out", str(tmp_path), "bad=clip_norm=-1"])


def test_sweep_seed_reaches_the_data_the_initial_model_and_the_training(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # As experiments.experiment --seed N: data, split and initial model from N; training randomness from N + 1.
    seen: dict[str, int] = {}
    real_load, real_model, real_train = simulator.load_local_data, simulator.build_model, local_round.train_local

    def load_spy(settings: object) -> object:
        seen["data"] = settings.synthetic_seed  # type: ignore[attr-defined]  # the set, its partition, the splits
        return real_load(settings)  # type: ignore[arg-type]

    def model_spy(architecture: str, classes: int, seed: int = 0) -> object:
        seen["model"] = seed
        return real_model(architecture, classes, seed)

    def train_spy(model: object, data: object, config: object, *, device: object, generator: torch.Generator,
                  **kwargs: object) -> object:
        seen.setdefault("training", generator.initial_seed())
        return real_train(model, data, config, device=device, generator=generator, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(simulator, "load_local_data", load_spy)
    monkeypatch.setattr(simulator, "build_model", model_spy)
    monkeypatch.setattr(local_round, "train_local", train_spy)
    simulate("s3", {**TINY, "rounds": "1"}, Simulation(images_per_node=20, seed=3), tmp_path)
    assert seen == {"data": 3, "model": 3, "training": 4}


def test_the_simulated_secure_clamp_is_the_secure_codecs_clip_and_clamp() -> None:
    rng = np.random.default_rng(0)
    upload = rng.normal(size=4000) * 0.01
    upload[:3] = [5.0, -4.0, 0.9]  # a few large coordinates, as a gradient's head has
    clip = 2.0
    plan = plan_quantization(upload.size, clip, 16, max_participants=8, min_participants=3,
                             noise_kind=NoiseKind.SKELLAM, noise_variance=16.0)
    codec = scale_and_clamp(upload, clip, plan.scale, plan.coordinate_bound) / plan.scale
    simulated = sent(upload, clip, clamp=True)
    np.testing.assert_allclose(simulated, codec, rtol=1e-9, atol=1e-12)
    assert np.abs(simulated).max() < 0.9 * clip  # the large coordinates were clamped
    unclamped = sent(upload, clip, clamp=False)
    np.testing.assert_allclose(np.linalg.norm(unclamped), clip)


def test_simulated_drift_correction_changes_nothing_in_round_one_and_steers_round_two(tmp_path: Path) -> None:
    base = {**TINY, "rounds": "2", "partition_scheme": "label_mix", "local_epochs": "2", "local_optimizer": "adamw",
            "learning_rate": "1e-3"}
    simulate("plain", base, Simulation(images_per_node=40), tmp_path)
    simulate("scaffold", {**base, "drift_correction": "true"}, Simulation(images_per_node=40), tmp_path)
    plain, corrected = (read_json_lines(tmp_path / f"{name}.jsonl") for name in ("plain", "scaffold"))
    # c and every c_i start at 0, so round 1 trains alike; from round 2 on, c - c_i steers the local steps.
    assert plain[0]["update_norms"] == corrected[0]["update_norms"]
    assert plain[1]["update_norms"] != corrected[1]["update_norms"]


@pytest.mark.slow  # several seconds: `make test` runs it, `make test-fast` does not
def test_head_refit_eval_scores_a_refit_copy_and_install_trains_on_from_it(tmp_path: Path) -> None:
    base = {**TINY, "rounds": "2", "partition_scheme": "label_mix", "local_optimizer": "adamw",
            "learning_rate": "1e-3"}
    simulate("plain", base, Simulation(images_per_node=40), tmp_path)
    simulate("eval", base, Simulation(images_per_node=40, head_refit_each_round="eval",
                                      refit_noise_variances=(16.0, 0.0)), tmp_path)
    simulate("lda", base, Simulation(images_per_node=40, head_refit_each_round="install"), tmp_path)
    plain, scored, refit = (read_json_lines(tmp_path / f"{name}.jsonl") for name in ("plain", "eval", "lda"))
    # "eval" scores a refit copy only: the trained model, its updates and its scores are plain FedAvg's.
    for left, right in zip(plain, scored):
        assert left["update_norms"] == right["update_norms"] and left["f1"] == right["f1"]
        assert set(right["refit"]) >= {"f1", "auc"}
        for variance in ("16", "0"):
            assert {"contrast_error", "covariance_error", "trace_ratio", "auc"} <= set(right[f"refit_secure_noise{variance}"])
    # "install" replaces the head: round 1 trained alike, its published model is the refit one, and round 2 starts
    # from it.
    assert refit[0]["update_norms"] == plain[0]["update_norms"]
    assert refit[0]["before_refit"]["f1"] == plain[0]["f1"]
    assert refit[0]["auc"] == pytest.approx(scored[0]["refit"]["auc"])
    assert refit[1]["update_norms"] != plain[1]["update_norms"]


def _codec(**values: object) -> Codec:
    return Codec(consortium_config(values, Simulation()))


def test_the_secure_statistics_sum_gives_the_pooled_lda_head() -> None:
    """Through the codec in the statistics layout, noise included, the one-sum protocol gives LDA on the hospitals'
    images weighted by their hospital's scale (clip norm over the norm of its statistics), and so nearly LDA on the
    pooled images (here the hospitals' features differ only through their labels, so the weights matter little)."""
    rng = np.random.default_rng(4)
    parts, features = [], []
    for mix in (0.1, 0.5, 0.95):  # label-skewed hospitals, each with its own scale after scaled_to
        labels = torch.from_numpy((rng.random(300) < mix).astype(np.int64))
        feats = torch.from_numpy(rng.normal(2.0, 1.0, (300, 6)) + 0.8 * labels.numpy()[:, None] * np.arange(6))
        parts.append(LocalData(torch.zeros(300, 1, 2, 2), labels, torch.zeros(0, 1, 2, 2),
                               torch.zeros(0, dtype=torch.int64), 2))
        features.append(feats)
    weight, bias, detail = simulator.refit_head_securely(features, parts, _codec(clip_norm=20.0), 20.0, 0.1, 16.0,
                                                         rng)
    # The codec's own errors, against the exact sum of the scaled vectors: rounding and noise of about 1e-9.
    assert float(detail["contrast_error"]) < 1e-5 and float(detail["covariance_error"]) < 1e-5  # type: ignore[arg-type]
    assert abs(float(detail["trace_ratio"]) - 1) < 1e-5  # type: ignore[arg-type]
    moments = [moments_of(f, p.train_labels, 2) for f, p in zip(features, parts)]
    scales = [20.0 / np.sqrt(np.sum(m.counts**2) + np.sum(m.sums**2) + np.sum(np.triu(m.second)**2)) for m in moments]
    weighted = FeatureMoments(sum(w * m.counts for w, m in zip(scales, moments)),
                              sum(w * m.sums for w, m in zip(scales, moments)),
                              sum(w * m.second for w, m in zip(scales, moments)))
    for got, want in zip((weight, bias), lda_head(weighted, 0.1)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    pooled_weight, pooled_bias = lda_head(sum(moments[1:], moments[0]), 0.1)
    secure, pooled = weight[1] - weight[0], pooled_weight[1] - pooled_weight[0]
    assert np.linalg.norm(secure - pooled) < 0.05 * np.linalg.norm(pooled)  # direction and scale
    assert bias[1] - bias[0] == pytest.approx(pooled_bias[1] - pooled_bias[0], abs=0.05 * np.abs(pooled_bias).max())


def test_the_simulated_secure_statistics_sum_is_the_codecs_sum() -> None:
    """In the statistics layout the codec's rounding and noise are about 1e-9 of the clip norm: the simulated sum
    of vectors at the clip norm is their exact sum, where the update layout loses their small coordinates."""
    rng = np.random.default_rng(1)
    vectors = [scaled_to(np.concatenate([[40.0, 60.0], rng.normal(3.0, 1.0, 500)]), 5.0) for _ in range(5)]
    exact = np.sum(vectors, axis=0)
    codec = _codec(clip_norm=5.0, noise_variance=16.0)
    wide = secure_sum(vectors, codec.statistics_plan(exact.size, 16.0), rng)
    assert np.abs(wide - exact).max() < 1e-7
    narrow = secure_sum(vectors, codec.update_plan(exact.size), rng)
    assert np.abs(narrow - exact).max() > 1e-3


def test_the_simulated_secure_sum_is_the_codecs_sum_with_its_noise() -> None:
    """Without noise, the simulated secure sum is the sum of what the codec receives (clipped, clamped), to within
    randomized rounding; with the configured noise its error grows to about the clip norm over five hospitals."""
    rng = np.random.default_rng(0)
    clip, size = 5.0, 20000
    vectors = [rng.normal(0, 1, size) * (3.0 / np.sqrt(size)) for _ in range(5)]  # norms about 3, under the clip
    vectors[0][:10] = 50.0  # far over the clip and the clamp
    plan = _codec(clip_norm=clip, noise_variance=0.0).update_plan(size)
    received = sum(received_update(v, plan) for v in vectors)
    exact = secure_sum(vectors, plan, rng)
    step = 1 / plan.scale
    assert np.abs(exact - received).max() <= 5 * step + 1e-12  # each of 5 nodes rounds by less than a step
    assert np.linalg.norm(received - sum(vectors)) > 1.0  # the clip and clamp did act on vector 0
    noisy = secure_sum(vectors, _codec(clip_norm=clip, noise_variance=16.0).update_plan(size), rng)
    assert 0.7 * clip < np.linalg.norm(noisy - received) < 1.5 * clip
