"""Frozen-feature probes (``eat_plugin.probing``, ``scripts/probe.py``) against independent solutions."""

import json
import zlib

import numpy as np
import pytest
import torch

from eat_plugin import probing
from helpers import load_script


def newton_logistic(x: np.ndarray, y: np.ndarray, lam: float, steps: int = 50):
    """min_w,b mean BCE(x w + b, y) + lam/2 |w|^2 by Newton's method (bias not penalised), in numpy."""
    a = np.hstack([x, np.ones((len(x), 1))])  # (N, D + 1)
    theta = np.zeros(a.shape[1])
    penalty = np.diag([lam] * x.shape[1] + [0.0])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-a @ theta))
        grad = a.T @ (p - y) / len(y) + penalty @ theta
        hess = (a.T * (p * (1 - p))) @ a / len(y) + penalty
        theta -= np.linalg.solve(hess, grad)
    return theta[:-1], theta[-1]


def standardised(x):
    return (x - x.mean(0)) / x.std(0)


def test_two_class_linear_probe_equals_the_newton_solution_of_binary_logistic_regression():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3))
    y = (x @ np.array([1.5, -2.0, 0.5]) + 0.3 * rng.standard_normal(40) > 0).astype(float)
    l2 = 0.1
    probe = probing.fit_linear_probe(torch.from_numpy(x), torch.from_numpy(y).long(), 2, l2)
    # two softmax rows with penalty l2/2 (|w0|^2 + |w1|^2) = binary logistic on w = w1 - w0 with penalty l2/4 |w|^2
    w, b = newton_logistic(standardised(x), y, l2 / 2)
    np.testing.assert_allclose((probe.weight[1] - probe.weight[0]).numpy(), w, atol=1e-6)
    np.testing.assert_allclose(float(probe.bias[1] - probe.bias[0]), b, atol=1e-6)


def test_multi_label_probe_is_one_regularised_logistic_per_class():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 4))
    y = np.stack([(x[:, 0] > 0.2), (x[:, 1] - x[:, 2] > 0), (rng.random(50) > 0.7)], 1).astype(float)  # (N, 3)
    probe = probing.fit_linear_probe(torch.from_numpy(x), torch.from_numpy(y), 3, 0.05, multi_label=True)
    for c in range(3):
        w, b = newton_logistic(standardised(x), y[:, c], 0.05)
        np.testing.assert_allclose(probe.weight[c].numpy(), w, atol=1e-6)
        np.testing.assert_allclose(float(probe.bias[c]), b, atol=1e-6)


def test_knn_on_a_hand_made_set():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    query = torch.tensor([[2.0, 0.1], [0.2, 3.0], [-5.0, 0.5]])  # cosine: the scale does not matter
    scores = probing.knn_scores(train, labels, query, 3, k=1)
    assert scores.argmax(1).tolist() == [0, 1, 2]
    votes = probing.knn_scores(train, labels, query[:1], 3, k=3)  # the 2 class-0 points + the nearest class-1 one
    assert votes.argmax(1).tolist() == [0] and votes[0, 2] == 0
    multi = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(probing.knn_scores(train, multi, query[:1], 2, k=2, multi_label=True),
                               torch.tensor([[1.0, 0.5]], dtype=torch.float64))
    with pytest.raises(ValueError, match="k=6"):
        probing.knn_scores(train, labels, query, 3, k=6)


class PlantedModel:
    """Stands in for EATModel: 3 blocks; only block 1's tokens carry the clip's class (read from its name)."""

    depth = 3

    def block_indices(self, layers):
        return list(range(3)) if layers == "all" else [v % 3 for v in layers]

    def embed(self, paths, granularity="all", layers=None):
        out = []
        for path in paths:
            label = int(path.stem.split("_")[1])
            rng = np.random.default_rng(zlib.crc32(path.name.encode()))
            tokens = rng.standard_normal((len(layers), 9, 8))  # (L, 1 + N, D)
            for i, block in enumerate(layers):
                if block == 1:
                    tokens[i, 1:, label] += 3.0  # the planted signal
            out.append(torch.from_numpy(tokens).float())
        return out


def test_the_probe_finds_the_layer_with_the_planted_signal(tmp_path, monkeypatch):
    from eat_plugin.data.manifest import Clip, write_label_descriptors, write_split

    script = load_script("probe")
    data = tmp_path / "data"
    (tmp_path / "audio").mkdir()  # the manifests' root (the stand-in model reads no audio)
    for split, n in (("train", 60), ("valid", 20), ("test", 30)):
        clips = [Clip(f"{split}_{i % 3}_{i}.wav", 16000, (f"c{i % 3}",)) for i in range(n)]
        write_split(data, split, tmp_path / "audio", clips)
    write_label_descriptors(data / "label_descriptors.csv", ["c0", "c1", "c2"])
    monkeypatch.setattr(script.cli, "load", lambda args, check_names=False: PlantedModel())
    monkeypatch.setattr(script, "feature_key", lambda args: "planted")
    args = script.build_parser().parse_args(["model.pt", "--data", str(data), "--layers", "all", "--weighted",
                                             "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    assert script.run(args) == 0
    result = json.loads((tmp_path / "out" / "probe.json").read_text())["summary"]
    by_layer = {row["layer"]: row for row in result["layers"]}
    assert by_layer[1]["linear"] == 1.0 and by_layer[1]["knn"] >= 0.9
    assert max(by_layer[0]["linear"], by_layer[2]["linear"]) < 0.7  # chance 1/3
    assert result["weighted"]["linear"] >= 0.9
    weights = json.loads((tmp_path / "out" / "probe.json").read_text())["directories"][0]["weighted"]["weights"]
    assert int(np.argmax(weights)) == 1  # the learned weighted sum puts its weight on block 1
    assert (tmp_path / "out" / "probe.png").is_file()
    cached = sorted((tmp_path / "cache").rglob("*.pt"))
    assert cached  # a second run reads the cache: the model is not asked again
    monkeypatch.setattr(PlantedModel, "embed", lambda *a, **k: pytest.fail("recomputed cached features"))
    assert script.run(args) == 0


def test_probe_script_on_a_real_checkpoint(golden_dir, golden_data, tmp_path):
    """The golden pre-training checkpoint on its own 3-class data (no valid split: a held-out 20 % of train)."""
    script = load_script("probe")
    data = golden_data
    assert script.main([str(golden_dir / "pretrain" / "checkpoint_last.pt"), "--data", str(data), "--test", "eval",
                        "--layers", "0,-1", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
                        "--target-length", "128"]) == 0
    summary = json.loads((tmp_path / "out" / "probe.json").read_text())["summary"]
    assert [row["layer"] for row in summary["layers"]] == [0, 2] and summary["metric"] == "accuracy"
    assert all(0.0 <= row["linear"] <= 1.0 for row in summary["layers"])


def test_several_directories_give_the_mean_and_the_sample_standard_deviation():
    """ESC-50's five folds: one result per fold directory, then mean +- std (ddof=1) per layer and probe."""
    script = load_script("probe")
    folds = [{"metric": "accuracy", "layers": [{"layer": 0, "linear": v, "knn": v / 2}], "weighted": {"linear": v}}
             for v in (0.6, 0.8, 0.7, 0.9, 0.5)]
    summary = script.summarise(folds)
    row = summary["layers"][0]
    assert summary["directories"] == 5 and row["linear"] == pytest.approx(0.7)
    assert row["linear_std"] == pytest.approx(np.sqrt(0.1 / 4))  # squares of (-.1, .1, 0, .2, -.2) sum to 0.1
    assert row["knn"] == pytest.approx(0.35) and row["knn_std"] == pytest.approx(np.sqrt(0.025 / 4))
    assert summary["weighted"]["linear_std"] == pytest.approx(np.sqrt(0.1 / 4))
    assert script.summarise(folds[:1])["layers"][0]["linear_std"] is None  # one directory: no spread
    assert "+- 15.8" in script.format_summary(summary)
