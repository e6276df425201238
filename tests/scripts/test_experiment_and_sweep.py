"""The comparison and screening scripts, end to end on a tiny model (real services for the experiment)."""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from scripts import experiment, paired, sweep
from scripts.centralized import FINAL_STATE, node_settings_for, pooled_data, run_centralized
from services.common.classification_metrics import confusion_matrix
from services.common.head_refit import FeatureMoments, classifier_head, feature_moments, lda_head, moments_of
from services.common.model_spec import flatten_state
from services.common.models import build_model
from services.hospital_node.local_data import LocalData, load_local_data
from services.hospital_node.trainer import LocalTraining, predict
from tests.e2e.consortium_checks import checkpoint_weights


def test_side_by_side_experiment_reports_secure_plaintext_and_centralized(tmp_path: Path) -> None:
    code = experiment.main(["--out", str(tmp_path), "--rounds", "2", "--architecture", "tiny", "--image-size",
                            "32", "--images-per-node", "24", "--local-epochs", "1", "--centralized-epochs", "2",
                            "--batch-size", "16", "--imbalance", "logit_adjust", "--partition", "label_mix",
                            "--calibration-fraction", "0.5", "--seed", "2", "--learning-rate", "0.02",
                            "--round-schedule", "cosine", "--round-floor", "0.25",
                            "--server-momentum", "0.5", "--concurrent", "--timeout", "600"])
    assert code == 0
    report = (tmp_path / "REPORT.md").read_text()
    for run in ("secure", "plaintext", "centralized"):
        assert f"| {run} | 2 |" in report, run
    secure_rows = [json.loads(line) for line in
                   (tmp_path / "secure" / "aggregator" / "rounds.jsonl").read_text().splitlines()]
    assert 0 < float(secure_rows[-1]["epsilon"]) < float("inf")
    assert "imbalance logit_adjust" in report and "momentum 0.5" in report
    # The round schedule: both consortia's plans and the baseline step at 0.02 in round 1 and 0.25 x 0.02 in round 2.
    assert "lr 0.02 falling along a cosine to 0.25x by the last round" in report
    for rows_path in (tmp_path / "secure" / "aggregator" / "rounds.jsonl",
                      tmp_path / "plaintext" / "aggregator" / "rounds.jsonl", tmp_path / "centralized" / "rounds.jsonl"):
        rates = [json.loads(line).get("learning_rate") for line in rows_path.read_text().splitlines()]
        assert rates[-2:] == pytest.approx([0.02, 0.005]), rows_path
    # The baseline's epochs are its own: 2 passes over the pooled training split per round, not the local 1.
    assert "centralized: 2 epochs per round" in report
    settings = node_settings_for("tiny", 32, 24 * 5, 5, "label_mix", 0.5, 2, 0.5)
    pooled = pooled_data(settings, 5)
    other_seed = pooled_data(node_settings_for("tiny", 32, 24 * 5, 5, "label_mix", 0.5, 0, 0.5), 5)
    evaluated = torch.bincount(pooled.val_labels, minlength=2).tolist()
    assert evaluated != torch.bincount(other_seed.val_labels, minlength=2).tolist()  # the seed changes the data
    # Both consortia start from seed 2's initial model, not seed 0's; so does the baseline.
    initial = flatten_state(build_model("tiny", 2, 2).state_dict()).astype(np.float64)
    assert not np.array_equal(initial, flatten_state(build_model("tiny", 2, 0).state_dict()))
    for mode in ("secure", "plaintext"):
        np.testing.assert_array_equal(checkpoint_weights(tmp_path / mode, 0), initial, err_msg=mode)
    assert settings.model_seed == 2
    # The class counts the launcher prints and plots are those of the hospitals' own seed-2 data.
    held = [load_local_data(settings.model_copy(update={"partition_index": i})) for i in range(5)]
    counts = [torch.bincount(torch.cat([d.train_labels, d.val_labels, d.cal_labels]), minlength=2).tolist()
              for d in held]
    assert json.loads((tmp_path / "secure" / "class_counts.json").read_text())["counts"] == counts
    central = json.loads((tmp_path / "centralized" / "rounds.jsonl").read_text().splitlines()[-1])
    assert central["epochs"] == 2 and central["steps"] == 2 * (pooled.train_labels.numel() // 16)
    # Every run chose an operating point on the hospitals' calibration images and evaluated the others at it:
    # 24 images per hospital, 5 held out, 2 of them (round(2.5)) for calibration, 3 evaluated.
    assert pooled.cal_labels.numel() == 5 * 2 and pooled.val_labels.numel() == 5 * 3
    for rows_path in (tmp_path / "secure" / "aggregator" / "rounds.jsonl",
                      tmp_path / "plaintext" / "aggregator" / "rounds.jsonl", tmp_path / "centralized" / "rounds.jsonl"):
        last = json.loads(rows_path.read_text().splitlines()[-1])["evaluation"]
        assert sum(map(sum, last["calibrated"]["confusion"])) == last["examples"] == 15, rows_path
        # Every run evaluated seed 2's images: the confusion matrix's rows count their true classes.
        assert [sum(row) for row in last["confusion"]] == evaluated, rows_path
    # The tiny model's BatchNorm statistics stay at each hospital, so the global model alone is not the model they
    # evaluated: the paired comparison says so instead of scoring a different model.
    for mode in ("secure", "plaintext"):
        assert f"No paired F1 gap for {mode}: {mode}: each hospital keeps 6 normalisation statistics" in report
    # The baseline's saved model is the one it evaluated last.
    baseline = paired.final_model("centralized", tmp_path / "centralized", "tiny", 2)
    scores = paired.positive_scores(baseline, "tiny", pooled, torch.device("cpu"))
    assert confusion_matrix(pooled.val_labels.numpy(), scores.argmax(axis=1), 2).tolist() == central["evaluation"]["confusion"]


def test_sweep_ranks_every_setting_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    base = "architecture=tiny,image_size=32,images_per_node=20,rounds=2"
    assert sweep.main(["--out", str(tmp_path), "--base", base, "fed=imbalance=logit_adjust,proximal_mu=0.1",
                       "central=mode=centralized,round_schedule=cosine,round_floor=0.5"]) == 0
    # Each round trains at the rate of the aggregator's round schedule (the base rate is 0.02).
    for name, rates in (("fed", [0.02, 0.02]), ("central", [0.02, 0.01])):
        rows = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert [row["learning_rate"] for row in rows] == pytest.approx(rates), name
    ranking = json.loads((tmp_path / "ranking.json").read_text())
    assert sorted(row["name"] for row in ranking) == ["central", "fed"]
    assert all(row["rounds"] == 2 for row in ranking)
    assert [row["f1_last"] for row in ranking] == sorted((row["f1_last"] for row in ranking), reverse=True)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "curves.png").unlink()
    assert sweep.main(["--out", str(tmp_path), "--plot-rows", str(tmp_path / "fed.jsonl")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="unknown setting 'lr'"):
        sweep.main(["--out", str(tmp_path), "bad=lr=0.1"])


def test_sweep_seed_reaches_the_data_the_initial_model_and_the_training(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # As scripts.experiment --seed N: data, split and initial model from N; training randomness from N + 1.
    seen: dict[str, int] = {}
    real_settings, real_model, real_train = sweep.node_settings_for, sweep.build_model, sweep.train_local

    def settings_spy(*args: object, **kwargs: object) -> object:
        settings = real_settings(*args, **kwargs)  # type: ignore[arg-type]
        seen["data"] = settings.synthetic_seed  # the synthetic set, its partition and the splits
        return settings

    def model_spy(architecture: str, classes: int, seed: int = 0) -> object:
        seen["model"] = seed
        return real_model(architecture, classes, seed)

    def train_spy(model: object, data: object, config: object, device: object, generator: torch.Generator,
                  *args: object, **kwargs: object) -> object:
        seen.setdefault("training", generator.initial_seed())
        return real_train(model, data, config, device, generator, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sweep, "node_settings_for", settings_spy)
    monkeypatch.setattr(sweep, "build_model", model_spy)
    monkeypatch.setattr(sweep, "train_local", train_spy)
    setting = sweep.Setting(architecture="tiny", image_size=32, images_per_node=20, rounds=1, seed=3,
                            torch_threads=1)
    sweep.simulate("s3", setting, tmp_path)
    assert seen == {"data": 3, "model": 3, "training": 4}


def test_the_sweeps_secure_clamp_is_the_secure_codecs_clip_and_clamp() -> None:
    from services.common.noise import NoiseKind
    from services.common.quantize import scale_and_clamp
    from services.common.update_codec import plan_quantization

    rng = np.random.default_rng(0)
    upload = rng.normal(size=4000) * 0.01
    upload[:3] = [5.0, -4.0, 0.9]  # a few large coordinates, as a gradient's head has
    clip = 2.0
    plan = plan_quantization(upload.size, clip, 16, 8, 3, NoiseKind.SKELLAM, 16.0)
    codec = scale_and_clamp(upload, clip, plan.scale, plan.coordinate_bound) / plan.scale
    simulated = sweep.sent(upload, sweep.Setting(clip_norm=clip, secure_clamp=1))
    np.testing.assert_allclose(simulated, codec, rtol=1e-9, atol=1e-12)
    assert np.abs(simulated).max() < 0.9 * clip  # the large coordinates were clamped
    unclamped = sweep.sent(upload, sweep.Setting(clip_norm=clip))
    np.testing.assert_allclose(np.linalg.norm(unclamped), clip)


def test_sweep_drift_correction_changes_nothing_in_round_one_and_steers_round_two(tmp_path: Path) -> None:
    base = sweep.Setting(architecture="tiny", image_size=32, images_per_node=40, rounds=2, partition="label_mix",
                         local_epochs=2, local_optimizer="adamw", learning_rate=1e-3, torch_threads=1)
    sweep.simulate("plain", base, tmp_path)
    sweep.simulate("scaffold", sweep.Setting(**{**base.__dict__, "drift_correction": 1}), tmp_path)
    plain, corrected = ([json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
                        for name in ("plain", "scaffold"))
    # c and every c_i start at 0, so round 1 trains alike; from round 2 on, c - c_i steers the local steps.
    assert plain[0]["update_norms"] == corrected[0]["update_norms"]
    assert plain[1]["update_norms"] != corrected[1]["update_norms"]


def test_the_centralized_baseline_trains_with_the_hospitals_thread_count(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    monkeypatch.setattr(experiment, "run_centralized", lambda *args, **kwargs: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    namespace = argparse.Namespace(architecture="tiny", image_size=32, images_per_node=20, partition="label_mix",
                                   alpha=0.5, seed=0, calibration_fraction=0.0, centralized_epochs=1,
                                   learning_rate=0.01, batch_size=16, local_optimizer="sgd", imbalance="none",
                                   out=tmp_path, rounds=1, round_schedule="constant", round_floor=0.1, head_refit=False,
                                   torch_threads=max(1, before - 1) if before > 1 else 2)
    experiment.centralized(namespace)
    assert seen == [namespace.torch_threads] and seen[0] != before
    assert torch.get_num_threads() == before  # the launcher's own count is restored afterwards


def test_sweep_head_refit_eval_scores_a_refit_copy_and_lda_trains_on_from_it(tmp_path: Path) -> None:
    base = sweep.Setting(architecture="tiny", image_size=32, images_per_node=40, rounds=2, partition="label_mix",
                         local_epochs=1, local_optimizer="adamw", learning_rate=1e-3, torch_threads=1)
    sweep.simulate("plain", base, tmp_path)
    sweep.simulate("eval", replace(base, head_refit="eval", refit_noise_variances="16:0"), tmp_path)
    sweep.simulate("lda", replace(base, head_refit="lda"), tmp_path)
    plain, scored, refit = ([json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
                            for name in ("plain", "eval", "lda"))
    # "eval" scores a refit copy only: the trained model, its updates and its scores are plain FedAvg's.
    for left, right in zip(plain, scored):
        assert left["update_norms"] == right["update_norms"] and left["f1"] == right["f1"]
        assert set(right["refit"]) >= {"f1", "auc"}
        for variance in ("16", "0"):
            assert {"contrast_error", "covariance_error", "trace_ratio", "auc"} <= set(right[f"refit_secure_noise{variance}"])
    # "lda" replaces the head: round 1 trained alike, its published model is the refit one, and round 2 starts from it.
    assert refit[0]["update_norms"] == plain[0]["update_norms"]
    assert refit[0]["before_refit"]["f1"] == plain[0]["f1"]
    assert refit[0]["auc"] == pytest.approx(scored[0]["refit"]["auc"])
    assert refit[1]["update_norms"] != plain[1]["update_norms"]


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
    setting = sweep.Setting(head_shrinkage=0.1, clip_norm=20.0)
    weight, bias, detail = sweep.refit_head_securely(features, parts, setting, 16.0, rng)
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


def test_the_sweeps_secure_statistics_sum_is_the_codecs_sum() -> None:
    """In the statistics layout the codec's rounding and noise are about 1e-9 of the clip norm: the simulated sum
    of vectors at the clip norm is their exact sum, where the update layout loses their small coordinates."""
    rng = np.random.default_rng(1)
    vectors = [sweep.scaled_to(np.concatenate([[40.0, 60.0], rng.normal(3.0, 1.0, 500)]), 5.0) for _ in range(5)]
    exact = np.sum(vectors, axis=0)
    wide = sweep.secure_sum(vectors, 5.0, 16.0, rng, statistics=True)
    assert np.abs(wide - exact).max() < 1e-7
    narrow = sweep.secure_sum(vectors, 5.0, 16.0, rng)
    assert np.abs(narrow - exact).max() > 1e-3


def test_the_sweeps_secure_sum_is_the_codecs_sum_with_its_noise() -> None:
    """Without noise, the simulated secure sum is the sum of what the codec receives (clipped, clamped), to within
    randomized rounding; with the configured noise its error grows to about the clip norm over five hospitals."""
    rng = np.random.default_rng(0)
    clip, size = 5.0, 20000
    vectors = [rng.normal(0, 1, size) * (3.0 / np.sqrt(size)) for _ in range(5)]  # norms about 3, under the clip
    vectors[0][:10] = 50.0  # far over the clip and the clamp
    bits = sweep.field_layout(sweep.ckks_parameters(8), 8, None).bits
    plan = sweep.plan_quantization(size, clip, bits, 8, 3, sweep.NoiseKind.SKELLAM, 0.0)
    received = sum(sweep.received_update(v, plan) for v in vectors)
    exact = sweep.secure_sum(vectors, clip, 0.0, rng)
    step = 1 / plan.scale
    assert np.abs(exact - received).max() <= 5 * step + 1e-12  # each of 5 nodes rounds by less than a step
    assert np.linalg.norm(received - sum(vectors)) > 1.0  # the clip and clamp did act on vector 0
    noisy = sweep.secure_sum(vectors, clip, 16.0, rng)
    assert 0.7 * clip < np.linalg.norm(noisy - received) < 1.5 * clip


def test_the_centralized_baseline_refits_its_head_like_the_consortium(tmp_path: Path) -> None:
    settings = node_settings_for("tiny", 32, 24 * 5, 5, "label_mix", 0.5, 3)
    training = LocalTraining(1, 0.02, 16)
    rows = run_centralized(settings, 5, 1, training, tmp_path, head_refit=True)
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[-1]["head_refit"] is True
    assert not rows[1].get("head_refit")
    model = build_model("tiny", 2, 3)
    model.load_state_dict(torch.load(tmp_path / FINAL_STATE))
    data = pooled_data(settings, 5)
    # The head's inputs do not depend on the head: the saved body's features refit to the saved head.
    weight, bias = lda_head(feature_moments(model, data.train_images, data.train_labels, 2, torch.device("cpu")))
    head = classifier_head(model)
    np.testing.assert_allclose(head.weight.detach().numpy(), weight, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(head.bias.detach().numpy(), bias, rtol=1e-4, atol=1e-5)
    # ... and the refit model is the one its last row evaluated.
    scores = predict(model, data.val_images, data.val_labels, 2, torch.device("cpu"))[0]
    assert confusion_matrix(data.val_labels.numpy(), scores.argmax(axis=1), 2).tolist() == \
        rows[-1]["evaluation"]["confusion"]  # type: ignore[index]
