"""End to end: the tiny pre-training recipe under the real ``fairseq-hydra-train`` on generated audio."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, broadband, write_wav
from eat_plugin.data.manifest import Clip, write_split

HYDRA_TRAIN = Path(sys.executable).parent / "fairseq-hydra-train"


def make_clips(out: Path, count: int, seconds: float = 1.4) -> Path:
    """``count`` distinct clips (>= 128 frames each) and a ``train.tsv``."""
    clips = []
    for i in range(count):
        write_wav(out / "audio" / f"{i}.wav", broadband(seconds, seed=i), 16000)
        clips.append(Clip(f"{i}.wav", int(seconds * 16000)))
    write_split(out, "train", out / "audio", clips, with_labels=False)
    return out


def train(data: Path, save_dir: Path, *overrides: str) -> str:
    cmd = [
        str(HYDRA_TRAIN), "--config-dir", str(REPO / "config" / "pretraining"), "--config-name", "tiny",
        f"common.user_dir={REPO / 'eat_plugin'}", f"task.data={data}", f"checkpoint.save_dir={save_dir}",
        f"hydra.run.dir={save_dir / 'hydra'}", *overrides,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def train_losses(log: str) -> list:
    rows = [json.loads(line[line.index("{"):]) for line in log.splitlines() if "[train_inner]" in line]
    return [float(row["loss"]) for row in rows]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


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
    losses = train_losses(log)
    assert len(losses) == 50
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0, (first, last)
    row = json.loads([line for line in log.splitlines() if "[train_inner]" in line][-1].split(" - ", 1)[1])
    for key in ("loss_cls", "loss_IMAGE_regression", "target_var", "pred_var", "ema_decay", "masked_pct"):
        assert key in row, key
    assert float(row["masked_pct"]) == pytest.approx(1 - 12 / 64, abs=1e-3)
