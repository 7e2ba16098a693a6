"""End to end: the tiny pre-training recipe under the real ``fairseq-hydra-train`` on generated audio."""

import json

import pytest
import torch

from conftest import load_checkpoint_file as load
from conftest import logged_rows
from conftest import make_pretraining_clips as make_clips
from conftest import pretrain as train


def test_checkpoint_and_resume_are_exact(tmp_path):
    """2 epochs straight == 1 epoch, then resume from checkpoint_last for the second (student AND teacher)."""
    data = make_clips(tmp_path / "data", 8)  # batch 2 -> 4 updates per epoch
    fixed = ["optimization.max_update=8"]
    train(data, tmp_path / "straight", *fixed, "optimization.max_epoch=2")
    train(data, tmp_path / "resumed", *fixed, "optimization.max_epoch=1")
    first = load(tmp_path / "resumed" / "checkpoint_last.pt")
    assert first["optimizer_history"][-1]["num_updates"] == 4
    assert first["cfg"]["model"]["_name"] == "data2vec_multi" and "_ema" in first["model"]
    log = train(data, tmp_path / "resumed", *fixed, "optimization.max_epoch=2")
    assert "Loaded checkpoint" in log and "@ 4 updates" in log

    straight = load(tmp_path / "straight" / "checkpoint_last.pt")["model"]
    resumed = load(tmp_path / "resumed" / "checkpoint_last.pt")["model"]
    assert straight.keys() == resumed.keys()
    for key in straight:
        if key == "_ema":
            for name in straight[key]:
                assert torch.equal(straight[key][name], resumed[key][name]), f"_ema.{name}"
        else:
            assert torch.equal(straight[key], resumed[key]), key


def test_loss_decreases_with_our_criterion(tmp_path):
    data = make_clips(tmp_path / "data", 8)
    log = train(data, tmp_path / "run", "optimization.max_update=50", "criterion._name=eat_pretraining")
    losses = [float(row["loss"]) for row in logged_rows(log)]
    assert len(losses) == 50
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0, (first, last)
    row = json.loads([line for line in log.splitlines() if "[train_inner]" in line][-1].split(" - ", 1)[1])
    for key in ("loss_cls", "loss_IMAGE_regression", "target_var", "pred_var", "ema_decay", "masked_pct"):
        assert key in row, key
    assert float(row["masked_pct"]) == pytest.approx(1 - 12 / 64, abs=1e-3)
