"""Resume after a real crash: ``fairseq-hydra-train`` is SIGKILLed mid-epoch, restarted with the same
command, and every value it logs after the restart equals the run that was never interrupted.

Pre-training covers the dataset masks, the mask-token noise, the EMA teacher and its decay ramp;
fine-tuning covers mixup, SpecAugment, roll augmentation and weighted (balanced) sampling, all on.
Checkpoints are written every 4 updates (``checkpoint.save_interval_updates``) and an epoch is longer
than that, so the restart resumes inside an epoch (fairseq restores the iterator position).
"""

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import REPO, HYDRA_TRAIN, load_checkpoint_file, logged_rows, make_pretraining_clips, pretrain, train_env
from helpers import load_script

pytestmark = pytest.mark.slow

make_demo_data, make_weights, prepare_esc50 = (load_script(name) for name in
                                               ("make_demo_data", "make_weights", "prepare_esc50"))

SAVE_EVERY = 4
# time and throughput differ between runs; everything else fairseq logs must not
NOT_COMPARED = {"wps", "ups", "wpb", "wall", "train_wall", "gb_free", "bsz"}


def run_until_killed(cmd, kill_at_update: int) -> str:
    """Start ``cmd``, SIGKILL it once it has logged update ``kill_at_update``; its output so far."""
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=train_env())
    lines = []
    for line in process.stdout:
        lines.append(line)
        rows = logged_rows(line)
        if rows and int(rows[0]["num_updates"]) >= kill_at_update:
            os.kill(process.pid, signal.SIGKILL)
            break
    process.stdout.close()
    assert process.wait(timeout=60) == -signal.SIGKILL, "".join(lines)[-3000:]
    return "".join(lines)


def run(cmd) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=train_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def by_update(log: str) -> dict:
    return {int(row["num_updates"]): row for row in logged_rows(log)}


def assert_resumed_run_equals_unbroken(cmd, save_dir: Path, unbroken_dir: Path, kill_at: int, max_update: int):
    unbroken = by_update(run([*cmd, f"checkpoint.save_dir={unbroken_dir}", f"hydra.run.dir={unbroken_dir / 'h'}"]))
    assert sorted(unbroken) == list(range(1, max_update + 1))
    crashed = [*cmd, f"checkpoint.save_dir={save_dir}", f"hydra.run.dir={save_dir / 'h'}"]
    before = by_update(run_until_killed(crashed, kill_at))
    resumed_log = run(crashed)
    resumed_from = (kill_at // SAVE_EVERY) * SAVE_EVERY
    assert f"@ {resumed_from} updates" in resumed_log, resumed_log[-3000:]
    after = by_update(resumed_log)
    assert sorted(after) == list(range(resumed_from + 1, max_update + 1))
    for update, row in [*before.items(), *after.items()]:  # before the kill too, and the replayed updates
        expected = unbroken[update]
        keys = set(expected) - NOT_COMPARED
        assert keys == set(row) - NOT_COMPARED, update
        assert {k: row[k] for k in keys} == {k: expected[k] for k in keys}, f"update {update}"
    a = load_checkpoint_file(unbroken_dir / "checkpoint_last.pt")
    b = load_checkpoint_file(save_dir / "checkpoint_last.pt")
    assert a["optimizer_history"][-1]["num_updates"] == b["optimizer_history"][-1]["num_updates"] == max_update
    for key, value in a["model"].items():
        if key == "_ema":
            for name in value:
                assert torch.equal(value[name], b["model"]["_ema"][name]), f"_ema.{name}"
        else:
            assert torch.equal(value, b["model"][key]), key
    return after


def test_pretraining_resumes_after_sigkill_update_for_update(tmp_path):
    data = make_pretraining_clips(tmp_path / "data", 12)  # batch 2: 6 updates per epoch
    max_update = 10
    cmd = [str(HYDRA_TRAIN), "--config-dir", str(REPO / "config" / "pretraining"), "--config-name", "tiny",
           f"common.user_dir={REPO / 'eat_plugin'}", f"task.data={data}", "criterion._name=eat_pretraining",
           f"optimization.max_update={max_update}", f"checkpoint.save_interval_updates={SAVE_EVERY}",
           "checkpoint.keep_interval_updates=2"]
    after = assert_resumed_run_equals_unbroken(cmd, tmp_path / "crashed", tmp_path / "unbroken", 6, max_update)
    assert {"loss_cls", "loss_IMAGE_regression", "ema_decay", "target_var", "model_norm"} <= set(after[max_update])


@pytest.fixture(scope="module")
def finetuning_data(tmp_path_factory):
    """Demo data (ESC-50 layout, fold 1 held out), balanced-sampling weights, a tiny pre-trained model."""
    root = tmp_path_factory.mktemp("crash_ft")
    assert make_demo_data.main(["--out", str(root / "esc"), "--clips-per-class-per-fold", "2"]) == 0
    assert prepare_esc50.main(["--esc50-root", str(root / "esc"), "--out", str(root / "data"), "--folds", "1"]) == 0
    data = root / "data" / "fold1"
    assert make_weights.main(["--data", str(data), "--split", "train"]) == 0
    pretrain(data, root / "pretrain", "optimization.max_update=4")
    return data, root / "pretrain" / "checkpoint_last.pt"


def test_finetuning_with_every_augmentation_resumes_after_sigkill_update_for_update(tmp_path, finetuning_data):
    data, pretrained = finetuning_data
    max_update = 10
    cmd = [str(HYDRA_TRAIN), "--config-dir", str(REPO / "config" / "finetuning"), "--config-name", "tiny",
           f"common.user_dir={REPO / 'eat_plugin'}", f"task.data={data}", f"model.model_path={pretrained}",
           "model.num_classes=6", "common.log_interval=1", f"optimization.max_update={max_update}",
           f"checkpoint.save_interval_updates={SAVE_EVERY}", "checkpoint.keep_interval_updates=2",
           "dataset.batch_size=4", "model.mixup=0.8", "model.mixup_prob=1.0", "model.specaug=true",
           "task.roll_aug=true", "task.AS2M_finetune=true", f"task.weights_file={data / 'train_weights.csv'}",
           "task.num_samples=32"]  # 8 updates per weighted epoch
    after = assert_resumed_run_equals_unbroken(cmd, tmp_path / "crashed", tmp_path / "unbroken", 6, max_update)
    assert "loss" in after[max_update]
